"""The shared training loop through the LM trainer: resume, NaN guard, rejects, outputs."""
import dataclasses
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


def _regression_task(after_first_step=None):
  """Linear regression by SGD on 8 batches of 8, repeated (a grain dataset the loop checkpoints)."""
  import flax.linen as nn
  import grain
  import jax.numpy as jnp
  import optax
  from jaxlab.train.state import Task

  rs = np.random.RandomState(0)
  xs = rs.randn(64, 3).astype(np.float32)
  ys = xs @ np.array([1.0, -2.0, 0.5], np.float32)
  data = grain.MapDataset.source([{"x": xs[i:i + 8], "y": ys[i:i + 8]} for i in range(0, 64, 8)]).repeat()

  def loss(model, variables, batch, rng):
    err = jnp.mean((model.apply(variables, batch["x"])[:, 0] - batch["y"]) ** 2)
    return err, ({"loss": err}, {})
  return Task(model=nn.Dense(1, use_bias=False), init=lambda m, r: m.init(r, jnp.zeros((1, 3))), loss=loss,
              optimizer=optax.sgd(0.1), train_data=data.to_iter_dataset(), after_first_step=after_first_step)


def test_a_fresh_run_takes_its_first_step_with_the_task_and_the_rest_steady(tmp_path):
  """Task.after_first_step (what FP8 delayed scaling uses to drop its just-in-time start): here
  the steady Task's loss is zero, so only a run's first step moves the weights."""
  import jax.numpy as jnp
  from jaxlab import sharding
  from jaxlab.train import loop
  from jaxlab.train.state import init_state, make_train_step

  task = _regression_task(lambda t: t.replace(loss=lambda *a: jax.tree.map(lambda v: v * 0, t.loss(*a))))
  opts = loop.Options(steps=3, batch_size=8, log_every=1, checkpoint_every=10, mesh=(("data", 1), ("model", 1)))
  mesh = sharding.make_mesh(opts.mesh, jax.devices()[:1])
  kernel = lambda params: np.asarray(params["kernel"])

  full = loop.run(task, opts, str(tmp_path / "full"), mesh)
  rng = jax.random.key(opts.seed)
  start = init_state(task, rng)
  one, _ = jax.jit(make_train_step(task))(start, {k: jnp.asarray(v) for k, v in next(iter(task.train_data)).items()},
                                           rng)
  np.testing.assert_array_equal(kernel(full.params), kernel(one.params))  # step 0 moved them, steps 1-2 did not
  assert not np.array_equal(kernel(one.params), kernel(start.params))

  # resumed after step 1: the resumed steps are steady ones too
  first = loop.run(task, dataclasses.replace(opts, stop_after=1), str(tmp_path / "resumed"), mesh)
  assert first.step == 1 and not first.finished
  resumed = loop.run(task, opts, str(tmp_path / "resumed"), mesh)
  np.testing.assert_array_equal(kernel(resumed.params), kernel(full.params))

  # without after_first_step every step trains: the check above bites
  plain = loop.run(_regression_task(), opts, str(tmp_path / "plain"), mesh)
  assert not np.array_equal(kernel(plain.params), kernel(full.params))
