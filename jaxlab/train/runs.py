"""Reading finished runs back: what another stage or method needs from an LM run directory
(its config, tokenizer and latest parameters), without knowing which trainer wrote it."""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp

from jaxlab import checkpoint, config as config_lib
from jaxlab.data import tokenizer as tokenizer_lib
from jaxlab.models import gpt


@dataclasses.dataclass(frozen=True)
class LMRun:
  """A trained GPT from a run directory: model, parameters (host arrays), tokenizer, config."""
  workdir: str
  model: gpt.GPT
  params: Any
  tokenizer: Any
  config: Any


def tokenizer_dir(cfg, workdir: str) -> str:
  """Where an LM run's tokenizer lives: `tokenizer.path` if it names one, else workdir/tokenizer."""
  return cfg.tokenizer.path or os.path.join(workdir, "tokenizer")


def load_lm(workdir: str, step: int | None = None) -> LMRun:
  """The GPT of an LM run (`jaxlab.trainers.lm`): its written config, tokenizer and the
  latest (or given) checkpoint's parameters."""
  cfg = config_lib.read(workdir)
  tok = tokenizer_lib.load_tokenizer(tokenizer_dir(cfg, workdir))
  _, params = checkpoint.restore_params(workdir, step)
  model = gpt.GPT(gpt.GPTConfig.from_config(cfg.model, len(tok)))
  return LMRun(workdir, model, jax.tree.map(jnp.asarray, params), tok, cfg)
