"""Levels, the scaled AdamW and memory accounting from a real GPT train state."""
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxlab import fp8
from jaxlab.fp8 import formats, memory, optim as fo
from jaxlab.models import gpt
from jaxlab.train import optim as train_optim
from jaxlab.train.state import Task, init_state

OPTIM = ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=0.0))


def _params():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  return {"decoder": {"layers": {"block": {"mlp": {"fc": {"kernel": jax.random.normal(k1, (2, 8, 16)) * 0.02,
                                                           "bias": jax.random.normal(k3, (2, 16)) * 0.01}}}}},
          "wte": {"embedding": jax.random.normal(k2, (12, 8)) * 0.02}}


def test_scaled_adamw_in_fp32_formats_equals_optax_adamw():
  f32 = fo.Level(gemm_fp8=False, weight=jnp.float32, grad=jnp.float32, master=None, m=jnp.float32, v=jnp.float32)
  params = _params()
  ours, ref = fo.scaled_adamw(f32, 1e-2, 0.9, 0.95, 1e-8, 0.1), optax.adamw(1e-2, 0.9, 0.95, 1e-8, weight_decay=0.1,
                                                                             mask=fp8_decay_mask)
  s_ours, s_ref, p_ref = ours.init(params), ref.init(params), params
  p_ours = params
  for i in range(3):
    g = jax.tree.map(lambda p: jnp.sin(p * 100 + i), params)
    u_ours, s_ours = ours.update(g, s_ours, p_ours)
    u, s_ref = ref.update(g, s_ref, p_ref)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9), u_ours, u)  # updates, as optax
    p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p_ours, p_ref)


F32_LEVEL = fo.Level(gemm_fp8=False, weight=jnp.float32, grad=jnp.float32, master=None, m=jnp.float32, v=jnp.float32)


def test_scaled_adamw_accumulates_under_optax_multisteps_as_optax_adamw_does():
  params = _params()
  ours = optax.MultiSteps(fo.scaled_adamw(F32_LEVEL, 1e-2, 0.9, 0.95, 1e-8, 0.1), every_k_schedule=2)
  ref = optax.MultiSteps(optax.adamw(1e-2, 0.9, 0.95, 1e-8, weight_decay=0.1, mask=fp8_decay_mask), every_k_schedule=2)
  s_ours, s_ref, p_ours, p_ref = ours.init(params), ref.init(params), params, params
  for i in range(6):
    g = jax.tree.map(lambda p: jnp.sin(p * 100 + i), params)
    u_ours, s_ours = ours.update(g, s_ours, p_ours)
    u_ref, s_ref = ref.update(g, s_ref, p_ref)
    p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, u_ref)
    if i % 2 == 0:  # a microstep: nothing moves yet
      jax.tree.map(lambda u: np.testing.assert_array_equal(u, 0), u_ours)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p_ours, p_ref)
  assert int(s_ours.inner_opt_state.count) == 3


def _kernel(tree):
  return tree["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"]


