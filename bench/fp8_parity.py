"""FP8-LM loss parity: the same small GPT on real text (Shakespeare + Pride and Prejudice
from ../shared/data), the same steps, initialisation and data order (per seed), trained at
every level: fp32, none (BF16 mixed precision, the baseline), O1, O2, O3, O2 with
DeepSeek-V3 block scaling, and flax.linen.fp8_ops (the peer). Each run goes through the
trainer's functional API (`jaxlab.trainers.lm.train_and_evaluate`) with configs/fp8/gpt.py.

  nice -n 10 python bench/fp8_parity.py [--steps 400 --seeds 0,1,2 --workdir /tmp/fp8_parity]

Prints the final held-out loss of each run (the mean over seeds), its relative gap to
BF16 with the standard error of the per-seed (paired) gaps and the per-seed gaps beside it,
saves the loss curves of the first seed as one PNG, and ends with `max_rel_gap=<..>` over
the FP8-LM levels (O1, O2, O3, O2-block). The goal (issue 3): every FP8 level within 0.5% of
BF16, judged as `bench/fp8_parity_trainers.py` judges it (`met`; `NOT met` when a gap exceeds
the goal by more than two standard errors; otherwise `not resolved`). fp32 is the control:
its gap shows what the measure reports when nothing is in FP8. At CPU sizes one seed is not
enough: the same seed at two precisions drifts apart (a few percent at 150 steps). Finished
runs are cached in `<workdir>/runs.json` under their settings, so a rerun continues.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import numpy as np

from jaxlab import config as config_lib
from jaxlab.train import metrics as metrics_lib
from jaxlab.trainers import lm
from fp8_parity_trainers import GOAL, paired_gap, verdict

# (run name, config argument level, overrides)
RUNS = (
    ("fp32", "fp32", {}),
    ("none", "none", {}),
    ("O1", "O1", {}),
    ("O2", "O2", {}),
    ("O3", "O3", {}),
    ("O2-block", "O2", {"fp8.scaling": "block"}),
    ("flax", "flax", {}),
)
FP8_LEVELS = ("O1", "O2", "O3", "O2-block")
# What a run's result depends on besides its name and seed: the cache key.
SETTINGS = ("steps", "layers", "d_model", "heads", "seq", "batch", "vocab", "lr", "block", "eval_batches", "log_every")


def run_config(level: str, args, overrides: dict, shared: str | None, seed: int = 0):
  c = config_lib.load(f"configs/fp8/gpt.py:{level},tiny")
  c.model.update(num_layers=args.layers, d_model=args.d_model, num_heads=args.heads, max_len=args.seq)
  c.tokenizer.vocab_size = args.vocab
  c.train.update(seq_len=args.seq, batch_size=args.batch, steps=args.steps, log_every=args.log_every,
                 eval_every=args.steps, eval_batches=args.eval_batches, checkpoint_every=args.steps)
  c.optim.update(learning_rate=args.lr, warmup_steps=args.steps // 10)
  c.fp8.block = args.block
  c.seed = seed
  if shared:  # the first run's tokenizer and prepared data: identical inputs for every run
    c.tokenizer.path = os.path.join(shared, "tokenizer")
    c.data.data_dir = os.path.join(shared, "data")
  for key, value in overrides.items():
    c = config_lib.apply_overrides(c, [f"{key}={value}"])
  return c


def plot(curves: dict, png: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for name, points in curves.items():
    steps, losses = zip(*points)
    for ax in axes:
      ax.plot(steps, losses, label=name, lw=1.2, ls="--" if name in ("fp32", "flax") else "-")
  tail = [l for pts in curves.values() for s, l in pts if s >= max(s for s, _ in pts) * 0.5]
  axes[1].set_ylim(min(tail) - 0.02, max(tail) + 0.02)
  axes[1].set_xlim(max(s for pts in curves.values() for s, _ in pts) * 0.5, None)
  axes[0].set_title("train loss")
  axes[1].set_title("train loss, second half")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.tight_layout()
  fig.savefig(png, dpi=100)
  plt.close(fig)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="/tmp/fp8_parity")
  p.add_argument("--steps", type=int, default=400)
  p.add_argument("--layers", type=int, default=2)
  p.add_argument("--d-model", type=int, default=128)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--seq", type=int, default=64)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--vocab", type=int, default=2048)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--block", type=int, default=64)
  p.add_argument("--log-every", type=int, default=10)
  p.add_argument("--eval-batches", type=int, default=40)
  p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (initialisation and data order); "
                 "every run uses each seed, and the gaps compare means over seeds")
  p.add_argument("--only", default="", help="comma-separated run names (default: all)")
  args = p.parse_args()
  seeds = [int(x) for x in args.seeds.split(",")]

  print(f"GPT {args.layers} layers, d_model {args.d_model}, {args.heads} heads, seq {args.seq}, batch {args.batch}, "
        f"BPE vocab {args.vocab}, {args.steps} steps, AdamW lr {args.lr}, seeds {seeds}; data: tinyshakespeare + "
        f"pride_and_prejudice (../shared/data), held-out loss over {args.eval_batches} batches; block scaling "
        f"tiles {args.block}; {os.cpu_count()} CPUs, {jax.devices()[0].platform}; jax {jax.__version__}")

  runs = [r for r in RUNS if not args.only or r[0] in args.only.split(",")]
  os.makedirs(args.workdir, exist_ok=True)
  cache_path = os.path.join(args.workdir, "runs.json")
  cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
  settings = ",".join(f"{k}={getattr(args, k)}" for k in SETTINGS)
  shared, losses, times, curves = None, {}, {}, {}
  for seed in seeds:
    for name, level, overrides in runs:
      workdir = os.path.join(args.workdir, f"{name}_seed{seed}")
      key = f"{name}/{seed}/{settings}"
      if key not in cache:
        shutil.rmtree(workdir, ignore_errors=True)  # the loop resumes from a workdir: start clean
        cfg = run_config(level, args, overrides, shared, seed)
        t0 = time.perf_counter()
        summary = lm.train_and_evaluate(cfg, workdir)
        rows = metrics_lib.read_rows(summary.metrics_path)
        cache[key] = {"loss": summary.metrics["loss"], "time": time.perf_counter() - t0,
                      "curve": [(r["step"], r["loss"]) for r in rows if r["split"] == "train"]}
        json.dump(cache, open(cache_path, "w"))
        print(f"  seed {seed} {name:9s} held-out loss {cache[key]['loss']:.4f}  ({cache[key]['time']:.0f} s)",
              flush=True)
      if shared is None and os.path.isdir(os.path.join(workdir, "tokenizer")):
        shared = workdir  # the first run's tokenizer and prepared data serve every run
      times.setdefault(name, []).append(cache[key]["time"])
      losses.setdefault(name, []).append(cache[key]["loss"])
      if seed == seeds[0]:
        curves[name] = cache[key]["curve"]

  png = os.path.join(args.workdir, "fp8_parity_loss.png")
  plot(curves, png)
  mean = {n: float(np.mean(v)) for n, v in losses.items()}
  print(f"\n{'run':10s} {'held-out loss':>14s} {'gap to none +- SE':>20s} {'per-seed gaps':>28s} {'time/run':>9s}")
  fp8_gaps = []  # (|gap|, its standard error) of each FP8 level
  for name, value in mean.items():
    gap, se, per_seed = paired_gap(losses[name], losses["none"]) if "none" in losses else (float("nan"),) * 3
    if name in FP8_LEVELS:
      fp8_gaps.append((abs(gap), se))
    spread = " ".join(f"{g:+.2%}" for g in np.atleast_1d(per_seed))
    print(f"{name:10s} {value:14.4f} {f'{gap:+.3%} +- {se:.3%}':>20s} {spread:>28s} {np.median(times[name]):8.0f}s")
  print(f"loss curves (seed {seeds[0]}): {png}")
  worst, worst_se = max(fp8_gaps, default=(float("nan"), float("nan")))
  print(f"goal |gap| <= {GOAL:.1%} for every FP8 level (O1, O2, O3, O2-block), on the mean over seeds: "
        f"{verdict(worst, worst_se)} (max {worst:.3%} +- {worst_se:.3%})")
  print(f"max_rel_gap={worst:.4f}")


if __name__ == "__main__":
  main()
