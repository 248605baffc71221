"""The one training loop every trainer uses.

Sharded init (or restore from the workdir), a jitted pure step with in/out shardings and
donation, metrics pulled to the host only on logging steps, periodic evaluation, orbax
checkpoints of state and data iterator, a NaN/Inf guard, JSONL + TensorBoard metrics, a
progress bar and a loss plot. Trainers provide a `Task` (see train/state.py) and `Options`
(typed, built from a config's train/sharding groups by `options`).

Multi-process runs (jaxlab/distributed.py): every process runs this loop on its own slice
of the data; the global batch is assembled with `jax.make_array_from_process_local_data`,
checkpoints are written by orbax from all processes together (each saving its own data
iterator), metrics and files come from process 0 only. Eval batches must carry a `mask`
(0 = padding): a process whose slice of the eval data ran out feeds all-zero batches
while the others finish, so every process calls the step equally often.

`build` gives the shardings and the jitted steps without running anything, and
`compile_step` lowers and compiles the train step from shapes alone: trainers declare their
stages (`Stage`: a name, a Task, its Options and the batch's shapes) and jaxlab/aot.py
compiles each, the same step `run` would train.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import math
import os
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlab import checkpoint, sharding
from jaxlab import config as config_lib
from jaxlab.train import metrics as metrics_lib
from jaxlab.train.state import Task, TrainState, init_state, make_eval_step, make_train_step, steady

log = logging.getLogger("jaxlab")

GUARDED = ("loss", "grad_norm")


class NonFiniteError(RuntimeError):
  """Training produced NaN/Inf; nothing after the last good checkpoint was saved."""


def _mean_rows(rows: list[dict]) -> dict:
  return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def _check_finite(pending: list[tuple[int, dict]], last_good: int | None, ckpt_dir: str) -> None:
  for step, row in pending:
    for key in GUARDED:
      if key in row and not math.isfinite(float(row[key])):
        where = f"step {last_good} in {ckpt_dir}" if last_good is not None else "none (no checkpoint yet)"
        raise NonFiniteError(
            f"{key} became {float(row[key])} at step {step + 1}; training stopped and nothing after it was "
            f"saved. Last good checkpoint: {where}. Lower optim.learning_rate or check the data.")


@dataclasses.dataclass(frozen=True)
class Options:
  """What the loop reads, typed; `options(cfg)` builds it from a config's groups.
  `key` is the config group the train fields came from, for error messages."""
  steps: int
  batch_size: int
  log_every: int = 50
  eval_every: int = 0
  eval_batches: int = 0
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  stop_after: int = 0
  grad_accum: int = 1
  seed: int = 0
  layout: str = "dp"
  extra_rules: tuple = ()
  mesh: tuple = (("data", -1), ("model", 1))   # axes for sharding.make_mesh
  key: str = "train"


def options(cfg: ml_collections.ConfigDict, key: str = "train") -> Options:
  """Options from `cfg.<key>` (dotted, e.g. "pretrain.train"), `cfg.seed`, `cfg.mesh` and `cfg.sharding`;
  a missing or malformed value fails here, naming its key."""
  group = cfg
  for part in key.split("."):
    if part not in group:
      raise config_lib.ConfigError(f"{key}: the config has no such group")
    group = group[part]
  # the group may hold the trainer's own keys too (e.g. train.seq_len): only the loop's are read
  fields = {f.name for f in dataclasses.fields(Options)} - {"seed", "layout", "extra_rules", "mesh", "key"}
  values = {name: group[name] for name in fields if name in group}
  for name in ("steps", "batch_size"):
    config_lib.require(name in values, f"{key}.{name}", "is required")
  opts = Options(**values, seed=int(cfg.seed), layout=cfg.sharding.layout,
                 extra_rules=tuple(tuple(r) for r in cfg.sharding.extra_rules),
                 mesh=tuple(tuple(axis) for axis in cfg.mesh), key=key)
  req = config_lib.require
  sharding.layout_rules(opts.layout, opts.extra_rules)  # an unknown layout fails here
  for name in ("steps", "batch_size", "log_every", "checkpoint_every", "grad_accum"):
    req(getattr(opts, name) > 0, f"{key}.{name}", "must be positive")
  return opts


def check_mesh(opts: Options, mesh: jax.sharding.Mesh) -> None:
  """Batch sizes that cannot split over the mesh, the processes or the microbatches."""
  req, k = config_lib.require, opts.key
  data_size = mesh.shape.get("data", 1)
  req(opts.batch_size % data_size == 0, f"{k}.batch_size",
      f"{opts.batch_size} is not divisible by the mesh's data axis ({data_size})")
  req(opts.batch_size % jax.process_count() == 0, f"{k}.batch_size",
      f"{opts.batch_size} is not divisible by the process count ({jax.process_count()})")
  req(opts.batch_size % (opts.grad_accum * data_size) == 0, f"{k}.grad_accum",
      f"batch_size={opts.batch_size} must split into grad_accum={opts.grad_accum} microbatches on "
      f"{data_size} data shards")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One training run of a trainer, as `jaxlab.aot` compiles it: a Task (its data may be
  None), its Options, and the global batch's shapes ({name: jax.ShapeDtypeStruct})."""
  name: str
  task: Task
  options: Options
  batch: dict


