"""FP8 gradient all-reduce over the data axis (FP8-LM's automatic scaling), for
`jax.shard_map`, plus a reader of the collectives in a compiled program.

Per tensor: every shard holds its gradient with its own scale; the shared scale is the
largest one over the axis (MS-AMP's "minimum scaling factor", which is our scale's inverse),
so no shard saturates on its own. Each shard quantizes `mu * g / s` to E4M3 and the sum is
reduced in two 8-bit collectives: an all_to_all of uint8 chunks (each device receives every
shard's copy of its chunk and sums them in float32: a reduce-scatter), and an all_gather of
the summed chunks requantized to E4M3. The result stands for `sum * s / (mu * n)`: the mean.

The summed chunk is where FP8 can overflow (n values of up to fmax each). The automatic
scaling factor `mu` halves when more than 0.001% of summed values saturate, and otherwise
grows by 2**(1/1000) per step up to 1. Saturated values are clipped, never NaN.

FP8 travels as uint8: XLA on CPU widens float8 collectives to f16, bitcasting keeps them
8-bit on every backend.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from jax import lax

from jaxlab.fp8 import formats
from jaxlab.fp8.formats import E4M3, ScaledTensor
from jaxlab.train.state import GradSync

SATURATION_LIMIT = 1e-5      # 0.001% of values
GROWTH = 2.0 ** (1 / 1000)


def _to_u8(q):
  return lax.bitcast_convert_type(q, jnp.uint8)


def _from_u8(u):
  return lax.bitcast_convert_type(u, E4M3)


def _allreduce_one(g: ScaledTensor, mu, axis: str, n: int):
  """Mean over `axis` of one FP8 gradient; returns (mean as ScaledTensor, saturated count)."""
  s = lax.pmax(g.scale, axis) / mu
  q = formats.quantize(g.dequantize(jnp.float32), E4M3, s)
  flat = q.reshape(-1)
  pad = (-flat.size) % n
  chunks = jnp.pad(_to_u8(flat), (0, pad)).reshape(n, -1)
  received = lax.all_to_all(chunks, axis, split_axis=0, concat_axis=0, tiled=False)  # (n, chunk)
  summed = jnp.sum(_from_u8(received).astype(jnp.float32), axis=0)
  fmax = formats.fmax(E4M3)
  saturated = jnp.sum((jnp.abs(summed) > fmax).astype(jnp.float32))
  gathered = lax.all_gather(_to_u8(formats.quantize(summed, E4M3, 1.0)), axis, tiled=True)
  data = _from_u8(gathered[:flat.size]).reshape(q.shape)
  return ScaledTensor.of(data, s / n), saturated


def fp8_grad_sync(axis: str = "data") -> GradSync:
  """A GradSync (train/state.py) for gradients whose matrices are FP8 ScaledTensors (the
  FP8-LM levels' wire format); other leaves are averaged in float32."""

  def init():
    return {"factor": jnp.ones((), jnp.float32)}

  def sync(grads, state):
    n = lax.axis_size(axis)
    mu = state["factor"]
    leaves, treedef = jax.tree.flatten(grads, is_leaf=formats.is_scaled)
    out, saturated, total = [], jnp.zeros((), jnp.float32), 0
    for g in leaves:
      if isinstance(g, ScaledTensor):
        mean, sat = _allreduce_one(g, mu, axis, n)
        out.append(mean)
        saturated, total = saturated + sat, total + g.data.size
      else:
        out.append(lax.pmean(g, axis))
    fraction = lax.psum(saturated, axis) / max(total, 1)
    new_mu = jnp.where(fraction > SATURATION_LIMIT, mu / 2, jnp.minimum(mu * GROWTH, 1.0))
    metrics = {"comm_scale_factor": mu, "comm_saturated_fraction": fraction}
    return jax.tree.unflatten(treedef, out), {"factor": new_mu}, metrics

  return GradSync(init=init, sync=sync, axis=axis)


# --------------------------------------------------------------- what a program moves

_OP = re.compile(r"\b(all-reduce|all-gather|all-to-all|reduce-scatter|collective-permute)(?:-start)?\(")
_SHAPE = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
          "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def collectives(hlo_text: str) -> list[tuple[str, str, int]]:
  """(op, element type, element count of its result per device) for every collective in
  optimized HLO text (tuple results count each element)."""
  found = []
  for line in hlo_text.splitlines():
    match = _OP.search(line)
    if not match or " = " not in line[:match.start()]:
      continue
    types = line[line.index(" = ") + 3:match.start()]
    for dtype, dims in _SHAPE.findall(types):
      if dtype in _BYTES:
        count = 1
        for d in filter(None, dims.split(",")):
          count *= int(d)
        found.append((match.group(1), dtype, count))
  return found


def wire_bytes(op: str, dtype: str, count: int, n: int, as_dtype: str | None = None) -> float:
  """Bytes one device sends for a collective over n devices (ring algorithms): an all-reduce
  sends 2(n-1)/n of its data, an all-gather or all-to-all (n-1)/n of its result. `as_dtype`
  prices the elements in another type (CPU XLA widens BF16 reductions to F32)."""
  size = count * _BYTES[as_dtype or dtype]
  factor = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "all-to-all": (n - 1) / n,
            "reduce-scatter": n - 1, "collective-permute": 1.0}[op]
  return factor * size
