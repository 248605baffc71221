"""FP8/FP16 storage formats with scales: quantize = scale, clip, cast.

Convention: a quantized tensor `q` with scale `s` stands for `q * s`; quantizing `x` stores
`cast(clip(x / s))`. With `s = amax / fmax` the largest magnitude lands on the format's
largest finite value. Clipping comes before the cast because casting an out-of-range value
to float8_e4m3fn gives NaN, not saturation; +-inf saturate to +-fmax, NaN stays NaN (so the
loop's non-finite guard still sees it).

`ScaledTensor` is a pytree (data, scale; its format static) for tensors kept in a narrow
format between steps (FP8 weight gradients, Adam moments, O3 weights and master weights);
an 8-bit format's data are its bytes (uint8, see the class). Its scale is per tensor; for
parameters stacked over layers (`.../layers/...`) "per tensor" means per layer, so the
scale has shape (L, 1, ...).
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax
import ml_dtypes

E4M3 = jnp.float8_e4m3fn   # weights and activations, max 448
E5M2 = jnp.float8_e5m2     # output gradients, max 57344


def fmax(dtype) -> float:
  """The largest finite value of `dtype` (448 for E4M3, 57344 for E5M2, 65504 for FP16)."""
  return float(ml_dtypes.finfo(dtype).max)


def quantize(x: jax.Array, dtype, scale) -> jax.Array:
  """cast(clip(x / scale)) in `dtype`; the division happens in float32."""
  m = fmax(dtype)
  return jnp.clip(x.astype(jnp.float32) / scale, -m, m).astype(dtype)


def dequantize(q: jax.Array, scale, dtype=jnp.float32) -> jax.Array:
  """q * scale computed in float32 (a tiny scale may not be representable in FP16), then cast."""
  return (q.astype(jnp.float32) * scale).astype(dtype)


def scale_for(amax, dtype, margin: int = 0, power_of_two: bool = False, fallback=1.0):
  """The scale that maps `amax` to fmax(dtype) / 2**margin. A zero or non-finite amax keeps
  `fallback`. Power-of-two scales (MS-AMP) round up, so amax still fits; they make
  quantize/dequantize exact rescalings."""
  amax = jnp.asarray(amax, jnp.float32)
  s = amax * (2.0 ** margin) / fmax(dtype)
  if power_of_two:
    s = jnp.exp2(jnp.ceil(jnp.log2(jnp.where(s > 0, s, 1.0))))
  ok = jnp.isfinite(amax) & (amax > 0)
  return jnp.where(ok, s, jnp.asarray(fallback, jnp.float32))


def amax(x: jax.Array, axes=None) -> jax.Array:
  """max |x| over `axes` (all by default), ignoring NaN so one bad value cannot poison a
  delayed-scaling history; +-inf still counts (and is then rejected by `scale_for`)."""
  a = jnp.abs(x.astype(jnp.float32))
  return jnp.max(jnp.where(jnp.isnan(a), 0.0, a), axis=axes, keepdims=axes is not None)


def to_bits(q: jax.Array) -> jax.Array:
  """An 8-bit float array as its bytes (uint8); any other array as it is."""
  eight_bit_float = jnp.issubdtype(q.dtype, jnp.floating) and q.dtype.itemsize == 1
  return lax.bitcast_convert_type(q, jnp.uint8) if eight_bit_float else q


@flax.struct.dataclass
class ScaledTensor:
  """A narrow `format` (E4M3, E5M2 or FP16) and the float32 `scale` its values are multiplied by.

  `data` holds an 8-bit format as its bytes (uint8) and FP16 as it is; `values` gives them in
  `format`. Bytes because the train state keeps these tensors between steps and the fused
  optimizer updates them in place, layer by layer: XLA on CPU widens data movement of FP8
  (a dynamic slice or update) to FP16, and materialises an FP8 <-> uint8 bitcast as a whole
  copy, so FP8 state would cost a copy of itself every step where bytes cost nothing. A GEMM
  reads the values through a bitcast, which XLA's GPU rewriter looks through. Make one with
  `ScaledTensor.of(values, scale)`."""
  data: jax.Array
  scale: jax.Array
  format: Any = flax.struct.field(pytree_node=False)

  @classmethod
  def of(cls, values: jax.Array, scale) -> "ScaledTensor":
    """The ScaledTensor standing for `values * scale`, `values` in its narrow format."""
    return cls(to_bits(values), scale, jnp.dtype(values.dtype))

  @property
  def shape(self):
    """Shape of the tensor it stands for (that of `data`)."""
    return self.data.shape

  @property
  def dtype(self):
    """The narrow storage format (E4M3, FP16...), not the dtype it dequantizes to."""
    return self.format

  @property
  def values(self) -> jax.Array:
    """The stored values in their format (the bytes of an 8-bit format bitcast back)."""
    return self.data if self.data.dtype == self.format else lax.bitcast_convert_type(self.data, self.format)

  def dequantize(self, dtype=jnp.float32) -> jax.Array:
    """values * scale, computed in float32, then cast to `dtype`."""
    return dequantize(self.values, self.scale, dtype)


def tensor_axes(x, stacked: bool) -> tuple[int, ...]:
  """Axes one scale covers: all of them, or all but the leading layer axis."""
  return tuple(range(1 if stacked and x.ndim > 1 else 0, x.ndim))


def to_scaled(x: jax.Array, dtype, stacked: bool = False, margin: int = 0, power_of_two: bool = False) -> ScaledTensor:
  """Per-tensor (per-layer when stacked) current scaling of `x` into `dtype`."""
  s = scale_for(amax(x, tensor_axes(x, stacked)), dtype, margin, power_of_two)
  return ScaledTensor.of(quantize(x, dtype, s), s)


def is_scaled(x) -> bool:
  """Whether `x` is a ScaledTensor; the `is_leaf` for tree maps that must not split it into
  data and scale."""
  return isinstance(x, ScaledTensor)


def plain(tree, dtype=jnp.float32):
  """Stored parameters as plain `dtype` arrays: ScaledTensors dequantized, and so are the
  {"data", "scale"} pairs a ScaledTensor becomes when a checkpoint is restored without its
  train state's structure (`checkpoint.restore_params`); other float arrays cast."""
  is_pair = lambda x: isinstance(x, dict) and set(x) == {"data", "scale"}

  def one(x):
    if is_scaled(x):
      return x.dequantize(dtype)
    if is_pair(x):
      data = jnp.asarray(x["data"])  # bytes are E4M3: the only 8-bit format kept in a state
      return ScaledTensor(data, jnp.asarray(x["scale"]), E4M3 if data.dtype == jnp.uint8 else data.dtype).dequantize(dtype)
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
  return jax.tree.map(one, tree, is_leaf=lambda x: is_scaled(x) or is_pair(x))


