"""ScalingFilter on real data, CPU-sized: every selector against the same scored Pile sample.

  nice -n 10 .venv/bin/python bench/scalingfilter_experiment.py [--workdir runs/sf_experiment] [--seeds 0,1,2]

Stages (each cached under --workdir, so a rerun only redoes what is missing):
  1. meta-model pair (configs/scalingfilter/meta_pair.py:{small,large},clean,cpu) trained with the
     LM trainer on the clean corpus's train split: Shakespeare, Pride and Prejudice, the 20 CCNet
     head-bucket CommonCrawl documents, the pydoc prose; 10% of its records are held out; the
     premise (the large model has the lower held-out perplexity) is checked before scoring;
  2. score ../shared/data/text/pile_sample.jsonl (1,000 documents, 14 Pile sources) with the pair;
  3. select with every selector, all keeping 70% except `threshold` (quality factor >= its
     geometric mean over the corpus) and `ppl_gate` (15th-85th percentile = 70%):
       topk_qf       ScalingFilter, top 70% by quality factor
       threshold     d >= geometric mean of d
       temperature   70% sampled with p ~ d^(1/T), T = std(log d) (Gumbel top-k)
       random        70% uniformly at random
       ppl_gate      15th-85th percentile of the large meta-model's perplexity
       dsir          hashed-n-gram importance resampling towards the clean train split
       classifier    hashed-n-gram logistic regression: clean train records (positives) vs raw
                     CommonCrawl pages (the WARC samples, HTML stripped; negatives)
  4. per selector: kept share per pile_set_name, Vendi score of the kept documents'
     all-MiniLM-L6-v2 embeddings (embedded once), and the held-out loss on the clean corpus's
     validation split of a GPT trained on the kept set through the LM trainer (jaxlab.train.loop)
     at an equal token budget: the same steps x batch x seq_len and tokenizer for every selector.

Every selector runs once per seed (--seeds): the seed draws the random, temperature and DSIR
selections and initialises and orders the GPT's training, so each selector's loss has a mean
and a spread over seeds, and a difference counts only when it is outside both spreads.
Prints the tables and a last line of key=value pairs.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import html.parser
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from jaxlab import checkpoint, config as config_lib  # noqa: E402
from jaxlab.data import builtin, text as text_lib  # noqa: E402
from jaxlab.scalingfilter import premise, score as score_lib, select as select_lib  # noqa: E402
from jaxlab.trainers import lm  # noqa: E402

META_CONFIG = os.path.join(REPO, "configs", "scalingfilter", "meta_pair.py")
SELECTORS = ("topk_qf", "threshold", "temperature", "random", "ppl_gate", "dsir", "classifier")
META_STEPS = 1500  # the cpu pair's recipe (configs/scalingfilter/meta_pair.py), where the large model wins


# ------------------------------------------------------------------------------ raw CommonCrawl (WARC)

class _VisibleText(html.parser.HTMLParser):
  """The text a browser would show: everything outside script/style/noscript/template."""
  SKIP = {"script", "style", "noscript", "template", "svg"}

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.parts, self.depth = [], 0

  def handle_starttag(self, tag, attrs):
    self.depth += tag in self.SKIP

  def handle_endtag(self, tag):
    self.depth -= tag in self.SKIP and self.depth > 0

  def handle_data(self, data):
    if not self.depth and data.strip():
      self.parts.append(data.strip())


def warc_texts(path: str) -> tuple[list[str], dict]:
  """Visible text of every HTML response record of a (gzipped) WARC file, and counts of
  the records that gave none (by reason)."""
  data = gzip.open(path, "rb").read()
  texts, skipped, pos = [], {"not_response": 0, "not_html": 0, "no_text": 0}, 0
  while True:
    start = data.find(b"WARC/1.", pos)
    if start < 0:
      break
    head_end = data.find(b"\r\n\r\n", start)
    headers = dict(line.split(b":", 1) for line in data[start:head_end].split(b"\r\n")[1:] if b":" in line)
    headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
    length = int(headers[b"content-length"])
    block, pos = data[head_end + 4:head_end + 4 + length], head_end + 4 + length
    if headers.get(b"warc-type") != b"response":
      skipped["not_response"] += 1
      continue
    http_head, _, body = block.partition(b"\r\n\r\n")
    if b"text/html" not in http_head.lower():
      skipped["not_html"] += 1
      continue
    parser = _VisibleText()
    parser.feed(body.decode("utf-8", errors="replace"))
    page = "\n".join(parser.parts)
    if page.strip():
      texts.append(page)
    else:
      skipped["no_text"] += 1
  return texts, skipped


# ------------------------------------------------------------------------------ stages

def train_lm(cfg, run_dir: str, log) -> None:
  if checkpoint.finished(run_dir, cfg.train.steps):
    log(f"  {run_dir}: trained already")
    return
  t = time.perf_counter()
  lm.train_and_evaluate(cfg, run_dir)
  log(f"  {run_dir}: trained in {time.perf_counter() - t:.0f} s")


@dataclasses.dataclass(frozen=True)
class Pair:
  """Where the trained meta-model pair lives and the configs it was trained with."""
  small_dir: str
  large_dir: str
  small_cfg: object
  large_cfg: object


def train_pair(workdir: str, steps: int, log) -> Pair:
  """The meta-model pair (configs/scalingfilter/meta_pair.py:{small,large},clean,cpu) under
  workdir/meta, trained with the LM trainer unless it is there already; the large model
  uses the small one's tokenizer."""
  small_dir, large_dir = os.path.join(workdir, "meta", "small"), os.path.join(workdir, "meta", "large")
  over = [f"train.steps={steps}", f"train.eval_every={steps}", f"train.checkpoint_every={steps}",
          "train.eval_batches=20", "seed=0"]
  small_cfg = config_lib.load(META_CONFIG + ":small,clean,cpu", over)
  large_cfg = config_lib.load(META_CONFIG + ":large,clean,cpu",
                              over + [f"tokenizer.path={os.path.join(small_dir, 'tokenizer')}"])
  train_lm(small_cfg, small_dir, log)
  train_lm(large_cfg, large_dir, log)
  return Pair(small_dir, large_dir, small_cfg, large_cfg)


