"""Does the quality factor rank clean text above corrupted text? ROC-AUC of clean vs graded
corruptions of the same held-out documents, for four document scores:

  qf        ScalingFilter's quality factor d = PPL_small / PPL_large (higher = kept)
  ppl       perplexity gating's signal: the large meta-model's perplexity (lower = kept)
  fasttext  a fastText classifier trained as DCLM trains its filter (word bigrams, supervised):
            positives clean train records, negatives the raw CommonCrawl pages of the WARC
            samples (visible text, cut into pieces of at most 100 words), as many of each
  dsir      DSIR's log importance weight (hashed word 1-2-grams, add-one smoothing) of the
            clean train split against the pool being scored

  nice -n 10 .venv/bin/python bench/scalingfilter_validity.py [--workdir runs/sf_experiment] [--docs 200]

The meta-model pair is bench/scalingfilter_experiment.py's (configs/scalingfilter/meta_pair.py:
{small,large},clean,cpu: the LM trainer on all the local clean text, Shakespeare, Pride and
Prejudice, the 20 CCNet documents and the pydoc prose, 10% of records held out); it is trained
here when the workdir does not hold it yet, and checked for the premise (the large model
has the lower perplexity on the evaluation documents) before anything is ranked. Evaluation
documents are held-out (validation split) records of at least --min-words words, none of
which the pair, the classifier or DSIR's target saw. Each is corrupted by each kind of
jaxlab.scalingfilter.validity.CORRUPTIONS at severities 1-3. Intervals: 95% percentile
bootstrap over source documents (a document's clean and corrupted versions resampled
together). Last line: `auc_qf=.. auc_ppl=.. auc_fasttext=.. auc_dsir=..` (all corruptions).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import scalingfilter_experiment as experiment  # noqa: E402  (the pair, the clean corpus, WARC text)
from jaxlab import config as config_lib  # noqa: E402
from jaxlab.data import builtin  # noqa: E402
from jaxlab.scalingfilter import premise, score as score_lib, select as select_lib, validity  # noqa: E402

METHODS = ("qf", "ppl", "fasttext", "dsir")


def warc_pieces(shared, max_words: int) -> list[str]:
  """The WARC pages' visible text in pieces of whole lines of at most max_words words."""
  pieces = []
  for path in sorted((shared / "text").glob("cc-sample-*.warc.gz")):
    for page in experiment.warc_texts(str(path))[0]:
      piece = []
      for line in page.split("\n"):
        if piece and len(" ".join(piece).split()) + len(line.split()) > max_words:
          pieces.append("\n".join(piece))
          piece = []
        piece.append(line)
      if piece:
        pieces.append("\n".join(piece))
  return [p for p in pieces if len(p.split()) >= 5]