# ---------------------------------------------------------------- block scaling (DeepSeek-V3)

def _pad_to(x: jax.Array, axis: int, multiple: int) -> jax.Array:
  pad = (-x.shape[axis]) % multiple
  if not pad:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths)


def block_dot(a: jax.Array, b: jax.Array, dtype_a, dtype_b, block: int, b_cols: int) -> jax.Array:
  """a (M, K) @ b (K, N) with fine-grained scales and FP32 accumulation per block.

  `a` gets one scale per row and K-block of `block` (a 1 x block tile); `b` one scale per
  K-block and group of `b_cols` columns (block x block for a weight, block x 1 for an
  activation). Each K-block is one GEMM taken directly on the FP8 tiles (the form XLA's GPU
  rewriter makes a cuBLASLt FP8 GEMM of), its FP32 output multiplied by the row and column
  scales and added to an FP32 accumulator, as DeepSeek-V3 promotes partial sums to FP32
  every `block` elements of K. The K-blocks are a `lax.scan`, so memory stays linear in the
  operands and the output (one M x N accumulator and one block's product), never
  M x K/block x N. Dimensions that are not multiples are zero-padded (zeros change neither
  sums nor amax).
  """
  m, n = a.shape[0], b.shape[1]
  a = _pad_to(a, 1, block)
  b = _pad_to(_pad_to(b, 0, block), 1, b_cols)
  kb, nb = a.shape[1] // block, b.shape[1] // b_cols
  a3 = a.reshape(m, kb, block)
  sa = scale_for(amax(a3, (2,)), dtype_a)                                   # (M, KB, 1)
  qa = jnp.moveaxis(quantize(a3, dtype_a, sa), 1, 0)                        # (KB, M, block) FP8
  b4 = b.reshape(kb, block, nb, b_cols)
  sb = scale_for(amax(b4, (1, 3)), dtype_b)                                 # (KB, 1, NB, 1)
  qb = quantize(b4, dtype_b, sb).reshape(kb, block, nb * b_cols)            # (KB, block, N) FP8
  row_scales = jnp.moveaxis(sa, 1, 0)                                       # (KB, M, 1)
  col_scales = jnp.broadcast_to(sb, (kb, 1, nb, b_cols)).reshape(kb, 1, nb * b_cols)

  def one_block(acc, tiles):
    qa_k, qb_k, sa_k, sb_k = tiles
    partial = jax.lax.dot_general(qa_k, qb_k, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return acc + partial * sa_k * sb_k, None

  acc = jnp.zeros((m, nb * b_cols), jnp.float32)
  acc, _ = jax.lax.scan(one_block, acc, (qa, qb, row_scales, col_scales))
  return acc[:, :n]
