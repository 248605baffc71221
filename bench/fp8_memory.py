"""FP8-LM memory: bytes per parameter of the train state at every level, on the GPT shape
of FP8-LM's 1.3B model (24 layers, d_model 2048, 2048 positions, vocab 50257, tied head),
from `jax.eval_shape(init_state)` (nothing is allocated) and `jaxlab.fp8.memory.account`.
Also O3 per device when sharded over 8 data ranks: `sharding.layout=zero` (master weights and
Adam moments split) and `fsdp` (the FP8 weights split too), counted from the partition
rules' shard shapes and measured from the step compiled for 8 CPU devices.

  python bench/fp8_memory.py

Then the same levels *measured*: the LM trainer's real train step (`lm.stages`, i.e. the
trainer path with `fp8.apply`) compiled on one CPU device at the full 1.3B shape (24 layers:
the layers are one nn.scan, so it compiles in seconds; nothing is allocated) and
`compiled.memory_analysis()` read: the state the step takes (argument bytes less the
batch's), what it keeps beyond its donated inputs (output minus aliased bytes), and its
temporaries. Temporaries hold activations, which grow with the batch, and the gradients
and optimizer intermediates, which do not: two compiles (batch 1 and 2, sequence 128)
extrapolate the temporaries to batch 0, and measured = (state + temporaries at batch 0) /
parameters, comparable with FP8-LM's w+g+master+m+v. Two more compiles split the
temporaries: the step's gradient computation alone (its output is the gradient tree as it
reaches the optimizer; its own temporaries, extrapolated to batch 0) and the optimizer
update + weight write alone (on that gradient tree, state donated), by the path the step
uses and by optax's update + apply on the same state (which the step uses only at fp32).

Every measured compile uses XLA's memory-optimized CPU scheduler (`MEMORY_SCHEDULER`, a
compiler option of this compile only). XLA's default CPU scheduler orders for concurrency: it
issues independent work early, e.g. the zero buffers the backward pass's scans fill with the
FP8 weight gradients, which then sit through the forward pass (1 B/param at O2). What a step
needs is what a memory-aware schedule of it needs; a GPU compile schedules with a memory limit.
The default scheduler's totals are printed too (`default sched`).

On a GPU (`--target h100` or `h200`, needs `pip install 'jaxlab[gpu-aot]'`, no GPU): the same
steps compiled by XLA for that GPU from this host (`jaxlab.targets`, an ahead-of-time compile;
nothing runs), every GEMM to cuBLAS as autotuning picks for FP8 GEMMs (`targets.CUBLAS`); the
last column is then XLA's defaults without autotuning (Triton GEMMs), and the 8-rank figures
are 8 such GPUs. The block-scaling GEMM is measured on CPU only.

Last line: `bytes_per_param none=.. O1=.. O2=.. O3=.. measured_none=.. measured_O1=.. measured_O2=.. measured_O3=..`
(counted: weights + gradients + master + m + v, scale overhead excluded and printed separately).
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab import config as config_lib, fp8, sharding, targets
from jaxlab.fp8 import memory
from jaxlab.models import gpt
from jaxlab.train import loop, optim
from jaxlab.train import state as train_state
from jaxlab.train.state import Task, init_state
from jaxlab.trainers import lm

VOCAB = 50257
MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
LEVELS = ("fp32", "none", "O1", "O2", "O3")
PEER = "flax"  # flax.linen.fp8_ops' FP8 GEMMs on BF16 mixed precision: measured too, counted as none
RANKS = 8



def abstract_state(level: str):
  cfg = config_lib.load(f"configs/fp8/gpt.py:{level},1.3b")
  task = Task(model=gpt.GPT(lm.model_config(cfg, VOCAB)), init=lambda m, rng: m.init(rng, jnp.zeros((1, 8), jnp.int32)),
              loss=None, optimizer=optim.adamw(cfg.optim, cfg.train.steps),
              schedule=optim.schedule(cfg.optim, cfg.train.steps))
  task = fp8.apply(cfg, task)  # the method's one transformation
  return cfg, task, jax.eval_shape(lambda rng: init_state(task, rng), jax.random.key(0))


def sharded_bytes(state, mesh, rules) -> dict:
  """Bytes per device of the weights' and the optimizer state's master/mu/nu data (not
  scales), by field, from the partition rules' shard shapes."""
  shardings = sharding.tree_shardings(state, mesh, rules)
  out = {"weights": 0, "master": 0, "mu": 0, "nu": 0}

  def visit(field, path, leaf, sh):
    names = sharding.path_name(path).split("/")
    field = field or next((f for f in out if f in names), None)
    if field is None or names[-1] == "scale":
      return
    out[field] += int(np.prod(sh.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize
  jax.tree_util.tree_map_with_path(lambda *a: visit(None, *a), state.opt_state, shardings.opt_state)
  jax.tree_util.tree_map_with_path(lambda *a: visit("weights", *a), state.params, shardings.params)
  return out


class Platform(NamedTuple):
  """Where the steps are compiled: `devices(n)`, whether they are this host's (`on_host`: the
  split columns and the block GEMM are measured there only), the XLA options of the measured
  compiles and those of the last column (`other_name`)."""
  devices: Callable[[int], list]
  on_host: bool
  options: dict | None
  other: dict | None
  other_name: str
  name: str


def platform(target: str | None) -> Platform:
  """This host's CPU (memory-optimized scheduler; the other column: XLA's default scheduler)
  or a GPU target compiled for from here (cuBLAS GEMMs; the other column: XLA's defaults)."""
  if not target:
    return Platform(lambda n: jax.devices()[:n], True, MEMORY_SCHEDULER, None, "default sched", "CPU device")
  return Platform(lambda n: targets.devices(target, n), False, targets.CUBLAS, {}, "Triton GEMMs",
                  f"{target.upper()} GPU")


CPU = platform(None)


def measured_sharded(level: str, layout: str, n: int, ranks: int = RANKS, where: Platform = CPU) -> dict:
  """The LM trainer's step at the 1.3B shape compiled for `ranks` devices on the data axis
  (one sequence of MEASURE_SEQ tokens per rank) under `layout`: per-device state (arguments
  less the batch's shard) and temporaries, in bytes per (global) parameter of the `n`."""
  _, stage = _stage(level, ranks, ranks, layout)
  mesh = sharding.make_mesh(stage.options.mesh, where.devices(ranks))
  mem = loop.compile_step(stage.task, stage.options, mesh, stage.batch, where.options).compiled.memory_analysis()
  batch = sum(b.size * np.dtype(b.dtype).itemsize for b in jax.tree.leaves(stage.batch)) / ranks
  return dict(state=(mem.argument_size_in_bytes - batch) / n, temp=mem.temp_size_in_bytes / n)


MEASURE_SEQ = 128


def _stage(level: str, batch: int, ranks: int = 1, layout: str = "dp"):
  """The LM trainer's stage at the 1.3B shape, MEASURE_SEQ tokens, `ranks` devices on `data`."""
  cfg = config_lib.load(f"configs/fp8/gpt.py:{level},1.3b", [
      f"train.seq_len={MEASURE_SEQ}", f"train.batch_size={batch}", "tokenizer.path=", f"tokenizer.vocab_size={VOCAB}",
      f'mesh=(("data", {ranks}), ("model", 1))', f"sharding.layout={layout}"])
  (stage,) = lm.stages(cfg)
  return cfg, stage


def measured_step(level: str, batch: int, with_optimizer: bool = True, split: bool = True,
                  options: dict | None = MEMORY_SCHEDULER, devices: list | None = None) -> dict:
  """memory_analysis of the LM trainer's compiled train step at the 1.3B shape, one device
  (the first of `devices`, default this host's), and (`split`) of its two halves: the gradient
  computation and (`with_optimizer`; it does not depend on the batch) the optimizer update +
  weight write. `options`: XLA's, for every compile."""
  cfg, stage = _stage(level, batch)
  mesh = sharding.make_mesh(stage.options.mesh, (devices or jax.devices())[:1])
  compiled = loop.compile_step(stage.task, stage.options, mesh, stage.batch, options)
  mem = compiled.compiled.memory_analysis()
  batch_bytes = sum(b.size * np.dtype(b.dtype).itemsize for b in jax.tree.leaves(stage.batch))
  task, state = stage.task, compiled.setup.abstract_state
  whole = dict(state=mem.argument_size_in_bytes - batch_bytes, temp=mem.temp_size_in_bytes,
               kept=mem.output_size_in_bytes - mem.alias_size_in_bytes, state_tree=state, task=task)
  if not split:
    return whole

  def gradients(state, batch, rng):  # as the train step does it (train/state.py)
    return train_state.local_gradients(task, *train_state.model_inputs(task, state), batch, rng, 1)[3]

  def optimizer_temp(t: Task, grads) -> int:  # the update + weight write alone, state donated
    fn = lambda state, grads: train_state.optimizer_update(t, grads, state.opt_state, state.params)[:2]
    return jax.jit(fn, donate_argnums=(0,)).lower(state, grads).compile(options).memory_analysis().temp_size_in_bytes

  grad_mem = jax.jit(gradients).lower(state, stage.batch, jax.random.key(0)).compile(options).memory_analysis()
  opt_temp = other_temp = None
  if with_optimizer:
    grads = jax.eval_shape(gradients, state, stage.batch, jax.random.key(0))
    opt_temp = optimizer_temp(task, grads)
    # the other path on the same state: optax's update + apply
    if task.optimizer_step is not None:
      other_temp = optimizer_temp(task.replace(optimizer_step=None), grads)
  return dict(whole, grad_out=grad_mem.output_size_in_bytes, grad_temp=grad_mem.temp_size_in_bytes, opt_temp=opt_temp,
              other_temp=other_temp)


def measured(level: str, where: Platform = CPU) -> dict:
  """Bytes per parameter: the step's state, temporaries at batch 1 and extrapolated to 0, and
  (on CPU) the split (gradient tree, backward temporaries at batch 0, optimizer temporaries);
  and the total under the other column's options (`default`)."""
  dev = where.devices(1)
  split = where.on_host  # the halves are compiled on this host's device only
  one = measured_step(level, 1, split=split, options=where.options, devices=dev)
  two = measured_step(level, 2, with_optimizer=False, split=split, options=where.options, devices=dev)
  n = memory.account(one["state_tree"], one["task"].precision)["params"]  # matrices count data, not scales
  temp0 = 2 * one["temp"] - two["temp"]
  d1, d2 = (measured_step(level, b, split=False, options=where.other, devices=dev) for b in (1, 2))
  nan = float("nan")
  per_param = lambda key: nan if one.get(key) is None else one[key] / n
  return dict(state=one["state"] / n, temp1=one["temp"] / n, temp0=temp0 / n, kept=one["kept"] / n,
              per_example=(two["temp"] - one["temp"]) / 2**20, total=(one["state"] + temp0) / n, params=n,
              grads=per_param("grad_out"),
              backward0=(2 * one["grad_temp"] - two["grad_temp"]) / n if split else nan,
              optimizer=per_param("opt_temp"), other=per_param("other_temp"),
              default=(d1["state"] + 2 * d1["temp"] - d2["temp"]) / n)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--target", choices=sorted(targets.TARGETS), default=None,
                 help="measure the steps as XLA compiles them for this GPU (from this host; needs jaxlab[gpu-aot])")
  args = p.parse_args()
  where = platform(args.target)
  cfg0 = config_lib.load("configs/fp8/gpt.py:none,1.3b")
  m = cfg0.model
  print(f"GPT 1.3B shape (FP8-LM): {m.num_layers} layers, d_model {m.d_model}, mlp {4 * m.d_model}, "
        f"max_len {m.max_len}, vocab {VOCAB}, tied head; abstract state from jax.eval_shape(init_state)")
  header = f"{'level':6s} " + " ".join(f"{c:>9s}" for c in memory.CATEGORIES) + f" {'total':>7s} {'scales':>9s} {'GiB':>7s}"
  print(header)
  results, states = {}, {}
  for level in LEVELS:
    cfg, task, state = abstract_state(level)
    acc = memory.account(state, task.precision)
    results[level], states[level] = acc, state
    gib = acc["total"] * acc["params"] / 2**30
    print(f"{level:6s} " + " ".join(f"{acc[c]:9.3f}" for c in memory.CATEGORIES)
          + f" {acc['total']:7.3f} {acc['scales']:9.2e} {gib:7.2f}")
  n = results["none"]["params"]
  print(f"parameters: {n:,} (kernels and embeddings take the level's formats; biases and LayerNorm stay "
        f"FP32: their share is {1 - sum(x.size for p, x in jax.tree_util.tree_leaves_with_path(states['fp32'].params) if sharding.path_name(p).rsplit('/', 1)[-1] in ('kernel', 'embedding')) / n:.3%})")
  base = results["none"]["total"]
  print("vs BF16 mixed precision (none): " + "  ".join(
      f"{l} {results[l]['total'] / base:.2f}x" for l in ("O1", "O2", "O3")))
  print("FP8-LM's table (w+g+master+m+v): none 16, O1 11, O2 6, O3 7 before sharding")

  # O3 over 8 data ranks: zero splits master, m, v (weights and grads replicated); fsdp splits
  # the FP8 weights too (and XLA reduces the gradients to the weights' shards, or gathers).
  mesh = sharding.make_mesh((("data", RANKS), ("model", 1)))
  o3 = results["O3"]
  for layout in ("zero", "fsdp"):
    rules = sharding.layout_rules(layout, fp8.PARTITION_RULES)  # scales replicated, as fp8.apply's task says
    split = {k: v / n for k, v in sharded_bytes(states["O3"], mesh, rules).items()}
    opt = split["master"] + split["mu"] + split["nu"]
    grads = o3["gradients"] if layout == "zero" else o3["gradients"] / RANKS
    total_dev = split["weights"] + grads + opt
    print(f"O3, sharding.layout={layout} over {RANKS} data ranks, per device: weights {split['weights']:.3f} + "
          f"gradients {grads:.3f} ({'replicated' if layout == 'zero' else 'if split as the weights'}) + master "
          f"{split['master']:.3f} + m {split['mu']:.3f} + v {split['nu']:.3f} = {total_dev:.3f} bytes/param "
          f"({total_dev * n / 2**30:.2f} GiB per device; master+m+v {o3['master'] + o3['m'] + o3['v']:.3f} -> {opt:.3f})")

  how = ("XLA's memory-optimized CPU scheduler" if where.on_host else
         "compiled for it from this host (jaxlab.targets), GEMMs to cuBLAS (targets.CUBLAS)")
  print(f"\nmeasured: the LM trainer's compiled train step at the 1.3B shape ({m.num_layers} layers), seq "
        f"{MEASURE_SEQ}, one {where.name}, {how}; compiled.memory_analysis() in bytes per parameter")
  print(f"{'level':6s} {'state':>7s} {'temp b=1':>9s} {'temp b=0':>9s} {'MiB/ex':>7s} {'kept':>6s} {'measured':>9s}"
        f" {'counted':>8s} {'ratio':>6s} {'grads':>6s} {'bwd tmp':>8s} {'opt tmp':>8s} {'other':>6s}"
        f" {where.other_name:>13s}")
  meas = {}
  for level in LEVELS + (PEER,):
    r = meas[level] = measured(level, where)
    counted = results.get(level, results["none"])["total"]  # flax's peer stores as none does
    print(f"{level:6s} {r['state']:7.3f} {r['temp1']:9.3f} {r['temp0']:9.3f} {r['per_example']:7.1f} {r['kept']:6.3f} "
          f"{r['total']:9.3f} {counted:8.3f} {r['total'] / counted:6.2f} "
          f"{r['grads']:6.3f} {r['backward0']:8.3f} {r['optimizer']:8.3f} {r['other']:6.3f} {r['default']:13.3f}")
  print("state = arguments less the batch (weights, master, moments, scales); temp b=0 = temporaries extrapolated "
        "to batch 0 (gradients and optimizer intermediates); MiB/ex = activations per example; kept = outputs "
        "not aliased to donated inputs; measured = state + temp b=0; counted = the table above (flax: none's); grads = the "
        "gradient tree the backward pass hands the optimizer; bwd tmp = the gradient computation's own "
        "temporaries at batch 0; opt tmp = the optimizer update + weight write's temporaries, as the step runs "
        "them (in place, fp8.optim.fused_update, at none and O1-O3; optax's update then Precision.apply "
        "for fp32); other = the same with optax's update then Precision.apply at none and O1-O3; "
        + ("default sched = measured under XLA's default (concurrency-optimized) CPU scheduler" if where.on_host else
           "grads, bwd tmp, opt tmp, other: CPU only (nan); Triton GEMMs = measured with XLA's default GEMM "
           "choice without autotuning"))
  print(f"\nmeasured over {RANKS} data ranks: the O3 step compiled for {RANKS} {where.name}s, one sequence of "
        f"{MEASURE_SEQ} tokens per rank; per device, in bytes per (global) parameter")
  for layout in ("zero", "fsdp"):
    r = measured_sharded("O3", layout, n, where=where)
    print(f"O3 {layout:5s} state {r['state']:.3f}  temp {r['temp']:.3f}  total {r['state'] + r['temp']:.3f}  "
          f"({(r['state'] + r['temp']) * n / 2**30:.2f} GiB per device)")
  if where.on_host:
    block_gemm_memory()
  print("bytes_per_param " + " ".join(f"{l}={results[l]['total']:.2f}" for l in ("none", "O1", "O2", "O3"))
        + " " + " ".join(f"measured_{l}={meas[l]['total']:.2f}" for l in ("none", "O1", "O2", "O3")))


def block_gemm_memory(m: int = 16384, k: int = 2048, n: int = 8192, block: int = 128):
  """Block scaling's forward + both gradients of one GEMM at the 1.3B model's MLP shape,
  compiled (nothing allocated): temporaries, and what doubling K adds (linear in the
  operands when K-blocks are scanned; an M x K/block x N product would add that much)."""
  from jaxlab.fp8 import dot as fp8_dot

  def temp(kk):
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16) for s in ((m, kk), (kk, n), (m, n))]

    def step(x, w, g):
      y, vjp = jax.vjp(lambda a, b: fp8_dot.block_dense(a, b, block, (((1,), (0,)), ((), ()))), x, w)
      return (y, *vjp(g))

    return jax.jit(step).lower(*args).compile().memory_analysis().temp_size_in_bytes / 2**30

  base, doubled = temp(k), temp(2 * k)
  print(f"\nblock scaling ({block}), one GEMM {m} x {k} x {n} forward + dgrad + wgrad: temporaries {base:.2f} GiB; "
        f"K doubled adds {doubled - base:.2f} GiB (an M x K/{block} x N float32 product would add "
        f"{m * (k // block) * n * 4 / 2**30:.1f})")


if __name__ == "__main__":
  main()
