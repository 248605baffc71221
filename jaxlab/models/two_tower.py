"""Two-tower (CLIP-style) retrieval model: the ViT image tower (models/vit.py) and a
causal transformer text tower, both built from the shared block; linear projections to a
joint space; a learnable temperature (and a bias for the sigmoid loss).

  image tower  ViT(num_classes=0): patch Dense, optional class token, positions,
               optional ln_pre, Stack, ln_f, pooled (class token or mean)
  text tower   token + position embeddings, causal pre-LN Stack with padding mask,
               ln_f, the state at the EOS token (first occurrence of cfg.text.eos_id)
               or, with eos_id < 0, at the last real token
  scores       logit_scale.exp() * <img, txt> on unit vectors (+ logit_bias)

Contrastive losses: the symmetric softmax (InfoNCE) loss with label smoothing and
optional multi-positive targets, and the SigLIP sigmoid loss.

HF CLIP import (`load_clip(folder)`): a local folder with config.json + model.safetensors
as written by transformers' CLIPModel.save_pretrained. Mapping (torch Linear [out, in]
-> flax kernel [in, out]):
  vision_model.embeddings.class_embedding          -> vision/cls [1, 1, d]
  vision_model.embeddings.patch_embedding.weight   -> vision/patch/kernel  (Conv2d [d, C, p, p]
                                                      -> [p*p*C, d], patchify's row-major order)
  vision_model.embeddings.position_embedding       -> vision/pos_embedding [1, n+1, d]
  vision_model.pre_layrnorm / post_layernorm       -> vision/ln_pre / vision/ln_f
  *.encoder.layers.{i}.self_attn.{q,k,v,out}_proj  -> */encoder/layers/block/attn/{query,key,value,out}[i]
  *.encoder.layers.{i}.layer_norm{1,2}             -> ln_1[i] / ln_2[i]
  *.encoder.layers.{i}.mlp.fc{1,2}                 -> mlp/fc[i] / mlp/proj[i]
  text_model.embeddings.{token,position}_embedding -> text/wte, text/wpe
  text_model.final_layer_norm                      -> text/ln_f
  visual_projection / text_projection              -> image_proj / text_proj (no bias)
  logit_scale                                      -> logit_scale
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxlab.models.block import BlockConfig, Stack, activation_from_hf, l2_normalize
from jaxlab.models.vit import ViT, ViTConfig
from jaxlab.sharding import constrain

@dataclasses.dataclass(frozen=True)
class TextConfig:
  """The text tower's shape and numerics: a causal pre-LN transformer, no dropout.

    max_len  positions: the longest text, in tokens
    mlp_dim  hidden width of the MLP; 0 means 4 * d_model
    eos_id   pool the state at the first eos_id token; < 0 pools at the last real token (by the mask)
    frozen_dim  > 0: a locked text tower (LiT) whose outputs, features [batch, frozen_dim], are
             computed outside the model (e.g. by a frozen sentence encoder) and come in as `tokens`;
             the tower is the identity and only the projection after it trains
  """
  vocab_size: int
  max_len: int = 16
  num_layers: int = 2
  d_model: int = 64
  num_heads: int = 2
  mlp_dim: int = 0              # 0 -> 4 * d_model
  activation: str = "gelu"
  layer_norm_eps: float = 1e-5
  eos_id: int = -1              # pool at the first eos_id; < 0: at the last real token
  frozen_dim: int = 0           # > 0: precomputed frozen features of this width come in as tokens
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def block(self) -> BlockConfig:
    """The shared block's settings for the text tower: causal, pre-LN."""
    return BlockConfig(d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim or 4 * self.d_model,
                       causal=True, pre_ln=True, activation=self.activation, layer_norm_eps=self.layer_norm_eps,
                       dtype=self.dtype, param_dtype=self.param_dtype)


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
  """A two-tower model: its towers, the joint space, and the initial temperature and bias of the scores.

    vision            the image tower; num_classes must be 0 (features, no head)
    text              the text tower
    embed_dim         width of the joint embedding space (both projections)
    logit_scale_init  initial log of the score scale (CLIP: log(1 / 0.07); SigLIP: log(10))
    logit_bias_init   initial score bias, used by the sigmoid loss only (SigLIP: -10)
  """
  vision: ViTConfig             # num_classes must be 0 (features)
  text: TextConfig
  embed_dim: int = 64
  logit_scale_init: float = math.log(1 / 0.07)   # CLIP; SigLIP uses log(10)
  logit_bias_init: float = 0.0                   # SigLIP uses -10

  def __post_init__(self):
    if self.vision.num_classes != 0:
      raise ValueError("TwoTowerConfig.vision must have num_classes=0 (the tower returns features)")
    for name, c in (("vision", self.vision), ("text", self.text)):
      if c.d_model % c.num_heads:
        raise ValueError(f"{name}: num_heads={c.num_heads} does not divide d_model={c.d_model}")


