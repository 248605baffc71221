"""The one training loop every trainer uses.

Sharded init (or restore from the workdir), a jitted pure step with in/out shardings and
donation, metrics pulled to the host only on logging steps, periodic evaluation, orbax
checkpoints of state and data iterator, a NaN/Inf guard, JSONL + TensorBoard metrics, a
progress bar and a loss plot. Trainers provide a `Task` (see train/state.py).

Multi-process runs (jaxlab/distributed.py): every process runs this loop on its own slice
of the data; the global batch is assembled with `jax.make_array_from_process_local_data`,
checkpoints are written by orbax from all processes together (each saving its own data
iterator), metrics and files come from process 0 only. Eval batches must carry a `mask`
(0 = padding): a process whose slice of the eval data ran out feeds all-zero batches
while the others finish, so every process calls the step equally often.

`build` gives the shardings and the jitted steps without running anything; `compile_only`
makes `run` lower and compile the train step and stop (jaxlab/aot.py uses it, so the
ahead-of-time check compiles exactly what training would).
"""
from __future__ import annotations

import contextlib
import contextvars
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
import optax
import tqdm
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlab import checkpoint, sharding
from jaxlab import config as config_lib
from jaxlab.train import metrics as metrics_lib
from jaxlab.train.state import Task, init_state, make_eval_step, make_train_step

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


