"""AdamW with linear warmup, cosine decay and global-norm clipping (optax)."""
from __future__ import annotations

import jax
import ml_collections
import optax

from jaxlab.sharding import path_name


def schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, cosine decay to `learning_rate * min_lr_ratio`."""
  warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=cfg.learning_rate * cfg.min_lr_ratio)


def is_matrix(name: str) -> bool:
  """Kernels and embeddings, by the last part of their '/'-joined name (with layers stacked
  on a leading axis a bias is 2-D, so ndim can't tell)."""
  return name.rsplit("/", 1)[-1] in ("kernel", "embedding")


def decay_mask(params):
  """Weight decay on kernels and embeddings only, not on biases or LayerNorm."""
  return jax.tree_util.tree_map_with_path(lambda path, _: is_matrix(path_name(path)), params)


def adamw(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping then optax AdamW on `schedule`, from a config's `optim` group."""
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
      optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                  weight_decay=cfg.weight_decay, mask=decay_mask),
  )