class TextTower(nn.Module):
  """tokens, mask [batch, length] -> pooled features [batch, d_model] (with cfg.frozen_dim: the
  precomputed features [batch, frozen_dim] passed through)."""
  cfg: TextConfig
  dot_general_cls: Any = None

  @nn.compact
  def __call__(self, tokens, mask):
    cfg = self.cfg
    if cfg.frozen_dim:  # locked tower: its features were computed outside (no parameters here)
      if tokens.shape[-1] != cfg.frozen_dim:
        raise ValueError(f"frozen text features of width {tokens.shape[-1]}, the config says {cfg.frozen_dim}")
      return constrain(tokens.astype(jnp.float32), ("batch", "embed"))
    embed = lambda n, name: nn.Embed(n, cfg.d_model, embedding_init=nn.initializers.normal(0.02), dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype, name=name)
    if tokens.shape[-1] > cfg.max_len:
      raise ValueError(f"text of {tokens.shape[-1]} tokens exceeds the text tower's max_len={cfg.max_len}")
    x = embed(cfg.vocab_size, "wte")(tokens) + embed(cfg.max_len, "wpe")(jnp.arange(tokens.shape[-1])[None])
    attn_mask = mask.astype(bool)[:, None, None, :]   # padding keys hidden; causal added by the block
    x = Stack(cfg.block(), cfg.num_layers, self.dot_general_cls, name="encoder")(x, attn_mask, True)
    x = nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="ln_f")(x)
    if cfg.eos_id >= 0:
      index = jnp.argmax(tokens == cfg.eos_id, axis=-1)
    else:
      index = jnp.maximum(jnp.sum(mask.astype(jnp.int32), -1) - 1, 0)
    pooled = jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]
    return constrain(pooled.astype(jnp.float32), ("batch", "embed"))


class TwoTower(nn.Module):
  """CLIP-style model: images and texts -> unit embeddings in one space, with the score's scale and bias.

  __call__(images [B, H, W, C], tokens [B, L], mask [B, L]) -> (image embeddings [B, embed_dim], text embeddings
  [B, embed_dim], scale = exp(logit_scale), logit_bias), all float32. encode_image / encode_text embed one side."""
  cfg: TwoTowerConfig
  dot_general_cls: Any = None

  def setup(self):
    cfg = self.cfg
    proj = lambda name: nn.Dense(cfg.embed_dim, use_bias=False, name=name, dot_general_cls=self.dot_general_cls,
                                 kernel_init=nn.initializers.normal(0.02))
    self.vision = ViT(cfg.vision, self.dot_general_cls)
    self.text = TextTower(cfg.text, self.dot_general_cls)
    self.image_proj, self.text_proj = proj("image_proj"), proj("text_proj")
    self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init), ())
    self.logit_bias = self.param("logit_bias", nn.initializers.constant(cfg.logit_bias_init), ())

  def encode_image(self, images):
    """[B, H, W, C] in the model's pixel range -> unit vectors [B, embed_dim]."""
    return l2_normalize(self.image_proj(self.vision(images)).astype(jnp.float32))

  def encode_text(self, tokens, mask):
    """tokens, mask [B, L] -> unit vectors [B, embed_dim] float32."""
    return l2_normalize(self.text_proj(self.text(tokens, mask)).astype(jnp.float32))

  def __call__(self, images, tokens, mask):
    """(image embeddings, text embeddings, scale = exp(logit_scale), bias)."""
    return self.encode_image(images), self.encode_text(tokens, mask), jnp.exp(self.logit_scale), self.logit_bias


