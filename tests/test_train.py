"""The shared training loop through the LM trainer: resume, NaN guard, rejects, outputs."""
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from jaxlab import checkpoint, config as config_lib
from jaxlab.train.loop import NonFiniteError
from jaxlab.trainers import lm

REPO = pathlib.Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "configs" / "quickstart.py")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """pydoc prose as JSONL, plus two malformed lines that must be counted, not dropped."""
  from pydoc_data import topics
  path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
  with open(path, "w") as f:
    for key in sorted(topics.topics)[:120]:
      f.write(json.dumps({"body": topics.topics[key]}) + "\n")
    f.write("{not json\n")
    f.write(json.dumps({"title": "no body"}) + "\n")
  return str(path)


def toy(corpus, tmp_path, *overrides):
  return config_lib.load(QUICKSTART + ":toy", [f"data.files=('{corpus}',)", "data.text_field=body",
                                               f"data.data_dir={tmp_path / 'data'}", "train.steps=12",
                                               "train.checkpoint_every=4", "train.eval_every=0", *overrides])


def params_of(summary):
  return jax.tree.map(np.asarray, jax.device_get(summary.params))


def test_resume_matches_uninterrupted_run(corpus, tmp_path):
  full = lm.train_and_evaluate(toy(corpus, tmp_path), str(tmp_path / "full"))
  assert full.rejects == {"bad_json": 1, "missing_field": 1}

  first = lm.train_and_evaluate(toy(corpus, tmp_path, "train.stop_after=5"), str(tmp_path / "resumed"))
  assert first.step == 5 and not first.finished
  resumed = lm.train_and_evaluate(toy(corpus, tmp_path), str(tmp_path / "resumed"))
  assert resumed.step == 12 and resumed.finished

  # Same compiled step, same data order (the iterator was restored mid-epoch): bitwise equal.
  jax.tree.map(np.testing.assert_array_equal, params_of(resumed), params_of(full))
  assert resumed.metrics == full.metrics
  rows = [json.loads(l) for l in open(tmp_path / "resumed" / "metrics.jsonl")]
  train_steps = [r["step"] for r in rows if r["split"] == "train"]
  assert train_steps == sorted(set(train_steps)), "resumed run logged a step twice"
  full_rows = {r["step"]: r["loss"] for r in map(json.loads, open(tmp_path / "full" / "metrics.jsonl"))
               if r["split"] == "train"}
  assert {s: l for s, l in ((r["step"], r["loss"]) for r in rows if r["split"] == "train") if s > 5} == \
      {s: l for s, l in full_rows.items() if s > 5}
  for name in ("loss.png", "tokenizer/tokenizer.json"):
    assert (tmp_path / "full" / name).exists(), name
  assert any(p.name.startswith("events") for p in (tmp_path / "full" / "tensorboard").iterdir())


def test_nan_guard_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
  workdir = str(tmp_path / "run")
  lm.train_and_evaluate(toy(corpus, tmp_path, "train.stop_after=4"), workdir)
  with pytest.raises(NonFiniteError, match=r"Last good checkpoint: step 4 in .*checkpoints"):
    lm.train_and_evaluate(toy(corpus, tmp_path, "optim.learning_rate=1e30", "optim.warmup_steps=0"), workdir)
  mngr = checkpoint.manager(os.path.join(workdir, "checkpoints"))
  assert mngr.all_steps() == [4]
