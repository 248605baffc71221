"""Aesthetic alignment on the testbed (jaxlab/align/testbed.py), held out, with its baselines.

For each seed (its own images, labels, pretraining and aesthetic model):
  1. pretrain the two-tower model (frozen MiniLM text tower + trainable projection, ViT
     image tower) and the aesthetic model on the train split
  2. full method: queries about the FINE-TUNING half of the contents, worded by the training
     templates, rephrased (offline, style `details`); top-K, rows by caption relevance,
     columns by the aesthetic model; ranked DPO on the plain query
  3. ablations on the same pretrained and aesthetic models: no rephrasing; plain
     fine-tuning (SFT on each query's top preferred image) instead of DPO; grid rows by the
     retriever's own score instead of caption relevance (preferences.relevance=retriever)
     relevance_first: the grid's pairs as a total order, relevance first (preferences.order=relevance_first)
Reported on the test split's HELD-OUT contents, with query wordings never trained on: HPIR
on the aesthetic and the relevance aspect (plain and confidence-weighted), the true
aesthetic and relevance of each query's top 4, recall@1, and the independent judge (ground
truth with its own noise) against the pretrained model. Baselines in the same table: the
pretrained model, the pretrained model with the rephrased query at inference, the cascade
that re-ranks the pretrained top-K by the aesthetic model, the oracle re-rank by the true
aesthetic. Beside the fine-tuned model, its weights averaged with the pretrained ones
(WiSE-FT, `eval.weight_average`: the alpha chosen on the validation split, see README).

  python bench/align_testbed.py [--seeds 0 1 2] [--quick] [--workdir runs/bench_align] [key=value ...]

Overrides go to every run (e.g. data.source=photos). Every stage is cached under the workdir
(a rerun resumes). Prints the table (mean and spread over seeds), writes it to
bench/results/align_testbed[_SOURCE][_quick].md, and ends with
`heldout_aes_gain=.. heldout_rel_change=.. rephrase_inference_gain=.. cascade_gain=.. oracle_gain=.. seeds=N`
(HPIR points on held-out contents, each system vs the pretrained model, mean over seeds).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

from jaxlab import config as config_lib  # noqa: E402
from jaxlab.trainers import align  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "align", "testbed.py")
QUICK = ["data.num_train=2000", "data.num_val=600", "data.num_test=600", "data.hpir_queries=200",
         "pretrain.train.steps=400", "aesthetic.train.steps=400", "preferences.rounds=10", "dpo.train.steps=150"]
RUNS = (("full", "", []), ("no_rephrase", "no_rephrase", []), ("sft", "sft", []),
        ("retriever_relevance", "", ["preferences.relevance=retriever"]),
        ("relevance_first", "", ["preferences.order=relevance_first"]))
ROWS = [("pretrained", "full", "pretrained"), ("pretrained + rephrase at inference", "full", "pretrained + rephrase"),
        ("cascade: top-K re-ranked by aesthetic model", "full", "cascade (aesthetic model)"),
        ("oracle: top-K re-ranked by true aesthetic", "full", "oracle (true aesthetic)"),
        ("fine-tuned (rephrase + DPO), plain query", "full", "fine-tuned"),
        ("fine-tuned, rephrased query", "full", "fine-tuned + rephrase"),
        ("fine-tuned, weights averaged with pretrained (WiSE-FT)", "full", "fine-tuned, weight-averaged"),
        ("no rephrasing + DPO", "no_rephrase", "fine-tuned"),
        ("rephrase + plain fine-tuning (SFT)", "sft", "fine-tuned"),
        ("rows by the retriever's own score", "retriever_relevance", "fine-tuned"),
        ("relevance-first pairs (a total grid order)", "relevance_first", "fine-tuned")]
COLUMNS = [("aes HPIR", lambda m: m["heldout/aesthetic"]["accuracy"]),
           ("aes wtd", lambda m: m["heldout/aesthetic"]["weighted_accuracy"]),
           ("rel HPIR", lambda m: m["heldout/relevance"]["accuracy"]),
           ("rel wtd", lambda m: m["heldout/relevance"]["weighted_accuracy"]),
           ("top-4 aes", lambda m: m["heldout_top_true_aesthetic"]),
           ("top-4 rel", lambda m: m["heldout_top_relevance"]),
           ("R@1", lambda m: m.get("r@1", np.nan)),
           ("judge win", lambda m: m["judge_vs_pretrained"]["win"]),
           ("judge loss", lambda m: m["judge_vs_pretrained"]["loss"]),
           ("seen aes", lambda m: m["finetune/aesthetic"]["accuracy"]),
           ("val aes", None), ("val rel", None)]


def run_seed(seed: int, workdir: str, overrides: list[str]) -> dict:
  """{run name: report} for the full method and its ablations at one seed."""
  base = os.path.join(workdir, f"seed{seed}")
  data = [f"data.data_dir={os.path.join(workdir, 'data')}"]
  reports = {}
  for name, arg, run_overrides in RUNS:
    reuse = [] if name == "full" else [f"{s}.workdir={base}/full/{s}" for s in ("pretrain", "aesthetic")]
    extra = run_overrides + reuse
    cfg = config_lib.load(f"{CONFIG}:{arg}" if arg else CONFIG, [f"seed={seed}"] + data + overrides + extra)
    t0 = time.perf_counter()
    result = align.train_and_evaluate(cfg, os.path.join(base, name))
    if not result.finished:
      raise SystemExit(align.report(result))
    print(f"[seed {seed}] {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    reports[name] = result.report
  return reports


def value(report: dict, split: str, system: str, column: str, fn) -> float:
  """One cell of the table for one seed."""
  m = report[split][system]
  if column == "val aes":
    return m["heldout/aesthetic"]["accuracy"]
  if column == "val rel":
    return m["heldout/relevance"]["accuracy"]
  return fn(m)


def table(per_seed: list[dict]) -> tuple[str, dict]:
  """The markdown table (mean +- std over seeds, test held-out; val columns on validation)."""
  head = "| system | " + " | ".join(c for c, _ in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
  means = {}
  for label, run, system in ROWS:
    cells = []
    for column, fn in COLUMNS:
      split = "validation" if column.startswith("val ") else "test"
      xs = np.array([value(r[run], split, system, column, fn) for r in per_seed])
      if np.all(np.isnan(xs)):
        cells.append("")
        continue
      means[(label, column)] = float(xs.mean())
      cells.append(f"{xs.mean():.3f}" + (f" ± {xs.std(ddof=1):.3f}" if len(xs) > 1 else ""))
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines), means


def gain(per_seed, run, system, key) -> np.ndarray:
  """Held-out HPIR points of a system over the pretrained model, per seed."""
  return np.array([100 * (r[run]["test"][system][key]["accuracy"] - r["full"]["test"]["pretrained"][key]["accuracy"])
                   for r in per_seed])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--quick", action="store_true", help="smaller data and fewer steps, one seed (a smoke run)")
  parser.add_argument("overrides", nargs="*")
  args = parser.parse_args()
  seeds = args.seeds[:1] if args.quick else args.seeds
  overrides = (QUICK if args.quick else []) + list(args.overrides)
  workdir = args.workdir or ("runs/bench_align_quick" if args.quick else "runs/bench_align")
  t0 = time.perf_counter()
  per_seed = [run_seed(s, workdir, overrides) for s in seeds]
  text, _ = table(per_seed)
  first = per_seed[0]["full"]
  p = first["preferences"]
  notes = [f"aesthetic model: Pearson r with the true aesthetic on test images (seed {seeds[0]}) = "
           f"{first['aesthetic_model_corr']:.3f}",
           f"preferences (seed {seeds[0]}): {p['records']} records ({p['queries']} queries about {p['contents']} "
           f"fine-tuning contents) x {p['pairs_per_record']} pairs; true aesthetic of the top grid cell "
           f"{p['true_aesthetic_top_cell']:.3f} vs the whole grid {p['true_aesthetic_grid']:.3f}; "
           f"{p['relevant_share']:.2f} of the candidates show the query's content; same-content pairs right by "
           f"the true aesthetic: {p['same_content_pair_accuracy']:.3f}",
           f"held-out contents: {', '.join(first['contents']['heldout'])}",
           f"test split, held-out contents, held-out query wordings; mean ± std over seeds {seeds}; "
           f"val columns: validation split; {time.perf_counter() - t0:.0f} s in all"]
  print()
  print("\n".join(notes))
  print(text)
  aes, rel = gain(per_seed, "full", "fine-tuned", "heldout/aesthetic"), gain(per_seed, "full", "fine-tuned",
                                                                            "heldout/relevance")
  reph = gain(per_seed, "full", "pretrained + rephrase", "heldout/aesthetic")
  casc = gain(per_seed, "full", "cascade (aesthetic model)", "heldout/aesthetic")
  orac = gain(per_seed, "full", "oracle (true aesthetic)", "heldout/aesthetic")
  kept = aes.mean() / reph.mean() if reph.mean() else float("nan")
  summary = (f"heldout_aes_gain={aes.mean():.2f} heldout_rel_change={rel.mean():.2f} "
             f"rephrase_inference_gain={reph.mean():.2f} cascade_gain={casc.mean():.2f} "
             f"oracle_gain={orac.mean():.2f} seeds={len(seeds)}")
  avg = "fine-tuned, weight-averaged"
  avg_aes, avg_rel = gain(per_seed, "full", avg, "heldout/aesthetic"), gain(per_seed, "full", avg, "heldout/relevance")
  print(f"per seed: aes gain {np.round(aes, 2).tolist()}, rel change {np.round(rel, 2).tolist()}, "
        f"rephrase-at-inference gain {np.round(reph, 2).tolist()}; fine-tuned keeps {kept:.2f} of it")
  alpha = per_seed[0]["full"]["weight_average"]
  print(f"weight-averaged (alpha {alpha}): aes gain {np.round(avg_aes, 2).tolist()}, rel change "
        f"{np.round(avg_rel, 2).tolist()}; averaged_aes_gain={avg_aes.mean():.2f} averaged_rel_change={avg_rel.mean():.2f} "
        f"averaged_keeps={avg_aes.mean() / reph.mean() if reph.mean() else float('nan'):.2f}")
  if not args.quick or args.workdir == "":
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    source = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("data.source=")), "")
    name = "align_testbed" + (f"_{source}" if source else "") + ("_quick" if args.quick else "") + ".md"
    extra = " ".join(args.overrides)
    with open(os.path.join(ROOT, "bench", "results", name), "w") as f:
      f.write(f"`python bench/align_testbed.py{' --quick' if args.quick else ''}"
              f"{' ' + extra if extra else ''}`\n\n" + "\n\n".join(notes) + "\n\n" + text + "\n\n" + summary + "\n")
  print(summary)


if __name__ == "__main__":
  main()
