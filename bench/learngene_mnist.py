"""TLEG on MNIST: teacher -> auxiliary model (depth 6, distilled) -> descendants of
depths 2, 3, 4, 6, 8 trained for S and S/2 steps, against the same ViT from scratch for
S steps. Every run goes through jaxlab's classify trainer (configs/learngene/vit.py).

  python bench/learngene_mnist.py [--steps S] [--out runs/learngene_mnist]

Data: the MNIST test set in ../shared/data (10,000 images): first 8,000 train, last 2,000
test. Without ../shared it falls back to scikit-learn's digits (1,437 / 360) and says so.
Last line: `min_speedup=<..> stored_ratio=<..>` where speedup = S / (steps a descendant
needs to reach scratch's final accuracy) and stored_ratio = parameters stored for one
pretrained model per depth / parameters of the learngene (with its shared parts).
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil

import jax

from jaxlab import config as config_lib
from jaxlab.data import builtin
from jaxlab.trainers import classify

DEPTHS = (2, 3, 4, 6, 8)
CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "learngene" / "vit.py")


def run(role: str, workdir: str, overrides: list[str]) -> dict:
  cfg = config_lib.load(f"{CONFIG}:{role}", overrides)
  result = classify.train_and_evaluate(cfg, workdir)
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return {**result.metrics, "parameters_stored": result.parameters_stored,
          "curve": [(r["step"], r["accuracy"]) for r in rows if r["split"] == "eval"]}


def steps_to_reach(curve, target: float) -> int | None:
  for step, acc in curve:
    if acc >= target - 1e-9:
      return step
  return None


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--steps", type=int, default=600, help="S: steps of scratch and long descendants")
  p.add_argument("--teacher-steps", type=int, default=1000)
  p.add_argument("--aux-steps", type=int, default=1000)
  p.add_argument("--out", default="runs/learngene_mnist")
  args = p.parse_args()
  shutil.rmtree(args.out, ignore_errors=True)
  dataset = "mnist" if builtin.shared_data_dir() is not None else "digits"
  S = args.steps
  evals = max(S // 12, 1)
  base = [f"data.data_dir={args.out}/data", "train.log_every=50", "train.checkpoint_every=100000"]
  print(f"data: {dataset} ({'8,000 train / 2,000 test of the MNIST test set' if dataset == 'mnist' else '1,437 / 360 sklearn digits, ../shared absent'})"
        f"; {jax.device_count()} {jax.default_backend()} device(s); S={S}")

  teacher = run(f"teacher,{dataset}", f"{args.out}/teacher", base + [f"train.steps={args.teacher_steps}",
                                                                     f"train.eval_every={args.teacher_steps}"])
  aux = run(f"auxiliary,{dataset}", f"{args.out}/aux", base + [f"train.steps={args.aux_steps}",
                                                              f"train.eval_every={args.aux_steps}",
                                                              f"distill.teacher_workdir={args.out}/teacher"])
  print(f"teacher (depth 8): accuracy {teacher['accuracy']:.4f}; auxiliary (depth 6, distilled): "
        f"accuracy {aux['accuracy']:.4f}; learngene stored: {aux['parameters_stored']:,} parameters")

  rows, speedups, per_depth_params = [], [], 0
  for depth in DEPTHS:
    common = base + [f"model.num_layers={depth}", f"train.eval_every={evals}"]
    scratch = run(f"scratch,{dataset}", f"{args.out}/scratch{depth}", common + [f"train.steps={S}"])
    des = run(f"descendant,{dataset}", f"{args.out}/des{depth}",
              common + [f"train.steps={S}", f"learngene.gene_workdir={args.out}/aux"])
    half = run(f"descendant,{dataset}", f"{args.out}/des{depth}_half",
               common + [f"train.steps={S // 2}", f"learngene.gene_workdir={args.out}/aux"])
    target = scratch["accuracy"]
    reach = steps_to_reach(des["curve"], target)
    speedup = S / reach if reach else 0.0
    speedups.append(speedup)
    per_depth_params += scratch["parameters_stored"]
    rows.append((depth, scratch["accuracy"], des["accuracy"], half["accuracy"], reach, speedup,
                 scratch["parameters_stored"]))

  print(f"\n| depth | scratch acc (S={S}) | descendant acc (S) | descendant acc (S/2={S // 2}) | "
        f"steps to scratch acc | speedup | params per model |")
  print("|---|---|---|---|---|---|---|")
  for depth, s_acc, d_acc, h_acc, reach, speedup, n in rows:
    print(f"| {depth} | {s_acc:.4f} | {d_acc:.4f} | {h_acc:.4f} | {reach if reach else 'not reached'} | "
          f"{speedup:.2f}x | {n:,} |")
  stored_ratio = per_depth_params / aux["parameters_stored"]
  print(f"\nparameters stored: one pretrained model per depth {per_depth_params:,}; "
        f"learngene + shared parts {aux['parameters_stored']:,}")
  print(f"min_speedup={min(speedups):.2f} stored_ratio={stored_ratio:.2f}")


if __name__ == "__main__":
  main()
