"""GPT <-> Hugging Face GPT-2 format (config.json + model.safetensors in a local folder).

Mapping: GPT-2 fuses q, k, v in `attn.c_attn` (a Conv1D, weight stored [in, out] with
columns [q | k | v]); jaxlab keeps them as separate projections stacked over layers.
Conv1D's [in, out] layout equals a flax Dense kernel, so no transposes except for the
untied `lm_head.weight` ([vocab, d] as a torch Linear).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from jaxlab.models.block import activation_from_hf
from jaxlab.models.gpt import GPTConfig

_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


def gpt2_config_dict(cfg: GPTConfig, eos_token_id: int | None = None) -> dict:
  """config.json content that transformers' GPT2Config reads."""
  out = {
      "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
      "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len, "n_embd": cfg.d_model, "n_layer": cfg.num_layers,
      "n_head": cfg.num_heads, "n_inner": cfg.mlp_dim or None, "activation_function": _ACT_TO_HF[cfg.activation],
      "layer_norm_epsilon": cfg.layer_norm_eps, "tie_word_embeddings": cfg.tied_embeddings,
      "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
      "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
  }
  if eos_token_id is not None:
    out.update(bos_token_id=eos_token_id, eos_token_id=eos_token_id)
  return out


def gpt_config_from_hf(hf: dict, **overrides) -> GPTConfig:
  """GPTConfig from a transformers GPT-2 config.json (as a dict); `overrides` set other fields (dtype, ...).

  ValueError for another model_type, for the GPT-2 options jaxlab's GPT does not implement
  (scale_attn_by_inverse_layer_idx, reorder_and_upcast_attn, scale_attn_weights=False) and unknown activations."""
  if hf.get("model_type") != "gpt2":
    raise ValueError(f"expected a GPT-2 checkpoint (model_type 'gpt2'), got {hf.get('model_type')!r}")
  for key in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
    if hf.get(key):
      raise ValueError(f"GPT-2 option {key}=True is not supported by jaxlab's GPT")
  if hf.get("scale_attn_weights", True) is False:
    raise ValueError("GPT-2 option scale_attn_weights=False is not supported by jaxlab's GPT")
  act = activation_from_hf(hf.get("activation_function", "gelu_new"), "GPT-2 activation_function")
  return GPTConfig(vocab_size=hf["vocab_size"], max_len=hf["n_positions"], num_layers=hf["n_layer"],
                   d_model=hf["n_embd"], num_heads=hf["n_head"], mlp_dim=hf.get("n_inner") or 0,
                   tied_embeddings=hf.get("tie_word_embeddings", True), activation=act,
                   layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5), **overrides)


