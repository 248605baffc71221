"""FP8 `dot_general` with a custom VJP, and the Flax module models inject as `dot_general_cls`.

Forward: both operands in E4M3. Backward: the output gradient in E5M2. All three GEMMs
(y = x.W, the input gradient g.W^T and the weight gradient x^T.g) are dots taken directly
on the FP8 operands, accumulated in float32 (`preferred_element_type`), with the product
of the two operands' scales applied to the output. A dot whose operands are FP8 arrays
(reached through layout ops only) is the form XLA's GPU GEMM rewriter turns into a cuBLASLt
FP8 matmul; `jaxlab.fp8.hlo` checks a lowered step for it. Only Dense-shaped contractions
(x[..., K] . w[K, N], what flax's Dense calls) are supported: the weight-gradient GEMM is
taken on the flattened (tokens, K) x (tokens, N) operands.

FP8 weight gradients (`Recipe.fp8_wgrad`, what the train step uses at O1-O3). A cotangent
has its primal's dtype, so a kernel's own cotangent can only be as wide as the kernel. The
weight gradient therefore leaves through a port: the `fp8_grads` collection (`GRADS`), one
E4M3 array shaped like the kernel and one scale per GEMM, which the train step passes in as
zeros. The backward pass casts the wgrad GEMM's output once into E4M3 with a just-in-time
per-tensor scale (per layer under nn.scan: scanned collections are split by layer) and
returns it as the port's cotangent, the scale as the scale's; the kernel's own cotangent is
zero. So the weight gradient is born FP8: no FP16/FP32 gradient of a stacked kernel is ever
stacked up by the scan, and the train step reads the pair as the kernel's gradient
(`port_gradients`). Without the collection in the variables (eval, your own loop), the dot
returns the weight gradient as the kernel's cotangent, as before.

Recipes (`Recipe.scaling`):
  delayed  per-tensor scales from an amax history of past steps (FP8-LM, Transformer Engine);
           until the history holds an amax, the scale is this step's (just-in-time, as
           MS-AMP), so step 0 neither flushes small gradients to zero nor overflows
           (`Recipe.just_in_time_start`; the train step drops it after a run's first step)
  current  per-tensor scales from this step's amax
  block    one scale per 1 x block activation tile and block x block weight tile (DeepSeek-V3),
           E4M3 gradients too, one FP8 GEMM per K-block accumulated in FP32 (a scan: memory
           linear in the operands); Dense-shaped contractions only

Scale state. Delayed scaling keeps three amax histories per GEMM (input, kernel, output
gradient) in the `fp8_meta` variable collection. The output-gradient amax is only known in
the backward pass, so the histories enter the custom VJP as inputs and their "cotangent" is
this step's observation: a vector that is zero except slot 0, which holds the amax. The train
step turns observations into new histories with `update_meta` (pure, inside the jitted step;
no Python state). Observations combine by max across microbatches and data shards (the step
does this), and scanned layers each own a slice of the collection, so nn.scan and remat see
ordinary inputs and outputs.
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.layout import Layout, with_layout_constraint

from jaxlab.fp8 import formats
from jaxlab.fp8.formats import E4M3, E5M2

COLLECTION = "fp8_meta"
GRADS = "fp8_grads"  # the weight-gradient ports (see the module docstring)
SCALES = "fp8_kernel_scale"  # the stored scale of a kernel handed over undecoded (see Fp8DotGeneral)
SCALINGS = ("delayed", "current", "block")


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How FP8 GEMMs are scaled: `scaling` (delayed, current or block; see the module docstring),
  the amax `history` length for delayed scaling, a `margin` (scale = amax * 2**margin / fmax,
  headroom against growth between steps), power-of-two scales, and the tile size for block.

  `kernel="stored"` is for weights that are stored in E4M3 with a per-tensor (per-layer)
  scale from their own amax (O3): the kernel's scale is then recomputed just-in-time by the
  same rule (this step's amax, no margin, not rounded to a power of two), which gives back the
  stored scale, so quantizing the decoded weight reproduces the stored FP8 values bit for bit
  (`tests/fp8/test_dot.py`). A delayed scale from past steps would round them a second time."""
  scaling: str = "delayed"
  history: int = 16          # amax history length (delayed)
  margin: int = 0            # scale = amax * 2**margin / fmax
  power_of_two: bool = False  # MS-AMP-style power-of-two scales
  block: int = 128           # tile size (block)
  kernel: str = ""           # "" (as `scaling`) or "stored" (see above)
  # Declare the `fp8_grads` port at init (delayed/current scaling). For the train step, which
  # passes it in and merges its cotangents (Task.grad_ports); a loop that passes init's
  # variables back without merging would see zero kernel gradients.
  fp8_wgrad: bool = False
  # Delayed scaling: while a history is empty (all zero, before a run's first step), scale just
  # in time from this step's amax. The fallback makes every quantization wait for a reduction
  # over its operand, so XLA reads each GEMM operand twice in every step, not only the first
  # (one read with False, as flax's fp8_ops); the train step therefore takes its first step
  # with it and the rest without (`Task.after_first_step`, set by `fp8.apply`). Without it an
  # empty history gives scale 1.0: a tensor that was all zero in the first step (its history
  # stays empty) is quantized with scale 1.0 the first time it is not.
  just_in_time_start: bool = True
  # Names of modules whose GEMMs stay in the compute dtype (matched against the components of
  # the dot's module path, e.g. a model's first and last Dense layers, which Transformer
  # Engine and DeepSeek-V3 keep in higher precision): no scales, no port, a plain dot.
  high_precision: tuple[str, ...] = ()

  def __post_init__(self):
    if self.scaling not in SCALINGS:
      raise ValueError(f"fp8.scaling={self.scaling!r} is not one of {SCALINGS}")
    if self.kernel not in ("", "stored"):
      raise ValueError(f"Recipe.kernel={self.kernel!r} is not '' or 'stored'")
    if self.fp8_wgrad and self.scaling == "block":
      raise ValueError("Recipe.fp8_wgrad needs per-tensor scaling (delayed or current), not block")
    if not all(isinstance(name, str) for name in self.high_precision):
      raise ValueError(f"Recipe.high_precision={self.high_precision!r} must be module names (strings)")

  def for_kernel(self) -> "Recipe":
    """The recipe the kernel operand is scaled with."""
    if self.kernel == "stored":
      return dataclasses.replace(self, scaling="current", margin=0, power_of_two=False, kernel="")
    return self


