"""FP8-LM's levels in the alignment trainer's DPO fine-tuning stage (fp8.level): the stage's
lowered train step has its GEMMs in FP8 form, the same count as flax's fp8_ops, and the
fine-tuned parameters come back as plain FP32 for evaluation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import config as config_lib, sharding
from jaxlab.fp8 import formats, hlo
from jaxlab.sharding import path_name
from jaxlab.train import loop
from jaxlab.trainers import align

CONFIG = "configs/align/testbed.py:tiny"


ALL_FP8 = "fp8.high_precision=()"  # every GEMM in FP8, the towers' ends too (default: BF16)


def _projections(low) -> int:
  meta = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(low.setup.abstract_state.model_state)]
  return sum(p.endswith("input_amax_history") for p in meta)  # one scale state per FP8 projection


def _finetune(level: str, *overrides):
  # the small trainable text tower, so that both towers have FP8 projections
  cfg = config_lib.load(CONFIG, [f"fp8.level={level}", 'mesh=(("data", 1), ("model", 1))', "model.text_tower=words",
                                 *overrides])
  stage = next(s for s in align.stages(cfg) if s.name == "finetune")
  low = loop.lower_step(stage.task, stage.options, sharding.make_mesh(stage.options.mesh, jax.devices()[:1]),
                        stage.batch)
  return stage, low, hlo.fp8_dots(low.lowered.as_text(dialect="hlo"))


def test_dpo_finetuning_runs_its_gemms_in_fp8_at_o2():
  stage, low, report = _finetune("O2", ALL_FP8)
  projections = _projections(low)
  assert projections >= 8  # patch embedding, both towers' attention and MLP, both projections
  assert not report.blocked, report.summary()
  # Forward, dgrad and wgrad each, but the patch embedding's input is the image: no dgrad.
  assert len(report.fp8) == 3 * projections - 1, report.summary()
  _, _, flax_report = _finetune("flax")
  assert len(flax_report.fp8) == len(report.fp8), (flax_report.summary(), report.summary())
  # The trainer's default keeps the towers' first and last GEMMs (patch embedding, the two
  # projections) in BF16: three fewer FP8 projections, three dots each but the patch's two.
  _, low, default = _finetune("O2")
  assert _projections(low) == projections - 3 and not default.blocked, default.summary()
  assert len(default.fp8) == len(report.fp8) - 8, default.summary()
  # The other stages are untouched by fp8.level.
  pre = next(s for s in align.stages(config_lib.load(CONFIG, ["fp8.level=O2"])) if s.name == "pretrain")
  assert pre.task.model.dot_general_cls is None


def test_o3_dpo_step_lowers_with_stored_kernels_in_a_model_whose_dense_layers_promote():
  """The two-tower's projections are Dense layers without a dtype, which promote their
  kernel with their inputs: O3's E4M3 values must reach them in a type that promotes."""
  stage, low, report = _finetune("O3", ALL_FP8)
  assert not report.blocked and len(report.fp8) > 0, report.summary()


def test_bad_fp8_level_fails_before_work_naming_the_key(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="fp8.level"):
    align.train_and_evaluate(config_lib.load(CONFIG, ["fp8.level=O4"]), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_plain_decodes_stored_and_restored_scaled_tensors():
  w = jnp.linspace(-0.3, 0.5, 24).reshape(4, 6)
  stored = formats.to_scaled(w, jnp.float16)
  restored = {"data": np.asarray(stored.data), "scale": np.asarray(stored.scale)}  # as restore_params gives it
  out = formats.plain({"a": stored, "b": restored, "c": jnp.ones(3, jnp.bfloat16), "n": jnp.arange(3)})
  for k in ("a", "b"):
    assert out[k].dtype == jnp.float32
    np.testing.assert_allclose(out[k], w, rtol=2 ** -11, atol=1e-7)  # FP16's rounding
  assert out["c"].dtype == jnp.float32 and out["n"].dtype == jnp.int32


@pytest.mark.slow  # an FP8 fine-tuning stage end to end (~1 min on 2 cores): `make slow`
def test_dpo_reference_is_the_initial_policy_under_the_stages_forward():
  """reference_log_probs runs the stage's own model (FP8 GEMMs at O2) at its initial
  variables, so the first preference loss is log 2 (DPO's reference = the initial policy)
  up to what per-tensor scaling couples across a batch: the policy's step quantizes the
  candidates together with the contrastive images, the reference without them. Measured:
  5e-4 from log 2, against 3.7e-3 with the plain model's log-probs (what mining stores)."""
  from jaxlab.align import preferences as pref_lib
  stages = {lvl: next(s for s in align.stages(config_lib.load(CONFIG, [f"fp8.level={lvl}", "model.text_tower=words"]))
                      if s.name == "finetune") for lvl in ("O2", "fp32")}
  spec = stages["O2"].batch
  rng = np.random.default_rng(0)
  batch = {}
  for k, v in spec.items():
    if k.endswith("tokens"):
      batch[k] = rng.integers(3, 40, v.shape).astype(v.dtype)
    elif k.endswith("mask"):
      batch[k] = np.ones(v.shape, v.dtype)
    else:
      batch[k] = rng.uniform(0, 1, v.shape).astype(v.dtype)
  cfg = config_lib.load(CONFIG, [])
  pairs = pref_lib.grid_pairs(cfg.preferences.u, cfg.preferences.v, cfg.preferences.order)
  batch["pairs"] = np.broadcast_to(np.asarray(pairs, np.int32), spec["pairs"].shape).copy()
  b = spec["q_tokens"].shape[0]

  def first_loss(level, ref_level):
    task, ref_task = stages[level].task, stages[ref_level].task
    ref = align.reference_log_probs(ref_task, jax.random.key(0), batch["q_tokens"], batch["q_mask"],
                                    batch["cand_images"], b)
    variables = task.init(task.model, jax.random.key(0))
    _, (metrics, _) = task.loss(task.model, variables, {**batch, "ref_logp": ref}, jax.random.key(1))
    return float(metrics["preference_loss"])

  own, plain = abs(first_loss("O2", "O2") - np.log(2)), abs(first_loss("O2", "fp32") - np.log(2))
  assert abs(first_loss("fp32", "fp32") - np.log(2)) < 1e-6
  assert own < plain / 3


@pytest.mark.slow  # a fine-tuning run end to end (~1 min on 2 cores): `make slow`
@pytest.mark.parametrize("level, tol", [("fp32", 1e-6), ("O2", 2e-3)])
def test_plain_finetune_loss_is_log2_for_a_model_that_did_not_move(tmp_path, level, tol):
  """report["finetune_loss_plain"] evaluates the fine-tuned parameters with the plain FP32
  forward against the plain reference: with a learning rate of 0 and no contrastive term the
  fine-tuned model is the reference, so every preference pair's margin is 0 and the loss is
  log 2, worked by hand (at O2 up to the FP16 rounding of the stored weights)."""
  cfg = config_lib.load(CONFIG, [f"fp8.level={level}", "dpo.optim.learning_rate=0.0", "dpo.contrastive_weight=0.0",
                                 f"data.data_dir={tmp_path / 'data'}"])
  result = align.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert result.finished
  assert abs(result.report["finetune_loss_plain"] - np.log(2)) < tol, result.report["finetune_loss_plain"]
