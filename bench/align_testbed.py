"""Aesthetic alignment on the rendered testbed (jaxlab/align/testbed.py), in one process:

  1. pretrain the two-tower model (contrastive) and the aesthetic model; measure HPIR
     accuracy and recall@1 ("before")
  2. full method: queries rephrased (offline expander, style `details`); top-K retrieved
     and cut into the rows of a u x v grid by the rephrased query, each row sorted by
     the aesthetic model; ranked DPO on the original query + contrastive
  3. ablations on the same pretrained and aesthetic models: no rephrasing; plain
     fine-tuning (contrastive on each query's top preferred image) instead of DPO

  nice -n 10 python bench/align_testbed.py [--workdir runs/bench_align] [key=value ...]

Overrides go to every run (e.g. dpo.train.steps=200; pretrain.workdir=RUN/full/pretrain
aesthetic.workdir=RUN/full/aesthetic reuse the models of an earlier run). Prints a table
and, last, `hpir_before=.. hpir_after=.. r1_before=.. r1_after=..` (test split) for the
full method.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxlab import config as config_lib  # noqa: E402
from jaxlab.trainers import align  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "align", "testbed.py")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default="runs/bench_align")
  parser.add_argument("overrides", nargs="*")
  args = parser.parse_args()
  full_dir = os.path.join(args.workdir, "full")
  # the ablations reuse the full run's pretrained and aesthetic models (or those given)
  reuse = [f"{stage}.workdir={full_dir}/{stage}" for stage in ("pretrain", "aesthetic")
           if not any(o.startswith(f"{stage}.workdir=") for o in args.overrides)]
  runs = [("full (rephrase + DPO)", "", full_dir, []),
          ("no rephrasing + DPO", "no_rephrase", os.path.join(args.workdir, "no_rephrase"), reuse),
          ("rephrase + plain fine-tuning", "sft", os.path.join(args.workdir, "sft"), reuse)]
  reports = []
  for name, arg, workdir, extra in runs:
    t0 = time.perf_counter()
    cfg = config_lib.load(f"{CONFIG}:{arg}" if arg else CONFIG, list(args.overrides) + extra)
    summary = align.train_and_evaluate(cfg, workdir)
    if not summary.finished:
      raise SystemExit(align.report(summary))
    reports.append((name, summary.report, time.perf_counter() - t0))

  first = reports[0][1]
  print()
  print(f"aesthetic model: Pearson r with the true aesthetic score on test images = "
        f"{first['aesthetic_model_corr']:.3f}")
  p = first["preferences"]
  print(f"preferences: {p['records']} records x {p['pairs_per_record']} pairs; mean true aesthetic of the top grid "
        f"cell {p['true_aesthetic_top_cell']:.3f} vs the whole grid {p['true_aesthetic_grid']:.3f}; "
        f"{p['relevant_share']:.2f} of the candidates show the query's content; same-content pairs right by the "
        f"true aesthetic: {p['same_content_pair_accuracy']:.3f}")
  print("test split (reported); validation split (settings are chosen on it; its images are in no grid):")
  head = f"{'model':32s}{'HPIR acc':>10s}{'HPIR wtd':>10s}{'R@1':>8s}{'R@5':>8s}{'top-4 aes':>11s}" \
         f"{'judge W/T/L':>16s}{'val HPIR':>10s}{'val R@1':>9s}{'time s':>8s}"
  print(head)
  b, vb = first["before"], first["val_before"]
  print(f"{'pretrained':32s}{b['accuracy']:10.3f}{b['weighted_accuracy']:10.3f}{b['r@1']:8.3f}{b['r@5']:8.3f}"
        f"{b['top_true_aesthetic']:11.3f}{'':>16s}{vb['accuracy']:10.3f}{vb['r@1']:9.3f}")
  for name, rep, secs in reports:
    a, va, j = rep["after"], rep["val_after"], rep["judge_after_vs_before"]
    jt = f"{j['win']:.2f}/{j['tie']:.2f}/{j['loss']:.2f}"
    print(f"{name:32s}{a['accuracy']:10.3f}{a['weighted_accuracy']:10.3f}{a['r@1']:8.3f}{a['r@5']:8.3f}"
          f"{a['top_true_aesthetic']:11.3f}{jt:>16s}{va['accuracy']:10.3f}{va['r@1']:9.3f}{secs:8.0f}")
  a = first["after"]
  print(f"hpir_before={b['accuracy']:.4f} hpir_after={a['accuracy']:.4f} r1_before={b['r@1']:.4f} "
        f"r1_after={a['r@1']:.4f}")


if __name__ == "__main__":
  main()