def _scale(recipe: Recipe, history, current_amax, dtype):
  """Delayed: from the history of past steps, or (`just_in_time_start`) this step's amax while
  the history is still empty (all zero); current: from this step's amax."""
  a = current_amax
  if recipe.scaling == "delayed":
    past = jnp.max(history)
    a = jnp.where(past > 0, past, current_amax) if recipe.just_in_time_start else past
  return formats.scale_for(a, dtype, recipe.margin, recipe.power_of_two)


def _observation(history, value):
  return jnp.zeros_like(history).at[0].set(value)


def _check_dense(x, w, dims):
  (lc, rc), (lb, rb) = dims
  if lb or rb or tuple(lc) != (x.ndim - 1,) or tuple(rc) != (0,) or w.ndim != 2:
    raise ValueError(f"FP8 dot_general supports Dense-shaped contractions (x[..., K] . w[K, N]); got {dims}")


def _scaled_dot(qa, sa, qb, sb, dims, dtype):
  """The GEMM on FP8 operands qa * sa and qb * sb, accumulated in FP32, written in `dtype`.

  Here and on CPU: the dot of the FP8 arrays with an FP32 output, times the product of the
  scales, then `dtype` (exact up to FP32 accumulation; this is what the tests check).
  On a GPU, in BF16 or FP32: each operand dequantized by its own scale in `dtype` and the dot
  writing `dtype`, the pattern XLA's GPU GEMM rewriter turns into one cuBLASLt FP8 call that
  takes the scales as its A/B scales and writes `dtype` itself, as flax's fp8_ops does. (The
  first form compiles there to an FP32 GEMM output and a separate pass converting it: at
  16384 x 2048 x 8192 a 512 MiB write and read per forward GEMM; `tests/test_targets.py`
  checks the GPU program.) The one difference in value: the GPU form's scales are rounded to
  `dtype` (BF16: 8 significant bits, at most 2^-9 relative)."""
  def fp32_output(qa, sa, qb, sb):
    return (lax.dot_general(qa, qb, dims, preferred_element_type=jnp.float32) * (sa * sb)).astype(dtype)

  def dequantized(qa, sa, qb, sb):
    deq = lambda q, s: q.astype(dtype) * jnp.reshape(s, ()).astype(dtype)
    return lax.dot_general(deq(qa, sa), deq(qb, sb), dims, preferred_element_type=dtype)

  if dtype not in (jnp.bfloat16, jnp.float32):  # FP16 cannot hold gradient scales
    return fp32_output(qa, sa, qb, sb)
  return on_gpu(dequantized, fp32_output, qa, sa, qb, sb)


