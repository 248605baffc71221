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


def _finetune(level: str):
  # the small trainable text tower, so that both towers have FP8 projections
  cfg = config_lib.load(CONFIG, [f"fp8.level={level}", 'mesh=(("data", 1), ("model", 1))', "model.text_tower=words"])
  stage = next(s for s in align.stages(cfg) if s.name == "finetune")
  low = loop.lower_step(stage.task, stage.options, sharding.make_mesh(stage.options.mesh, jax.devices()[:1]),
                        stage.batch)
  return stage, low, hlo.fp8_dots(low.lowered.as_text(dialect="hlo"))


def test_dpo_finetuning_runs_its_gemms_in_fp8_at_o2():
  stage, low, report = _finetune("O2")
  meta = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(low.setup.abstract_state.model_state)]
  projections = sum(p.endswith("input_amax_history") for p in meta)  # one scale state per FP8 projection
  assert projections >= 8, meta  # patch embedding, both towers' attention and MLP, both projections
  assert not report.blocked, report.summary()
  # Forward, dgrad and wgrad each, but the patch embedding's input is the image: no dgrad.
  assert len(report.fp8) == 3 * projections - 1, report.summary()
  _, _, flax_report = _finetune("flax")
  assert len(flax_report.fp8) == len(report.fp8), (flax_report.summary(), report.summary())
  # The other stages are untouched by fp8.level.
  pre = next(s for s in align.stages(config_lib.load(CONFIG, ["fp8.level=O2"])) if s.name == "pretrain")
  assert pre.task.model.dot_general_cls is None


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
