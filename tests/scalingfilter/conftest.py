"""Shared by the pipeline tests: toy sizes for both meta-models of configs/scalingfilter/pipeline.py."""
import pytest


@pytest.fixture
def toy_pipeline_overrides():
  return _toy_pipeline_overrides


def _toy_pipeline_overrides(tmp_path, docs) -> list[str]:
  """A 1-layer small and a 2-layer large GPT (d_model 32), 4 steps each, scoring `docs`."""
  toy = []
  for run in ("small", "large"):
    toy += [f"{run}.tokenizer.vocab_size=300", f"{run}.model.d_model=32", f"{run}.model.num_heads=2",
            f"{run}.model.max_len=32", f"{run}.train.seq_len=16", f"{run}.train.batch_size=8",
            f"{run}.train.steps=4", f"{run}.train.eval_every=0", f"{run}.train.eval_batches=2",
            f"{run}.train.checkpoint_every=4", f"{run}.data.data_dir={tmp_path / 'data'}"]
  return toy + ["small.model.num_layers=1", "large.model.num_layers=2", f"score.input={docs}"]