def fasttext_scorer(positives: list[str], negatives: list[str], workdir: str, seed: int):
  """DCLM's recipe on this data: fastText supervised, word bigrams, defaults otherwise; one
  thread and a fixed seed so the run repeats. Returns texts -> P(clean)."""
  import fasttext
  flat = lambda t: " ".join(t.split())  # fastText reads one example per line
  path = os.path.join(workdir, "fasttext_train.txt")
  rows = [f"__label__clean {flat(t)}" for t in positives] + [f"__label__cc {flat(t)}" for t in negatives]
  np.random.default_rng(seed).shuffle(rows)
  with open(path, "w") as f:
    f.write("\n".join(rows) + "\n")
  model = fasttext.train_supervised(input=path, wordNgrams=2, thread=1, seed=seed, verbose=0)

  def score(texts):
    labels, probs = model.predict([flat(t) for t in texts], k=2)
    return np.array([dict(zip(l, p)).get("__label__clean", 0.0) for l, p in zip(labels, probs)])
  return score


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default=os.path.join(REPO, "runs", "sf_experiment"))
  p.add_argument("--meta-steps", type=int, default=experiment.META_STEPS)
  p.add_argument("--docs", type=int, default=200, help="held-out clean documents (each corrupted 7 x 3 ways)")
  p.add_argument("--min-words", type=int, default=40)
  p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  shared = builtin.shared_data_dir()
  if shared is None:
    raise SystemExit("this benchmark needs ../shared/data (the clean corpus and the WARC samples)")
  wd = os.path.abspath(args.workdir)
  t0 = time.perf_counter()
  log = lambda msg: print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

  log("1/4 meta-model pair")
  pair = experiment.train_pair(wd, args.meta_steps, log)
  clean = experiment.clean_corpus(wd, pair.small_cfg)
  train = [clean.train[i]["text"] for i in range(len(clean.train))]
  held = [clean.validation[i]["text"] for i in range(len(clean.validation))]
  rng = np.random.default_rng(args.seed)
  eligible = [t for t in held if len(t.split()) >= args.min_words]
  docs = [eligible[i] for i in sorted(rng.choice(len(eligible), min(args.docs, len(eligible)), replace=False))]

  log("2/4 corrupting")
  bad, bad_src, bad_kind, bad_sev = [], [], [], []
  for i, text in enumerate(docs):
    for kind in validity.CORRUPTIONS:
      for sev in validity.SEVERITIES:
        bad.append(validity.corrupt(text, kind, sev, rng))
        bad_src.append(i), bad_kind.append(kind), bad_sev.append(sev)
  bad_src, bad_kind, bad_sev = np.array(bad_src), np.array(bad_kind), np.array(bad_sev)
  log(f"  {len(docs)} clean documents (of {len(eligible)} held-out records with >= {args.min_words} words; "
      f"mean {np.mean([len(t.split()) for t in docs]):.0f} words), {len(bad)} corrupted versions")

  log("3/4 scoring")
  small, large = score_lib.load_meta_model(pair.small_dir), score_lib.load_meta_model(pair.large_dir)
  check = premise.compare_pair(small, large, docs, source="the clean evaluation documents")
  log("  " + check.describe())
  premise.require_larger_is_better(check)
  scores = score_lib.score_texts(docs + bad, small, large)
  bf16 = score_lib.score_texts(docs + bad, small, large, options=score_lib.ScoreOptions(dtype="bfloat16"))
  bf16_delta = np.abs(np.log(bf16.quality_factor) - np.log(scores.quality_factor))
  unscored = [r for r in scores.reasons if r]
  if unscored:
    raise SystemExit(f"{len(unscored)} texts could not be scored ({sorted(set(unscored))}); none may drop out")
  negatives = warc_pieces(shared, 100)
  positives = [train[i] for i in sorted(rng.choice(len(train), len(negatives), replace=False))]
  with tempfile.TemporaryDirectory() as tmp:
    fasttext = fasttext_scorer(positives, negatives, tmp, args.seed)
  values = {
      "qf": scores.quality_factor,
      "ppl": -scores.ppl_large,
      "fasttext": fasttext(docs + bad),
      "dsir": select_lib.dsir_log_weights(docs + bad, train),
  }
  log(f"  fastText: {len(positives)} clean train records vs {len(negatives)} raw CommonCrawl pieces")

  log("4/4 ROC-AUC with bootstrap intervals")
  n = len(docs)
  groups = [(kind, bad_kind == kind) for kind in validity.CORRUPTIONS]
  groups += [(f"severity {s}", bad_sev == s) for s in validity.SEVERITIES] + [("all", np.ones(len(bad), bool))]
  table = {}
  for name, mask in groups:
    table[name] = {m: validity.auc_interval(values[m][:n], values[m][n:][mask], bad_src[mask], n_boot=args.boot,
                                            seed=args.seed) for m in METHODS}
  with open(os.path.join(wd, "validity.json"), "w") as f:
    json.dump({"docs": n, "corrupted": len(bad), "pair": check.as_dict(), "auc": table}, f, indent=1)

  print()
  print(f"{n} held-out clean documents x {len(validity.CORRUPTIONS)} corruptions x {len(validity.SEVERITIES)} "
        f"severities; meta-models {pair.small_cfg.model.num_layers}x{pair.small_cfg.model.d_model} / "
        f"{pair.large_cfg.model.num_layers}x{pair.large_cfg.model.d_model}, {args.meta_steps} steps "
        f"(held-out perplexity small {check.ppl_small:.1f}, large {check.ppl_large:.1f}); ROC-AUC of clean vs "
        f"corrupted (0.5 = chance, 1 = every clean document above every corrupted one), 95% bootstrap interval")
  print(f"{'corruption':<18} " + " ".join(f"{m:>20}" for m in METHODS))
  for name, _ in groups:
    print(f"{name:<18} " + " ".join(f"{a:>8.3f} [{lo:.3f},{hi:.3f}]" for a, lo, hi in
                                    (table[name][m] for m in METHODS)))
  print(f"\nbfloat16 scoring (ScoreOptions(dtype='bfloat16')) against float32 over the {len(bf16_delta)} texts: "
        f"|delta log d| mean {bf16_delta.mean():.1e}, max {bf16_delta.max():.1e} (std of log d "
        f"{np.std(np.log(scores.quality_factor)):.2f}); qf AUC in bfloat16 "
        f"{validity.roc_auc(np.log(bf16.quality_factor[:n]), np.log(bf16.quality_factor[n:])):.3f}")
  print(f"seconds={time.perf_counter() - t0:.0f}")
  print(" ".join(f"auc_{m}={table['all'][m][0]:.3f}" for m in METHODS))
  return 0


if __name__ == "__main__":
  sys.exit(main())
