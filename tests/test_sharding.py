"""Sharded training steps equal the single-device step; sharding mistakes are clear errors."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp
import flax.linen as nn
import ml_collections
import optax

from jaxlab import sharding
from jaxlab.models import gpt
from jaxlab.train import optim
from jaxlab.train.state import Task, init_state, make_train_step

CFG = gpt.GPTConfig(vocab_size=64, max_len=16, num_layers=2, d_model=32, num_heads=4, tied_embeddings=False)
OPTIM = ml_collections.ConfigDict(dict(learning_rate=1e-2, warmup_steps=0, min_lr_ratio=0.1, weight_decay=0.1,
                                       b1=0.9, b2=0.95, eps=1e-8, grad_clip=1.0))


def make_task():
  model = gpt.GPT(CFG)

  def loss(model, variables, batch, rng):
    logits = model.apply(variables, batch["inputs"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return jnp.mean(nll), ({}, {})

  return Task(model=model, init=lambda model, rng: model.init(rng, jnp.zeros((1, 16), jnp.int32)), loss=loss,
              optimizer=optim.adamw(OPTIM, 10))


def run_steps(mesh, layout, steps=2):
  task = make_task()
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(0, 64, (8, 16)).astype(np.int32),
           "targets": rng.integers(0, 64, (8, 16)).astype(np.int32)}
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.activation_rules(layout)):
    state, state_sh = sharding.create_sharded(lambda r: init_state(task, r), mesh,
                                              sharding.layout_rules(layout), jax.random.key(0))
    data_sh = sharding.batch_sharding(mesh)
    step = jax.jit(make_train_step(task), in_shardings=(state_sh, data_sh, None),
                   out_shardings=(state_sh, None), donate_argnums=0)
    losses = []
    for _ in range(steps):
      state, metrics = step(state, sharding.global_batch(batch, data_sh), jax.random.key(1))
      losses.append(float(metrics["loss"]))
  return state, losses, state_sh


@pytest.fixture(scope="module")
def reference():
  return run_steps(sharding.make_mesh([("data", 1), ("model", 1)], jax.devices()[:1]), "dp")


# fp32 throughout; sharded runs differ only by the summation order of partial matmuls and
# all-reduces (a few ulps). Losses agree to 1e-5 relative. Parameters: Adam divides by
# sqrt(v), so where a gradient element is tiny an ulp-level difference can move its
# update by a fair part of lr; atol 2e-5 = lr / 500 still catches any real sharding bug,
# which changes updates by O(lr).
@pytest.mark.parametrize("axes,layout", [
    ([("data", 4), ("model", 2)], "tp"),
    ([("data", 8), ("model", 1)], "fsdp"),
    ([("data", 2), ("model", 4)], "fsdp_tp"),
    ([("data", -1), ("model", 1)], "dp"),
])
def test_sharded_step_matches_single_device(reference, axes, layout):
  ref_state, ref_losses, _ = reference
  state, losses, state_sh = run_steps(sharding.make_mesh(axes), layout)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  flat_ref = jax.tree_util.tree_leaves_with_path(ref_state.params)
  flat = dict(jax.tree_util.tree_leaves_with_path(state.params))
  for path, ref in flat_ref:
    name = sharding.path_name(path)
    if name.endswith("key/bias"):
      # Its true gradient is exactly zero (softmax is shift-invariant per query), so Adam
      # only amplifies rounding noise: check it stays negligible instead of comparing noise.
      assert np.max(np.abs(np.asarray(flat[path]))) < 1e-4
      continue
    np.testing.assert_allclose(np.asarray(flat[path]), np.asarray(ref), rtol=1e-5, atol=2e-5,
                               err_msg=name)
  # the layout really is applied: a column-parallel kernel is split as the rules say
  qkv = state.params["decoder"]["layers"]["block"]["attn"]["query"]["kernel"]
  expected = {"tp": (2, 32, 16), "fsdp": (2, 4, 32), "fsdp_tp": (2, 16, 8), "dp": (2, 32, 32)}[layout]
  assert qkv.addressable_shards[0].data.shape == expected
  # and so is the optimizer state, through the same rules
  mu = state.opt_state[1][0].mu["decoder"]["layers"]["block"]["attn"]["query"]["kernel"]
  assert mu.sharding == qkv.sharding


def test_unmatched_parameter_is_an_error():
  mesh = sharding.make_mesh([("data", -1)])
  tree = {"params": {"wte": {"embedding": jnp.zeros((8, 4))}, "odd": {"thing": jnp.zeros(3)}}}
  with pytest.raises(sharding.ShardingError, match=r"no partition rule matches 'params/odd/thing'"):
    sharding.tree_shardings(tree, mesh, [(r"wte/embedding$", ("data", None))])


def test_indivisible_dimension_names_the_parameter():
  mesh = sharding.make_mesh([("data", 8)])
  with pytest.raises(sharding.ShardingError, match=r"params/w with shape \(6, 4\).*not divisible by 8"):
    sharding.tree_shardings({"params": {"w": jnp.zeros((6, 4))}}, mesh, [(r".*", ("data",))])


def test_unknown_mesh_axis_in_rule():
  mesh = sharding.make_mesh([("data", 8)])
  with pytest.raises(sharding.ShardingError, match="mesh axis 'model'"):
    sharding.tree_shardings({"w": jnp.zeros((8, 8))}, mesh, [(r".*", (None, "model"))])


def test_mesh_device_mismatch():
  with pytest.raises(sharding.ShardingError, match=r"needs 6 devices but 8 are available"):
    sharding.make_mesh([("data", 3), ("model", 2)])
  with pytest.raises(sharding.ShardingError, match="not divisible"):
    sharding.make_mesh([("data", -1), ("model", 3)])
  with pytest.raises(sharding.ShardingError, match="at most one axis may be -1"):
    sharding.make_mesh([("data", -1), ("model", -1)])


def test_unknown_layout():
  with pytest.raises(sharding.ShardingError, match="sharding.layout='zeta'"):
    sharding.layout_rules("zeta")
