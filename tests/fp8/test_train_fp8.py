"""FP8 levels through the LM trainer on 8 simulated devices: an O2 run with the FP8
all-reduce resumes bit-exactly with every piece of FP8 state, and its compiled step moves
gradients as 8-bit data."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import config as config_lib, sharding
from jaxlab.fp8 import comm, formats
from jaxlab.train import loop
from jaxlab.trainers import lm

QUICKSTART = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "quickstart.py")


def toy(tmp_path, *overrides):
  return config_lib.load(QUICKSTART + ":toy", [f"data.data_dir={tmp_path / 'data'}", "train.steps=6",
                                               "train.checkpoint_every=3", "train.eval_every=0",
                                               "train.eval_batches=1", *overrides])


O2_COMM = ("fp8.level=O2", "fp8.comm=True", "fp8.history=4")


def _o2_task_and_step(mesh):
  """A small GPT under O2 with delayed scaling and the FP8 all-reduce, as the trainer wires it."""
  import ml_collections
  import optax
  from jaxlab import fp8
  from jaxlab.models import gpt
  from jaxlab.train.state import Task, init_state, make_train_step

  f = ml_collections.ConfigDict(fp8.default_config())
  f.update(level="O2", comm=True, history=4)
  model = gpt.GPT(gpt.GPTConfig(vocab_size=64, max_len=16, num_layers=2, d_model=32, num_heads=2),
                  dot_general_cls=fp8.dot_general_for(f))

  def loss(model, variables, batch, rng):
    logits, updates = model.apply(variables, batch["inputs"], mutable=["fp8_meta"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()
    return nll, ({}, updates)
  tx = fp8.fp8_optim.optimizer(fp8.fp8_optim.LEVELS["O2"], optax.constant_schedule(3e-3),
                               ml_collections.ConfigDict(dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                                                              grad_clip=1.0)))
  task = Task(model=model, init=lambda m, r: m.init(r, jnp.zeros((1, 16), jnp.int32)), loss=loss, optimizer=tx,
              units_per_batch=("tokens", 1), **fp8.task_options(f))
  with jax.set_mesh(mesh):
    state = jax.jit(lambda r: init_state(task, r))(jax.random.key(0))
    step = jax.jit(make_train_step(task))
  return state, step


def _batch(i):
  tokens = jax.random.randint(jax.random.key(100 + i), (8, 17), 0, 64)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}


def _assert_bitwise_equal(a, b):
  flat_a, tree_a = jax.tree.flatten(jax.device_get(a))
  flat_b, tree_b = jax.tree.flatten(jax.device_get(b))
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.atleast_1d(np.asarray(x)).view(np.uint8),
                                  np.atleast_1d(np.asarray(y)).view(np.uint8))


@pytest.mark.slow  # one of make test's longest; CI's make slow runs it
def test_mid_training_o2_checkpoint_round_trip_is_bit_exact(tmp_path):
  from jaxlab import checkpoint, sharding
  mesh = sharding.make_mesh((("data", 8),))
  state, step = _o2_task_and_step(mesh)
  with jax.set_mesh(mesh):
    for i in range(3):
      state, _ = step(state, _batch(i), jax.random.key(1))
    mngr = checkpoint.manager(str(tmp_path / "ckpt"))
    checkpoint.save(mngr, 3, state)
    mngr.wait_until_finished()
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored_step, restored = checkpoint.restore_latest(checkpoint.manager(str(tmp_path / "ckpt")), abstract)
  assert restored_step == 3

  fc = restored.params["decoder"]["layers"]["block"]["mlp"]["fc"]
  assert isinstance(fc["kernel"], formats.ScaledTensor) and fc["kernel"].dtype == jnp.float16
  adam = restored.opt_state[1]
  assert adam.mu["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"].dtype == formats.E4M3
  assert adam.nu["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"].dtype == jnp.float16
  hist = restored.model_state["fp8_meta"]["decoder"]["layers"]["block"]["mlp"]["fc"]["Fp8DotGeneral_0"]
  assert hist["grad_amax_history"].shape == (2, 4) and bool(jnp.all(hist["grad_amax_history"][:, :3] > 0))
  assert float(restored.sync_state["factor"]) < 1.0  # 8 shards: the automatic scale backed off
  _assert_bitwise_equal(restored, state)

  # Both continue identically.
  with jax.set_mesh(mesh):
    a, b = restored, state
    for i in range(3, 5):
      a, ma = step(a, _batch(i), jax.random.key(1))
      b, mb = step(b, _batch(i), jax.random.key(1))
  _assert_bitwise_equal(a, b)
  assert float(ma["loss"]) == float(mb["loss"])


def _compiled_step(tmp_path, *overrides):
  (stage,) = lm.stages(toy(tmp_path, *overrides))
  out = loop.compile_step(stage.task, stage.options, sharding.make_mesh(stage.options.mesh), stage.batch)
  return comm.collectives(out.compiled.as_text())


@pytest.mark.slow
def test_compiled_step_moves_gradients_as_8bit_data(tmp_path):
  n = 8
  fp8_ops = _compiled_step(tmp_path, *O2_COMM)
  big = [o for o in fp8_ops if o[2] >= 1024]
  assert big and all(dtype == "u8" for _, dtype, _ in big), fp8_ops
  baseline = _compiled_step(tmp_path, "fp8.level=none")
  assert any(op == "all-reduce" and count >= 1024 for op, _, count in baseline), baseline
  fp8_bytes = sum(comm.wire_bytes(*o, n=n) for o in fp8_ops)
  bf16_bytes = sum(comm.wire_bytes(*o, n=n, as_dtype="bf16") for o in baseline)
  # Matrices move 1 byte an element each way instead of BF16's 2; FP32 vectors and scalars
  # remain (measured on this toy GPT: 0.61 of the baseline's bytes).
  assert fp8_bytes < 0.7 * bf16_bytes, (fp8_bytes, bf16_bytes)


@pytest.mark.slow
def test_vit_trains_under_o2_through_the_same_trainer_options(tmp_path):
  """The classify trainer takes the same fp8 config: the ViT's GEMMs run in FP8, its
  weights and moments sit in O2's formats, and it learns digits."""
  from jaxlab.trainers import classify
  spec = str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "learngene" / "vit.py") + ":scratch"
  cfg = config_lib.load(spec, ["fp8.level=O2", "fp8.scaling=current", "model.num_layers=2", "model.d_model=32",
                               "train.steps=40", "train.batch_size=32", "train.eval_every=0", "train.log_every=20",
                               "train.checkpoint_every=40", "optim.learning_rate=3e-3", "optim.warmup_steps=5",
                               f"data.data_dir={tmp_path / 'data'}"])
  summary = classify.train_and_evaluate(cfg, str(tmp_path / "vit"))
  head = summary.params["head"]["kernel"]
  assert isinstance(head, formats.ScaledTensor) and head.dtype == jnp.float16
  assert summary.metrics["accuracy"] > 0.2  # 10 classes: chance is 0.1 (40 steps of a 2-layer ViT)


