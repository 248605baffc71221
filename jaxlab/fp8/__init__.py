"""FP8 mixed-precision training after FP8-LM (MS-AMP) and DeepSeek-V3's block scaling.

Pieces (each usable on its own from a notebook):
  formats   E4M3/E5M2, quantize = scale, clip, cast; ScaledTensor; block-scaled GEMM
  dot       FP8 dot_general with a custom VJP, scale state in the `fp8_meta` collection
  optim     the levels (none/O1/O2/O3) as storage formats; AdamW with FP8/FP16 moments
  comm      FP8 gradient all-reduce with automatic scaling (jax.shard_map)
  memory    bytes per parameter of a real train state, by category
  hlo       which dots of a lowered step are FP8 GEMMs after XLA's GPU rewrite
  own       FP8 GEMMs in your own Flax model and training loop (inject, value_and_grad, checked)

Training uses all of them through one transformation of a trainer's Task:
`task = fp8.apply(cfg, task)` (after `cfg = fp8.configure(cfg)` has checked the `fp8`
group), which swaps the model's dot_general, the storage/gradient formats, the scale
state's partition rules, the optimizer and, with `fp8.comm`, the gradient all-reduce; with
delayed scaling, the steps after a run's first drop the just-in-time start (`steady_dots`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
import optax
from flax import traverse_util
from flax.linen import fp8_ops

from jaxlab import config as config_lib
from jaxlab.fp8 import comm, dot, formats, hlo, memory, own, optim as fp8_optim
from jaxlab.fp8.dot import Recipe
from jaxlab.train import optim as train_optim
from jaxlab.train.state import GradPorts, Precision, Task

NAME = "fp8"  # the config group this method reads
MASTERS = {"fp16": jax.numpy.float16, "fp32": jax.numpy.float32}  # fp8.master

# fp32: no mixed precision at all; flax: the peer, flax.linen.fp8_ops (FP8 GEMM inputs with
# delayed scaling, everything else as BF16 mixed precision "none").
LEVEL_NAMES = ("fp32",) + tuple(fp8_optim.LEVELS) + ("flax",)

# The Task fields fp8.apply sets outright, with their unset values (it also replaces the
# model's dot_general and the optimizer, built from the `optim` group, and adds partition rules).
SETS = {"precision": Precision(), "observed": {}, "grad_sync": None, "grad_ports": None, "optimizer_step": None,
        "after_first_step": None}

# Per-tensor scales of narrow arrays (".../kernel/scale") stay replicated whatever the layout.
PARTITION_RULES = ((r"(kernel|embedding)/scale$", ()),)


def default_config() -> dict:
  """The `fp8` config group: level, scaling recipe and gradient communication.
  `high_precision`: names of the modules whose GEMMs stay in the compute dtype at O1-O3
  (`Recipe.high_precision`). `master`: the format of the master weights at O1-O3, "fp16"
  (FP8-LM's) or "fp32" (`fp8_optim.with_master`: 2 more bytes per parameter, keeps updates
  below half an FP16 ulp of the weight)."""
  return dict(level="fp32", scaling="delayed", history=16, margin=0, power_of_two=False, block=128, comm=False,
              high_precision=(), master="fp16")


def configure(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Check the `fp8` group (and what it needs of the mesh and layout) before any work;
  returns cfg unchanged. Mistakes raise ConfigError naming the key."""
  f, req = cfg.fp8, config_lib.require
  req(f.level in LEVEL_NAMES, "fp8.level", f"{f.level!r} is not one of {LEVEL_NAMES}")
  req(f.scaling in dot.SCALINGS, "fp8.scaling", f"{f.scaling!r} is not one of {dot.SCALINGS}")
  req(f.history >= 1, "fp8.history", "must be at least 1")
  req(f.block >= 1, "fp8.block", "must be positive")
  req(isinstance(f.high_precision, (tuple, list)) and all(isinstance(n, str) for n in f.high_precision),
      "fp8.high_precision", f"{f.high_precision!r} is not a tuple of module names")
  req(f.master in MASTERS, "fp8.master", f"{f.master!r} is not one of {tuple(MASTERS)}")
  req(f.master == "fp16" or f.level in ("O1", "O2", "O3"), "fp8.master",
      f"only O1, O2 and O3 keep FP16 master weights; fp8.level={f.level!r} keeps FP32 ones")
  if f.comm:
    req(f.level in ("O1", "O2", "O3"), "fp8.comm", f"FP8 gradient communication needs level O1/O2/O3, not {f.level!r}")
    req("data" in dict(cfg.mesh), "fp8.comm", "the mesh needs a 'data' axis")
    req(cfg.sharding.layout in ("dp", "zero"), "fp8.comm",
        f"runs the gradient sync in shard_map with replicated weights: sharding.layout must be dp or zero, "
        f"not {cfg.sharding.layout!r}")
  return cfg


def recipe(f) -> Recipe:
  """The scaling recipe of an `fp8` config group. At O3 the weights are stored in E4M3 with
  their own per-tensor scales, so the GEMM scales its kernel as they were stored
  (`Recipe.kernel="stored"`) and sees the stored FP8 values unchanged."""
  kernel = "stored" if f.level == "O3" and f.scaling != "block" else ""
  return Recipe(scaling=f.scaling, history=f.history, margin=f.margin, power_of_two=f.power_of_two, block=f.block,
                kernel=kernel, fp8_wgrad=f.level in ("O1", "O2", "O3") and f.scaling != "block",
                high_precision=tuple(f.high_precision))


