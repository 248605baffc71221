"""Decoder-only GPT: learned positions, pre-LN blocks, causal attention, tied or untied head.

Sizes run from a 2-layer toy to the 1.3B shape of FP8-LM and ScalingFilter (24 layers,
d_model 2048, 32 heads, 2048 positions). Every projection (and the untied head) takes
the injectable `dot_general_cls`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxlab.models.block import ATTENTIONS, BlockConfig, Stack
from jaxlab.sharding import constrain


# config names of compute dtypes
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  """A GPT's shape and numerics; `from_config` builds one from a config's model group."""
  vocab_size: int
  max_len: int = 256
  num_layers: int = 2
  d_model: int = 128
  num_heads: int = 4
  mlp_dim: int = 0            # 0 -> 4 * d_model
  tied_embeddings: bool = True
  activation: str = "gelu_tanh"
  layer_norm_eps: float = 1e-5
  dropout: float = 0.0
  dtype: Any = jnp.float32    # compute dtype (bfloat16 on accelerators)
  param_dtype: Any = jnp.float32
  remat: bool = False
  attention: str = "auto"     # the attention kernel (block.ATTENTIONS; "auto": cuDNN on NVIDIA GPUs)

  @classmethod
  def from_config(cls, model, vocab_size: int) -> "GPTConfig":
    """From a config's `model` group (num_layers, d_model, num_heads, mlp_dim, max_len,
    tied_embeddings, dropout, dtype name, remat, optional attention), with the tokenizer's vocabulary size."""
    if model.dtype not in DTYPES:
      raise ValueError(f"model.dtype: {model.dtype!r} is not one of {sorted(DTYPES)}")
    attention = model.get("attention", "auto")
    if attention not in ATTENTIONS:
      raise ValueError(f"model.attention: {attention!r} is not one of {ATTENTIONS}")
    return cls(vocab_size=vocab_size, max_len=model.max_len, num_layers=model.num_layers, d_model=model.d_model,
               num_heads=model.num_heads, mlp_dim=model.mlp_dim, tied_embeddings=model.tied_embeddings,
               dropout=model.dropout, dtype=DTYPES[model.dtype], remat=model.remat, attention=attention)

  def block(self) -> BlockConfig:
    """The shared transformer block's settings for this GPT (causal, pre-LN)."""
    return BlockConfig(d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim or 4 * self.d_model,
                       causal=True, pre_ln=True, activation=self.activation, layer_norm_eps=self.layer_norm_eps,
                       dropout=self.dropout, dtype=self.dtype, param_dtype=self.param_dtype,
                       attention=self.attention)

  def num_params(self) -> int:
    """Parameter count worked out from the shapes (embeddings, blocks, final norm, head)."""
    d, f, L = self.d_model, self.mlp_dim or 4 * self.d_model, self.num_layers
    per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
    head = 0 if self.tied_embeddings else d * self.vocab_size
    return self.vocab_size * d + self.max_len * d + L * per_layer + 2 * d + head


# (num_layers, d_model, num_heads, max_len); vocab comes from the tokenizer.
SIZES = {
    "toy": (2, 64, 2, 128),
    "tiny": (4, 128, 4, 256),
    "small": (6, 384, 6, 256),
    "gpt2": (12, 768, 12, 1024),
    "gpt2_medium": (24, 1024, 16, 1024),
    "gpt2_large": (36, 1280, 20, 1024),
    "1.3b": (24, 2048, 32, 2048),
}


def sized(size: str, vocab_size: int, **overrides) -> GPTConfig:
  """GPTConfig of a named size in SIZES ("toy" ... "1.3b") with the tokenizer's vocabulary size.

  `overrides` set any other field, or replace one of the size's; an unknown size is a KeyError."""
  layers, d_model, heads, max_len = SIZES[size]
  base = dict(vocab_size=vocab_size, num_layers=layers, d_model=d_model, num_heads=heads, max_len=max_len)
  base.update(overrides)
  return GPTConfig(**base)


class GPT(nn.Module):
  """Decoder-only language model: tokens [B, T] int -> next-token logits [B, T, vocab_size] float32.

  T is at most cfg.max_len. Residual output projections start with std 0.02 / sqrt(2 * num_layers), as GPT-2;
  the head is wte's transpose with tied embeddings, else its own `lm_head` Dense."""
  cfg: GPTConfig
  dot_general_cls: Any = None

  @nn.compact
  def __call__(self, tokens, deterministic: bool = True, positions=None, segment_ids=None):
    """Packed rows: `positions` [B, T] restart at each document and `segment_ids` [B, T]
    keep attention within a document; both default to one sequence a row."""
    cfg = self.cfg
    init = nn.initializers.normal(0.02)
    wte = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=init, dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, name="wte")
    wpe = nn.Embed(cfg.max_len, cfg.d_model, embedding_init=nn.initializers.normal(0.01), dtype=cfg.dtype,
                   param_dtype=cfg.param_dtype, name="wpe")
    positions = jnp.arange(tokens.shape[-1])[None] if positions is None else positions
    mask = None if segment_ids is None else segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
    x = wte(tokens) + wpe(positions)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    x = Stack(cfg.block(), cfg.num_layers, self.dot_general_cls,
              out_std=0.02 / math.sqrt(2 * cfg.num_layers), remat=cfg.remat, name="decoder")(x, mask, deterministic)
    x = nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="ln_f")(x)
    if cfg.tied_embeddings:
      logits = wte.attend(x)
    else:
      logits = nn.Dense(cfg.vocab_size, use_bias=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                        kernel_init=init, dot_general_cls=self.dot_general_cls, name="lm_head")(x)
    return constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))
