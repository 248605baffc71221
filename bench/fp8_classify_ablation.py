"""Where the ViT's FP8 gap comes from: the classify trainer at O1 with every GEMM in FP8 and
one piece changed (`--high-precision patch,head`: the ViT's ends kept out of FP8, the
trainer's default), as `bench/fp8_dpo_ablation.py` does for DPO (its variants, applied to this
process's jaxlab.fp8), measured as `bench/fp8_parity_trainers.py`'s classify table (held-out
loss, lr 5e-4, 600 steps, d_model 64) against that bench's BF16 runs of the same seeds, which
it makes if missing (same workdir).

  nice -n 5 python bench/fp8_classify_ablation.py --variant bf16grad [--seeds 0,1,2 --workdir /tmp/fp8pt]

Prints the variant's gap to BF16 on the mean, the standard error of the paired gaps and the
per-seed gaps, then O1's own (the same modules in FP8; the parity bench's runs, made if
missing) and the variant's change to it, paired per seed; last line `classify_ablation variant=..
gap=.. se=.. seeds=..`. Runs are cached.
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

# The DPO ablation's variants that the classify path reads (its `nogemm` patches a hook the
# classify trainer does not call), with two of storage: FP32 weights instead of O1's FP16,
# and FP32 weights with BF16 gradients (flax's storage; the FP8 GEMMs unchanged).
VARIANTS = ("bf16grad", "e4m3bwd", "current", "xwq", "f32weight", "f32weight_bf16grad")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--variant", default="bf16grad", choices=VARIANTS)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--workdir", default="/tmp/fp8pt")
  p.add_argument("--high-precision", default="", help="comma-separated modules kept out of FP8 (e.g. patch,head, "
                 "the trainer's default); default: none, every GEMM in FP8")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  run = parity.parser().parse_args(["--workdir", args.workdir])  # the parity bench's classify setting
  base = [parity.cached_loss("classify", "none", s, run) for s in seeds]  # its BF16 runs (made if missing)
  run.classify_high_precision = args.high_precision  # default "": every GEMM in FP8, as the DPO ablation's variants
  o1 = [parity.cached_loss("classify", "O1", s, run) for s in seeds]  # O1 itself, before the variant patches
  run.overrides = ablation.variant_overrides(args.variant)
  kept = "_hp" + args.high_precision.replace(",", "+") if args.high_precision else ""
  run.workdir = os.path.join(args.workdir, f"ablation_{args.variant}{kept}")
  losses = [parity.cached_loss("classify", "O1", s, run) for s in seeds]  # in the variant's own losses.json
  gap, se, gaps = parity.paired_gap(losses, base)
  print(f"O1 {args.variant}: gap to none {gap:+.3%} +- {se:.3%}   " + " ".join(f"{g:+.2%}" for g in gaps))
  gap_o1, se_o1, gaps_o1 = parity.paired_gap(o1, base)
  change = gaps - gaps_o1  # the variant's effect, paired per seed
  print(f"O1 itself: gap to none {gap_o1:+.3%} +- {se_o1:.3%}; the variant changes it by {change.mean():+.3%} "
        f"+- {parity.standard_error(change):.3%}   " + " ".join(f"{g:+.2%}" for g in change))
  print(json.dumps(dict(zip(map(str, seeds), losses))))
  print(f"classify_ablation variant={args.variant} gap={gap:.4f} se={se:.4f} seeds={len(seeds)}")


if __name__ == "__main__":
  sys.exit(main())
