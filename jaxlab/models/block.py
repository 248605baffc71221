"""The one transformer block every jaxlab model uses (GPT, ViT, the BERT embedder).

Options cover what the models differ in: causal mask, pre- or post-LayerNorm, activation,
the attention kernel, and an injectable `dot_general_cls` for every projection, so FP8 (or
any other GEMM recipe) plugs in without touching the models. `Stack` scans the block over a
leading layer axis: the parameters of layer l are index l of one pytree.

Parameter names (the sharding presets and HF converters rely on them):
  ln_1/{scale,bias}  attn/{query,key,value,out}/{kernel,bias}  ln_2/{scale,bias}
  mlp/fc/{kernel,bias}  mlp/proj/{kernel,bias}
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxlab.sharding import constrain

ACTIVATIONS: dict[str, Callable] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2's "gelu_new"
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),  # CLIP's
}

# HF config activation names (GPT-2 activation_function, BERT/CLIP hidden_act) -> ACTIVATIONS
# keys; one table so the GPT-2, BERT and CLIP importers accept the same names.
HF_ACTIVATIONS: dict[str, str] = {
    "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu",
    "silu": "silu", "swish": "silu", "quick_gelu": "quick_gelu",
}


def activation_from_hf(name: str, where: str) -> str:
  """The ACTIVATIONS key for HF activation `name`; ValueError naming `where` (e.g. "BERT hidden_act") if unknown."""
  if name not in HF_ACTIVATIONS:
    raise ValueError(f"unsupported {where} {name!r}")
  return HF_ACTIVATIONS[name]


# Attention kernels: "xla" writes the FP32 [batch, heads, T, S] scores of every layer to memory,
# "cudnn" is cuDNN's fused flash attention (NVIDIA GPUs), "auto" picks cuDNN where it applies.
ATTENTIONS = ("auto", "xla", "cudnn")


@functools.cache
def cudnn_traceable() -> bool:
  """Whether this process can trace cuDNN attention: JAX asks cuDNN for its version when it
  traces it, so a JAX without CUDA (or without cuDNN) cannot, even to compile for a GPU."""
  q = jax.ShapeDtypeStruct((1, 8, 1, 8), jnp.bfloat16)
  try:
    jax.eval_shape(lambda q: jax.nn.dot_product_attention(q, q, q, implementation="cudnn"), q)
  except Exception:  # noqa: BLE001 -- whatever stops the trace (no CUDA JAX, no cuDNN, too old a GPU) means no
    return False
  return True


def cudnn_applies(dtype, head_dim: int, masked: bool) -> bool:
  """Whether "auto" attention takes cuDNN's flash attention on an NVIDIA GPU: BF16/FP16, head_dim
  a multiple of 8 up to 128, no mask besides the causal one, and a process that can trace it."""
  return (jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
          and not masked and cudnn_traceable())


def attend(q, k, v, mask, causal: bool, choice: str = "auto"):
  """`jax.nn.dot_product_attention(q, k, v, mask, is_causal=causal)` with the kernel `choice`
  (one of ATTENTIONS). "auto" is cuDNN's flash attention in a program compiled for an NVIDIA GPU
  where it applies (`cudnn_applies`; decided when the step is lowered for its devices,
  `lax.platform_dependent`, so a deviceless compile for an H100 gets it too) and XLA's kernels
  elsewhere. JAX's own default (implementation=None) is XLA's everywhere, GPUs included (JAX
  0.10): at GPT-1.3B's training shape, 2 GiB of FP32 scores per layer written and read in each
  of the forward, the remat and the backward pass."""
  if choice not in ATTENTIONS:
    raise ValueError(f"attention={choice!r} is not one of {ATTENTIONS}")
  kernel = lambda impl: (lambda q, k, v: jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                                                     implementation=impl))
  if choice != "auto":
    return kernel(choice)(q, k, v)
  if not cudnn_applies(q.dtype, q.shape[-1], mask is not None):
    return kernel("xla")(q, k, v)
  return lax.platform_dependent(q, k, v, cuda=kernel("cudnn"), default=kernel("xla"))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) over the last axis: unit vectors (zero rows stay zero)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
  """Settings of one transformer block; each model builds its own with a `block()` method.

    d_model     width of the residual stream; num_heads must divide it
    mlp_dim     hidden width of the MLP
    causal      attend only to earlier positions (GPT, text towers) or to all (ViT, BERT)
    pre_ln      LayerNorm before each sublayer (GPT-2, ViT) or after its residual add (BERT)
    activation  a key of ACTIVATIONS
    dropout     rate after attention and after the MLP (only when not deterministic)
    dtype       compute dtype; param_dtype that of the parameters
    init_std    std of the normal init of the projection kernels (a module's out_std overrides it for outputs)
    attention   the attention kernel, one of ATTENTIONS (see attend)
  """
  d_model: int
  num_heads: int
  mlp_dim: int
  causal: bool = True
  pre_ln: bool = True
  activation: str = "gelu_tanh"
  layer_norm_eps: float = 1e-5
  dropout: float = 0.0
  dtype: Any = jnp.float32          # compute dtype
  param_dtype: Any = jnp.float32
  init_std: float = 0.02
  attention: str = "auto"

  def __post_init__(self):
    if self.attention not in ATTENTIONS:
      raise ValueError(f"attention={self.attention!r} is not one of {ATTENTIONS}")


def _dense(cfg: BlockConfig, features: int, name: str, dot_general_cls, std: float | None = None):
  return nn.Dense(features, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
                  kernel_init=nn.initializers.normal(std or cfg.init_std),
                  dot_general_cls=dot_general_cls)


class Attention(nn.Module):
  """Multi-head self-attention: x [batch, length, d_model] -> [batch, length, d_model].

  __call__(x, mask=None, deterministic=True): `mask` is boolean, broadcastable to [batch, heads, length, length]
  (True = may attend), applied on top of the causal mask when cfg.causal; dropout follows the out projection.
  `out_std`, when set, is the init std of the out projection."""
  cfg: BlockConfig
  dot_general_cls: Any = None
  out_std: float | None = None

  @nn.compact
  def __call__(self, x, mask=None, deterministic=True):
    cfg = self.cfg
    head_dim = cfg.d_model // cfg.num_heads
    split = lambda t: t.reshape(t.shape[:-1] + (cfg.num_heads, head_dim))
    q, k, v = (split(_dense(cfg, cfg.d_model, n, self.dot_general_cls)(x)) for n in ("query", "key", "value"))
    q, k, v = (constrain(t, ("batch", "length", "heads", None)) for t in (q, k, v))
    y = attend(q, k, v, mask, cfg.causal, cfg.attention)
    y = y.reshape(y.shape[:-2] + (cfg.d_model,))
    y = _dense(cfg, cfg.d_model, "out", self.dot_general_cls, self.out_std)(y)
    return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)


class Mlp(nn.Module):
  """Feed-forward sublayer: x [..., d_model] -> fc (mlp_dim) -> activation -> proj (d_model) -> dropout.

  __call__(x, deterministic=True). `out_std`, when set, is the init std of proj."""
  cfg: BlockConfig
  dot_general_cls: Any = None
  out_std: float | None = None

  @nn.compact
  def __call__(self, x, deterministic=True):
    cfg = self.cfg
    h = _dense(cfg, cfg.mlp_dim, "fc", self.dot_general_cls)(x)
    h = constrain(ACTIVATIONS[cfg.activation](h), ("batch", "length", "mlp"))
    y = _dense(cfg, cfg.d_model, "proj", self.dot_general_cls, self.out_std)(h)
    return nn.Dropout(cfg.dropout)(y, deterministic=deterministic)


class Block(nn.Module):
  """One transformer block: x [batch, length, d_model] -> the same shape.

  __call__(x, mask=None, deterministic=True): attention, then the MLP, each with a residual connection and a
  LayerNorm (ln_1, ln_2) before the sublayer (pre_ln) or after the residual add. `mask` is as Attention's."""
  cfg: BlockConfig
  dot_general_cls: Any = None
  out_std: float | None = None  # GPT-2 scales residual projections by 1/sqrt(2 * layers)

  @nn.compact
  def __call__(self, x, mask=None, deterministic=True):
    cfg = self.cfg
    norm = lambda name: nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)
    attn = Attention(cfg, self.dot_general_cls, self.out_std, name="attn")
    mlp = Mlp(cfg, self.dot_general_cls, self.out_std, name="mlp")
    x = constrain(x, ("batch", "length", "embed"))
    if cfg.pre_ln:
      x = x + attn(norm("ln_1")(x), mask, deterministic)
      x = x + mlp(norm("ln_2")(x), deterministic)
    else:  # post-LN (BERT)
      x = norm("ln_1")(x + attn(x, mask, deterministic))
      x = norm("ln_2")(x + mlp(x, deterministic))
    return x


class _ScanStep(nn.Module):
  """One block as an nn.scan step: (carry, broadcast mask) -> (carry, None)."""
  cfg: BlockConfig
  dot_general_cls: Any = None
  out_std: float | None = None
  deterministic: bool = True

  @nn.compact
  def __call__(self, x, mask):
    block = Block(self.cfg, self.dot_general_cls, self.out_std, name="block")
    return block(x, mask, self.deterministic), None


class Stack(nn.Module):
  """`num_layers` blocks scanned over a leading axis of every variable collection."""
  cfg: BlockConfig
  num_layers: int
  dot_general_cls: Any = None
  out_std: float | None = None
  remat: bool = False

  @nn.compact
  def __call__(self, x, mask=None, deterministic=True):
    step = nn.remat(_ScanStep, prevent_cse=False) if self.remat else _ScanStep
    scanned = nn.scan(step, variable_axes={True: 0}, split_rngs={"params": True, "dropout": True},
                      in_axes=nn.broadcast, length=self.num_layers)
    x, _ = scanned(self.cfg, self.dot_general_cls, self.out_std, deterministic, name="layers")(x, mask)
    return x
