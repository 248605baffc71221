"""Trainers: one module per experiment kind, each wiring methods to the shared loop.

Every trainer module has `default_config()`, `train_and_evaluate(config, workdir)` (a typed
result), `stages(config)` (what `jaxlab.aot` compiles, from shapes alone) and
`report(result)` (the text `jaxlab.main` prints). `get(name)` finds one by the config's
`trainer` key.
"""
from __future__ import annotations

import importlib

from jaxlab import config as config_lib

NAMES = ("lm", "classify", "align", "scalingfilter")


def get(name: str):
  """The trainer module called `name` (ConfigError naming the `trainer` key otherwise)."""
  if name not in NAMES:
    raise config_lib.ConfigError(f"trainer: no trainer named {name!r}; one of {NAMES}")
  return importlib.import_module(f"jaxlab.trainers.{name}")