def level_of(f) -> fp8_optim.Level:
  """The storage formats of an `fp8` group: its level's (`none`'s for flax's peer), with
  the master weights in `fp8.master` at O1-O3."""
  level = fp8_optim.get_level("none" if f.level == "flax" else f.level)
  return fp8_optim.with_master(level, MASTERS[f.master])


def dot_general_for(f):
  """The models' `dot_general_cls`: FP8 GEMMs for O1/O2/O3 (and flax's for the peer)."""
  if f.level == "flax":
    return functools.partial(fp8_ops.Fp8DirectDotGeneralOp, amax_history_length=f.history)
  return dot.dot_general_cls(recipe(f)) if f.level in ("O1", "O2", "O3") else None


def task_options(f, dots: dict | None = None) -> dict:
  """Task fields (train/state.py) for the level: storage formats, amax observations, sync.
  `dots` ({kernel name: FP8 dot path}, `fp8_dots`) are the kernels the model's FP8 dots are
  handed undecoded (`fp8_optim.precision`)."""
  if f.level == "fp32":
    return {}
  if f.level == "flax":  # flax returns the new scale state as the state's "gradient"
    return dict(precision=fp8_optim.precision(level_of(f)),
                observed={fp8_ops.OVERWRITE_WITH_GRADIENT: lambda old, new: new})
  return dict(precision=fp8_optim.precision(level_of(f), dots),
              observed={dot.COLLECTION: dot.update_meta} if f.level != "none" and f.scaling == "delayed" else {},
              grad_sync=comm.fp8_grad_sync() if f.comm else None,
              grad_ports=GradPorts(dot.GRADS, dot.port_gradients) if recipe(f).fp8_wgrad else None)


def optimizer_for(cfg: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
  """AdamW for the level: optax's for fp32, the scaled AdamW of fp8.optim otherwise.
  Reads the trainer's `optim` group (and `train.steps` for fp32's schedule)."""
  if cfg.fp8.level == "fp32":
    return train_optim.adamw(cfg.optim, cfg.train.steps)
  return fp8_optim.optimizer(level_of(cfg.fp8), schedule, cfg.optim)


def apply(cfg: ml_collections.ConfigDict, task: Task) -> Task:
  """The Task trained at `cfg.fp8.level`: the model with FP8 GEMMs, parameters and gradients
  in the level's formats, its scale state observed and replicated, the level's optimizer
  (with the task's schedule) and, with fp8.comm, the FP8 gradient all-reduce. fp32 leaves
  the task as it is."""
  f = cfg.fp8
  if f.level == "fp32":
    return task
  dot_cls = dot_general_for(f)
  model = task.model
  if dot_cls is not None:
    if model is None or not hasattr(model, "dot_general_cls"):
      raise config_lib.ConfigError(f"fp8.level={f.level!r}: this trainer's model takes no dot_general_cls")
    model = model.clone(dot_general_cls=dot_cls)
  if task.schedule is None:
    raise ValueError("fp8.apply needs the task's learning-rate schedule (Task.schedule)")
  taken = [name for name, unset in SETS.items() if getattr(task, name) != unset]
  if taken:  # replacing them would silently undo what an earlier transformation did
    raise ValueError(f"fp8.apply sets Task.{', Task.'.join(taken)} outright, but the task has them set already "
                     "(by a method before fp8 in trainers.methods.METHODS?): a method that changes them goes "
                     "after fp8 there and wraps what fp8 sets")
  # every level updates in place (fp8.optim.fused_update); flax's peer as none. Under `zero`
  # (sharded state, replicated weights) layer by layer on a GPU too: less gathered at once
  fused = fp8_optim.optimizer_step(level_of(f), task.schedule, cfg.optim,
                                   one_pass=not ("sharding" in cfg and cfg.sharding.get("layout") == "zero"))
  # with ports, the FP8 dots decode their own kernels, layer by layer
  dots = fp8_dots(task.replace(model=model)) if recipe(f).fp8_wgrad else None
  return task.replace(model=model, optimizer=optimizer_for(cfg, task.schedule), optimizer_step=fused,
                      partition_rules=tuple(task.partition_rules) + PARTITION_RULES,
                      after_first_step=steady_dots(f), **task_options(f, dots))


def steady_dots(f):
  """`Task.after_first_step` for the level: with delayed scaling at O1-O3, the model's FP8 dots
  without the just-in-time start (`Recipe.just_in_time_start`), which only a fresh run's first
  step needs (its amax histories are empty) and which costs every step a second read of each
  GEMM operand; None otherwise."""
  r = recipe(f)
  if f.level not in ("O1", "O2", "O3") or r.scaling != "delayed":
    return None
  cls = dot.dot_general_cls(dataclasses.replace(r, just_in_time_start=False))
  return lambda task: task.replace(model=task.model.clone(dot_general_cls=cls))


def fp8_dots(task: Task) -> dict:
  """{kernel name: path of the FP8 dot that reads it} for the task's model, from the weight-
  gradient ports its init declares (shapes only: nothing is computed)."""
  shapes = jax.eval_shape(lambda rng: task.init(task.model, rng), jax.random.key(0))
  ports = traverse_util.flatten_dict(shapes.get(dot.GRADS, {}))
  return {"/".join(dot.kernel_path(path[:-1])): path[:-1] for path in ports if path[-1] == "kernel"}


__all__ = ["NAME", "Recipe", "comm", "dot", "formats", "hlo", "memory", "own", "fp8_optim", "default_config", "configure",
           "apply", "recipe", "dot_general_for", "task_options", "optimizer_for", "fp8_dots", "steady_dots", "LEVEL_NAMES"]
