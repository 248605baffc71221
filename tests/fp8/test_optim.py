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
    p_ours, s_ours = ours.update(g, s_ours, p_ours)
    u, s_ref = ref.update(g, s_ref, p_ref)
    p_ref = optax.apply_updates(p_ref, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), p_ours, p_ref)


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
  _, state = tx.update(g, state, prec.view(stored))
  m = state.mu["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"]
  v = state.nu["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"]
  assert m.data.dtype == formats.E4M3 and v.data.dtype == jnp.float16 and m.scale.shape == (2, 1, 1)
  gk = np.asarray(g["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"])
  # After one step m = 0.1 g and v = 0.05 g^2, each within its format's rounding (E4M3: 2^-4,
  # FP16: 2^-11 relative) above the per-tensor scale's subnormal floor.
  np.testing.assert_allclose(m.dequantize(), 0.1 * gk, rtol=2 ** -4, atol=float(np.max(np.asarray(m.scale))) * 2 ** -9)
  np.testing.assert_allclose(v.dequantize(), 0.05 * gk ** 2, rtol=2 ** -10, atol=float(np.max(np.asarray(v.scale))) * 2 ** -24)
  assert state.mu["decoder"]["layers"]["block"]["mlp"]["fc"]["bias"].dtype == jnp.float32  # vectors stay FP32


@pytest.mark.parametrize("level,expected", [("fp32", 16), ("none", 16), ("O1", 11), ("O2", 6), ("O3", 7)])
def test_bytes_per_parameter_of_a_real_gpt_train_state(level, expected):
  cfg = ml_collections.ConfigDict({"fp8": fp8.default_config(), "optim": dict(OPTIM), "train": {"steps": 10}})
  cfg.fp8.level = level
  cfg.optim.learning_rate, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio = 1e-3, 1, 0.1
  plain = gpt.GPT(gpt.GPTConfig(vocab_size=1024, max_len=32, num_layers=2, d_model=128, num_heads=4, mlp_dim=512))
  task = Task(model=plain, init=lambda m, r: m.init(r, jnp.zeros((1, 8), jnp.int32)), loss=None,
              optimizer=train_optim.adamw(cfg.optim, 10), schedule=optax.constant_schedule(1e-3))
  task = fp8.apply(cfg, task)  # the method's one transformation, as every trainer applies it
  model = task.model
  state = jax.jit(functools.partial(init_state, task))(jax.random.key(0))  # real arrays
  report = memory.account(state, task.precision)
  assert report["params"] == sum(x.size for x in jax.tree.leaves(model.init(jax.random.key(0),
                                                                               jnp.zeros((1, 8), jnp.int32))["params"]))
  assert abs(report["total"] - expected) < 0.1, report
  assert report["scales"] < 0.01, report  # overhead, reported apart
  if level == "O3":
    assert report["weights"] == pytest.approx(1, abs=0.03) and report["master"] == pytest.approx(2, abs=0.03)