def on_gpu(gpu_fn, other_fn, *args):
  """gpu_fn(*args) in a program compiled for a GPU, other_fn(*args) elsewhere (decided when
  the step is lowered for its devices, `lax.platform_dependent`)."""
  return lax.platform_dependent(*args, cuda=gpu_fn, rocm=gpu_fn, default=other_fn)


def stored_e4m3(w):
  """The E4M3 array whose bytes `w` holds as numbers (0..255, in any dtype that holds them
  exactly, as flax's Dense hands over a uint8 kernel cast to its compute dtype)."""
  return w if w.dtype == E4M3 else lax.bitcast_convert_type(w.astype(jnp.uint8), E4M3)


def _as_stored(w):
  """On a GPU, `w` pinned to its stored row-major layout. The forward GEMM wants the kernel
  K-minor (cuBLASLt's FP8 GEMMs take both operands contracting-dimension-minor); left free,
  XLA's GPU layout assignment carries that wish back through the quantization to the layers'
  stacked kernels and relayouts each whole stack before the layer scan: a second copy of every
  scanned kernel, alive through the step (+1.2 B/param at O2 on an H100 compile,
  `bench/fp8_memory.py --target h100`). Pinned, the quantizing fusion transposes one layer's
  kernel inside the scan instead. Elsewhere XLA keeps its choice (a CPU keeps the stored
  layout; a TPU's are tiled)."""
  return on_gpu(lambda w: with_layout_constraint(w, Layout(tuple(range(w.ndim)))), lambda w: w, w)


def _kernel(w, w_scale, recipe, hw):
  """The kernel's E4M3 operand, its scale and amax. `w_scale` (a stored scale, or ()) means
  `w` holds stored values: E4M3 bytes (`recipe.kernel="stored"`, O3; as numbers, see
  `stored_e4m3`), which go to the GEMM as they are, or FP16 values, which stand for
  w * w_scale (decoded here, inside the layer)."""
  w = _as_stored(w)
  if not isinstance(w_scale, tuple):
    s = jnp.reshape(w_scale, ())
    if recipe.kernel == "stored":
      q = stored_e4m3(w)
      return q, s, formats.amax(q) * s
    w = w.astype(jnp.float32) * s
  aw = formats.amax(w)
  sw = _scale(recipe.for_kernel(), hw, aw, E4M3)
  return formats.quantize(w, E4M3, sw), sw, aw


def _fwd(x, w, meta, port, w_scale, dims, recipe):
  _check_dense(x, w, dims)
  hx, hw, hg = meta if meta else (None, None, None)
  ax = formats.amax(x)
  sx = _scale(recipe, hx, ax, E4M3)
  qx = formats.quantize(x, E4M3, sx)
  qw, sw, aw = _kernel(w, w_scale, recipe, hw)
  y = _scaled_dot(qx, sx, qw, sw, dims, x.dtype)
  # The FP8 operands are the residuals: the backward GEMMs reuse them (1 byte per element).
  port_scale = port[1] if port else None  # only its (scale-sized) shape is needed
  return y, (qx, qw, sx, sw, hg, ax, aw, meta, port_scale, w_scale)