@pytest.mark.parametrize("level", ["none", "O3"])
def test_levels_with_master_weights_save_and_restore(tmp_path, level):
  """Every array of a none/O3 optimizer state (FP16 or FP32 masters, placeholders for
  vectors) goes through orbax in its own dtype."""
  import optax
  from jaxlab import checkpoint
  from jaxlab.fp8 import optim as fo
  params = {"layers": {"fc": {"kernel": jnp.ones((2, 4, 8)) * 0.02, "bias": jnp.zeros((2, 8))}}}
  prec, tx = fo.precision(fo.LEVELS[level]), fo.scaled_adamw(fo.LEVELS[level], optax.constant_schedule(1e-3))
  stored = prec.store(params)
  state = {"params": stored, "opt": tx.init(stored)}
  mngr = checkpoint.manager(str(tmp_path / "ckpt"))
  checkpoint.save(mngr, 1, state)
  mngr.wait_until_finished()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  _, restored = checkpoint.restore_latest(checkpoint.manager(str(tmp_path / "ckpt")), abstract)
  _assert_bitwise_equal(restored, state)


def _sharded_o3(tmp_path, layout: str, data: int):
  cfg = toy(tmp_path, "fp8.level=O3", f"sharding.layout={layout}", f'mesh=(("data", {data}), ("model", 1))',
            "tokenizer.path=")
  (stage,) = lm.stages(cfg)
  mesh = sharding.make_mesh(stage.options.mesh, jax.devices()[:data])
  return stage, mesh, loop.compile_step(stage.task, stage.options, mesh, stage.batch)