def test_o3_first_step_stores_master_minus_lr_sign_g_rounded_once():
  """Adam's first step is lr * g / (|g| + eps): with eps tiny, w' = w - lr * sign(g). At O3 the
  master copy (FP16 of the unrounded initial weights) moves by it and the FP8 weight is that
  value rounded once; worked without the optimizer's code."""
  params, lvl, lr = _params(), fo.LEVELS["O3"], 1e-3
  prec, tx = fo.precision(lvl), fo.scaled_adamw(lvl, lr, 0.9, 0.95, eps=1e-12)
  stored, state = prec.store(params), tx.init(params)
  g = jax.tree.map(lambda p: jnp.cos(p * 50 + 1), params)
  updates, state = tx.update(g, state, prec.values(stored))
  new = prec.apply(stored, updates)
  w0 = np.asarray(_kernel(params), np.float32)
  master = w0 - lr * np.sign(np.asarray(_kernel(g)))
  got_master = np.asarray(_kernel(state.master).dequantize())
  # Two FP16 roundings (the initial copy, the step's result): 2^-11 relative each.
  assert np.all(np.abs(got_master - master) <= 2 ** -10 * (np.abs(w0) + lr))
  got = _kernel(new)
  assert got.dtype == formats.E4M3 and got.data.dtype == jnp.uint8  # kept as its bytes
  # The FP8 weight is the master rounded once (not w + u in FP8 arithmetic) ...
  once = fo.encode(jnp.asarray(got_master), formats.E4M3, "decoder/layers/block/mlp/fc/kernel")
  np.testing.assert_array_equal(np.asarray(got.values, np.float32), np.asarray(once.values, np.float32))
  # ... and within E4M3's rounding (2^-4 relative) of the hand-worked value.
  floor = float(np.max(np.asarray(got.scale))) * 2 ** -9
  np.testing.assert_allclose(np.asarray(got.dequantize()), master, rtol=2 ** -4, atol=floor)
  bias = params["decoder"]["layers"]["block"]["mlp"]["fc"]["bias"]
  gb = g["decoder"]["layers"]["block"]["mlp"]["fc"]["bias"]
  np.testing.assert_allclose(new["decoder"]["layers"]["block"]["mlp"]["fc"]["bias"],
                             np.asarray(bias) - lr * np.sign(np.asarray(gb)), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("level", ["O1", "O3"])
@pytest.mark.parametrize("master", ["fp16", "fp32"])
def test_fp32_master_keeps_an_update_below_half_an_fp16_ulp_that_fp16_drops(level, master):
  """Adam's first step moves each weight by lr * sign(g) (eps tiny). With weights in [0.5, 1)
  and lr = 2^-14, under half an FP16 ulp of every weight (2^-12 of it at least), FP8-LM's
  FP16 master weights (O1's weights themselves, O3's separate copy) keep every FP16 code
  (only the per-tensor scale follows the amax), and `fp8.master=fp32` moves every weight by
  the step, to FP32's rounding."""
  f = ml_collections.ConfigDict(dict(fp8.default_config(), level=level, master=master))
  lvl, lr = fp8.level_of(f), 2.0 ** -14
  w0 = jax.random.uniform(jax.random.key(3), (2, 8, 16), minval=0.5, maxval=1.0)
  params = {"decoder": {"layers": {"block": {"mlp": {"fc": {"kernel": w0}}}}}}
  prec, tx = fo.precision(lvl), fo.scaled_adamw(lvl, lr, 0.9, 0.95, eps=1e-12)
  stored, state0 = prec.store(params), tx.init(params)
  g = jax.tree.map(lambda p: jnp.cos(p * 50 + 1), params)
  updates, state = tx.update(g, state0, prec.values(stored))
  # the master copy: O1's stored weights, O3's optimizer state
  master_of = (lambda st, s: _kernel(st)) if level == "O1" else (lambda st, s: _kernel(s.master))
  before, after = master_of(stored, state0), master_of(prec.apply(stored, updates), state)
  if master == "fp16":
    assert after.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(after.data), np.asarray(before.data))  # every update dropped
  else:
    assert after.dtype == jnp.float32
    step = -lr * np.sign(np.asarray(_kernel(g)))
    np.testing.assert_allclose(np.asarray(after) - np.asarray(before), step, rtol=0, atol=2 ** -24)  # every one kept


def test_o2_optimizer_under_apply_if_finite_skips_a_nonfinite_step_and_keeps_its_state():
  params, lvl = _params(), fo.LEVELS["O2"]
  prec = fo.precision(lvl)
  tx = optax.apply_if_finite(fo.scaled_adamw(lvl, 1e-3, 0.9, 0.95), max_consecutive_errors=3)
  stored, state = prec.store(params), tx.init(params)
  g = jax.tree.map(lambda p: jnp.cos(p * 50), params)
  bad = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), g)
  updates, state_after_bad = jax.jit(tx.update)(bad, state, prec.values(stored))
  skipped = prec.apply(stored, updates)
  assert int(state_after_bad.notfinite_count) == 1 and int(state_after_bad.inner_state.count) == 0
  # Nothing moved: every stored byte (FP16 weights with their scales, FP32 vectors) is as it was.
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), skipped, stored)
  # The following finite step is the plain optimizer's first step.
  u1, s1 = tx.update(g, state_after_bad, prec.values(skipped))
  u2, _ = fo.scaled_adamw(lvl, 1e-3, 0.9, 0.95).update(g, fo.scaled_adamw(lvl, 1e-3).init(params), prec.values(stored))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), u1, u2)
  assert int(s1.inner_state.count) == 1


def fp8_decay_mask(params):
  from jaxlab.train.optim import decay_mask
  return decay_mask(params)


