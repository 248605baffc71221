"""Where the ViT's FP8 gap comes from: the classify trainer at O1 with every GEMM in FP8 and
one piece changed, as `bench/fp8_dpo_ablation.py` does for DPO (its variants, applied to this
process's jaxlab.fp8), measured as `bench/fp8_parity_trainers.py`'s classify table (held-out
loss, lr 5e-4, 600 steps, d_model 64) against that bench's BF16 runs of the same seeds, which
it makes if missing (same workdir).

  nice -n 5 python bench/fp8_classify_ablation.py --variant bf16grad [--seeds 0,1,2 --workdir /tmp/fp8pt]

Prints the variant's gap to BF16 on the mean, the standard error of the paired gaps and the
per-seed gaps; last line `classify_ablation variant=.. gap=.. se=.. seeds=..`. Runs are cached.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fp8_dpo_ablation as ablation
import fp8_parity_trainers as parity


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--variant", default="bf16grad", choices=("bf16grad", "e4m3bwd"))
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--workdir", default="/tmp/fp8pt")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  run = parity.parser().parse_args(["--workdir", args.workdir])  # the parity bench's classify setting
  base = [parity.classify_loss("none", s, run) for s in seeds]  # its BF16 runs (made if missing)
  assert not ablation.variant_overrides(args.variant)  # these variants only patch this process's jaxlab.fp8
  run.classify_high_precision = ""  # every GEMM in FP8, as the DPO ablation's variants
  run.workdir = os.path.join(args.workdir, f"ablation_{args.variant}")
  losses = [parity.classify_loss("O1", s, run) for s in seeds]
  gap, se, gaps = parity.paired_gap(losses, base)
  print(f"O1 {args.variant}: gap to none {gap:+.3%} +- {se:.3%}   " + " ".join(f"{g:+.2%}" for g in gaps))
  print(json.dumps(dict(zip(map(str, seeds), losses))))
  print(f"classify_ablation variant={args.variant} gap={gap:.4f} se={se:.4f} seeds={len(seeds)}")


if __name__ == "__main__":
  sys.exit(main())
