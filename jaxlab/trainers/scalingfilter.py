"""The ScalingFilter pipeline: train the meta-model pair -> score -> select -> diversity
-> report. Each stage skips when its output already exists (training resumes from its
checkpoints, scoring from its output file), so a rerun continues where it stopped.

Layout under the workdir: small/ and large/ (LM runs; large reuses small's tokenizer),
scores.jsonl (+ .rejects.jsonl), kept.jsonl, report.json. Before scoring, the pair's
held-out perplexities are compared (jaxlab.scalingfilter.premise): the large model's must be
the lower, else the run stops with both printed (score.allow_worse_large=True warns instead);
report.json keeps them under "pair".

Several processes (jaxlab.distributed): all train the pair together. Scoring is sharded
by input FILE (a directory counts as its files): process i scores files i, i+N, ... with
its own devices into score_parts/part-IIIII-of-NNNNN.jsonl (resumable), so a single input
file is scored by process 0 alone while the others wait. Once every part is done,
process 0 joins them into scores.jsonl (+ .rejects.jsonl) in input order, the same file
one process writes; then process 0 alone selects, measures diversity and writes the
report, and the others wait for it before returning their own scoring counts.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections

from jaxlab import checkpoint, config as config_lib, distributed
from jaxlab.data import builtin
from jaxlab.scalingfilter import diversity, premise, score as score_lib, select as select_lib
from jaxlab.train import loop
from jaxlab.trainers import lm

PIPELINE_METHODS = ("topk", "random", "ppl_gate")  # dsir and classifier need extra corpora: the CLI


def default_config() -> ml_collections.ConfigDict:
  """The meta-model pair (two LM configs), scoring, selection and diversity keys."""
  c = ml_collections.ConfigDict()
  c.trainer = "scalingfilter"
  c.small = lm.default_config()
  c.large = lm.default_config()
  c.small.model.update(num_layers=2, d_model=128, num_heads=4)
  c.large.model.update(num_layers=6, d_model=256, num_heads=8)
  # check_docs: texts of score.held_out (default: score.input, which the pair did not train
  # on) on which the large model must have the lower perplexity before anything is scored
  # long_docs ... dtype: how a document is scored (jaxlab.scalingfilter.score.ScoreOptions);
  # context 0 is the pair's training length (train.seq_len), also the most it may be
  c.score = dict(input="", text_field="text", id_field="id", tokens_per_batch=16384, held_out="", check_docs=256,
                 allow_worse_large=False, long_docs="window", min_context=0, context=0, boundaries="eos",
                 dtype="float32")
  c.select = dict(method="topk", k=70.0)
  c.diversity = dict(enabled=True, group_size=10_000)
  return c


@dataclasses.dataclass
class Result:
  """What `train_and_evaluate` returns: the report (plain numbers: held-out losses of the
  pair, scoring counts, documents kept, Vendi scores) and where the run's files are."""
  workdir: str
  finished: bool
  report: dict


def _large_config(cfg, small_dir: str | None) -> ml_collections.ConfigDict:
  """The large model reads text with the small one's tokenizer (same tokens, same data order)."""
  if small_dir is None:  # shapes only: the small model's vocabulary size stands for its tokenizer
    return config_lib.apply_overrides(cfg.large, [f"tokenizer.vocab_size={cfg.small.tokenizer.vocab_size}"])
  return config_lib.apply_overrides(cfg.large, [f"tokenizer.path={os.path.join(small_dir, 'tokenizer')}"])


def score_options(cfg) -> score_lib.ScoreOptions:
  """score.long_docs ... score.dtype, checked against the pair's training length (a
  ConfigError naming the key, before anything trains or compiles)."""
  pair_len = min(min(run.train.seq_len, run.model.max_len) for run in (cfg.small, cfg.large))
  options = score_lib.ScoreOptions(**{f.name: cfg.score[f.name] for f in dataclasses.fields(score_lib.ScoreOptions)})
  return options.checked(pair_len, prefix="score.")


def validate(cfg) -> None:
  """The keys this pipeline reads beyond the two LM configs."""
  config_lib.require(cfg.score.check_docs >= 1, "score.check_docs", "the premise check needs at least one text")
  score_options(cfg)
  config_lib.require(cfg.select.method in PIPELINE_METHODS, "select.method",
                     f"{cfg.select.method!r}: the pipeline runs {PIPELINE_METHODS} "
                     "(dsir and classifier need extra corpora: use the CLI)")