def clean_corpus(workdir: str, cfg) -> text_lib.TextData:
  """The meta-pair's data with the same split (split_of hashes file name and record index)."""
  files = lm.corpus_paths(cfg.data.files, os.path.join(workdir, "clean"))
  return text_lib.prepare_text(files, data_dir=os.path.join(workdir, "clean", "data"),
                               text_field=cfg.data.text_field, validation_fraction=cfg.data.validation_fraction)


def held_out_loss(run_dir: str, eval_texts: list[str]) -> float:
  """Token-weighted mean next-token NLL of a trained LM over the held-out texts (windows of
  its context, as the scorer): sum of NLL over every prediction / number of predictions."""
  from jaxlab import sharding
  meta = score_lib.load_meta_model(run_dir)
  enc = meta.tokenizer.backend_tokenizer
  docs = [np.asarray(e.ids, np.int32) for e in enc.encode_batch(eval_texts)]
  docs = [d for d in docs if len(d) >= 2]
  mesh = sharding.make_mesh([("data", -1)])
  fn = score_lib.make_nll_fn(meta.model, mesh)
  mean, predictions = score_lib.score_token_lists(docs, (fn,), context=meta.context, tokens_per_batch=16384,
                                                  row_multiple=mesh.shape["data"], params=(meta.params,))
  mean = mean[:, 0]
  return float(np.sum(mean * predictions) / np.sum(predictions))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "sf_experiment"))
  p.add_argument("--k", type=float, default=70.0)
  p.add_argument("--meta-steps", type=int, default=META_STEPS)
  p.add_argument("--seeds", default="0,1,2", help="comma-separated; one GPT per selector and seed")
  p.add_argument("--gpt-steps", type=int, default=240, help="steps of every selector's GPT (equal budget)")
  p.add_argument("--gpt-layers", type=int, default=2)
  p.add_argument("--gpt-width", type=int, default=128)
  p.add_argument("--positives", type=int, default=300, help="clean train records sampled as classifier positives")
  p.add_argument("--embed-max-length", type=int, default=256)
  args = p.parse_args(argv)
  shared = builtin.shared_data_dir()
  if shared is None:
    raise SystemExit("this experiment needs ../shared/data (the Pile sample, CCNet and WARC files)")
  wd = os.path.abspath(args.workdir)
  os.makedirs(wd, exist_ok=True)
  t0 = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

  # 1. meta-model pair on the clean corpus
  log("1/4 meta-model pair")
  seeds = [int(x) for x in args.seeds.split(",")]
  pair = train_pair(wd, args.meta_steps, log)
  small_cfg, large_cfg, tok_dir = pair.small_cfg, pair.large_cfg, os.path.join(pair.small_dir, "tokenizer")
  clean = clean_corpus(wd, small_cfg)
  clean_train = [clean.train[i]["text"] for i in range(len(clean.train))]
  clean_eval = [clean.validation[i]["text"] for i in range(len(clean.validation))]
  small, large = score_lib.load_meta_model(pair.small_dir), score_lib.load_meta_model(pair.large_dir)
  check = premise.compare_pair(small, large, clean_eval, source="the clean validation split")
  log("  " + check.describe())
  premise.require_larger_is_better(check)

  # 2. score the Pile sample
  log("2/4 scoring the Pile sample")
  pile = str(shared / "text" / "pile_sample.jsonl")
  scores_path = os.path.join(wd, "scores.jsonl")
  counts = score_lib.score_file(pile, scores_path, small, large, text_field="contents", progress=False)
  rows = [json.loads(l) for l in open(scores_path) if l.strip()]
  rejects = [json.loads(l) for l in open(scores_path + ".rejects.jsonl") if l.strip()]
  log(f"  scored {len(rows)} documents, rejected {len(rejects)} {[r['reason'] for r in rejects]} ({counts})")
  texts = {i: t for i, t in score_lib.read_documents(pile, "contents") if isinstance(t, str)}
  source_of = {str(r["id"]): r["metadata"]["pile_set_name"] for r in map(json.loads, open(pile))}
  ids = [r["id"] for r in rows]
  doc_texts = [texts[i] for i in ids]
  quality = np.array([r["quality_factor"] for r in rows])
  log_d = np.log(quality)
  log(f"  log d: mean {log_d.mean():.4f} std {log_d.std():.4f} min {log_d.min():.4f} max {log_d.max():.4f}; "
      f"share with d > 1: {np.mean(quality > 1):.3f}")

  # 3. every selector
  log("3/4 selecting")
  warc = sorted(str(p) for p in (shared / "text").glob("cc-sample-*.warc.gz"))
  negatives, warc_skipped = [], {}
  for path in warc:
    pages, skipped = warc_texts(path)
    negatives += pages
    warc_skipped = {k: warc_skipped.get(k, 0) + v for k, v in skipped.items()}
  rng = np.random.default_rng(0)
  positives = [clean_train[i] for i in sorted(rng.choice(len(clean_train), args.positives, replace=False))]
  log(f"  classifier: {len(positives)} clean positives, {len(negatives)} raw CommonCrawl pages "
      f"(WARC records without page text: {warc_skipped})")
  temperature = float(log_d.std())

  def selections(seed: int) -> dict[str, np.ndarray]:
    return {
        "topk_qf": select_lib.top_k(quality, args.k),
        "threshold": select_lib.threshold(quality, float(np.exp(log_d.mean()))),
        "temperature": select_lib.temperature_sample(quality, args.k, temperature, seed=seed),
        "random": select_lib.random_select(len(rows), args.k, seed=seed),
        "ppl_gate": select_lib.perplexity_gate([r["ppl_large"] for r in rows], 15.0, 85.0),
        "dsir": select_lib.dsir(doc_texts, clean_train, args.k, seed=seed),
        "classifier": select_lib.classifier_select(doc_texts, positives, negatives, args.k),
    }
  masks = {seed: selections(seed) for seed in seeds}
  kept_dir = os.path.join(wd, "kept")
  os.makedirs(kept_dir, exist_ok=True)
  for seed, by_name in masks.items():
    for name, mask in by_name.items():
      with open(os.path.join(kept_dir, f"{name}_s{seed}.jsonl"), "w") as f:
        for i in np.flatnonzero(mask):
          f.write(json.dumps({"id": ids[i], "text": doc_texts[i]}) + "\n")

  # 4a. semantic diversity (embeddings once)
  log("4/4 diversity and one GPT per kept set")
  from jaxlab.scalingfilter import diversity
  emb_path = os.path.join(wd, f"embeddings_{args.embed_max_length}.npz")
  if os.path.exists(emb_path) and list(np.load(emb_path)["ids"]) == ids:
    emb = np.load(emb_path)["emb"]
  else:
    from jaxlab.models.bert import Embedder
    t = time.perf_counter()
    emb = Embedder().embed(doc_texts, max_length=args.embed_max_length, batch_size=32)
    np.savez(emb_path, emb=emb, ids=np.array(ids))
    log(f"  embedded {len(ids)} documents in {time.perf_counter() - t:.0f} s")
  vendi = {name: np.array([diversity.vendi_score(emb[masks[s][name]]) for s in seeds]) for name in SELECTORS}
  vendi_all = diversity.vendi_score(emb)

  # 4b. one GPT per kept set and seed, equal token budget, held-out clean loss
  gpt_over = [f"model.num_layers={args.gpt_layers}", f"model.d_model={args.gpt_width}", "model.num_heads=4",
              f"train.steps={args.gpt_steps}", "train.eval_every=0", f"train.checkpoint_every={args.gpt_steps}",
              "train.log_every=40", "data.text_field=text", "data.validation_fraction=0.0",
              f"tokenizer.path={tok_dir}"]
  gpt_cfg = lambda name, seed: config_lib.load(META_CONFIG + ":large,clean,cpu", gpt_over + [
      f"seed={seed}", f"data.files=('{os.path.join(kept_dir, f'{name}_s{seed}.jsonl')}',)"])
  first = gpt_cfg(SELECTORS[0], seeds[0])
  budget = args.gpt_steps * first.train.batch_size * first.train.seq_len
  losses = {name: np.zeros(len(seeds)) for name in SELECTORS}
  for j, seed in enumerate(seeds):
    for name in SELECTORS:
      run_dir = os.path.join(wd, "gpt", f"{name}_s{seed}")
      done_path = os.path.join(run_dir, "clean_eval.json")
      if os.path.exists(done_path):
        losses[name][j] = json.load(open(done_path))["loss"]
        continue
      train_lm(gpt_cfg(name, seed), run_dir, log)
      losses[name][j] = held_out_loss(run_dir, clean_eval)
      json.dump({"loss": losses[name][j], "eval_texts": len(clean_eval)}, open(done_path, "w"))
      log(f"  {name} seed {seed}: held-out clean loss {losses[name][j]:.4f}")

  # report
  sources = sorted(set(source_of[i] for i in ids), key=lambda s: -sum(source_of[i] == s for i in ids))
  src = np.array([source_of[i] for i in ids])
  mean = {name: float(losses[name].mean()) for name in SELECTORS}
  std = {name: float(losses[name].std(ddof=1)) if len(seeds) > 1 else 0.0 for name in SELECTORS}
  print()
  print(f"Pile sample: {len(rows)} documents scored; meta-models {small_cfg.model.num_layers}x{small_cfg.model.d_model}"
        f" / {large_cfg.model.num_layers}x{large_cfg.model.d_model}, {args.meta_steps} steps on the clean train split"
        f" (clean validation perplexity small {check.ppl_small:.1f}, large {check.ppl_large:.1f}); every selector's"
        f" GPT: {args.gpt_layers}x{args.gpt_width}, {args.gpt_steps} steps x {first.train.batch_size} x "
        f"{first.train.seq_len} = {budget:,} tokens; held-out clean loss over {len(clean_eval)} records; seeds {seeds}")
  head = (f"{'selector':<12} {'kept':>5} {'vendi':>7} {'clean loss (mean ± std)':>24}  {'per seed':<26} "
          f"{'vs random':>10}  outside both spreads?  paired vs random, per seed")
  print(head)
  print("-" * len(head))
  for name in SELECTORS:
    gap = mean[name] - mean["random"]
    outside = name != "random" and abs(gap) > std[name] + std["random"]
    print(f"{name:<12} {int(masks[seeds[0]][name].sum()):>5} {vendi[name].mean():>7.2f} "
          f"{mean[name]:>15.4f} ± {std[name]:.4f}  {' '.join(f'{x:.4f}' for x in losses[name]):<26} "
          f"{gap:>+10.4f}  {'-' if name == 'random' else ('yes' if outside else 'no'):<21}  "
          f"{' '.join(f'{x:+.4f}' for x in losses[name] - losses['random'])}")
  print(f"{'all (100%)':<12} {len(rows):>5} {vendi_all:>7.2f}")
  print()
  print(f"kept share per pile_set_name (%), seed {seeds[0]}")
  short = {"topk_qf": "topk", "threshold": "thr", "temperature": "temp", "random": "rnd", "ppl_gate": "pplg",
           "dsir": "dsir", "classifier": "clf"}
  print(f"{'pile_set_name':<18} {'n':>4} " + " ".join(f"{short[s]:>5}" for s in SELECTORS))
  for s in sources:
    here = src == s
    print(f"{s:<18} {int(here.sum()):>4} " + " ".join(f"{100 * masks[seeds[0]][n][here].mean():>5.0f}"
                                                    for n in SELECTORS))

  best = min(SELECTORS, key=mean.get)
  print()
  print(f"seconds={time.perf_counter() - t0:.0f}")
  print(f"best={best} qf_loss={mean['topk_qf']:.4f} qf_std={std['topk_qf']:.4f} random_loss={mean['random']:.4f} "
        f"random_std={std['random']:.4f} ppl_gate_loss={mean['ppl_gate']:.4f} dsir_loss={mean['dsir']:.4f} "
        f"classifier_loss={mean['classifier']:.4f} qf_vendi={vendi['topk_qf'].mean():.2f} "
        f"random_vendi={vendi['random'].mean():.2f} ppl_gate_vendi={vendi['ppl_gate'].mean():.2f} seeds={len(seeds)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
