"""FP8-LM memory: bytes per parameter of the train state at every level, on the GPT shape
of FP8-LM's 1.3B model (24 layers, d_model 2048, 2048 positions, vocab 50257, tied head),
from `jax.eval_shape(init_state)` (nothing is allocated) and `jaxlab.fp8.memory.account`.
Also O3's master weights and Adam moments per device when sharded over 8 data ranks
(`sharding.layout=zero`), from the partition rules' shard shapes.

  python bench/fp8_memory.py

Last line: `bytes_per_param none=.. O1=.. O2=.. O3=..` (weights + gradients + master + m + v,
scale overhead excluded and printed separately).
"""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab import config as config_lib, fp8, sharding
from jaxlab.fp8 import memory
from jaxlab.models import gpt
from jaxlab.train import optim
from jaxlab.train.state import Task, init_state
from jaxlab.trainers import lm

VOCAB = 50257
LEVELS = ("fp32", "none", "O1", "O2", "O3")
RANKS = 8



def abstract_state(level: str):
  cfg = config_lib.load(f"configs/fp8/gpt.py:{level},1.3b")
  task = Task(model=gpt.GPT(lm.model_config(cfg, VOCAB)), init=lambda m, rng: m.init(rng, jnp.zeros((1, 8), jnp.int32)),
              loss=None, optimizer=optim.adamw(cfg.optim, cfg.train.steps),
              schedule=optim.schedule(cfg.optim, cfg.train.steps))
  task = fp8.apply(cfg, task)  # the method's one transformation
  return cfg, task, jax.eval_shape(lambda rng: init_state(task, rng), jax.random.key(0))


def sharded_bytes(state, mesh, rules) -> dict:
  """Bytes per device of the optimizer state's master/mu/nu data (not scales), by field."""
  shardings = sharding.tree_shardings(state, mesh, rules)
  out = {"master": 0, "mu": 0, "nu": 0}

  def visit(path, leaf, sh):
    names = sharding.path_name(path).split("/")
    field = next((f for f in out if f in names), None)
    if field is None or names[-1] == "scale":
      return
    out[field] += int(np.prod(sh.shard_shape(leaf.shape))) * np.dtype(leaf.dtype).itemsize
  jax.tree_util.tree_map_with_path(visit, state.opt_state, shardings.opt_state)
  return out


def main():
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

  # O3 with sharding.layout=zero over 8 data ranks: master, m, v split, weights and grads replicated.
  mesh = sharding.make_mesh((("data", RANKS), ("model", 1)))
  rules = sharding.layout_rules("zero")
  per_dev = sharded_bytes(states["O3"], mesh, rules)
  o3 = results["O3"]
  split = {k: v / n for k, v in per_dev.items()}
  total_dev = o3["weights"] + o3["gradients"] + sum(split.values())
  print(f"O3, sharding.layout=zero over {RANKS} data ranks, per device: weights {o3['weights']:.3f} + gradients "
        f"{o3['gradients']:.3f} (replicated) + master {split['master']:.3f} + m {split['mu']:.3f} + v {split['nu']:.3f}"
        f" = {total_dev:.3f} bytes/param ({total_dev * n / 2**30:.2f} GiB per device; master+m+v "
        f"{o3['master'] + o3['m'] + o3['v']:.3f} -> {sum(split.values()):.3f})")
  print("bytes_per_param " + " ".join(f"{l}={results[l]['total']:.2f}" for l in ("none", "O1", "O2", "O3")))


if __name__ == "__main__":
  main()
