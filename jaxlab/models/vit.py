"""Vision Transformer as TLEG's reference: patch embedding, learned positions, pre-LN
blocks (the shared block, non-causal), final LayerNorm, average pooling over patches
(no class token), linear head.

CLIP's vision tower is the same module with `pool="cls"` (a class token whose final
state is the image feature), `pre_norm=True` (a LayerNorm before the blocks), no patch
bias and `quick_gelu`; `num_classes=0` returns the pooled features without a head.

The patch embedding is a Dense on flattened patches (equal to a stride-p convolution),
so it takes the injectable `dot_general_cls` like every other projection.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxlab.models.block import BlockConfig, Stack
from jaxlab.sharding import constrain


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """A ViT's shape and numerics; the defaults are a small model for 28 x 28 grey images.

    num_classes  outputs of the linear head; 0 for no head (pooled features, as a two-tower image tower)
    image_size   side of the square input, in pixels; patch_size the side of a square patch
    channels     input channels (C)
    mlp_dim      hidden width of the MLP; 0 means 4 * d_model
    pool, pre_norm, patch_bias, activation  where TLEG's ViT and CLIP's differ (see the module doc)
  """
  num_classes: int
  image_size: int = 28
  patch_size: int = 4
  channels: int = 1
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 2
  mlp_dim: int = 0            # 0 -> 4 * d_model
  dropout: float = 0.0
  layer_norm_eps: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  remat: bool = False
  pool: str = "mean"          # "mean" over patches (TLEG) or "cls" (a class token, as CLIP)
  pre_norm: bool = False      # LayerNorm "ln_pre" before the blocks (CLIP's pre_layrnorm)
  patch_bias: bool = True
  activation: str = "gelu"

  def __post_init__(self):
    if self.pool not in ("mean", "cls"):
      raise ValueError(f"ViTConfig.pool={self.pool!r}: use 'mean' or 'cls'")

  @property
  def num_patches(self) -> int:
    """Patches per image: (image_size // patch_size) ** 2, the class token not included."""
    return (self.image_size // self.patch_size) ** 2

  def block(self) -> BlockConfig:
    """The shared block's settings for the ViT: bidirectional, pre-LN."""
    return BlockConfig(d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim or 4 * self.d_model,
                       causal=False, pre_ln=True, activation=self.activation, layer_norm_eps=self.layer_norm_eps,
                       dropout=self.dropout, dtype=self.dtype, param_dtype=self.param_dtype)


# (num_layers, d_model, num_heads): DeiT shapes and CPU-sized ones.
SIZES = {
    "toy": (2, 64, 2),
    "tiny": (4, 96, 3),
    "deit_ti": (12, 192, 3),
    "deit_s": (12, 384, 6),
    "deit_b": (12, 768, 12),
}


def patchify(images: jnp.ndarray, patch: int) -> jnp.ndarray:
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], patches in row-major order."""
  b, h, w, c = images.shape
  if h % patch or w % patch:
    raise ValueError(f"image {h}x{w} is not divisible into {patch}x{patch} patches")
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class ViT(nn.Module):
  """Vision Transformer: images [B, H, W, C] -> logits [B, num_classes] float32.

  With num_classes=0 it returns the pooled features [B, d_model] float32 instead. __call__(images,
  deterministic=True); H and W must be multiples of patch_size, and the patch count (+1 with pool="cls") must be
  the one the parameters were initialised with."""
  cfg: ViTConfig
  dot_general_cls: Any = None

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    cfg = self.cfg
    x = nn.Dense(cfg.d_model, use_bias=cfg.patch_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 dot_general_cls=self.dot_general_cls, kernel_init=nn.initializers.lecun_normal(),
                 name="patch")(patchify(images, cfg.patch_size))
    if cfg.pool == "cls":
      cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, cfg.d_model), cfg.param_dtype)
      x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, cfg.d_model)), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], cfg.d_model),
                     cfg.param_dtype)
    x = nn.Dropout(cfg.dropout)(x + pos.astype(x.dtype), deterministic=deterministic)
    if cfg.pre_norm:
      x = nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="ln_pre")(x)
    x = Stack(cfg.block(), cfg.num_layers, self.dot_general_cls, remat=cfg.remat, name="encoder")(
        x, None, deterministic)
    x = nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="ln_f")(x)
    # average pooling as the TLEG reference, or the class token's state as CLIP
    x = x[:, 0] if cfg.pool == "cls" else jnp.mean(x, axis=1)
    if cfg.num_classes == 0:  # features only (a tower of a two-tower model)
      return constrain(x.astype(jnp.float32), ("batch", "embed"))
    logits = nn.Dense(cfg.num_classes, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="head",
                      kernel_init=nn.initializers.normal(0.02), dot_general_cls=self.dot_general_cls)(x)
    return constrain(logits.astype(jnp.float32), ("batch", "classes"))
