"""A real multi-process run in miniature: launch/multiprocess.sh starts 2 processes x 4
simulated CPU devices joined by jax.distributed (gloo collectives).

One module-scoped run serves several tests: it is killed (process 1, SIGKILL) after its
first checkpoint, relaunched with the same command, resumes, and finishes; its final
parameters and losses are then compared with a 1 process x 8 devices run of the same
config on the same global batches, done in this process.
"""
import collections
import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from jaxlab import checkpoint, config as config_lib, sharding
from jaxlab.data import text, tokenizer as tokenizer_lib
from jaxlab.models import gpt
from jaxlab.train import loop, metrics as metrics_lib
from jaxlab.trainers import lm

pytestmark = pytest.mark.slow  # real multi-process launches: `make slow`

REPO = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch" / "multiprocess.sh"
QUICKSTART = str(REPO / "configs" / "quickstart.py")
STEPS, CHECKPOINT_EVERY = 8, 4
HEARTBEAT = 10  # seconds; bounds how long survivors run on after a process dies
BOUND = HEARTBEAT + 40  # generous: the shared test machine is slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  from pydoc_data import topics
  path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
  with open(path, "w") as f:
    for key in sorted(topics.topics)[:120]:
      f.write(json.dumps({"body": topics.topics[key]}) + "\n")
  return str(path)


def overrides(corpus, data_dir):
  return [f"data.files=('{corpus}',)", "data.text_field=body", f"data.data_dir={data_dir}",
          f"train.steps={STEPS}", f"train.checkpoint_every={CHECKPOINT_EVERY}", "train.log_every=1",
          f"train.eval_every={STEPS}", "train.eval_batches=0"]


