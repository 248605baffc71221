"""The ScalingFilter pipeline: train the meta-model pair -> score -> select -> diversity
-> report. Each stage skips when its output already exists (training resumes from its
checkpoints, scoring from its output file), so a rerun continues where it stopped.

Layout under the workdir: small/ and large/ (LM runs; large reuses small's tokenizer),
scores.jsonl (+ .rejects.jsonl), kept.jsonl, report.json.

Several processes (jaxlab.distributed): all train the pair together. Scoring is sharded
by input FILE (a directory counts as its files): process i scores files i, i+N, ... with
its own devices into score_parts/part-IIIII-of-NNNNN.jsonl (resumable), so a single input
file is scored by process 0 alone while the others wait. Once every part is done,
process 0 joins them into scores.jsonl (+ .rejects.jsonl) in input order, the same file
one process writes; then process 0 alone selects, measures diversity and writes the
report, and the others wait for it before returning their own scoring counts.
"""
from __future__ import annotations

import json
import os

import jax
import ml_collections

from jaxlab import checkpoint, config as config_lib, distributed
from jaxlab.data import builtin
from jaxlab.scalingfilter import score as score_lib
from jaxlab.trainers import lm


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "scalingfilter"
  c.small = lm.default_config()
  c.large = lm.default_config()
  c.small.model.update(num_layers=2, d_model=128, num_heads=4)
  c.large.model.update(num_layers=6, d_model=256, num_heads=8)
  c.score = dict(input="", text_field="text", id_field="id", tokens_per_batch=16384)
  c.select = dict(method="topk", k=70.0)
  c.diversity = dict(enabled=True, group_size=10_000)
  return c


def _trained(workdir: str, steps: int) -> bool:
  path = os.path.join(workdir, "checkpoints")
  return os.path.isdir(path) and checkpoint.manager(path).latest_step() == steps


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  config_lib.require(cfg.select.method in ("topk", "random", "ppl_gate"), "select.method",
                     f"{cfg.select.method!r}: the pipeline runs topk, random or ppl_gate "
                     "(dsir and classifier need extra corpora: use the CLI)")
  source = builtin.resolve_shared(cfg.score.input, "score.input")
  config_lib.require(os.path.exists(source), "score.input", f"{source!r} does not exist")
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    config_lib.write(cfg, workdir)
  report = {}
  small_dir, large_dir = os.path.join(workdir, "small"), os.path.join(workdir, "large")
  for name, run_dir, run_cfg in (("small", small_dir, cfg.small), ("large", large_dir, cfg.large)):
    if name == "large":  # the pair must share the tokenizer (and so the data order)
      run_cfg = config_lib.apply_overrides(run_cfg, [f"tokenizer.path={os.path.join(small_dir, 'tokenizer')}"])
    if _trained(run_dir, run_cfg.train.steps):
      print(f"[{name}] trained already ({run_dir})", flush=True)
    else:
      summary = lm.train_and_evaluate(run_cfg, run_dir)
      report[f"{name}_held_out_loss"] = summary.get("loss")

  scores_path = os.path.join(workdir, "scores.jsonl")
  report["score"] = _score(cfg, source, workdir, scores_path)
  if not is_main:  # process 0 alone selects and reports; wait so that no process exits before it
    distributed.barrier("scalingfilter: report")
    return {"report": report, "workdir": workdir}

  kept_path = os.path.join(workdir, "kept.jsonl")
  if not os.path.exists(kept_path):
    from jaxlab.scalingfilter import __main__ as cli
    cli.main(["select", "--scores", scores_path, "--output", kept_path, "--method", cfg.select.method,
              "--k", str(cfg.select.k)])
  kept_ids = [json.loads(l)["id"] for l in open(kept_path) if l.strip()]
  report["kept"] = len(kept_ids)

  if cfg.diversity.enabled:
    from jaxlab.scalingfilter import diversity
    texts = {i: t for i, t in score_lib.read_documents(source, cfg.score.text_field, cfg.score.id_field)
             if isinstance(t, str)}
    for name, ids in (("all", list(texts)), ("kept", kept_ids)):
      result = diversity.diversity([texts[i] for i in ids], group_size=cfg.diversity.group_size)
      report[f"vendi_{name}"] = {k: v for k, v in result.items() if k != "vendi_groups"}
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  distributed.barrier("scalingfilter: report")
  return {"report": report, "workdir": workdir}


def _score(cfg: ml_collections.ConfigDict, source: str, workdir: str, scores_path: str) -> dict:
  """Scoring counts (this process's own when there are several; see the module docstring)."""
  kwargs = dict(text_field=cfg.score.text_field, id_field=cfg.score.id_field,
                tokens_per_batch=cfg.score.tokens_per_batch)
  if jax.process_count() > 1 and os.path.exists(scores_path):  # joined by an earlier run
    return {"joined_already": scores_path}
  small = score_lib.load_meta_model(os.path.join(workdir, "small"))
  large = score_lib.load_meta_model(os.path.join(workdir, "large"))
  if jax.process_count() == 1:
    return score_lib.score_file(source, scores_path, small, large, **kwargs)
  parts_dir = os.path.join(workdir, "score_parts")
  counts = score_lib.score_sharded(source, parts_dir, small, large, **kwargs)
  distributed.barrier("scalingfilter: scored")  # every part is complete
  if jax.process_index() == 0:
    _join_parts(parts_dir, scores_path, source, cfg.score.text_field, cfg.score.id_field)
  return counts


def _join_parts(parts_dir: str, scores_path: str, source: str, text_field: str, id_field: str) -> None:
  """score_parts/ -> scores.jsonl (+ .rejects.jsonl) in input order, as one process writes
  them: topk's ties and random selection depend on the order. Each file is written whole
  (tmp + rename), scores.jsonl last: its presence marks the join done."""
  rows, rejects = score_lib.read_parts(parts_dir)
  order: dict[str, int] = {}
  for doc_id, _ in score_lib.read_documents(source, text_field, id_field):
    order.setdefault(doc_id, len(order))
  for path, records in ((scores_path + ".rejects.jsonl", rejects), (scores_path, rows)):
    records.sort(key=lambda r: order.get(r["id"], len(order)))  # "<id>#dup" rejects go last
    with open(path + ".tmp", "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in records)
    os.replace(path + ".tmp", path)


def report(summary: dict) -> str:
  return json.dumps(summary["report"], indent=2)