def _aligned(batches, template_fn):
  """`batches`, continued with zero batches until every process has run out of its own.
  In a multi-process run each eval step is one global computation: all processes must
  call it equally often, though their slices of the eval data differ in length."""
  if jax.process_count() == 1:
    yield from batches
    return
  batches, template = iter(batches), None
  while True:
    batch = next(batches, None)
    if batch is not None and template is None:
      template = jax.tree.map(np.zeros_like, batch)
    if not multihost_utils.process_allgather(np.int32(batch is not None)).any():
      return
    if batch is None:
      template = template if template is not None else jax.tree.map(np.zeros_like, template_fn())
      batch = template
    yield batch


def evaluate(task: Task, state, eval_step, data_sharding, max_batches: int = 0) -> dict:
  """Sums of task.eval_sums over one pass of the eval data (its first max_batches, if set)."""
  sums = None
  batches = itertools.islice(task.eval_data(), max_batches or None)
  for batch in _aligned(batches, lambda: next(iter(task.train_data))):
    out = eval_step(state, sharding.global_batch(batch, data_sharding))
    sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
  if sums is None:
    return {}
  return task.summarize(jax.device_get(sums))


class StepSetup(NamedTuple):
  """Everything `run` compiles, before any array exists."""
  init_fn: Any          # rng -> TrainState
  abstract_state: Any   # TrainState of ShapeDtypeStructs carrying their shardings
  state_shardings: Any
  data_sharding: NamedSharding
  replicated: NamedSharding
  train_step: Any       # jitted (state, batch, rng) -> (state, metrics), state donated (the steady Task's)
  eval_step: Any        # jitted (state, batch) -> sums
  first_step: Any       # train_step's signature: a fresh run's first step (the Task's own; see
                        # Task.after_first_step); train_step itself where the Task sets none


def key_shape() -> jax.ShapeDtypeStruct:
  """A PRNG key's shape and dtype (the current default implementation's), traced, not made:
  lowering runs no computation, so a step can be lowered and compiled for devices this host
  does not have (`jaxlab.targets`)."""
  return jax.eval_shape(lambda: jax.random.key(0))


@contextlib.contextmanager
def mesh_context(opts: Options, mesh: jax.sharding.Mesh):
  """The mesh and activation rules every trace of the steps happens under."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.activation_rules(opts.layout)):
    yield


def build(task: Task, opts: Options, mesh: jax.sharding.Mesh) -> StepSetup:
  """State shardings from the partition rules (a bad rule fails here, naming the array)
  and the jitted train and eval steps. Call inside `mesh_context`."""
  check_mesh(opts, mesh)
  rules = list(opts.extra_rules) + list(task.partition_rules) + sharding.layout_rules(opts.layout)
  init_fn = functools.partial(init_state, task)
  abstract = jax.eval_shape(init_fn, key_shape())
  state_sh = sharding.tree_shardings(abstract, mesh, rules)
  data_sh = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  train_step = lambda t: jax.jit(make_train_step(t, opts.grad_accum), in_shardings=(state_sh, data_sh, replicated),
                                 out_shardings=(state_sh, replicated), donate_argnums=0)
  step_fn = train_step(steady(task))
  first_fn = step_fn if task.after_first_step is None else train_step(task)  # jitted, compiled when first called
  eval_fn = jax.jit(make_eval_step(task), in_shardings=(state_sh, data_sh), out_shardings=replicated)
  return StepSetup(init_fn, checkpoint.abstract_like(abstract, state_sh), state_sh, data_sh, replicated,
                   step_fn, eval_fn, first_fn)


def abstract_batch(local_batch: dict, data_sharding: NamedSharding | None = None) -> dict:
  """The global batch's shapes from one process's batch (processes hold equal slices)."""
  def one(x):
    x = np.asarray(x)
    return jax.ShapeDtypeStruct((x.shape[0] * jax.process_count(),) + x.shape[1:], x.dtype, sharding=data_sharding)
  return jax.tree.map(one, local_batch)


class Lowered(NamedTuple):
  """A stage's train step lowered for a mesh (not yet compiled), with what it was lowered from."""
  setup: StepSetup
  lowered: Any         # jax.stages.Lowered: as_text(dialect="hlo") is the pre-optimisation HLO
  batch: dict          # the global batch's ShapeDtypeStructs, with their sharding