def validate(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """The keys this loop reads (train.*, sharding.*), checked before any data or compile work."""
  t, req = cfg.train, config_lib.require
  sharding.layout_rules(cfg.sharding.layout, cfg.sharding.extra_rules)  # an unknown layout fails here
  data_size = mesh.shape.get("data", 1)
  req(t.batch_size % data_size == 0, "train.batch_size",
      f"{t.batch_size} is not divisible by the mesh's data axis ({data_size})")
  req(t.batch_size % jax.process_count() == 0, "train.batch_size",
      f"{t.batch_size} is not divisible by the process count ({jax.process_count()})")
  for key in ("steps", "log_every", "checkpoint_every"):
    req(t[key] > 0, f"train.{key}", "must be positive")


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
  train_step: Any       # jitted (state, batch, rng) -> (state, metrics), state donated
  eval_step: Any        # jitted (state, batch) -> sums


@contextlib.contextmanager
def mesh_context(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh):
  """The mesh and activation rules every trace of the steps happens under."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.activation_rules(cfg.sharding.layout)):
    yield


def build(cfg: ml_collections.ConfigDict, task: Task, mesh: jax.sharding.Mesh,
          tx: optax.GradientTransformation, schedule: optax.Schedule | None = None) -> StepSetup:
  """State shardings from the partition rules (a bad rule fails here, naming the array)
  and the jitted train and eval steps. Call inside `mesh_context`."""
  rules = sharding.layout_rules(cfg.sharding.layout, cfg.sharding.extra_rules)
  init_fn = functools.partial(init_state, task, tx)
  abstract = jax.eval_shape(init_fn, jax.random.key(cfg.seed))
  state_sh = sharding.tree_shardings(abstract, mesh, rules)
  data_sh = sharding.batch_sharding(mesh)
  replicated = NamedSharding(mesh, P())
  step_fn = jax.jit(make_train_step(task, tx, schedule), in_shardings=(state_sh, data_sh, replicated),
                    out_shardings=(state_sh, replicated), donate_argnums=0)
  eval_fn = jax.jit(make_eval_step(task), in_shardings=(state_sh, data_sh), out_shardings=replicated)
  return StepSetup(init_fn, checkpoint.abstract_like(abstract, state_sh), state_sh, data_sh, replicated,
                   step_fn, eval_fn)


def abstract_batch(local_batch: dict, data_sharding: NamedSharding) -> dict:
  """The global batch's shapes from one process's batch (processes hold equal slices)."""
  def one(x):
    x = np.asarray(x)
    return jax.ShapeDtypeStruct((x.shape[0] * jax.process_count(),) + x.shape[1:], x.dtype, sharding=data_sharding)
  return jax.tree.map(one, local_batch)


_COMPILE_ONLY: contextvars.ContextVar = contextvars.ContextVar("jaxlab_compile_only", default=False)


class _Compiled(Exception):
  def __init__(self, result: dict):
    super().__init__("compiled")
    self.result = result


@contextlib.contextmanager
def compile_only():
  """Inside this context `run` compiles the train step and returns nothing: the trainer
  is unwound at that point and the yielded dict gets `setup` (StepSetup), `compiled`
  (the compiled train step), `cfg`, `mesh` and `task`."""
  out: dict = {}
  token = _COMPILE_ONLY.set(True)
  try:
    yield out
  except _Compiled as done:
    out.update(done.result)
  finally:
    _COMPILE_ONLY.reset(token)
  if not out:
    raise RuntimeError("the trainer returned without calling jaxlab.train.loop.run")


def run(cfg: ml_collections.ConfigDict, workdir: str, task: Task, mesh: jax.sharding.Mesh,
        tx: optax.GradientTransformation, schedule: optax.Schedule | None = None) -> dict:
  """Train to cfg.train.steps (resuming from workdir) and return the final summary."""
  tc = cfg.train
  ckpt_dir = os.path.join(workdir, "checkpoints")
  is_main = jax.process_index() == 0

  with mesh_context(cfg, mesh):
    setup = build(cfg, task, mesh, tx, schedule)  # fails here on a bad rule
    if _COMPILE_ONLY.get():
      batch = abstract_batch(next(iter(task.train_data)), setup.data_sharding)
      rng_abstract = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=setup.replicated)
      compiled = setup.train_step.lower(setup.abstract_state, batch, rng_abstract).compile()
      raise _Compiled(dict(setup=setup, compiled=compiled, cfg=cfg, mesh=mesh, task=task, batch=batch))
    if is_main:
      config_lib.write(cfg, workdir)  # what actually ran, next to its results
    rng = jax.random.key(cfg.seed)
    state_sh, data_sh = setup.state_shardings, setup.data_sharding
    step_fn, eval_fn = setup.train_step, setup.eval_step

    mngr = checkpoint.manager(ckpt_dir, keep=tc.keep_checkpoints)
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
    total = tc.steps
    stop_at = min(total, start + tc.stop_after) if tc.stop_after > 0 else total
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
      state, step_metrics = step_fn(state, batch, rng)
      if pending:  # stay at most one step ahead of the device: honest progress bar, no stall
        jax.block_until_ready(pending[-1][1])
      pending.append((step, step_metrics))
      step += 1
      timer_steps += 1
      bar.update(1)
      if timer_start is None:  # exclude compilation from throughput
        jax.block_until_ready(step_metrics)
        timer_start, timer_steps = time.perf_counter(), 0
      done = step == stop_at
      if step % tc.log_every == 0 or done or step % tc.checkpoint_every == 0:
        flush(step)
      if task.eval_data is not None and tc.eval_every > 0 and (step % tc.eval_every == 0 or step == total):
        eval_metrics = evaluate(task, state, eval_fn, data_sh, tc.eval_batches)
        writer.write(step, "eval", eval_metrics)
        timer_start, timer_steps = time.perf_counter(), 0
      if step % tc.checkpoint_every == 0 or done:
        checkpoint.save(mngr, step, state, train_iter)
        last_good = step
    bar.close()
    mngr.wait_until_finished()

    if not eval_metrics and task.eval_data is not None:  # e.g. a rerun of a finished job
      eval_metrics = evaluate(task, state, eval_fn, data_sh, tc.eval_batches)
    writer.close()

  summary = {"step": int(step), "finished": step >= total, "checkpoint_dir": ckpt_dir,
             "metrics_path": writer.path, **eval_metrics}
  if is_main and os.path.exists(writer.path):
    summary["plot_path"] = metrics_lib.plot_loss(writer.path, os.path.join(workdir, "loss.png"))
  summary["state"] = state
  return summary


def report_lines(summary: dict, extra: list[str] = ()) -> str:
  """The end-of-run report every trainer prints: step, its own figures, where things are."""
  lines = [f"step {summary['step']}" + ("" if summary["finished"] else " (stopped early; rerun to resume)")]
  lines += list(extra)
  lines.append(f"checkpoints: {summary['checkpoint_dir']}")
  lines.append(f"metrics:     {summary['metrics_path']}")
  if "plot_path" in summary:
    lines.append(f"loss plot:   {summary['plot_path']}")
  return "\n".join(lines)
