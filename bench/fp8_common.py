"""Shared by the FP8 benchmark scripts: a guarded workaround for a bf16 bug in
jaxlab.fp8.dot._bwd (reported to the FP8 owner; applied only while the bug is present).

The bug: `_bwd` differentiates `lax.dot_general(..., preferred_element_type=float32)` with
`jax.vjp` and feeds it a cotangent in the compute dtype, so every FP8 level fails with
`model.dtype=bfloat16` ("got bfloat16[...], but expected float32[...]"). The workaround
hands the VJP a float32 cotangent (the dequantized E5M2 gradient, exact in float32); both
backward GEMMs keep FP8-valued operands and FP32 accumulation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def _bwd_has_bf16_bug() -> bool:
  from jaxlab.fp8 import dot
  x, w = jnp.ones((2, 4), jnp.bfloat16), jnp.ones((4, 8), jnp.bfloat16)
  dims = (((1,), (0,)), ((), ()))
  try:
    jax.grad(lambda x: dot.fp8_dot_general(x, w, (), dims, dot.Recipe(scaling="current")).astype(
        jnp.float32).sum())(x)
    return False
  except ValueError as e:
    return "expected float32" in str(e)


def patch_fp8_bwd_if_needed() -> bool:
  """Replace jaxlab.fp8.dot's custom VJP backward with the fixed one when the bf16 bug is
  present; returns whether it patched (say so in the benchmark's output)."""
  from jaxlab.fp8 import dot, formats
  from jaxlab.fp8.formats import E5M2
  if not _bwd_has_bf16_bug():
    return False

  def _bwd(dims, recipe, res, g):
    qx, qw, sx, sw, hg, ax, aw, meta = res
    cd = g.dtype
    sg = dot._scale(recipe, hg, g, E5M2)
    qg = formats.quantize(g, E5M2, sg)
    _, vjp = jax.vjp(lambda a, b: lax.dot_general(a, b, dims, preferred_element_type=jnp.float32),
                     dot._dq(qx, sx, cd), dot._dq(qw, sw, cd))
    dx, dw = vjp(dot._dq(qg, sg, jnp.float32))  # the fix: a float32 cotangent for the float32 output
    if meta:
      hx, hw, _ = meta
      obs = (dot._observation(hx, ax), dot._observation(hw, aw), dot._observation(hg, formats.amax(g)))
    else:
      obs = ()
    return dx.astype(cd), dw.astype(cd), obs

  dot.fp8_dot_general.defvjp(lambda x, w, meta, dims, recipe: dot._fwd(x, w, meta, dims, recipe), _bwd)
  assert not _bwd_has_bf16_bug()
  return True