class Compiled(NamedTuple):
  """A stage's train step compiled for a mesh, with what it was compiled from."""
  setup: StepSetup
  compiled: Any        # jax.stages.Compiled: memory_analysis(), as_text()
  batch: dict          # the global batch's ShapeDtypeStructs, with their sharding
  lowered: Any = None  # the jax.stages.Lowered it was compiled from


def lower_step(task: Task, opts: Options, mesh: jax.sharding.Mesh, batch: dict) -> Lowered:
  """Lower the train step `run` would train with (after a fresh run's first step, `Task.after_first_step`),
  from shapes alone: `batch` holds the global batch's ShapeDtypeStructs (e.g. a Stage's). Nothing is
  initialised, read or compiled."""
  with mesh_context(opts, mesh):
    setup = build(task, opts, mesh)
    batch = jax.tree.map(lambda b: jax.ShapeDtypeStruct(b.shape, b.dtype, sharding=setup.data_sharding), batch)
    rng = jax.ShapeDtypeStruct((), key_shape().dtype, sharding=setup.replicated)
    lowered = setup.train_step.lower(setup.abstract_state, batch, rng)
  return Lowered(setup, lowered, batch)


def compile_step(task: Task, opts: Options, mesh: jax.sharding.Mesh, batch: dict,
                 compiler_options: dict | None = None) -> Compiled:
  """`lower_step`, then XLA's compile for the mesh (with XLA `compiler_options`, e.g.
  {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"})."""
  low = lower_step(task, opts, mesh, batch)
  with mesh_context(opts, mesh):
    compiled = low.lowered.compile(compiler_options)
  return Compiled(low.setup, compiled, low.batch, low.lowered)


@dataclasses.dataclass
class RunResult:
  """What `run` returns: plain-number held-out metrics apart from the (device) state."""
  workdir: str
  step: int
  finished: bool
  metrics: dict          # {name: float} from the task's summarize, {} without eval data
  checkpoint_dir: str
  metrics_path: str
  plot_path: str | None
  state: TrainState | None = None

  @property
  def params(self):
    """The trained parameters as stored (device arrays)."""
    return None if self.state is None else self.state.params


def check_batch(batch: dict, spec: dict) -> None:
  """A ValueError naming the field when a global batch differs from its declared shapes
  (the ones `jaxlab.aot` compiles a stage for)."""
  got = {k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items()}
  want = {k: (tuple(v.shape), str(np.dtype(v.dtype))) for k, v in spec.items()}
  if got != want:
    diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
    raise ValueError(f"the data's batch differs from the declared batch shapes at {diff}: "
                     f"{ {k: got.get(k) for k in diff} } vs { {k: want.get(k) for k in diff} }")


