"""The pipeline on 2 processes x 2 simulated CPU devices: each process scores its own
input files, process 0 joins the parts and alone selects and reports. Checked against one
process scoring the same directory with the same trained pair, here."""
import io
import json
import pathlib
import sys

import numpy as np
import pytest

from jaxlab import distributed
from jaxlab.scalingfilter import score as score_lib

pytestmark = pytest.mark.slow  # real multi-process launches: `make slow`

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "scalingfilter" / "pipeline.py") + ":builtin"


def write_inputs(folder: pathlib.Path) -> dict:
  """3 files (process 0 gets a and c, process 1 gets b); returns the expected rejects."""
  from pydoc_data import topics
  texts = [topics.topics[key][:300] for key in sorted(topics.topics)[:18]]
  folder.mkdir()
  for f, name in enumerate(("a.jsonl", "b.jsonl", "c.jsonl")):
    with open(folder / name, "w") as out:
      for i in range(6):
        out.write(json.dumps({"id": f"{name[0]}{i}", "text": texts[f * 6 + i]}) + "\n")
  with open(folder / "b.jsonl", "a") as out:
    out.write("{oops\n")  # line 7
    out.write(json.dumps({"id": "empty", "text": "  "}) + "\n")
  return {"b.jsonl:7": "bad_json", "empty": "empty_text"}




def read_jsonl(path):
  return [json.loads(l) for l in open(path) if l.strip()]


def test_two_processes_score_their_own_files_and_process_0_reports(tmp_path, toy_pipeline_overrides):
  docs, workdir = tmp_path / "docs", tmp_path / "run"
  expected_rejects = write_inputs(docs)
  command = [sys.executable, "-m", "jaxlab.main", "--config", CONFIG, "--workdir", str(workdir),
             *toy_pipeline_overrides(tmp_path, docs), "diversity.enabled=False"]
  out = io.StringIO()
  rc = distributed.launch_local(2, command, devices_per_process=2, heartbeat_timeout=20, out=out)
  log = out.getvalue()
  assert rc == 0, log

  # Both processes scored a part of their own (part 1 holds b's rows and both rejects).
  parts = workdir / "score_parts"
  part_ids = [{r["id"] for r in read_jsonl(parts / f"part-0000{i}-of-00002.jsonl")} for i in range(2)]
  assert part_ids[0] == {f"{c}{i}" for c in "ac" for i in range(6)}
  assert part_ids[1] == {f"b{i}" for i in range(6)}

  # The joined file equals one process scoring the whole directory with the same pair.
  small = score_lib.load_meta_model(str(workdir / "small"))
  large = score_lib.load_meta_model(str(workdir / "large"))
  ref_path = tmp_path / "reference.jsonl"
  score_lib.score_file(str(docs), str(ref_path), small, large, progress=False)
  got, want = read_jsonl(workdir / "scores.jsonl"), read_jsonl(ref_path)
  assert [r["id"] for r in got] == [r["id"] for r in want]  # same documents, once each, in input order
  assert len({r["id"] for r in got}) == len(got) == 18
  for key in ("nll_small", "nll_large"):
    np.testing.assert_allclose([r[key] for r in got], [r[key] for r in want], atol=1e-5, rtol=0)
  assert {r["id"]: r["n_tokens"] for r in got} == {r["id"]: r["n_tokens"] for r in want}
  rejects = {r["id"]: r["reason"] for r in read_jsonl(workdir / "scores.jsonl.rejects.jsonl")}
  assert rejects == expected_rejects == {r["id"]: r["reason"] for r in read_jsonl(str(ref_path) + ".rejects.jsonl")}

  # Process 0 alone selected and reported: its own counts in report.json, printed once.
  report = json.loads((workdir / "report.json").read_text())
  assert report["kept"] == len(read_jsonl(workdir / "kept.jsonl")) == round(18 * 0.7)
  assert report["score"]["process_index"] == 0 and report["score"]["scored"] == 12
  assert log.count('"small_held_out_loss"') == 1 and "[p1] {" not in log, log  # select and report: p0 only
  assert not list(workdir.glob("*.tmp"))

  # A rerun redoes nothing: no training, no scoring, the same joined file and report.
  scores = (workdir / "scores.jsonl").read_text()
  out = io.StringIO()
  assert distributed.launch_local(2, command, devices_per_process=2, heartbeat_timeout=20, out=out) == 0, \
      out.getvalue()
  rerun = json.loads((workdir / "report.json").read_text())
  assert "joined_already" in rerun["score"] and "small_held_out_loss" not in rerun
  assert rerun["kept"] == report["kept"] and (workdir / "scores.jsonl").read_text() == scores
