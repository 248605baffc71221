"""FP8 mixed-precision training after FP8-LM (MS-AMP) and DeepSeek-V3's block scaling.

Pieces (each usable on its own from a notebook):
  formats   E4M3/E5M2, quantize = scale, clip, cast; ScaledTensor; block-scaled GEMM
  dot       FP8 dot_general with a custom VJP, scale state in the `fp8_meta` collection
  optim     the levels (none/O1/O2/O3) as storage formats; AdamW with FP8/FP16 moments
  comm      FP8 gradient all-reduce with automatic scaling (jax.shard_map)
  memory    bytes per parameter of a real train state, by category

This module wires them to a trainer's config (`cfg.fp8`): `task_options`, `dot_general_for`
and `optimizer_for` are all a trainer needs.
"""
from __future__ import annotations

import functools

import ml_collections
import optax
from flax.linen import fp8_ops

from jaxlab import config as config_lib
from jaxlab.fp8 import comm, dot, formats, memory, optim as fp8_optim
from jaxlab.fp8.dot import Recipe
from jaxlab.train import optim as train_optim

# fp32: no mixed precision at all; flax: the peer, flax.linen.fp8_ops (FP8 GEMM inputs with
# delayed scaling, everything else as BF16 mixed precision "none").
LEVEL_NAMES = ("fp32",) + tuple(fp8_optim.LEVELS) + ("flax",)


def default_config() -> dict:
  return dict(level="fp32", scaling="delayed", history=16, margin=0, power_of_two=False, block=128, comm=False)


def validate(cfg: ml_collections.ConfigDict, mesh) -> None:
  f, req = cfg.fp8, config_lib.require
  req(f.level in LEVEL_NAMES, "fp8.level", f"{f.level!r} is not one of {LEVEL_NAMES}")
  req(f.scaling in dot.SCALINGS, "fp8.scaling", f"{f.scaling!r} is not one of {dot.SCALINGS}")
  req(f.history >= 1, "fp8.history", "must be at least 1")
  req(f.block >= 1, "fp8.block", "must be positive")
  if f.comm:
    req(f.level in ("O1", "O2", "O3"), "fp8.comm", f"FP8 gradient communication needs level O1/O2/O3, not {f.level!r}")
    req("data" in mesh.shape, "fp8.comm", "the mesh needs a 'data' axis")
    req(cfg.sharding.layout in ("dp", "zero"), "fp8.comm",
        f"runs the gradient sync in shard_map with replicated weights: sharding.layout must be dp or zero, "
        f"not {cfg.sharding.layout!r}")
  t = cfg.train
  data = mesh.shape.get("data", 1)
  req(t.grad_accum >= 1 and t.batch_size % (t.grad_accum * data) == 0, "train.grad_accum",
      f"batch_size={t.batch_size} must split into grad_accum={t.grad_accum} microbatches on {data} data shards")


def recipe(f) -> Recipe:
  return Recipe(scaling=f.scaling, history=f.history, margin=f.margin, power_of_two=f.power_of_two, block=f.block)


def dot_general_for(f):
  """The models' `dot_general_cls`: FP8 GEMMs for O1/O2/O3 (and flax's for the peer)."""
  if f.level == "flax":
    return functools.partial(fp8_ops.Fp8DirectDotGeneralOp, amax_history_length=f.history)
  return dot.dot_general_cls(recipe(f)) if f.level in ("O1", "O2", "O3") else None


def task_options(f) -> dict:
  """Task fields (train/state.py) for the level: storage formats, amax observations, sync."""
  if f.level == "fp32":
    return {}
  if f.level == "flax":  # flax returns the new scale state as the state's "gradient"
    return dict(precision=fp8_optim.precision(fp8_optim.LEVELS["none"]),
                observed={fp8_ops.OVERWRITE_WITH_GRADIENT: lambda old, new: new})
  return dict(precision=fp8_optim.precision(fp8_optim.get_level(f.level)),
              observed={dot.COLLECTION: dot.update_meta} if f.level != "none" and f.scaling == "delayed" else {},
              grad_sync=comm.fp8_grad_sync() if f.comm else None)


def optimizer_for(cfg: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  if cfg.fp8.level == "fp32":
    return train_optim.adamw(cfg.optim, cfg.train.steps)
  level = "none" if cfg.fp8.level == "flax" else cfg.fp8.level
  return fp8_optim.optimizer(fp8_optim.get_level(level), schedule, cfg.optim)


__all__ = ["Recipe", "comm", "dot", "formats", "memory", "fp8_optim", "default_config", "validate",
           "dot_general_for", "task_options", "optimizer_for"]