def run(task: Task, opts: Options, workdir: str, mesh: jax.sharding.Mesh,
        config: ml_collections.ConfigDict | None = None, batch_spec: dict | None = None) -> RunResult:
  """Train to opts.steps (resuming from workdir) and return the result. `config`, when
  given, is written to workdir/config.json by process 0 (what actually ran); `batch_spec`
  (a Stage's batch), when given, is checked against the first batch."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  is_main = jax.process_index() == 0
  if task.train_data is None:
    raise ValueError("run needs a task with train_data (this one is for shapes only)")

  with mesh_context(opts, mesh):
    setup = build(task, opts, mesh)  # fails here on a bad rule
    if is_main and config is not None:
      config_lib.write(config, workdir)
    rng = jax.random.key(opts.seed)
    state_sh, data_sh = setup.state_shardings, setup.data_sharding
    eval_fn = setup.eval_step

    mngr = checkpoint.manager(ckpt_dir, keep=opts.keep_checkpoints)
    train_iter = iter(task.train_data)
    restored = checkpoint.restore_latest(mngr, setup.abstract_state, train_iter)
    if restored is None:
      start, state = 0, jax.jit(setup.init_fn, out_shardings=state_sh)(rng)
      last_good = None
    else:
      start, state = restored
      last_good = start
      if is_main:
        print(f"resuming from step {start} ({ckpt_dir})", flush=True)

    writer = metrics_lib.MetricWriter(workdir, resume_step=start)
    total = opts.steps
    stop_at = min(total, start + opts.stop_after) if opts.stop_after > 0 else total
    unit, per_batch = task.units_per_batch
    bar = tqdm.tqdm(total=total, initial=start, disable=not is_main, dynamic_ncols=True, desc="train")
    pending: list[tuple[int, Any]] = []
    timer_start, timer_steps = None, 0
    eval_metrics: dict = {}

    def flush(step: int) -> None:
      """Bring pending metrics to the host, guard against NaN, log the interval mean."""
      nonlocal pending, timer_start, timer_steps
      if not pending:
        return
      rows = jax.device_get([m for _, m in pending])
      _check_finite(list(zip([s for s, _ in pending], rows)), last_good, ckpt_dir)
      summary = _mean_rows(rows)
      if timer_start is not None and timer_steps:
        summary[f"{unit}_per_sec"] = timer_steps * per_batch / (time.perf_counter() - timer_start)
      writer.write(step, "train", summary)
      bar.set_postfix({"loss": f"{summary['loss']:.3f}",
                       f"{unit}/s": f"{summary.get(f'{unit}_per_sec', 0):,.0f}"}, refresh=False)
      pending = []
      timer_start, timer_steps = time.perf_counter(), 0

    step = start
    while step < stop_at:
      batch = sharding.global_batch(next(train_iter), data_sh)
      if step == start and batch_spec is not None:
        check_batch(batch, batch_spec)
      step_fn = setup.first_step if step == 0 else setup.train_step  # (a restored run starts later)
      state, step_metrics = step_fn(state, batch, rng)
      if pending:  # stay at most one step ahead of the device: honest progress bar, no stall
        jax.block_until_ready(pending[-1][1])
      pending.append((step, step_metrics))
      step += 1
      timer_steps += 1
      bar.update(1)
      if timer_start is None and step_fn is setup.train_step:  # exclude compilation from throughput
        jax.block_until_ready(step_metrics)
        timer_start, timer_steps = time.perf_counter(), 0
      done = step == stop_at
      if step % opts.log_every == 0 or done or step % opts.checkpoint_every == 0:
        flush(step)
      if task.eval_data is not None and opts.eval_every > 0 and (step % opts.eval_every == 0 or step == total):
        eval_metrics = evaluate(task, state, eval_fn, data_sh, opts.eval_batches)
        writer.write(step, "eval", eval_metrics)
        timer_start, timer_steps = time.perf_counter(), 0
      if step % opts.checkpoint_every == 0 or done:
        checkpoint.save(mngr, step, state, train_iter)
        last_good = step
    bar.close()
    mngr.wait_until_finished()

    if not eval_metrics and task.eval_data is not None:  # e.g. a rerun of a finished job
      eval_metrics = evaluate(task, state, eval_fn, data_sh, opts.eval_batches)
    writer.close()

  plot = None
  if is_main and os.path.exists(writer.path):
    plot = metrics_lib.plot_loss(writer.path, os.path.join(workdir, "loss.png"))
  return RunResult(workdir=workdir, step=int(step), finished=step >= total,
                   metrics={k: float(v) for k, v in eval_metrics.items()}, checkpoint_dir=ckpt_dir,
                   metrics_path=writer.path, plot_path=plot, state=state)


def report_lines(result, extra: list[str] = ()) -> str:
  """The end-of-run report every trainer prints: step, its own figures, where things are.
  `result` is a RunResult or any result with the same step/finished/path fields."""
  lines = [f"step {result.step}" + ("" if result.finished else " (stopped early; rerun to resume)")]
  lines += list(extra)
  lines.append(f"checkpoints: {result.checkpoint_dir}")
  lines.append(f"metrics:     {result.metrics_path}")
  if result.plot_path:
    lines.append(f"loss plot:   {result.plot_path}")
  return "\n".join(lines)