def embed_images(model: TwoTower, params, images):
  """Unit float32 embeddings [B, embed_dim] of images [B, H, W, C] (pure; jit with the model bound)."""
  return model.apply({"params": params}, images, method=TwoTower.encode_image)


def embed_texts(model: TwoTower, params, tokens, mask):
  """Unit float32 embeddings [B, embed_dim] of tokens, mask [B, L] (pure; jit with the model bound)."""
  return model.apply({"params": params}, tokens, mask, method=TwoTower.encode_text)


# ---------------------------------------------------------------------------- losses

def softmax_contrastive_loss(img, txt, scale, label_smoothing: float = 0.0, positives=None):
  """Symmetric InfoNCE: mean of image->text and text->image cross-entropies of
  scale * img @ txt.T. Targets are the diagonal (or the rows of `positives`, a [B, B]
  0/1 matrix for batches with duplicate captions, normalised), smoothed as
  (1 - ls) * target + ls / B."""
  logits = scale * img @ txt.T
  n = logits.shape[0]
  target = jnp.eye(n) if positives is None else positives.astype(jnp.float32)
  target_i = target / jnp.sum(target, 1, keepdims=True)
  target_t = target.T / jnp.sum(target.T, 1, keepdims=True)
  smooth = lambda t: (1.0 - label_smoothing) * t + label_smoothing / n
  i2t = optax.softmax_cross_entropy(logits, smooth(target_i))
  t2i = optax.softmax_cross_entropy(logits.T, smooth(target_t))
  return 0.5 * (jnp.mean(i2t) + jnp.mean(t2i))


def sigmoid_contrastive_loss(img, txt, scale, bias, positives=None):
  """SigLIP: -sum_ij log sigmoid(z_ij (scale <img_i, txt_j> + bias)) / B with z = +1 on
  positives (the diagonal by default) and -1 elsewhere."""
  logits = scale * img @ txt.T + bias
  n = logits.shape[0]
  z = 2.0 * (jnp.eye(n) if positives is None else positives.astype(jnp.float32)) - 1.0
  return -jnp.sum(jax.nn.log_sigmoid(z * logits)) / n


def contrastive_loss(kind: str, img, txt, scale, bias, label_smoothing: float = 0.0, positives=None):
  """The scalar contrastive loss of `kind` on unit embeddings img, txt [B, D].

  "softmax": symmetric InfoNCE (uses label_smoothing, ignores bias); "sigmoid": SigLIP (uses bias, ignores
  label_smoothing). `positives` is an optional [B, B] 0/1 matrix of matching pairs (default: the diagonal)."""
  if kind == "softmax":
    return softmax_contrastive_loss(img, txt, scale, label_smoothing, positives)
  if kind == "sigmoid":
    return sigmoid_contrastive_loss(img, txt, scale, bias, positives)
  raise ValueError(f"unknown contrastive loss {kind!r}; use 'softmax' or 'sigmoid'")


# ---------------------------------------------------------------------------- HF CLIP interop