def _bwd(dims, recipe, res, g):
  qx, qw, sx, sw, hg, ax, aw, meta, port_scale, w_scale = res
  zero_scale = jax.tree.map(jnp.zeros_like, w_scale)  # a stored scale is not trained through the GEMM
  port = port_scale is not None
  ag = formats.amax(g)
  sg = _scale(recipe, hg, ag, E5M2)
  qg = formats.quantize(g, E5M2, sg)
  n = g.ndim - 1
  # dgrad: g[..., N] . w[K, N] over N;  wgrad: x[T, K] . g[T, N] over the T flattened tokens.
  dx = _scaled_dot(qg, sg, qw, sw, (((n,), (1,)), ((), ())), g.dtype)
  # Through a port the wgrad GEMM writes the compute dtype, as MS-AMP's does (FP32 only under
  # FP16, whose range a wgrad can leave): its E4M3 cast rounds 2^5 times coarser than BF16, and
  # BF16 halves the bytes the GEMM writes and the cast reads twice (FP32 cost 7.8 GiB more
  # memory traffic per step at FP8-LM 1.3B O2: `bench/gpu/fp8_speed.py --aot h100`).
  dw = _scaled_dot(qx.reshape(-1, qx.shape[-1]), sx, qg.reshape(-1, qg.shape[-1]), sg, (((0,), (0,)), ((), ())),
                   jnp.float32 if port and g.dtype == jnp.float16 else g.dtype)
  if meta:
    hx, hw, _ = meta
    obs = (_observation(hx, ax), _observation(hw, aw), _observation(hg, ag))
  else:
    obs = ()
  if port:
    # The wgrad leaves once, as E4M3 with its own just-in-time scale (MS-AMP casts the wgrad
    # GEMM's output the same way); the kernel's own cotangent is zero.
    wgrad = formats.to_scaled(dw, E4M3, power_of_two=recipe.power_of_two)
    return dx, jnp.zeros(qw.shape, g.dtype), obs, (wgrad.values, wgrad.scale.reshape(port_scale.shape)), zero_scale
  if not isinstance(w_scale, tuple):  # w held stored values: d/d(stored) = d/dw * scale
    dw = dw * jnp.reshape(w_scale, ()).astype(dw.dtype)
  return dx, dw, obs, (), zero_scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fp8_dot(x, w, meta, port, w_scale, dims, recipe: Recipe):
  return _fwd(x, w, meta, port, w_scale, dims, recipe)[0]


_fp8_dot.defvjp(lambda x, w, meta, port, w_scale, dims, recipe: _fwd(x, w, meta, port, w_scale, dims, recipe), _bwd)


def fp8_dot_general(x, w, meta, dims, recipe: Recipe, port=(), w_scale=()):
  """x . w per `dims` (Dense-shaped: x[..., K] . w[K, N]) with per-tensor FP8 scaling;
  `meta` = (x, kernel, grad) amax histories for delayed scaling, () for current scaling;
  `port` = (E4M3 zeros shaped like w, F32 zeros shaped like its scale) to receive the weight
  gradient in FP8 (see the module docstring), () to return it as w's cotangent;
  `w_scale` = the stored scale when w holds stored values (w stands for w * w_scale), ().
  Operands are first promoted to a common dtype, the dtype of the output and gradients."""
  dtype = jnp.promote_types(x.dtype, w.dtype)
  return _fp8_dot(x.astype(dtype), w.astype(dtype), meta, tuple(port), w_scale, dims, recipe)


# ------------------------------------------------------------------------- block scaling

@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _block_dense(x, w, block: int, dims):
  return _block_fwd(x, w, block, dims)[0]


def block_dense(x, w, block: int, dims):
  """x[..., K] . w[K, N] with 1 x block activation tiles and block x block weight tiles."""
  dtype = jnp.promote_types(x.dtype, w.dtype)
  return _block_dense(x.astype(dtype), w.astype(dtype), block, dims)


def _block_fwd(x, w, block, dims):
  _check_dense(x, w, dims)
  x2 = x.reshape(-1, x.shape[-1])
  y = formats.block_dot(x2, w, E4M3, E4M3, block, b_cols=block)
  return y.reshape(x.shape[:-1] + (w.shape[1],)).astype(x.dtype), (x2, w, x.shape)


def _block_bwd(block, dims, res, g):
  x2, w, x_shape = res
  g2 = g.reshape(-1, g.shape[-1])
  # E4M3 for the gradients too, as DeepSeek-V3: with a scale per tile the range E5M2 buys
  # is not needed, and E4M3's extra mantissa bit is kept.
  dx = formats.block_dot(g2, w.T, E4M3, E4M3, block, b_cols=block)     # 1 x block tiles of g along N
  dw = formats.block_dot(x2.T, g2, E4M3, E4M3, block, b_cols=1)        # block x 1 tiles along tokens
  return dx.reshape(x_shape).astype(g.dtype), dw.astype(w.dtype)


