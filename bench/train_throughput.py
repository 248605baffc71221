"""Training throughput: jaxlab's GPT step vs transformers' GPT2LMHeadModel (PyTorch), same
shape, batch and optimizer (AdamW), fp32, on this machine's CPU, in one process run.

  python bench/train_throughput.py [--layers 6 --d-model 384 --heads 6 --seq 256 --batch 8 --vocab 50257]

Prints tokens/s (median over timed steps) for both and, last, `ratio=<jaxlab/torch>`.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxlab.models import gpt
from jaxlab.train import optim
from jaxlab.train.state import Task, init_state, make_train_step


def optim_config(lr):
  return ml_collections.ConfigDict(dict(learning_rate=lr, warmup_steps=0, min_lr_ratio=1.0, weight_decay=0.1,
                                        b1=0.9, b2=0.95, eps=1e-8, grad_clip=0.0))


def time_steps(step_once, warmup: int, steps: int) -> list[float]:
  for _ in range(warmup):
    step_once()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    step_once()
    times.append(time.perf_counter() - t0)
  return times


def bench_jaxlab(cfg: gpt.GPTConfig, tokens: np.ndarray, warmup: int, steps: int) -> list[float]:
  model = gpt.GPT(cfg)

  def loss(model, variables, batch, rng):
    logits = model.apply(variables, batch["inputs"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean(), ({}, {})

  task = Task(model=model, init=lambda m, r: m.init(r, jnp.zeros((1, 8), jnp.int32)), loss=loss,
              optimizer=optim.adamw(optim_config(1e-4), 1000), units_per_batch=("tokens", tokens.size))
  state = jax.jit(lambda r: init_state(task, r))(jax.random.key(0))
  step = jax.jit(make_train_step(task), donate_argnums=0)
  batch = {"inputs": jnp.asarray(tokens[:, :-1]), "targets": jnp.asarray(tokens[:, 1:])}
  rng = jax.random.key(1)
  holder = [state]

  def once():
    holder[0], metrics = step(holder[0], batch, rng)
    jax.block_until_ready(metrics["loss"])

  return time_steps(once, warmup, steps)


def bench_torch(cfg: gpt.GPTConfig, tokens: np.ndarray, warmup: int, steps: int) -> list[float]:
  import torch
  import transformers

  from jaxlab.models import hf
  hf_cfg = transformers.GPT2Config(**{k: v for k, v in hf.gpt2_config_dict(cfg).items()
                                      if k not in ("model_type", "architectures")})
  model = transformers.GPT2LMHeadModel(hf_cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
  ids = torch.tensor(tokens[:, :-1], dtype=torch.long)  # HF shifts labels itself: same seq_len predictions as jaxlab

  def once():
    opt.zero_grad(set_to_none=True)
    out = model(ids, labels=ids)
    out.loss.backward()
    opt.step()

  return time_steps(once, warmup, steps)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--d-model", type=int, default=384)
  p.add_argument("--heads", type=int, default=6)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--vocab", type=int, default=50257)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=10)
  args = p.parse_args()

  cfg = gpt.GPTConfig(vocab_size=args.vocab, max_len=args.seq + 1, num_layers=args.layers, d_model=args.d_model,
                      num_heads=args.heads)
  tokens = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.seq + 1)).astype(np.int32)
  n_tokens = args.batch * args.seq
  print(f"GPT-2 shape: {args.layers} layers, d_model {args.d_model}, {args.heads} heads, seq {args.seq}, "
        f"batch {args.batch}, vocab {args.vocab}; fp32 AdamW; {os.cpu_count()} CPUs; jax {jax.__version__}")
  results = {}
  for name, fn in (("jaxlab (jax.jit)", bench_jaxlab), ("transformers GPT2LMHeadModel (torch eager)", bench_torch)):
    times = fn(cfg, tokens, args.warmup, args.steps)
    results[name] = n_tokens / statistics.median(times)
    print(f"{name:45s} {results[name]:10,.0f} tokens/s  (median of {args.steps} steps, "
          f"{min(times) * 1e3:.0f}-{max(times) * 1e3:.0f} ms/step)")
  jax_tps, torch_tps = results.values()
  print(f"ratio={jax_tps / torch_tps:.2f}")


if __name__ == "__main__":
  main()