def launcher_env(workdir, cache=None):
  env = dict(os.environ, PYTHON=sys.executable, WORKDIR=str(workdir), DEVICES="4",
             HEARTBEAT_TIMEOUT=str(HEARTBEAT))
  if cache:  # the relaunch reuses the first launch's compiled programs
    env.update(JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  env.pop("JAXLAB_DISTRIBUTED", None)
  return env


def start(args, env):
  """Popen with its merged output collected line by line in the background."""
  proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace", cwd=REPO)
  lines = []
  reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
  reader.start()
  return proc, lines, reader


@pytest.fixture(scope="module")
def run(corpus, tmp_path_factory):
  """Launch, kill process 1 after the first checkpoint, relaunch to the end."""
  root = tmp_path_factory.mktemp("mp")
  workdir, data_dir = root / "run", root / "data"
  args = [str(LAUNCH), "2", QUICKSTART + ":toy", *overrides(corpus, data_dir)]
  env = launcher_env(workdir, cache=root / "jax_cache")

  proc, lines, reader = start(args, env)
  first_ckpt = workdir / "checkpoints" / str(CHECKPOINT_EVERY)
  deadline = time.monotonic() + 300
  while not first_ckpt.exists():
    assert proc.poll() is None, "the first launch ended before its first checkpoint:\n" + "".join(lines)
    assert time.monotonic() < deadline, "no checkpoint after 300 s:\n" + "".join(lines)
    time.sleep(0.1)
  pids = dict(re.findall(r"^\[launch\] process (\d+) pid (\d+)$", "".join(lines), re.M))
  os.kill(int(pids["1"]), signal.SIGKILL)
  killed_at = time.monotonic()
  try:
    killed_rc = proc.wait(timeout=BOUND + 60)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail("the launch did not end after a process was killed (hang):\n" + "".join(lines))
  stop_seconds = time.monotonic() - killed_at
  reader.join(timeout=10)
  killed_output = "".join(lines)

  resumed = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace", timeout=600, cwd=REPO)
  return dict(workdir=workdir, data_dir=data_dir, corpus=corpus, killed_rc=killed_rc, stop_seconds=stop_seconds,
              killed_output=killed_output, resumed=resumed)


def test_killing_one_process_stops_the_others_with_a_clear_error(run):
  out = run["killed_output"]
  assert run["killed_rc"] != 0
  assert "[launch] process 1 was stopped by SIGKILL" in out, out
  # Process 0 stopped on its own, not by the launcher.
  assert "still running" not in out, out
  assert re.search(r"^\[launch\] process 0 (was stopped by|exited with status)", out, re.M), out
  # Whichever part of JAX's runtime notices first: the coordination service, or the collective
  # transport (gloo on CPU) failing mid-step when its peer vanished.
  assert re.search(r"JAX distributed service detected fatal errors|gloo::EnforceNotMet|Gloo.*(closed|reset)", out), out
  assert run["stop_seconds"] < BOUND, f"took {run['stop_seconds']:.0f} s"


def test_relaunch_resumes_from_the_last_checkpoint(run):
  out = run["resumed"].stdout
  assert run["resumed"].returncode == 0, out
  resumed_from = int(re.search(r"resuming from step (\d+)", out).group(1))
  assert resumed_from in range(CHECKPOINT_EVERY, STEPS, CHECKPOINT_EVERY), out
  assert f"step {STEPS}\n" in out
  rows = metrics_lib.read_rows(str(run["workdir"] / "metrics.jsonl"))
  train_steps = [r["step"] for r in rows if r["split"] == "train"]
  assert train_steps == list(range(1, STEPS + 1)), "a step was logged twice or lost across the relaunch"
  # Process 0 alone writes the report and the files.
  assert out.count("held-out loss") == 1
  assert (run["workdir"] / "loss.png").exists() and (run["workdir"] / "config.json").exists()


def merged_task(tasks):
  """One process's view of what N processes feed together: process i's local batch fills
  rows [i*b, (i+1)*b) of the global batch, as jax.make_array_from_process_local_data
  places them (processes' devices come in process order on the mesh)."""
  import grain

  def concat(parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def eval_data():
    streams = [list(t.eval_data()) for t in tasks]
    count = max(len(s) for s in streams)
    zeros = jax.tree.map(np.zeros_like, next(s[0] for s in streams if s))
    return [concat([s[i] if i < len(s) else zeros for s in streams]) for i in range(count)]

  train = grain.experimental.ZipIterDataset([t.train_data for t in tasks]).map(concat)
  return dataclasses.replace(tasks[0], train_data=train, eval_data=eval_data)


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory, monkeypatch_module):
  """1 process x 8 devices on the same global batches, with the run's tokenizer."""
  tok_dir = str(run["workdir"] / "tokenizer")
  cfg = config_lib.load(QUICKSTART + ":toy", overrides(run["corpus"], run["data_dir"]) + [f"tokenizer.path={tok_dir}"])
  assert jax.device_count() == 8 and jax.process_count() == 1
  mesh = sharding.make_mesh(cfg.mesh)
  data = text.prepare_text([run["corpus"]], data_dir=str(run["data_dir"]), text_field="body")
  tok = tokenizer_lib.load_tokenizer(tok_dir)
  model = gpt.GPT(lm.model_config(cfg, len(tok)))
  tasks = []
  for index in range(2):  # the task each of the 2 processes built
    monkeypatch_module.setattr(jax, "process_count", lambda: 2)
    monkeypatch_module.setattr(jax, "process_index", lambda index=index: index)
    tasks.append(lm.make_task(cfg, model, tok, data))
    monkeypatch_module.undo()
  workdir = tmp_path_factory.mktemp("reference")
  summary = loop.run(merged_task(tasks), loop.options(cfg), str(workdir), mesh)
  return dict(summary=summary, workdir=workdir)


@pytest.fixture(scope="module")
def monkeypatch_module():
  with pytest.MonkeyPatch.context() as mp:
    yield mp


def test_two_processes_train_like_one_process_with_8_devices(run, reference):
  assert run["resumed"].returncode == 0, run["resumed"].stdout
  step, params = checkpoint.restore_params(str(run["workdir"]))
  assert step == STEPS
  expected = jax.tree.map(np.asarray, jax.device_get(reference["summary"].params))
  # Same program and data; only the cross-process all-reduce (gloo) may sum in another
  # order. atol: the key bias gets no gradient (softmax ignores it), only rounding noise.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, expected)
  got = metrics_lib.read_rows(str(run["workdir"] / "metrics.jsonl"))
  want = metrics_lib.read_rows(str(reference["workdir"] / "metrics.jsonl"))
  for split in ("train", "eval"):
    g = {r["step"]: r["loss"] for r in got if r["split"] == split}
    w = {r["step"]: r["loss"] for r in want if r["split"] == split}
    assert g.keys() == w.keys() and g, split
    np.testing.assert_allclose([g[s] for s in sorted(g)], [w[s] for s in sorted(w)], rtol=1e-4)
  # The eval pass covered both processes' slices (uneven lengths padded with mask 0).
  assert [r["tokens"] for r in got if r["split"] == "eval"] == [r["tokens"] for r in want if r["split"] == "eval"]


def test_every_example_is_read_once_per_epoch_across_processes(run, tmp_path):
  """Two processes of the trainer's pipeline, each reading its jax.process_index() slice."""
  script = REPO / "tests" / "launch" / "read_epoch.py"
  result = subprocess.run(
      [sys.executable, "-m", "jaxlab.distributed", "--processes", "2", "--devices-per-process", "1", "--",
       sys.executable, str(script), str(tmp_path), run["corpus"], str(run["data_dir"]),
       str(run["workdir"] / "tokenizer")],
      env=launcher_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
      cwd=REPO)
  assert result.returncode == 0, result.stdout
  reads = [json.load(open(tmp_path / f"process_{i}.json")) for i in range(2)]
  n = reads[0]["num_records"]
  assert all(r["process_count"] == 2 for r in reads) and n > 10
  # One epoch: every record exactly once, each by one process. (Reads are logged by
  # grain's reader threads, so positions in the log do not mark epoch boundaries.)
  assert sorted(reads[0]["read_1"] + reads[1]["read_1"]) == list(range(n))
  assert set(reads[0]["read_1"]).isdisjoint(reads[1]["read_1"])
  assert abs(len(reads[0]["read_1"]) - len(reads[1]["read_1"])) <= 1
  # Two epochs: every record exactly twice, both times by the same process.
  assert collections.Counter(reads[0]["read_2"] + reads[1]["read_2"]) == {i: 2 for i in range(n)}
  assert set(reads[0]["read_2"]) == set(reads[0]["read_1"])
  assert all(r["batches_1"] > 0 for r in reads)