_block_dense.defvjp(_block_fwd, _block_bwd)


# ---------------------------------------------------------------------- the Flax module

def update_meta(meta, observations):
  """New amax histories: shift each history by one and record this step's amax in slot 0.
  A non-finite observation (an overflowing step) is not recorded."""
  def one(history, obs):
    amax = obs[..., :1]
    shifted = jnp.concatenate([amax, history[..., :-1]], axis=-1)
    return jnp.where(jnp.isfinite(amax), shifted, history)
  return jax.tree.map(one, meta, observations)


class Fp8DotGeneral(nn.Module):
  """Drop-in `dot_general` for flax Dense (`dot_general_cls=functools.partial(Fp8DotGeneral,
  recipe=...)`)."""
  recipe: Recipe = Recipe()

  @nn.compact
  def __call__(self, x, w, dimension_numbers, precision=None, preferred_element_type=None):
    r = self.recipe
    if set(r.high_precision) & set(self.scope.path):
      return lax.dot_general(x, w, dimension_numbers, precision=precision, preferred_element_type=preferred_element_type)
    del precision, preferred_element_type  # FP8 sets both
    if r.scaling == "block":
      return block_dense(x, w, r.block, dimension_numbers)
    meta = port = ()
    if r.scaling == "delayed":
      zeros = lambda: jnp.zeros((r.history,), jnp.float32)
      meta = tuple(self.variable(COLLECTION, f"{n}_amax_history", zeros).value for n in ("input", "kernel", "grad"))
    # The port exists at init (the train step learns its shape there and passes zeros) and
    # wherever the caller passes it; elsewhere the weight gradient is w's own cotangent.
    if r.fp8_wgrad and (self.is_initializing() or self.has_variable(GRADS, "kernel")):
      port = (self.variable(GRADS, "kernel", lambda: jnp.zeros(w.shape, E4M3)).value,
              self.variable(GRADS, "kernel_scale", lambda: jnp.zeros((1,) * w.ndim, jnp.float32)).value)
      # The kernel's own gradient is zero here: stop_gradient makes it a symbolic zero, so the
      # backward scan does not stack a wide array of zeros for it.
      w = lax.stop_gradient(w)
    # A stored kernel handed over undecoded (the train step at O1-O3, `Precision.view_state`):
    # `w` holds its stored values and this is its scale, so each layer decodes its own slice
    # inside the scan (or, at O3, feeds the stored E4M3 bytes to the GEMM as they are).
    w_scale = self.get_variable(SCALES, "kernel_scale") if self.has_variable(SCALES, "kernel_scale") else ()
    return fp8_dot_general(x, w, meta, dimension_numbers, r, port, w_scale)


def kernel_path(dot_path: tuple) -> tuple:
  """The kernel a dot at `dot_path` (`.../<dense>/<dot>`) reads: `.../<dense>/kernel`."""
  return tuple(dot_path[:-1]) + ("kernel",)


def port_gradients(grads, cotangents):
  """`grads` (a params tree) with each ported kernel's gradient replaced by what arrived at its
  port: a ScaledTensor of the E4M3 wgrad and its scale. A port at `.../<dense>/<dot>/` feeds
  the parameter `.../<dense>/kernel`."""
  flat = traverse_util.flatten_dict(grads)
  for path, port in traverse_util.flatten_dict(cotangents, is_leaf=lambda p, x: "kernel_scale" in x).items():
    key = kernel_path(path)
    if key not in flat:
      raise KeyError(f"an FP8 weight-gradient port at {'/'.join(path)} has no parameter {'/'.join(key)}")
    flat[key] = formats.ScaledTensor.of(port["kernel"], port["kernel_scale"])
  return traverse_util.unflatten_dict(flat)


def dot_general_cls(recipe: Recipe):
  """The `dot_general_cls` a Flax Dense takes to run its GEMM in FP8 with `recipe`."""
  return functools.partial(Fp8DotGeneral, recipe=recipe)
