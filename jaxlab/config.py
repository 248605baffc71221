"""Config files and command-line overrides.

A config file is a Python module with `get_config(arg: str | None) -> ConfigDict`.
`load("configs/x.py:tiny", ["train.steps=10"])` imports it, calls `get_config("tiny")`,
applies the overrides with type checks and returns a locked ConfigDict. Every mistake
(unknown key, wrong type, malformed override) raises `ConfigError` naming the key, before
anything is compiled.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from typing import Any, Iterable, Sequence

import ml_collections


class ConfigError(ValueError):
  """A config mistake, reported before any work starts."""


def _flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in cfg.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      out.update(_flat_keys(value, name + "."))
    else:
      out[name] = value
  return out


def closest_key(key: str, known: Iterable[str]) -> str:
  """The entry of `known` most similar to `key` (difflib, no cutoff), or "" when `known` is empty."""
  known = list(known)
  match = difflib.get_close_matches(key, known, n=1, cutoff=0.0)
  return match[0] if match else ""


def unknown_key_error(key: str, cfg: ml_collections.ConfigDict) -> ConfigError:
  """A ConfigError for an unknown dotted `key`, suggesting the closest existing key of `cfg`."""
  hint = closest_key(key, _flat_keys(cfg))
  return ConfigError(f"unknown config key {key!r}" + (f"; did you mean {hint!r}?" if hint else ""))


def _parse_value(text: str) -> Any:
  """Python literal if it parses as one, else the raw string (so `name=gpt` works)."""
  lowered = text.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  if lowered in ("none", "null"):
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _coerce(key: str, old: Any, new: Any) -> Any:
  """Type-check an override against the default it replaces."""
  if old is None or new is None:
    return new
  if isinstance(old, bool):
    if isinstance(new, bool):
      return new
    raise ConfigError(f"{key}: expected a bool (true/false), got {new!r}")
  if isinstance(old, int) and not isinstance(old, bool):
    if isinstance(new, int) and not isinstance(new, bool):
      return new
    if isinstance(new, float) and new.is_integer():
      return int(new)
    raise ConfigError(f"{key}: expected an int, got {new!r}")
  if isinstance(old, float):
    if isinstance(new, (int, float)) and not isinstance(new, bool):
      return float(new)
    raise ConfigError(f"{key}: expected a float, got {new!r}")
  if isinstance(old, str):
    return new if isinstance(new, str) else str(new)
  if isinstance(old, (tuple, list)):
    if isinstance(new, (tuple, list)):
      return type(old)(new)
    raise ConfigError(f"{key}: expected a sequence like {old!r}, got {new!r}")
  if not isinstance(new, type(old)):
    raise ConfigError(f"{key}: expected {type(old).__name__}, got {new!r}")
  return new


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """Apply `key=value` strings; dotted keys address nested dicts."""
  cfg = ml_collections.ConfigDict(cfg)  # unlocked copy
  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"override {item!r} is not of the form key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    *parents, leaf = key.split(".")
    node = cfg
    for part in parents:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise unknown_key_error(key, cfg)
      node = node[part]
    if leaf not in node:
      raise unknown_key_error(key, cfg)
    if isinstance(node[leaf], ml_collections.ConfigDict):
      raise ConfigError(f"{key} is a group of keys; override its members, e.g. {key}.<name>=...")
    with node.ignore_type():
      # A string key takes the text as written: `fp8.level=none` is the level "none", not None.
      old = node[leaf]
      node[leaf] = text.strip() if isinstance(old, str) else _coerce(key, old, _parse_value(text))
  cfg.lock()
  return cfg


def load(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Load `path/to/config.py[:arg]` and apply overrides."""
  path, _, arg = spec.partition(":")
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist")
  module_name = "jaxlab_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} has no get_config(arg)")
  cfg = module.get_config(arg or None)
  return apply_overrides(cfg, overrides)


def write(cfg: ml_collections.ConfigDict, workdir: str) -> str:
  """Write the resolved config to workdir/config.json (what actually ran)."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    json.dump(cfg.to_dict(), f, indent=2, sort_keys=True, default=str)
  return path


def require(condition: bool, key: str, message: str) -> None:
  """Semantic validation that names the key at fault."""
  if not condition:
    raise ConfigError(f"{key}: {message}")


def read(workdir: str) -> ml_collections.ConfigDict:
  """The resolved config a run wrote to its workdir (for teachers, genes, exports)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: is {workdir!r} a jaxlab run directory?")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
