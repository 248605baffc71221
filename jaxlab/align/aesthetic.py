"""Aesthetic model: an MLP on L2-normalised image embeddings, LAION-predictor shaped
(hidden 1024-128-64-16 with dropout 0.2, 0.2, 0.1, 0 and no nonlinearity in the
original; `activation` can add one), trained by MSE on (image, score) data."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

LAION_HIDDEN = (1024, 128, 64, 16)
LAION_DROPOUT = (0.2, 0.2, 0.1, 0.0)


class AestheticMLP(nn.Module):
  """Aesthetic score regressor: embeddings emb [..., E] -> scores [...].

  __call__(emb, deterministic=True) L2-normalises each embedding, then applies one Dense per width in `hidden`,
  each followed by `activation` ("none" as LAION, "relu" or "gelu") and dropout at its rate in `dropout` (0 skips
  it; active only with deterministic=False, which needs a "dropout" rng), and a final Dense to one output."""
  hidden: Sequence[int] = LAION_HIDDEN
  dropout: Sequence[float] = LAION_DROPOUT
  activation: str = "none"        # "none" (LAION) | "relu" | "gelu"

  @nn.compact
  def __call__(self, emb, deterministic: bool = True):
    if len(self.dropout) != len(self.hidden):
      raise ValueError(f"{len(self.hidden)} hidden layers but {len(self.dropout)} dropout rates")
    act = {"none": lambda x: x, "relu": jax.nn.relu, "gelu": jax.nn.gelu}[self.activation]
    x = emb / jnp.maximum(jnp.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    for i, (width, rate) in enumerate(zip(self.hidden, self.dropout)):
      x = act(nn.Dense(width, name=f"dense_{i}")(x))
      if rate:
        x = nn.Dropout(rate)(x, deterministic=deterministic)
    return nn.Dense(1, name="out")(x)[..., 0]


def mse_loss(model: AestheticMLP, params, emb, target, rng=None):
  """Mean squared error of the scores of emb [N, E] against target [N]: a scalar.

  With `rng` the model runs with dropout (training); without it, deterministically."""
  deterministic = rng is None
  pred = model.apply({"params": params}, emb, deterministic=deterministic,
                     rngs=None if deterministic else {"dropout": rng})
  return jnp.mean((pred - target) ** 2)


def score(model: AestheticMLP, params, emb):
  """Aesthetic scores [N] of embeddings [N, E]."""
  return model.apply({"params": params}, emb)