@pytest.mark.slow  # make test's longest (~80 s on 2 cores); CI's make slow runs it
def test_o3_fsdp_splits_fp8_weights_master_and_moments_over_the_data_axis(tmp_path):
  """FP8-LM's O3 shards the FP8 weights, the FP16 master weights and the moments across the
  data ranks. Under `sharding.layout=fsdp` every matrix's stored data (weight, master, m, v:
  ".../kernel/data") is split 8 ways while its per-layer scales stay whole, the compiled step
  takes them so, and one step gives the single-device step's loss and weights (to one E4M3
  rounding where a sharded reduction order flips one)."""
  stage, mesh, out = _sharded_o3(tmp_path, "fsdp", 8)
  specs = {sharding.path_name(p): s.spec for p, s in jax.tree_util.tree_leaves_with_path(out.setup.state_shardings)}
  fc = "decoder/layers/block/mlp/fc/kernel"
  for prefix in ("params/", "opt_state/1/mu/", "opt_state/1/nu/", "opt_state/1/master/"):
    assert specs[prefix + fc + "/data"] == jax.sharding.PartitionSpec(None, "data", None), prefix
    assert specs[prefix + fc + "/scale"] == jax.sharding.PartitionSpec(), prefix
  assert specs["params/wte/embedding/data"] == jax.sharding.PartitionSpec(None, "data")
  # the compiled step holds 1/8 of each matrix per device: its arguments shrink ~8x
  _, _, single = _sharded_o3(tmp_path, "dp", 1)
  per_device = out.compiled.memory_analysis().argument_size_in_bytes
  whole = single.compiled.memory_analysis().argument_size_in_bytes
  assert per_device < 0.2 * whole, (per_device, whole)

  rs = np.random.RandomState(0)
  tokens = rs.randint(0, 512, (8, 33))
  batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": np.ones((8, 32), np.float32)}
  batch = {k: jnp.asarray(v, stage.batch[k].dtype) for k, v in batch.items()}

  def one_step(o, m):
    with jax.set_mesh(m):
      state = jax.jit(o.setup.init_fn, out_shardings=o.setup.state_shardings)(jax.random.key(0))
      return o.setup.first_step(state, jax.device_put(batch, o.setup.data_sharding), jax.random.key(1))

  sharded, m_sh = one_step(out, mesh)
  ref, m_ref = one_step(single, sharding.make_mesh((("data", 1), ("model", 1)), jax.devices()[:1]))
  assert sharded.params["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"].data.sharding.spec == \
      jax.sharding.PartitionSpec(None, "data", None)
  np.testing.assert_allclose(float(m_sh["loss"]), float(m_ref["loss"]), rtol=1e-5)
  flat = dict(jax.tree_util.tree_leaves_with_path(sharded.params, is_leaf=formats.is_scaled))
  for path, w in jax.tree_util.tree_leaves_with_path(ref.params, is_leaf=formats.is_scaled):
    if not formats.is_scaled(w):
      continue
    a, b = np.asarray(flat[path].dequantize()), np.asarray(w.dequantize())
    assert np.mean(a == b) > 0.99, jax.tree_util.keystr(path)
    np.testing.assert_allclose(a, b, rtol=2 ** -3, atol=1e-3 * np.abs(b).max(), err_msg=jax.tree_util.keystr(path))