def clip_config_from_hf(hf: dict) -> TwoTowerConfig:
  """transformers CLIPConfig (config.json as a dict) -> TwoTowerConfig."""
  if hf.get("model_type") != "clip":
    raise ValueError(f"expected a CLIP checkpoint (model_type 'clip'), got {hf.get('model_type')!r}")
  v, t = hf["vision_config"], hf["text_config"]
  act = lambda c: activation_from_hf(c.get("hidden_act", "quick_gelu"), "CLIP hidden_act")

  eos = t.get("eos_token_id", 2)
  if eos == 2:
    raise ValueError("CLIP text config with eos_token_id=2 uses the legacy argmax(input_ids) pooling, which "
                     "jaxlab does not reproduce; set text_config.eos_token_id to the real EOS id")
  vision = ViTConfig(num_classes=0, image_size=v["image_size"], patch_size=v["patch_size"],
                     channels=v.get("num_channels", 3), num_layers=v["num_hidden_layers"], d_model=v["hidden_size"],
                     num_heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"],
                     layer_norm_eps=v.get("layer_norm_eps", 1e-5), pool="cls", pre_norm=True, patch_bias=False,
                     activation=act(v))
  text = TextConfig(vocab_size=t["vocab_size"], max_len=t["max_position_embeddings"],
                    num_layers=t["num_hidden_layers"], d_model=t["hidden_size"], num_heads=t["num_attention_heads"],
                    mlp_dim=t["intermediate_size"], activation=act(t), layer_norm_eps=t.get("layer_norm_eps", 1e-5),
                    eos_id=eos)
  return TwoTowerConfig(vision=vision, text=text, embed_dim=hf.get("projection_dim", 512),
                        logit_scale_init=hf.get("logit_scale_init_value", 2.6592))


def clip_from_hf_state(state: dict[str, np.ndarray], cfg: TwoTowerConfig) -> dict:
  """CLIPModel state dict (torch names) -> TwoTower params (float32 numpy)."""
  def get(name):
    if name not in state:
      raise KeyError(f"CLIP checkpoint has no tensor {name!r}")
    return np.asarray(state[name], np.float32)

  def encoder(prefix, layers):
    stack = lambda name: np.stack([get(f"{prefix}.encoder.layers.{i}.{name}") for i in range(layers)])
    dense = lambda name: {"kernel": np.ascontiguousarray(stack(name + ".weight").transpose(0, 2, 1)),
                          "bias": stack(name + ".bias")}
    norm = lambda name: {"scale": stack(name + ".weight"), "bias": stack(name + ".bias")}
    blk = {"attn": {n: dense(f"self_attn.{h}_proj") for n, h in
                    (("query", "q"), ("key", "k"), ("value", "v"), ("out", "out"))},
           "mlp": {"fc": dense("mlp.fc1"), "proj": dense("mlp.fc2")},
           "ln_1": norm("layer_norm1"), "ln_2": norm("layer_norm2")}
    return {"layers": {"block": blk}}

  ln = lambda name: {"scale": get(name + ".weight"), "bias": get(name + ".bias")}
  v, t = cfg.vision, cfg.text
  patch = get("vision_model.embeddings.patch_embedding.weight")  # [d, C, p, p]
  vision = {"cls": get("vision_model.embeddings.class_embedding").reshape(1, 1, -1),
            "patch": {"kernel": np.ascontiguousarray(patch.transpose(2, 3, 1, 0).reshape(-1, v.d_model))},
            "pos_embedding": get("vision_model.embeddings.position_embedding.weight")[None],
            "ln_pre": ln("vision_model.pre_layrnorm"),
            "encoder": encoder("vision_model", v.num_layers),
            "ln_f": ln("vision_model.post_layernorm")}
  text = {"wte": {"embedding": get("text_model.embeddings.token_embedding.weight")},
          "wpe": {"embedding": get("text_model.embeddings.position_embedding.weight")},
          "encoder": encoder("text_model", t.num_layers),
          "ln_f": ln("text_model.final_layer_norm")}
  return {"vision": vision, "text": text,
          "image_proj": {"kernel": get("visual_projection.weight").T.copy()},
          "text_proj": {"kernel": get("text_projection.weight").T.copy()},
          "logit_scale": get("logit_scale").reshape(()), "logit_bias": np.zeros((), np.float32)}


def load_clip(folder: str, param_dtype=jnp.float32) -> tuple[TwoTowerConfig, dict]:
  """Read a local HF CLIP folder (config.json + model.safetensors) -> (config, params).
  Images go in as [B, H, W, C] after CLIP's own normalisation (mean/std per channel)."""
  from jaxlab.models.hf import read_folder
  hf_config, state = read_folder(folder, "CLIP")
  cfg = clip_config_from_hf(hf_config)
  return cfg, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), clip_from_hf_state(state, cfg))
