"""The methods that change how training works, applied the same way by every trainer.

Each is a module with `NAME` (its config group), `default_config()`, `configure(cfg) -> cfg`
(checks the group before any work, may resolve config values) and `apply(cfg, task) -> task`
(one transformation of the trainer's Task). A trainer offers a method by having its group
in its default config; a new method is one more module in METHODS plus its group in the
config of each trainer that offers it: the train state, the step and the loop need no edit.
"""
from __future__ import annotations

import ml_collections

from jaxlab import fp8, learngene
from jaxlab.train.state import Task

# Order matters: learngene decides what the parameters are, fp8 how they are stored.
METHODS = (learngene, fp8)


def configure(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Every offered method's config checks (and resolved values), before data or compile work."""
  for method in METHODS:
    if method.NAME in cfg:
      cfg = method.configure(cfg)
  return cfg


def apply(cfg: ml_collections.ConfigDict, task: Task) -> Task:
  """The trainer's Task transformed by every method the config offers."""
  for method in METHODS:
    if method.NAME in cfg:
      task = method.apply(cfg, task)
  return task


def stage_view(cfg: ml_collections.ConfigDict, group: str) -> ml_collections.ConfigDict:
  """The config as the methods read it for one stage of a multi-stage trainer: the method
  groups, mesh and sharding as they are, and `train` / `optim` from `cfg[group]`."""
  view = ml_collections.ConfigDict({k: cfg[k] for k in ("mesh", "sharding") if k in cfg})
  for method in METHODS:
    if method.NAME in cfg:
      view[method.NAME] = cfg[method.NAME]
  view.train, view.optim = cfg[group].train, cfg[group].optim
  return view
