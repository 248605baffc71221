"""Block scaling (DeepSeek-V3's 1 x 128 activation and 128 x 128 weight tiles) against a
tile-by-tile numpy reference, in the form XLA makes FP8 GEMMs of, E4M3 everywhere, and with
memory linear in the GEMM's operands at the 1.3B model's MLP shape (compile only)."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxlab.fp8 import dot, formats, hlo

DIMS = (((1,), (0,)), ((), ()))
E4M3_MAX = 448.0


def reference_block_dot(a, b, block, b_cols):
  """Tile by tile in numpy: each 1 x block tile of `a` and block x b_cols tile of `b` gets
  scale amax / 448, is divided (float32, as the scale is), clipped and rounded to E4M3 by
  ml_dtypes; each K-block's product is rescaled by its row and column scales and summed."""
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  m, k = a.shape
  n = b.shape[1]
  kp, np_ = -(-k // block) * block, -(-n // b_cols) * b_cols
  a = np.pad(a, ((0, 0), (0, kp - k)))
  b = np.pad(b, ((0, kp - k), (0, np_ - n)))

  def q(x, s):
    s = np.where(s > 0, s, np.float32(1.0)).astype(np.float32)
    return np.clip(x / s, -E4M3_MAX, E4M3_MAX).astype(ml_dtypes.float8_e4m3fn).astype(np.float64), s

  out = np.zeros((m, np_))
  for k0 in range(0, kp, block):
    at = a[:, k0:k0 + block]
    qa, sa = q(at, np.abs(at).max(axis=1, keepdims=True) / np.float32(E4M3_MAX))
    bt = b[k0:k0 + block]
    groups = bt.reshape(block, -1, b_cols)
    sb = np.abs(groups).max(axis=(0, 2), keepdims=True) / np.float32(E4M3_MAX)   # (1, NB, 1)
    qb, sb = q(groups, sb)
    out += (qa @ qb.reshape(block, -1)) * sa * np.repeat(sb.reshape(-1), b_cols)[None]
  return out[:, :n]


@pytest.mark.parametrize("b_cols", [64, 1])
def test_block_dot_matches_a_tile_by_tile_reference(b_cols):
  # Shapes that are not multiples of the block (padding), and rows of very different scales
  # (what per-tile scales are for).
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (48, 200)) * jnp.logspace(-3, 2, 48)[:, None]
  b = jax.random.normal(kb, (200, 72)) * 0.05
  got = np.asarray(jax.jit(lambda a, b: formats.block_dot(a, b, formats.E4M3, formats.E4M3, 64, b_cols))(a, b))
  want = reference_block_dot(a, b, 64, b_cols)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  # and it is FP8: far from the exact product, at E4M3's precision
  exact = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
  rel = np.linalg.norm(got - exact) / np.linalg.norm(exact)
  assert 1e-3 < rel < 0.05, rel


def test_block_dense_gemms_are_fp8_gemms_on_e4m3_operands():
  x = jax.ShapeDtypeStruct((256, 256), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((256, 384), jnp.bfloat16)
  loss = lambda x, w: jnp.sum(dot.block_dense(x, w, 128, DIMS).astype(jnp.float32) ** 2)
  text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).as_text(dialect="hlo")
  report = hlo.fp8_dots(text)
  # forward, dgrad and wgrad: one GEMM each (in its K-block loop), taken directly on FP8 tiles
  assert len(report.fp8) == 3 and not report.blocked, report.summary()
  assert "f8e4m3fn" in text and "f8e5m2" not in text  # E4M3 operands in every GEMM, gradients too


def _temp_bytes(m, k, n):
  x = jax.ShapeDtypeStruct((m, k), jnp.bfloat16)
  w = jax.ShapeDtypeStruct((k, n), jnp.bfloat16)
  g = jax.ShapeDtypeStruct((m, n), jnp.bfloat16)

  def step(x, w, g):
    y, vjp = jax.vjp(lambda a, b: dot.block_dense(a, b, 128, DIMS), x, w)
    return (y, *vjp(g))

  return jax.jit(step).lower(x, w, g).compile().memory_analysis().temp_size_in_bytes


def test_block_scaling_memory_is_linear_in_the_operands_at_the_1p3b_shape():
  # FP8-LM 1.3B's MLP GEMM at 8 x 2048 tokens. An M x K/128 x N float32 temporary (a
  # batched product over K-blocks) would be 8 GiB here and would grow by 8 GiB when K
  # doubles; the scan over K-blocks keeps an M x N accumulator and one block's product.
  m, k, n = 16384, 2048, 8192
  base = _temp_bytes(m, k, n)
  assert base < 3 * 2**30, base / 2**30
  grown = _temp_bytes(m, 2 * k, n) - base
  operand_bytes = (m + n) * k * 4  # the extra K columns of both operands, even as float32
  assert grown < 4 * operand_bytes, (grown / 2**30, operand_bytes / 2**30)
