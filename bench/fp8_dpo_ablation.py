"""Where the FP8 DPO gap comes from: the alignment trainer's DPO fine-tuning at O1 with one
piece of FP8 changed at a time, each model measured as `bench/fp8_parity_trainers.py`'s
align_plain does (its loss over one epoch of the preference records through one plain FP32
forward, report.json's `finetune_loss_plain`), as a gap to the BF16 (none) run of the same
seed. Uses (and, if missing, makes) that bench's BF16 pretraining and aesthetic stages per
seed in the same workdir; every fine-tune here, the BF16 baseline and O1 included, is run
from them by this script, so the whole table comes from one version of the code.

  nice -n 5 python bench/fp8_dpo_ablation.py [--seeds 0,1,2 --workdir /tmp/fp8_parity_trainers]
  nice -n 5 python bench/fp8_dpo_ablation.py --variants none,O1,nogemm --set model.d_model=256 \
      --set model.num_heads=4 --workdir /tmp/dpo_d256    # the towers 4x as wide (own pretraining)

Variants (none is the BF16 baseline; the others change O1 in one place; the ones below the
line replace the FP8 GEMM by an F32 one on operands rounded to E4M3 with a straight-through
gradient, so nothing in the backward pass is quantized):
  none        BF16 mixed precision, the baseline of every gap
  O1          every GEMM in FP8 (the trainer before `fp8.high_precision`)
  nogemm      BF16 GEMMs; O1's FP16 weights, E4M3 weight gradients and optimizer kept
  bf16grad    FP8 GEMMs, but the weight gradient stays BF16 (no E4M3 port, no encoding)
  e4m3bwd     output gradients in E4M3 instead of E5M2
  current     current instead of delayed scaling
  block32     block scaling, 1x32 / 32x32 tiles
  ends16      the first and last GEMMs of each tower (the ViT's patch embedding, the image and
              text projections) in BF16, every other GEMM FP8 (`fp8.high_precision`, the
              alignment trainer's default; Transformer Engine and DeepSeek-V3 keep a model's
              ends in higher precision). Every other variant has all GEMMs in FP8
  ---
  xwq         forward operands x and w rounded to E4M3 (per-tensor current scales)
  xq / wq     only x / only w rounded
Most variants are made by replacing module attributes of jaxlab.fp8 in this process (an
ablation, not a supported configuration); current, block32 and ends16 are config overrides. Last line: `dpo_gap O1=.. nogemm=.. ... seeds=..`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax.numpy as jnp
import numpy as np
from jax import lax

import fp8_parity_trainers as parity
from jaxlab import fp8
from jaxlab.fp8 import dot as fp8_dot, formats, optim as fp8_optim
from jaxlab.trainers import align

VARIANTS = ("none", "O1", "nogemm", "bf16grad", "e4m3bwd", "current", "block32", "ends16", "xwq", "xq", "wq")
ENDS = tuple(align.default_config().fp8.high_precision)  # the towers' first and last GEMMs (the trainer's default)


def _no_port():
  recipe = fp8.recipe
  fp8.recipe = lambda f: dataclasses.replace(recipe(f), fp8_wgrad=False)


def _rounded_forward(which: str):
  """The FP8 dot replaced by an F32 dot whose `which` operands are rounded to E4M3."""
  def rounded(a):
    q = formats.to_scaled(a, formats.E4M3).dequantize(a.dtype)
    return a + lax.stop_gradient(q - a)  # straight-through

  def dot(x, w, meta, port, w_scale, dims, recipe):
    x, w = (rounded(x) if "x" in which else x), (rounded(w) if "w" in which else w)
    return lax.dot_general(x, w, dims, preferred_element_type=jnp.float32).astype(x.dtype)
  fp8_dot._fp8_dot = dot


def apply_variant(variant: str) -> list[str]:
  """Change this process's jaxlab.fp8 for `variant`; the config overrides it needs. Every
  variant but ends16 starts from O1 with every GEMM in FP8 (`fp8.high_precision=()`)."""
  if variant == "ends16":
    return [f"fp8.high_precision={ENDS!r}"]
  return ["fp8.high_precision=()", *variant_overrides(variant)]


def variant_overrides(variant: str) -> list[str]:
  """Patch this process's jaxlab.fp8 for `variant` (O1 with one piece changed); the config
  overrides it needs besides."""
  if variant == "nogemm":
    _no_port()
    fp8.dot_general_for = lambda f: None
  elif variant == "bf16grad":
    fp8_optim.LEVELS["O1"] = dataclasses.replace(fp8_optim.LEVELS["O1"], grad=jnp.bfloat16)
    _no_port()
  elif variant == "f32weight":  # FP32 weights (O1 keeps them in FP16, as the master copy)
    return ["fp8.master=fp32"]
  elif variant == "f32weight_bf16grad":  # both: flax's storage (FP32 weights, gradients in the compute dtype)
    variant_overrides("bf16grad")
    return ["fp8.master=fp32"]
  elif variant == "e4m3bwd":
    fp8_dot.E5M2 = fp8_dot.E4M3
  elif variant == "current":
    return ["fp8.scaling=current"]
  elif variant == "block32":
    return ["fp8.scaling=block", "fp8.block=32"]
  elif variant in ("xwq", "xq", "wq"):
    _no_port()
    _rounded_forward(variant[:-1])
    return ["fp8.scaling=current"]
  return []


def variant_losses(variant: str, seeds: list[int], args) -> dict:
  """{seed: plain FP32 loss} of `variant`'s fine-tuned models (this process gets the variant)."""
  extra = apply_variant(variant)
  out = {}
  for seed in seeds:
    base = os.path.join(args.workdir, f"align_none_s{seed}")
    if not os.path.exists(os.path.join(base, "report.json")):
      parity.align_loss("none", seed, args)
    workdir = os.path.join(args.workdir, f"dpo_ablation_{variant}_s{seed}")
    if not os.path.exists(os.path.join(workdir, "report.json")):
      level = "none" if variant == "none" else "O1"
      assert align.train_and_evaluate(parity._align_cfg(level, seed, args, base, extra), workdir).finished
    out[seed] = float(json.load(open(os.path.join(workdir, "report.json")))["finetune_loss_plain"])
  return out


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", default="/tmp/fp8_parity_trainers")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--one", default="", help="(internal) run this one variant in this process and print its losses")
  p.add_argument("--align-arg", default="tiny")
  p.add_argument("--pretrain-steps", type=int, default=200)
  p.add_argument("--align-steps", type=int, default=100)
  p.add_argument("--tail", type=int, default=20)
  p.add_argument("--set", dest="overrides", action="append", default=[],
                 help="a config override for every stage, pretraining included (e.g. model.d_model=256)")
  args = p.parse_args()
  seeds = [int(s) for s in args.seeds.split(",")]
  if args.one:
    print(json.dumps(variant_losses(args.one, seeds, args)))
    return
  os.makedirs(args.workdir, exist_ok=True)
  def losses_of(variant):  # a process per variant: the variants patch jaxlab.fp8's module attributes
    run = subprocess.run([sys.executable, __file__, "--one", variant, *sys.argv[1:]], check=True,
                         capture_output=True, text=True)
    return {int(k): v for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}

  none = losses_of("none")
  gaps = {}
  print(f"DPO fine-tuning, gap of the plain FP32 loss to BF16 (none: mean {np.mean(list(none.values())):.4f}), "
        f"mean over seeds {seeds}, then per seed")
  for variant in [v for v in args.variants.split(",") if v != "none"]:
    losses = losses_of(variant)
    per_seed = [(losses[s] - none[s]) / none[s] for s in seeds]
    gaps[variant] = float(np.mean(per_seed))
    print(f"{variant:9s} {gaps[variant]:+8.3%}   " + " ".join(f"{g:+.2%}" for g in per_seed), flush=True)
  print("dpo_gap " + " ".join(f"{v}={g:+.4f}" for v, g in gaps.items()) + f" seeds={len(seeds)}")


if __name__ == "__main__":
  main()