def test_o2_moments_are_fp8_and_fp16_with_per_tensor_scales():
  params = _params()
  lvl = fo.LEVELS["O2"]
  prec, tx = fo.precision(lvl), fo.scaled_adamw(lvl, 1e-3, 0.9, 0.95)
  stored = prec.store(params)
  state = tx.init(stored)
  g = jax.tree.map(lambda p: jnp.cos(p * 50) * 1e-3, params)
  _, state = tx.update(g, state, prec.values(stored))
  m = state.mu["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"]
  v = state.nu["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"]
  assert m.dtype == formats.E4M3 and v.dtype == jnp.float16 and m.scale.shape == (2, 1, 1)
  gk = np.asarray(g["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"])
  # After one step m = 0.1 g and v = 0.05 g^2, each within its format's rounding (E4M3: 2^-4,
  # FP16: 2^-11 relative) above the per-tensor scale's subnormal floor.
  np.testing.assert_allclose(m.dequantize(), 0.1 * gk, rtol=2 ** -4, atol=float(np.max(np.asarray(m.scale))) * 2 ** -9)
  np.testing.assert_allclose(v.dequantize(), 0.05 * gk ** 2, rtol=2 ** -10, atol=float(np.max(np.asarray(v.scale))) * 2 ** -24)
  assert state.mu["decoder"]["layers"]["block"]["mlp"]["fc"]["bias"].dtype == jnp.float32  # vectors stay FP32


def test_fp8_apply_refuses_to_undo_what_an_earlier_transformation_set():
  """fp8.apply sets the step's formats and optimizer step outright: on a task where a method
  before it already set them it raises, naming the fields, instead of silently dropping them."""
  cfg = ml_collections.ConfigDict({"fp8": fp8.default_config(), "optim": dict(OPTIM), "train": {"steps": 10}})
  cfg.fp8.level = "O2"
  cfg.optim.learning_rate, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = 1e-3, 1, 0.1
  plain = gpt.GPT(gpt.GPTConfig(vocab_size=64, max_len=8, num_layers=1, d_model=32, num_heads=2, mlp_dim=64))
  task = Task(model=plain, init=lambda m, r: m.init(r, jnp.zeros((1, 8), jnp.int32)), loss=None,
              optimizer=train_optim.adamw(cfg.optim, 10), schedule=optax.constant_schedule(1e-3))
  assert fp8.apply(cfg, task).optimizer_step is not None  # a plain task: fp8 sets it

  def mine(grads, opt_state, stored):  # another method's update
    return stored, opt_state, 0.0

  with pytest.raises(ValueError, match=r"Task\.optimizer_step outright"):
    fp8.apply(cfg, task.replace(optimizer_step=mine))
  with pytest.raises(ValueError, match=r"Task\.observed, Task\.after_first_step outright"):
    fp8.apply(cfg, task.replace(observed={"stats": max}, after_first_step=lambda t: t))
  cfg.fp8.level = "fp32"  # fp32 leaves the task as it is
  assert fp8.apply(cfg, task.replace(optimizer_step=mine)).optimizer_step is mine


@pytest.mark.parametrize("level,expected", [("fp32", 16), ("none", 16), ("O1", 11), ("O2", 6), ("O3", 7),
                                            ("O1+fp32", 13), ("O2+fp32", 8), ("O3+fp32", 9)])  # fp8.master=fp32: +2
def test_bytes_per_parameter_of_a_real_gpt_train_state(level, expected):
  cfg = ml_collections.ConfigDict({"fp8": fp8.default_config(), "optim": dict(OPTIM), "train": {"steps": 10}})
  level, _, master = level.partition("+")
  cfg.fp8.level, cfg.fp8.master = level, master or "fp16"
  cfg.optim.learning_rate, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = 1e-3, 1, 0.1
  plain = gpt.GPT(gpt.GPTConfig(vocab_size=1024, max_len=32, num_layers=2, d_model=128, num_heads=4, mlp_dim=512))
  task = Task(model=plain, init=lambda m, r: m.init(r, jnp.zeros((1, 8), jnp.int32)), loss=None,
              optimizer=train_optim.adamw(cfg.optim, 10), schedule=optax.constant_schedule(1e-3))
  task = fp8.apply(cfg, task)  # the method's one transformation, as every trainer applies it
  model = task.model
  state = jax.jit(functools.partial(init_state, task))(jax.random.key(0))  # real arrays
  report = memory.account(state, task.precision)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))  # the model's own parameter count
  assert report["params"] == sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert abs(report["total"] - expected) < 0.1, report
  assert report["scales"] < 0.01, report  # overhead, reported apart
  if level == "O3":
    assert report["weights"] == pytest.approx(1, abs=0.03)
    assert report["master"] == pytest.approx(4 if master else 2, abs=0.03)