def stages(cfg: ml_collections.ConfigDict) -> list[loop.Stage]:
  """The meta-model pair's training, from shapes alone: small, then large."""
  validate(cfg)
  return lm.stages(cfg.small, "small") + lm.stages(_large_config(cfg, None), "large")


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> Result:
  """Train the pair, score `score.input`, select, measure diversity, write report.json;
  each stage skips when its output exists, so a rerun continues where it stopped."""
  validate(cfg)
  source = builtin.resolve_shared(cfg.score.input, "score.input")
  config_lib.require(os.path.exists(source), "score.input", f"{source!r} does not exist")
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    config_lib.write(cfg, workdir)
  report = {}
  small_dir, large_dir = os.path.join(workdir, "small"), os.path.join(workdir, "large")
  for name, run_dir, run_cfg in (("small", small_dir, cfg.small), ("large", large_dir, None)):
    run_cfg = run_cfg if run_cfg is not None else _large_config(cfg, small_dir)
    if checkpoint.finished(run_dir, run_cfg.train.steps):
      print(f"[{name}] trained already ({run_dir})", flush=True)
    else:
      result = lm.train_and_evaluate(run_cfg, run_dir)
      report[f"{name}_held_out_loss"] = result.metrics.get("loss")

  scores_path = os.path.join(workdir, "scores.jsonl")
  pair = [score_lib.load_meta_model(os.path.join(workdir, name)) for name in ("small", "large")]
  report["pair"] = _check_pair(cfg, source, *pair).as_dict()
  report["score"] = _score(cfg, source, workdir, scores_path, *pair)
  if not is_main:  # process 0 alone selects and reports; wait so that no process exits before it
    distributed.barrier("scalingfilter: report")
    return Result(workdir, True, report)

  kept_path = os.path.join(workdir, "kept.jsonl")
  if not os.path.exists(kept_path):
    select_lib.select_file(scores_path, kept_path, cfg.select.method, k=cfg.select.k)
  kept_ids = [json.loads(l)["id"] for l in open(kept_path) if l.strip()]
  report["kept"] = len(kept_ids)

  if cfg.diversity.enabled:
    texts = {i: t for i, t in score_lib.read_documents(source, cfg.score.text_field, cfg.score.id_field)
             if isinstance(t, str)}
    for name, ids in (("all", list(texts)), ("kept", kept_ids)):
      result = diversity.diversity([texts[i] for i in ids], group_size=cfg.diversity.group_size)
      report[f"vendi_{name}"] = {k: v for k, v in result.items() if k != "vendi_groups"}
  with open(os.path.join(workdir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  distributed.barrier("scalingfilter: report")
  return Result(workdir, True, report)


def _check_pair(cfg: ml_collections.ConfigDict, source: str, small: score_lib.MetaModel,
                large: score_lib.MetaModel) -> premise.PairCheck:
  """ScalingFilter's premise before scoring: the large model's held-out perplexity is the
  lower, or (score.allow_worse_large) a warning; prints both."""
  held_out = builtin.resolve_shared(cfg.score.held_out, "score.held_out") if cfg.score.held_out else source
  return premise.check_before_scoring(small, large, held_out, n=cfg.score.check_docs,
                                      allow_worse_large=cfg.score.allow_worse_large,
                                      flag="score.allow_worse_large=True", text_field=cfg.score.text_field,
                                      id_field=cfg.score.id_field, tokens_per_batch=cfg.score.tokens_per_batch,
                                      options=score_options(cfg))


def _score(cfg: ml_collections.ConfigDict, source: str, workdir: str, scores_path: str, small: score_lib.MetaModel,
           large: score_lib.MetaModel) -> dict:
  """Scoring counts (this process's own when there are several; see the module docstring)."""
  kwargs = dict(text_field=cfg.score.text_field, id_field=cfg.score.id_field,
                tokens_per_batch=cfg.score.tokens_per_batch, options=score_options(cfg))
  if jax.process_count() > 1 and os.path.exists(scores_path):  # joined by an earlier run
    return {"joined_already": scores_path}
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


def report(result: Result) -> str:
  """The report as indented JSON."""
  return json.dumps(result.report, indent=2)
