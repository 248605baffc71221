"""FP8-LM loss parity beyond the LM: the classify trainer (a ViT on the sklearn digits) and
the alignment trainer's DPO fine-tuning (FP8-LM applies the same framework to instruction
tuning and RLHF), each at none (BF16 mixed precision, the baseline), O1, O2 and O3 over
several seeds, through the trainers' functional APIs with the same config and seed per pair.

  nice -n 10 python bench/fp8_parity_trainers.py [--seeds 0,1,2 --workdir /tmp/fp8_parity_trainers]

classify: the final held-out (test split) loss. align: only the fine-tuning stage changes
level; per seed one BF16 run trains the pretraining and aesthetic stages, and every level
fine-tunes from them (pretrain.workdir / aesthetic.workdir), so the levels differ in the
DPO stage alone, with the trainer's FP8 config (its default `fp8.high_precision` keeps the
towers' first and last GEMMs in BF16; `bench/fp8_dpo_ablation.py` has every GEMM in FP8).
Its loss is the training loss (ranked DPO + contrastive) averaged over the
last `--tail` logged steps (the stage has no held-out loss; the data order is the same at
every level), measured through each level's own (FP8) forward; align_plain is the same
fine-tuned models' loss over one epoch of the preference records through one plain FP32
forward (the trainer's report.json `finetune_loss_plain`), which separates a worse model
from quantization noise in the measurement; align_heldout compares the same models on the
test split's held-out contents (report.json). Prints each level's mean over seeds with its gap to BF16 and the per-seed
gaps, and ends with `max_rel_gap_classify=.. max_rel_gap_align=.. max_rel_gap_align_plain=.. seeds=..`; goal: every
FP8 level within 0.5% on the mean. Runs are cached in the workdir (a rerun continues).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np

from jaxlab import config as config_lib
from jaxlab.trainers import align, classify

LEVELS = ("none", "O1", "O2", "O3")
GOAL = 0.005
ALIGN_CONFIG = "configs/align/testbed.py"


def classify_loss(level: str, seed: int, args) -> float:
  cfg = classify.default_config()
  cfg.seed = seed
  cfg.fp8.level = level
  cfg.model.update(num_layers=2, d_model=64, num_heads=2)
  cfg.train.update(batch_size=64, steps=args.classify_steps, log_every=50, eval_every=0,
                   checkpoint_every=args.classify_steps)
  cfg.optim.update(learning_rate=2e-3, warmup_steps=30)
  cfg.data.data_dir = os.path.join(args.workdir, "digits")
  result = classify.train_and_evaluate(cfg, os.path.join(args.workdir, f"classify_{level}_s{seed}"))
  return float(result.metrics["loss"])


def _align_cfg(level: str, seed: int, args, base: str | None, extra=()):
  overrides = [f"seed={seed}", f"fp8.level={level}", f"dpo.train.steps={args.align_steps}", "dpo.train.log_every=1",
               f"pretrain.train.steps={args.pretrain_steps}", f"aesthetic.train.steps={args.pretrain_steps}",
               f"data.data_dir={os.path.join(args.workdir, f'testbed_s{seed}')}", *getattr(args, "overrides", ()),
               *extra]
  if base:
    overrides += [f"pretrain.workdir={os.path.join(base, 'pretrain')}",
                  f"aesthetic.workdir={os.path.join(base, 'aesthetic')}"]
  return config_lib.load(f"{ALIGN_CONFIG}:{args.align_arg}", overrides)


def align_loss(level: str, seed: int, args) -> float:
  base = os.path.join(args.workdir, f"align_none_s{seed}")
  if level != "none" and not os.path.exists(os.path.join(base, "report.json")):
    align_loss("none", seed, args)
  workdir = base if level == "none" else os.path.join(args.workdir, f"align_{level}_s{seed}")
  result = align.train_and_evaluate(_align_cfg(level, seed, args, None if level == "none" else base), workdir)
  assert result.finished, result.report
  rows = [json.loads(line) for line in open(os.path.join(workdir, "finetune", "metrics.jsonl"))]
  losses = [r["loss"] for r in rows if r.get("split") == "train" and "loss" in r]
  return float(np.mean(losses[-args.tail:]))


def align_plain_loss(level: str, seed: int, args) -> float:
  """The same run's fine-tuned model through one plain FP32 forward (report.json's
  finetune_loss_plain): the levels compared as models, not through their own forwards."""
  align_loss(level, seed, args)  # cached: only makes sure the run exists
  workdir = os.path.join(args.workdir, f"align_none_s{seed}" if level == "none" else f"align_{level}_s{seed}")
  return float(json.load(open(os.path.join(workdir, "report.json")))["finetune_loss_plain"])


HELDOUT = ("heldout_top_true_aesthetic", "r@5")  # report.json test/fine-tuned: held-out contents


def align_heldout(seeds: list[int], args) -> None:
  """The DPO models on the test split (report.json's fine-tuned system): each level's
  paired difference to BF16 per seed, mean +- standard error, for the true aesthetic of the
  top results on held-out contents and recall@5."""
  def metric(level, seed, key):
    workdir = os.path.join(args.workdir, f"align_none_s{seed}" if level == "none" else f"align_{level}_s{seed}")
    return json.load(open(os.path.join(workdir, "report.json")))["test"]["fine-tuned"][key]
  print(f"\nalign_heldout: the fine-tuned models on the test split, paired difference to none over {len(seeds)} seeds "
        "(mean +- standard error)")
  for key in HELDOUT:
    base = np.array([metric("none", s, key) for s in seeds])
    diffs = {level: np.array([metric(level, s, key) for s in seeds]) - base for level in LEVELS[1:]}
    se = lambda d: np.std(d, ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    print(f"{key:28s} none {base.mean():.4f}  " + "  ".join(f"{lv} {d.mean():+.4f} +- {se(d):.4f}"
                                                            for lv, d in diffs.items()))


def table(name: str, losses: dict) -> float:
  """Print one trainer's table; the largest |gap| of an FP8 level's mean to BF16's."""
  base = np.mean(losses["none"])
  print(f"\n{name}: final loss, mean over {len(losses['none'])} seeds; gap to none (BF16) on the mean, then per seed")
  worst = 0.0
  for level in LEVELS:
    mean = float(np.mean(losses[level]))
    per_seed = [(a - b) / b for a, b in zip(losses[level], losses["none"])]
    gap = (mean - base) / base
    if level != "none":
      worst = max(worst, abs(gap))
    print(f"{level:5s} {mean:9.4f}  {gap:+8.3%}   " + " ".join(f"{g:+.2%}" for g in per_seed))
  spread = np.std(losses["none"], ddof=1) / base if len(losses["none"]) > 1 else float("nan")
  print(f"seed-to-seed spread of BF16 (std / mean): {spread:.2%}; goal |gap| <= {GOAL:.1%} for every FP8 level: "
        f"{'met' if worst <= GOAL else 'NOT met'} (max {worst:.3%})")
  return worst


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="/tmp/fp8_parity_trainers")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--classify-steps", type=int, default=300)
  p.add_argument("--align-arg", default="tiny")
  p.add_argument("--pretrain-steps", type=int, default=200)
  p.add_argument("--align-steps", type=int, default=100)
  p.add_argument("--tail", type=int, default=20)
  p.add_argument("--only", default="classify,align")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  only = set(args.only.split(","))
  cache = os.path.join(args.workdir, "losses.json")
  os.makedirs(args.workdir, exist_ok=True)
  done = json.load(open(cache)) if os.path.exists(cache) else {}
  results = {}
  for trainer, fn in (("classify", classify_loss), ("align", align_loss), ("align_plain", align_plain_loss)):
    if trainer.split("_")[0] not in only:
      continue
    results[trainer] = {level: [] for level in LEVELS}
    for seed in seeds:
      for level in LEVELS:
        key = f"{trainer}/{level}/{seed}"
        if key not in done:
          done[key] = fn(level, seed, args)
          json.dump(done, open(cache, "w"), indent=1)
        results[trainer][level].append(done[key])
  worst = {t: table(t, r) for t, r in results.items()}
  if "align" in only:
    align_heldout(seeds, args)
  print(" ".join(f"max_rel_gap_{t}={w:.4f}" for t, w in worst.items()) + f" seeds={len(seeds)}")


if __name__ == "__main__":
  sys.exit(main())
