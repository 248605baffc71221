"""The FP8 dot_general: against an FP32 reference with bounds from the formats, against a
numpy/ml_dtypes re-computation, against flax.linen.fp8_ops, and its scale state."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax.linen import fp8_ops

from jaxlab.fp8 import dot, formats

DIMS = (((1,), (0,)), ((), ()))
# Round-to-nearest with 3 (E4M3) / 2 (E5M2) mantissa bits: relative error <= 2^-4 / 2^-3 per
# normal value. A product of two rounded operands is off by at most (1+a)(1+b)-1 relative.
E4M3_REL, E5M2_REL = 2.0 ** -4, 2.0 ** -3


def _inputs(seed=0, m=16, k=64, n=32):
  kx, kw, kg = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kx, (m, k)), jax.random.normal(kw, (k, n)) * 0.05, jax.random.normal(kg, (m, n)))


def _qdq_numpy(x, scale, dtype):
  fmax = float(ml_dtypes.finfo(dtype).max)
  return np.clip(np.asarray(x, np.float32) / scale, -fmax, fmax).astype(dtype).astype(np.float32) * scale


def _grads(f, x, w, g):
  @jax.jit
  def run(x, w, g):
    y, vjp = jax.vjp(f, x, w)
    return (y,) + vjp(g)
  return run(x, w, g)


def test_current_scaling_forward_and_gradients():
  x, w, g = _inputs()
  f = lambda x, w: dot.fp8_dot_general(x, w, (), DIMS, dot.Recipe("current"))
  y, dx, dw = _grads(f, x, w, g)
  # Exactly the GEMM of the quantized operands (recomputed with numpy + ml_dtypes).
  sx, sw, sg = (float(jnp.max(jnp.abs(t))) / m for t, m in ((x, 448), (w, 448), (g, 57344)))
  xq, wq = _qdq_numpy(x, sx, ml_dtypes.float8_e4m3fn), _qdq_numpy(w, sw, ml_dtypes.float8_e4m3fn)
  gq = _qdq_numpy(g, sg, ml_dtypes.float8_e5m2)
  np.testing.assert_allclose(y, xq @ wq, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dx, gq @ wq.T, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(dw, xq.T @ gq, rtol=1e-5, atol=1e-6)
  # Against FP32: elementwise bounds from the formats (+ a subnormal allowance).
  ax, aw, ag = (np.abs(np.asarray(t)) for t in (x, w, g))
  fwd_bound = ((1 + E4M3_REL) ** 2 - 1) * (ax @ aw) + 1e-6
  assert np.all(np.abs(np.asarray(y) - np.asarray(x @ w)) <= fwd_bound)
  bwd_rel = (1 + E4M3_REL) ** 2 - 1  # E4M3 gradient tiles, as DeepSeek-V3
  assert np.all(np.abs(np.asarray(dx) - np.asarray(g @ w.T)) <= bwd_rel * (ag @ aw.T) + 1e-5)
  assert np.all(np.abs(np.asarray(dw) - np.asarray(x.T @ g)) <= bwd_rel * (ax.T @ ag) + 1e-5)
  # ... and it really is FP8: not equal to the FP32 product.
  assert float(jnp.max(jnp.abs(y - x @ w))) > 1e-3


def test_bfloat16_compute_dtype():
  x, w, g = (t.astype(jnp.bfloat16) for t in _inputs(5))
  f = lambda x, w: dot.fp8_dot_general(x, w, (), DIMS, dot.Recipe("current"))
  y, dx, dw = _grads(f, x, w, g)
  assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
  ref = np.asarray(x.astype(jnp.float32)) @ np.asarray(w.astype(jnp.float32))
  assert np.linalg.norm(np.asarray(y, np.float32) - ref) / np.linalg.norm(ref) < 0.06


def test_delayed_scaling_matches_flax_fp8_ops():
  x, w, g = _inputs(1)
  hist = lambda a: jnp.zeros((8,), jnp.float32).at[3].set(a)  # past amaxes, not this step's
  hx, hw, hg = hist(5.0), hist(0.3), hist(4.0)
  ours = lambda x, w: dot.fp8_dot_general(x, w, (hx, hw, hg), DIMS, dot.Recipe("delayed", history=8))
  theirs = lambda x, w: fp8_ops.fp8_scaled_dot_general(
      x, w, DIMS, preferred_element_type=jnp.float32, lhs_scale=jnp.ones((1,)), rhs_scale=jnp.ones((1,)),
      grad_scale=jnp.ones((1,)), lhs_amax_history=hx, rhs_amax_history=hw, grad_amax_history=hg)
  for a, b in zip(_grads(ours, x, w, g), _grads(theirs, x, w, g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_delayed_scale_state_records_this_steps_amax():
  x, w, g = _inputs(2)
  meta = tuple(jnp.zeros((4,), jnp.float32).at[0].set(v) for v in (1.0, 2.0, 3.0))
  f = lambda x, w, meta: jnp.sum(dot.fp8_dot_general(x, w, meta, DIMS, dot.Recipe("delayed", history=4)) * g)
  obs = jax.grad(f, argnums=2)(x, w, meta)
  new = dot.update_meta(meta, obs)
  for h, old, a in zip(new, meta, (jnp.max(jnp.abs(x)), jnp.max(jnp.abs(w)), jnp.max(jnp.abs(g)))):
    np.testing.assert_allclose(h[0], a, rtol=1e-6)      # newest first
    np.testing.assert_array_equal(h[1:], old[:-1])      # the rest shifted by one
  # An overflowing step (inf amax) is not recorded.
  inf_obs = jax.tree.map(lambda o: o.at[0].set(jnp.inf), obs)
  jax.tree.map(np.testing.assert_array_equal, dot.update_meta(meta, inf_obs), meta)


def test_scanned_layers_and_gradient_accumulation_combine_amax_by_max():
  from jaxlab.models.block import BlockConfig, Stack
  from jaxlab.train import state as state_lib
  cfg = BlockConfig(d_model=16, num_heads=2, mlp_dim=32)
  model = Stack(cfg, 2, dot.dot_general_cls(dot.Recipe("delayed", history=4)))
  x = jax.random.normal(jax.random.key(0), (4, 8, 16))
  x = x.at[3].multiply(10.0)  # the second microbatch has the larger activations
  variables = jax.jit(model.init)(jax.random.key(1), x)
  hist = variables[dot.COLLECTION]["layers"]["block"]["attn"]["query"]["Fp8DotGeneral_0"]["input_amax_history"]
  assert hist.shape == (2, 4)  # one history per scanned layer

  def loss(model, variables, batch, rng):
    y = model.apply(variables, batch["x"])
    return jnp.mean(y ** 2), ({}, {})
  task = state_lib.Task(model=model, init=None, loss=loss, optimizer=None, units_per_batch=("x", 1),
                        observed={dot.COLLECTION: dot.update_meta})
  ms = {dot.COLLECTION: variables[dot.COLLECTION]}
  local = lambda n: jax.jit(lambda batch: state_lib.local_gradients(task, variables["params"], ms, batch,
                                                                      jax.random.key(2), n))
  *_, grads, obs = local(2)({"x": x})
  query_in = obs[dot.COLLECTION]["layers"]["block"]["attn"]["query"]["Fp8DotGeneral_0"]["input_amax_history"]
  # Layer 0's query input is LayerNorm(x); its amax over the whole batch is the max over microbatches.
  ln = nn.LayerNorm()
  ln_params = {"params": jax.tree.map(lambda p: p[0], variables["params"]["layers"]["block"]["ln_1"])}
  expected = float(jnp.max(jnp.abs(ln.apply(ln_params, x))))
  np.testing.assert_allclose(query_in[0, 0], expected, rtol=1e-5)
  per_mb = [float(jnp.max(jnp.abs(ln.apply(ln_params, x[i:i + 2])))) for i in (0, 2)]
  assert expected < sum(per_mb)  # a sum would over-count
  # Full-batch gradients equal the mean of the two microbatch gradients (FP8 per microbatch).
  g0, g1 = local(1)({"x": x[:2]})[3], local(1)({"x": x[2:]})[3]
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(a, (b + c) / 2, rtol=2e-5, atol=1e-7), grads, g0, g1)


def test_block_scaling_beats_per_tensor_on_outlier_channels():
  kx, kw = jax.random.split(jax.random.key(3))
  per_tensor_fn = jax.jit(lambda x, w: dot.fp8_dot_general(x, w, (), DIMS, dot.Recipe("current")))
  block_fn = jax.jit(lambda x, w: dot.block_dense(x, w, 32, DIMS))
  # A few outlier channels, as in LLM activations, with correspondingly small weights (so the
  # output is not just the outliers). Per-tensor scaling pushes every other channel towards
  # E4M3's subnormals (2^-9 steps); 1 x 32 tiles confine that to the tile holding the outliers.
  for factor, ratio in ((100.0, 1.0), (1e5, 0.5)):
    x = jax.random.normal(kx, (64, 256)).at[:, :4].multiply(factor)
    w = (jax.random.normal(kw, (256, 128)) * 0.05).at[:4].multiply(1 / factor)
    ref = np.asarray(x @ w)
    err = lambda y: np.linalg.norm(np.asarray(y) - ref) / np.linalg.norm(ref)
    assert err(block_fn(x, w)) < ratio * err(per_tensor_fn(x, w)), (factor, err(block_fn(x, w)), err(per_tensor_fn(x, w)))
  # Block-scaled gradients stay within the formats' bounds too.
  g = jax.random.normal(jax.random.key(4), (64, 128))
  dx, dw = jax.jit(lambda x, w, g: jax.vjp(lambda a, b: dot.block_dense(a, b, 32, DIMS), x, w)[1](g))(x, w, g)
  bwd_rel = (1 + E4M3_REL) ** 2 - 1  # E4M3 gradient tiles, as DeepSeek-V3
  assert np.all(np.abs(np.asarray(dx - g @ w.T)) <= bwd_rel * np.abs(np.asarray(g)) @ np.abs(np.asarray(w)).T + 1e-5)
  assert np.all(np.abs(np.asarray(dw - x.T @ g)) <= bwd_rel * np.abs(np.asarray(x)).T @ np.abs(np.asarray(g)) + 1e-4)


def test_dense_module_creates_state_only_for_delayed_scaling():
  x = jnp.ones((2, 8))
  for scaling, has_state in (("delayed", True), ("current", False), ("block", False)):
    m = nn.Dense(4, dot_general_cls=dot.dot_general_cls(dot.Recipe(scaling, block=8)))
    variables = jax.jit(m.init)(jax.random.key(0), x)
    assert (dot.COLLECTION in variables) == has_state
    y = jax.jit(m.apply)(variables, x)
    assert y.shape == (2, 4) and bool(jnp.all(jnp.isfinite(y)))


def test_delayed_scaling_cold_start_scales_just_in_time():
  # Step 0: the amax histories are all zero. Weights at the 0.02 init scale sit near E4M3's
  # smallest normal (2^-6) and gradients of 1e-6 below E5M2's smallest subnormal (2^-16):
  # with scale 1.0 the weights would lose bits and every gradient would flush to zero.
  # Until a history holds an amax, the scale is this step's.
  kx, kw, kg = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(kx, (32, 64))
  w = jax.random.normal(kw, (64, 48)) * 0.02
  g = jax.random.normal(kg, (32, 48)) * 1e-6
  cold = tuple(jnp.zeros((4,), jnp.float32) for _ in range(3))
  f = lambda x, w: dot.fp8_dot_general(x, w, cold, DIMS, dot.Recipe("delayed", history=4))
  y, dx, dw = _grads(f, x, w, g)
  rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
  # Per-tensor scaling at this step's amax: a few percent, as for current scaling.
  assert rel(y, x @ w) < 0.05
  assert rel(dx, g @ w.T) < 0.1
  assert rel(dw, x.T @ g) < 0.1
  cur = lambda x, w: dot.fp8_dot_general(x, w, (), DIMS, dot.Recipe("current"))
  for a, b in zip((y, dx, dw), _grads(cur, x, w, g)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-12)


def test_without_the_just_in_time_start_an_empty_history_flushes_and_a_filled_one_agrees():
  """Recipe.just_in_time_start=False (the train step after a run's first step): an empty history
  gives scale 1.0, which flushes gradients of 1e-6 to zero in E5M2 (smallest subnormal 2^-16);
  that is why a fresh run's first step keeps the just-in-time start. Once a history holds an
  amax, both recipes use it and compute the same bits."""
  kx, kw, kg = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(kx, (32, 64))
  w = jax.random.normal(kw, (64, 48)) * 0.02
  g = jax.random.normal(kg, (32, 48)) * 1e-6
  empty = tuple(jnp.zeros((4,), jnp.float32) for _ in range(3))
  steady = lambda meta: (lambda x, w: dot.fp8_dot_general(x, w, meta, DIMS, dot.Recipe("delayed", history=4,
                                                                                       just_in_time_start=False)))
  jit_start = lambda meta: (lambda x, w: dot.fp8_dot_general(x, w, meta, DIMS, dot.Recipe("delayed", history=4)))
  _, dx, dw = _grads(steady(empty), x, w, g)
  assert not np.any(np.asarray(dx)) and not np.any(np.asarray(dw))  # every gradient flushed
  filled = tuple(jnp.zeros((4,)).at[1].set(v) for v in (4.0, 0.1, 5e-6))  # amaxes seen a step ago
  for a, b in zip(_grads(steady(filled), x, w, g), _grads(jit_start(filled), x, w, g)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  dw = _grads(steady(filled), x, w, g)[2]
  assert float(jnp.linalg.norm(dw - x.T @ g) / jnp.linalg.norm(x.T @ g)) < 0.1


@pytest.mark.parametrize("bf16_compute", [False, True])
def test_o3_gemm_sees_the_stored_fp8_weights_bit_for_bit(bf16_compute):
  """O3 stores each layer's kernel in E4M3 with its own scale. Its view is decoded to FP16
  (and cast to BF16 by a BF16 model); with Recipe.kernel="stored" the GEMM's quantized kernel
  is the stored E4M3 data exactly, whatever the delayed history says. Without it a stale
  history (here 1.5x the amax) rounds the weights a second time."""
  from jaxlab.fp8 import optim as fo
  w = jax.random.normal(jax.random.key(3), (2, 64, 32)) * 0.02  # two stacked layers
  stored = fo.encode(w, formats.E4M3, "decoder/layers/block/mlp/fc/kernel")
  view = fo.decode(stored, jnp.float16)
  x = jax.random.normal(jax.random.key(4), (8, 64))
  if bf16_compute:
    view, x = view.astype(jnp.bfloat16), x.astype(jnp.bfloat16)
  layer = 1
  stale = 1.5 * float(jnp.max(jnp.abs(view[layer].astype(jnp.float32))))
  meta = tuple(jnp.zeros((4,)).at[0].set(v) for v in (float(jnp.max(jnp.abs(x.astype(jnp.float32)))), stale, 1.0))
  dims = (((1,), (0,)), ((), ()))
  _, res = dot._fwd(x, view[layer], meta, (), (), dims, dot.Recipe(history=4, kernel="stored"))
  qw = res[1]
  np.testing.assert_array_equal(np.asarray(qw).view(np.uint8), np.asarray(stored.data[layer]).view(np.uint8))
  _, res = dot._fwd(x, view[layer], meta, (), (), dims, dot.Recipe(history=4))
  assert np.mean(np.asarray(res[1]).view(np.uint8) != np.asarray(stored.data[layer]).view(np.uint8)) > 0.3
  # The train step hands the stored bytes themselves (uint8, cast to the model's dtype by
  # Dense) with their scale: the GEMM gets the stored bytes and the stored scale, nothing
  # requantized.
  values = stored.data[layer].astype(x.dtype)  # the stored bytes, uint8
  y, res = dot._fwd(x, values, meta, (), stored.scale[layer], dims, dot.Recipe(history=4, kernel="stored"))
  np.testing.assert_array_equal(np.asarray(res[1]).view(np.uint8), np.asarray(stored.data[layer]).view(np.uint8))
  assert float(res[3]) == float(stored.scale[layer].reshape(()))
  y_decoded, _ = dot._fwd(x, view[layer], meta, (), (), dims, dot.Recipe(history=4, kernel="stored"))
  # the same GEMM as from the decoded view, whose recomputed scale carries the FP16 rounding
  # of the decoded amax (same bytes, a scale 1e-4 off: at most one step of a BF16 output)
  np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_decoded, np.float32), rtol=2 ** -7, atol=1e-6)


def test_o3_config_scales_kernels_as_stored_and_other_levels_do_not():
  import ml_collections
  from jaxlab import fp8
  f = ml_collections.ConfigDict(fp8.default_config())
  for level, scaling, want in (("O3", "delayed", "stored"), ("O3", "current", "stored"), ("O2", "delayed", ""),
                               ("O3", "block", "")):
    f.level, f.scaling = level, scaling
    assert fp8.recipe(f).kernel == want, (level, scaling)


def test_high_precision_modules_keep_plain_gemms():
  """`Recipe.high_precision` names modules whose GEMMs stay plain: no scales, no port, the
  exact product; the others' are FP8 (visibly rounded)."""
  cls = dot.dot_general_cls(dot.Recipe(fp8_wgrad=True, high_precision=("last",)))

  class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.Dense(16, use_bias=False, dot_general_cls=cls, name="first")(x)
      return nn.Dense(8, use_bias=False, dot_general_cls=cls, name="last")(h)

  x = jax.random.normal(jax.random.key(0), (4, 32))
  variables = Two().init(jax.random.key(1), x)
  assert set(variables[dot.GRADS]) == {"first"} and set(variables[dot.COLLECTION]) == {"first"}
  _, inter = Two().apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  h = np.asarray(inter["intermediates"]["first"]["__call__"][0])
  y = np.asarray(inter["intermediates"]["last"]["__call__"][0])
  w1, w2 = (np.asarray(variables["params"][n]["kernel"]) for n in ("first", "last"))
  np.testing.assert_allclose(y, h @ w2, rtol=1e-5, atol=1e-6)            # plain FP32 GEMM
  assert np.max(np.abs(h - np.asarray(x) @ w1)) > 1e-3 * np.max(np.abs(h))  # E4M3 operands
  with pytest.raises(ValueError, match="module names"):
    dot.Recipe(high_precision=(3,))
