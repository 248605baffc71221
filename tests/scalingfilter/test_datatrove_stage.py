"""The datatrove stage against the one-process scorer (score_file) on the same documents:
the same rows, the same rejects by reason, and a selection that equals the in-memory top-k.
The quick test runs datatrove's LocalPipelineExecutor in this process; the slow ones run the
example pipeline as its own process tree, kill it with SIGKILL and resume it, and launch a
pickled Slurm task the way a Slurm node would."""
import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("datatrove")

from datatrove.data import Document  # noqa: E402
from datatrove.executor import LocalPipelineExecutor  # noqa: E402
from datatrove.pipeline.readers import JsonlReader  # noqa: E402
from datatrove.pipeline.writers import JsonlWriter  # noqa: E402

from jaxlab.scalingfilter import (DocumentReader, QualityFilter, QualityHistogram, ScoreDocuments,  # noqa: E402
                                  read_histograms, score, select, top_k_bin)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "scalingfilter_datatrove.py"


def make_corpus(folder: Path, texts, files: int, per_file: int) -> dict:
  """`files` JSONL files of documents of varied length, with a bad line, an empty text and a
  repeated id among them. Returns the expected rejects {id: reason} of the one-process scorer."""
  folder.mkdir(parents=True)
  for f in range(files):
    lines = [json.dumps({"id": f"f{f}d{i}", "text": texts[(f * per_file + i) % len(texts)][:30 + 37 * i],
                         "source": f"file{f}"}) for i in range(per_file)]
    lines.insert(3, "{not json")
    if f == 1:
      lines += [json.dumps({"id": "blank", "text": "  "}), json.dumps({"id": "f1d0", "text": "the same id again"})]
    (folder / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")
  return {**{f"part{f}.jsonl:4": "bad_json" for f in range(files)}, "blank": "empty_text", "f1d0#dup": "duplicate_id"}


def read_docs(folder: Path) -> list[dict]:
  """Every document datatrove wrote (gzip JSONL) under folder, in file order."""
  docs = []
  for path in sorted(folder.glob("*.jsonl.gz")):
    with gzip.open(path, "rt") as f:
      docs += [json.loads(line) for line in f if line.strip()]
  return docs


def one_process(corpus: Path, out: Path, small, large):
  """The reference: score_file over the same folder, rows and rejects."""
  score.score_file(str(corpus), str(out), small, large, progress=False)
  rows = {r["id"]: r for r in map(json.loads, open(out))}
  rejects = {r["id"]: r["reason"] for r in map(json.loads, open(f"{out}.rejects.jsonl"))}
  return rows, rejects


def check_against_reference(scored_docs, rejected_docs, rows, rejects):
  """Each reference row once, with its values; each reject once, with its reason."""
  ids = [d["id"] for d in scored_docs]
  assert len(ids) == len(set(ids)) and set(ids) == set(rows)  # none missing, none twice
  for d in scored_docs:
    want = rows[d["id"]]
    assert d["metadata"]["n_tokens"] == want["n_tokens"]
    np.testing.assert_allclose([d["metadata"][k] for k in ("nll_small", "nll_large", "quality_factor")],
                               [want[k] for k in ("nll_small", "nll_large", "quality_factor")], rtol=5e-5)
  got = {(d["id"] + "#dup" if d["metadata"]["filter_reason"] == "duplicate_id" else d["id"]):
         d["metadata"]["filter_reason"] for d in rejected_docs}
  assert len(got) == len(rejected_docs) and got == rejects


def test_top_k_bin_and_histogram_merge_by_hand(tmp_path):
  counts = {5: 2, 3: 4, -1: 3, -7: 1}  # 10 documents
  assert top_k_bin(counts, 20) == 5     # round(10 * 0.2) = 2: bin 5 alone
  assert top_k_bin(counts, 30) == 3     # 3 wanted: bins 5 and 3 give 6 (the boundary bin is kept whole)
  assert top_k_bin(counts, 70) == -1 and top_k_bin(counts, 100) == -7
  assert top_k_bin(counts, 0) == math.inf and top_k_bin({}, 50) == math.inf
  with pytest.raises(ValueError, match="k_percent"):
    top_k_bin(counts, 120)
  for rank, part in enumerate(({"5": 2, "-1": 1}, {"3": 4, "-1": 2, "-7": 1})):
    (tmp_path / f"{rank:05d}.json").write_text(json.dumps(
        {"rank": rank, "world_size": 2, "bin_width": 0.5, "documents": sum(part.values()), "counts": part}))
  assert read_histograms(str(tmp_path)) == {"bin_width": 0.5, "documents": 10, "counts": counts}
  (tmp_path / "00001.json").unlink()
  with pytest.raises(ValueError, match="tasks \\[0\\] with world sizes \\[2\\]"):
    read_histograms(str(tmp_path))
  with pytest.raises(ValueError, match="exactly one of k"):
    QualityFilter(str(tmp_path), k=70, min_quality=1.0)


def test_quality_histogram_and_filter_on_hand_made_documents(tmp_path):
  """log d = nll_small - nll_large: 0.25, -0.15, 0.05, 0.25 -> bins (width 0.1) 2, -2, 0, 2."""
  nll = [(1.25, 1.0), (0.85, 1.0), (1.05, 1.0), (2.25, 2.0)]
  docs = [Document(text="t", id=f"d{i}", metadata={"nll_small": s, "nll_large": l}) for i, (s, l) in enumerate(nll)]
  hist = QualityHistogram(str(tmp_path), bin_width=0.1)
  assert [d.id for d in hist.run(iter(docs), rank=0, world_size=1)] == ["d0", "d1", "d2", "d3"]
  assert read_histograms(str(tmp_path))["counts"] == {2: 2, -2: 1, 0: 1}
  keep = lambda f: [d.id for d in f.run(iter(docs), rank=0, world_size=1)]
  assert keep(QualityFilter(str(tmp_path), k=50)) == ["d0", "d3"]        # 2 of 4: bin 2
  assert keep(QualityFilter(str(tmp_path), k=75)) == ["d0", "d2", "d3"]  # 3 of 4: bins 2 and 0
  rule = json.loads((tmp_path / "threshold.json").read_text())
  assert (rule["lowest_bin"], rule["kept"], rule["documents"]) == (0, 3, 4)
  assert keep(QualityFilter(str(tmp_path), min_quality=math.exp(0.049))) == ["d0", "d2", "d3"]
  assert keep(QualityFilter(str(tmp_path), min_quality=math.exp(0.051))) == ["d0", "d3"]


def test_two_tasks_in_process_match_the_one_process_scorer(pair, tmp_path):
  """Both stages on LocalPipelineExecutor (2 tasks, in this process) on the toy pair."""
  small, large, texts = pair
  corpus = tmp_path / "corpus"
  expected_rejects = make_corpus(corpus, texts, files=2, per_file=8)
  rows, rejects = one_process(corpus, tmp_path / "reference.jsonl", small, large)
  assert rejects == expected_rejects
  out = tmp_path / "out"
  stage1 = LocalPipelineExecutor(
      [DocumentReader(str(corpus)),
       ScoreDocuments(small.path, large.path, batch_size=64, exclusion_writer=JsonlWriter(str(out / "rejects"))),
       QualityHistogram(str(out / "hist"), bin_width=1e-9),  # no two documents share a bin: exact top-k
       JsonlWriter(str(out / "scored"))], tasks=2, workers=1, logging_dir=str(out / "logs1"))
  stage2 = LocalPipelineExecutor(
      [JsonlReader(str(out / "scored")),
       QualityFilter(str(out / "hist"), k=40, exclusion_writer=JsonlWriter(str(out / "dropped"))),
       JsonlWriter(str(out / "kept"))], tasks=2, workers=1, logging_dir=str(out / "logs2"), depends=stage1)
  stats = stage2.run()
  kept, dropped = read_docs(out / "kept"), read_docs(out / "dropped")
  check_against_reference(kept + dropped, read_docs(out / "rejects"), rows, rejects)
  assert all(d["metadata"]["source"].startswith("file") for d in kept)  # the input's other fields travel along
  # the selection is the in-memory top 40% of the same scores
  scored = kept + dropped
  mask = select.top_k([d["metadata"]["quality_factor"] for d in scored], 40)
  assert sorted(d["id"] for d, m in zip(scored, mask) if m) == sorted(d["id"] for d in kept)
  assert len(kept) == round(len(rows) * 0.4)
  # stage 1's stats count every reject by reason (both tasks ran in this run)
  stage1_stats = json.loads((out / "logs1" / "stats.json").read_text())
  scorer_stats = next(s["stats"] for s in stage1_stats if s["name"].endswith("ScalingFilter score"))
  total = lambda v: v["total"] if isinstance(v, dict) else v  # datatrove saves a bare count as an int
  assert {k: total(v) for k, v in scorer_stats.items() if k.startswith("dropped_")} == \
      {"dropped_bad_json": 2, "dropped_empty_text": 1, "dropped_duplicate_id": 1}
  assert total(scorer_stats["tokens"]) == sum(r["n_tokens"] for r in rows.values())
  assert stats is not None


def _run_example(args, env, **kw):
  return subprocess.Popen([sys.executable, str(EXAMPLE), *args], cwd=ROOT, env=env, start_new_session=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _example_env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device per task process
  return env


@pytest.mark.slow
def test_killed_pipeline_resumes_with_another_worker_count(pair, tmp_path):
  """4 tasks on 2 workers, SIGKILL to the whole executor (its process group: the executor,
  its pool workers and forkserver) once a task has completed, then a rerun on 3 workers:
  exactly the one-process scorer's rows and rejects, none missing, none twice."""
  small, large, texts = pair
  corpus = tmp_path / "corpus"
  make_corpus(corpus, texts, files=4, per_file=24)
  rows, rejects = one_process(corpus, tmp_path / "reference.jsonl", small, large)
  out = tmp_path / "out"
  args = ["--small", small.path, "--large", large.path, "--input", str(corpus), "--output", str(out),
          "--tasks", "4", "--k", "70", "--batch-docs", "6", "--allow-worse-large"]  # a random pair
  run = _run_example(args + ["--workers", "2"], _example_env())
  completions = out / "logs" / "score" / "completions"
  deadline = time.time() + 300
  while not (completions.exists() and any(completions.iterdir())):
    assert run.poll() is None, run.communicate()
    assert time.time() < deadline, "no scoring task completed in 300 s"
    time.sleep(0.02)
  os.killpg(run.pid, signal.SIGKILL)
  run.communicate()
  done_before = len(list(completions.iterdir()))
  assert 1 <= done_before < 4 and not (out / "logs" / "select" / "completions").exists()

  rerun = _run_example(args + ["--workers", "3"], _example_env())
  stdout, stderr = rerun.communicate(timeout=600)
  assert rerun.returncode == 0, stderr[-3000:]
  assert f"Skipping {done_before} already completed tasks" in stderr
  kept, dropped = read_docs(out / "kept"), read_docs(out / "dropped")
  check_against_reference(kept + dropped, read_docs(out / "rejects"), rows, rejects)
  summary = json.loads(stdout.strip().splitlines()[-1])  # merged over both runs' tasks
  assert summary["scored"] == len(rows) and summary["kept"] == len(kept) >= round(len(rows) * 0.7)
  assert summary["dropped"] == len(dropped)
  assert summary["rejected"] == {"bad_json": 4, "duplicate_id": 1, "empty_text": 1}


@pytest.mark.slow
def test_slurm_dry_run_writes_scripts_and_a_pickled_task_runs(pair, tmp_path):
  """--dry-run goes through datatrove's Slurm launch code with a stand-in sbatch; the pickled
  executor it leaves then runs array task 1 as a Slurm node would (launch_pickled_pipeline)."""
  small, large, texts = pair
  corpus = tmp_path / "corpus"
  make_corpus(corpus, texts, files=4, per_file=6)
  rows, _ = one_process(corpus, tmp_path / "reference.jsonl", small, large)
  out = tmp_path / "out"
  run = _run_example(["--small", small.path, "--large", large.path, "--input", str(corpus), "--output", str(out),
                      "--tasks", "4", "--executor", "slurm", "--partition", "gpu", "--dry-run",
                      "--allow-worse-large"], _example_env())
  stdout, stderr = run.communicate(timeout=300)
  assert run.returncode == 0, stderr[-3000:]
  assert json.loads(stdout.strip().splitlines()[-1])["dry_run"] is True
  script = (out / "logs" / "score" / "launch_script.slurm").read_text()
  for line in ("#SBATCH --array=0-3", "#SBATCH --gpus=1", "#SBATCH --partition=gpu", "launch_pickled_pipeline"):
    assert line in script
  assert "--gpus" not in (out / "logs" / "select" / "launch_script.slurm").read_text()
  assert "afterok" in stderr  # the select job and the stats merge wait for the score job
  # What a Slurm node provides: the array index, the node list, and scontrol to expand it.
  bin_dir = tmp_path / "slurm_bin"
  bin_dir.mkdir()
  (bin_dir / "scontrol").write_text("#!/bin/bash\necho localhost\n")
  (bin_dir / "scontrol").chmod(0o755)
  node_env = dict(_example_env(), SLURM_ARRAY_TASK_ID="1", SLURM_NODELIST="localhost",
                  PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  task = subprocess.run([str(Path(sys.executable).parent / "launch_pickled_pipeline"),
                         str(out / "logs" / "score" / "executor.pik")], env=node_env,
                        capture_output=True, text=True, timeout=300)
  assert task.returncode == 0, task.stderr[-3000:]
  assert [p.name for p in (out / "logs" / "score" / "completions").iterdir()] == ["00001"]
  scored = read_docs(out / "scored")
  assert sorted(d["id"] for d in scored) == sorted(i for i in rows if i.startswith("f1"))