def to_hf_state(params: Any, cfg: GPTConfig) -> dict[str, np.ndarray]:
  """jaxlab GPT params -> GPT-2 state dict (float32 numpy)."""
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), jax.device_get(params))
  blk = p["decoder"]["layers"]["block"]
  attn, mlp = blk["attn"], blk["mlp"]
  out = {"transformer.wte.weight": p["wte"]["embedding"], "transformer.wpe.weight": p["wpe"]["embedding"],
         "transformer.ln_f.weight": p["ln_f"]["scale"], "transformer.ln_f.bias": p["ln_f"]["bias"]}
  for i in range(cfg.num_layers):
    h = f"transformer.h.{i}."
    out[h + "attn.c_attn.weight"] = np.concatenate([attn[n]["kernel"][i] for n in ("query", "key", "value")], 1)
    out[h + "attn.c_attn.bias"] = np.concatenate([attn[n]["bias"][i] for n in ("query", "key", "value")], 0)
    out[h + "attn.c_proj.weight"], out[h + "attn.c_proj.bias"] = attn["out"]["kernel"][i], attn["out"]["bias"][i]
    out[h + "mlp.c_fc.weight"], out[h + "mlp.c_fc.bias"] = mlp["fc"]["kernel"][i], mlp["fc"]["bias"][i]
    out[h + "mlp.c_proj.weight"], out[h + "mlp.c_proj.bias"] = mlp["proj"]["kernel"][i], mlp["proj"]["bias"][i]
    for ln in ("ln_1", "ln_2"):
      out[h + f"{ln}.weight"], out[h + f"{ln}.bias"] = blk[ln]["scale"][i], blk[ln]["bias"][i]
  if not cfg.tied_embeddings:
    out["lm_head.weight"] = p["lm_head"]["kernel"].T
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def from_hf_state(state: dict[str, np.ndarray], cfg: GPTConfig) -> dict:
  """GPT-2 state dict -> jaxlab GPT params (float32 numpy, cast later as configured)."""
  def get(name):
    for key in (name, name.removeprefix("transformer.")):  # bare GPT2Model checkpoints lack the prefix
      if key in state:
        return np.asarray(state[key], np.float32)
    raise KeyError(f"GPT-2 checkpoint has no tensor {name!r}")

  d = cfg.d_model
  stack = lambda name: np.stack([get(f"transformer.h.{i}.{name}") for i in range(cfg.num_layers)])
  c_attn_w, c_attn_b = stack("attn.c_attn.weight"), stack("attn.c_attn.bias")
  attn = {n: {"kernel": c_attn_w[:, :, j * d:(j + 1) * d], "bias": c_attn_b[:, j * d:(j + 1) * d]}
          for j, n in enumerate(("query", "key", "value"))}
  attn["out"] = {"kernel": stack("attn.c_proj.weight"), "bias": stack("attn.c_proj.bias")}
  block = {
      "attn": attn,
      "mlp": {"fc": {"kernel": stack("mlp.c_fc.weight"), "bias": stack("mlp.c_fc.bias")},
              "proj": {"kernel": stack("mlp.c_proj.weight"), "bias": stack("mlp.c_proj.bias")}},
      "ln_1": {"scale": stack("ln_1.weight"), "bias": stack("ln_1.bias")},
      "ln_2": {"scale": stack("ln_2.weight"), "bias": stack("ln_2.bias")},
  }
  params = {"wte": {"embedding": get("transformer.wte.weight")}, "wpe": {"embedding": get("transformer.wpe.weight")},
            "decoder": {"layers": {"block": block}},
            "ln_f": {"scale": get("transformer.ln_f.weight"), "bias": get("transformer.ln_f.bias")}}
  if not cfg.tied_embeddings:
    params["lm_head"] = {"kernel": get("lm_head.weight").T}
  return params


def save_gpt2(folder: str, params: Any, cfg: GPTConfig, tokenizer=None) -> str:
  """Write config.json + model.safetensors (+ the tokenizer) loadable by
  transformers.GPT2LMHeadModel.from_pretrained(folder)."""
  os.makedirs(folder, exist_ok=True)
  eos = tokenizer.eos_token_id if tokenizer is not None else None
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(gpt2_config_dict(cfg, eos), f, indent=2)
  safetensors.numpy.save_file(to_hf_state(params, cfg), os.path.join(folder, "model.safetensors"),
                              metadata={"format": "pt"})
  if tokenizer is not None:
    tokenizer.save_pretrained(folder)
  return folder


def read_folder(folder: str, kind: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json as a dict, the safetensors state) of a local Hugging Face model folder."""
  config_path = os.path.join(os.fspath(folder), "config.json")
  weights_path = os.path.join(os.fspath(folder), "model.safetensors")
  for path in (config_path, weights_path):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: expected a {kind} folder with config.json and model.safetensors")
  with open(config_path) as f:
    return json.load(f), safetensors.numpy.load_file(weights_path)


def load_gpt2(folder: str, dtype=jnp.float32, param_dtype=jnp.float32) -> tuple[GPTConfig, dict]:
  """Read a local GPT-2-format folder (jaxlab's export or a transformers checkpoint)."""
  hf_config, state = read_folder(folder, "GPT-2")
  cfg = gpt_config_from_hf(hf_config, dtype=dtype, param_dtype=param_dtype)
  return cfg, jax.tree.map(lambda x: jnp.asarray(x, param_dtype), from_hf_state(state, cfg))
