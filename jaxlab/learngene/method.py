"""TLEG as one transformation of a trainer's Task (`learngene.apply`), driven by the
`learngene` config group:

  mode=none        the task as it is
  mode=auxiliary   trainable params {"shared", "gene"} built from the model's own init; the
                   model's layers are expanded from the gene inside every forward pass
                   (depth model.num_layers), so gradients reach theta_A and theta_B
  mode=descendant  a plain model of depth model.num_layers initialised from the gene of
                   learngene.gene_workdir (an auxiliary run), then trained normally;
                   reinit_head keeps the classifier head's fresh init (transfer)
  mode=interpolated  a control, not TLEG: a plain model of depth model.num_layers whose
                   layers are those of the plain run learngene.gene_workdir resampled to
                   that depth (expansion.interpolate_layers); reinit_head as above

`configure(cfg)` checks the group before any work and, for a descendant that names no
tokenizer, points `tokenizer.path` at the learngene run's (a descendant must read text as
its learngene did).
"""
from __future__ import annotations

import os

import jax
import ml_collections

from jaxlab import config as config_lib
from jaxlab.learngene import expansion
from jaxlab.train.state import Task

NAME = "learngene"  # the config group this method reads
HEADS = ("head", "lm_head")  # top-level params that `reinit_head` keeps fresh
SOURCE_MODES = {"descendant": "auxiliary", "interpolated": "none"}  # mode -> learngene.mode of gene_workdir


def default_config() -> dict:
  """The `learngene` config group (mode none: a plain model)."""
  return dict(mode="none", gene_workdir="", b_std=0.02, reinit_head=False)


def configure(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Check the `learngene` group; a descendant's model must differ from its learngene's only
  in depth (and training settings); a descendant with no `tokenizer.path` gets its
  learngene run's tokenizer. Returns the (possibly updated) config."""
  expansion.validate(cfg)
  lg = cfg.learngene
  if lg.mode not in SOURCE_MODES:
    return cfg
  expansion.check_gene_run(lg.gene_workdir, cfg.model, source_mode=SOURCE_MODES[lg.mode])
  if "tokenizer" in cfg and not cfg.tokenizer.path:
    tok_dir = os.path.join(lg.gene_workdir, "tokenizer")
    if os.path.isdir(tok_dir):
      cfg = config_lib.apply_overrides(cfg, [f"tokenizer.path={tok_dir}"])
  return cfg


def _with_model_params(fn, depth: int, stack):
  """fn(model, variables, ...) run on the plain model's params expanded from {"shared", "gene"}."""
  def wrapped(model, variables, *args):
    return fn(model, {**variables, "params": expansion.assemble(variables["params"], depth, stack)}, *args)
  return wrapped


def apply(cfg: ml_collections.ConfigDict, task: Task) -> Task:
  """The Task for `cfg.learngene.mode` (see the module docstring)."""
  lg, depth = cfg.learngene, cfg.model.num_layers
  if lg.mode == "none":
    return task
  fresh_shapes = jax.eval_shape(lambda rng: task.init(task.model, rng), jax.random.key(0))["params"]
  stack = expansion.find_stack(fresh_shapes)
  base_init = task.init
  if lg.mode == "auxiliary":
    def init(model, rng):
      init_rng, gene_rng = jax.random.split(rng)
      variables = dict(base_init(model, init_rng))
      variables["params"] = expansion.auxiliary_params(gene_rng, variables["params"], lg.b_std)
      return variables
    return task.replace(init=init, loss=_with_model_params(task.loss, depth, stack),
                        eval_sums=task.eval_sums and _with_model_params(task.eval_sums, depth, stack))
  gene = expansion.load_gene(lg.gene_workdir, cfg.model, source_mode=SOURCE_MODES[lg.mode])
  keep = tuple(k for k in HEADS if k in fresh_shapes) if lg.get("reinit_head", False) else ()

  def init(model, rng):
    variables = dict(base_init(model, rng))
    variables["params"] = expansion.initial_params(lg.mode, variables["params"], rng, depth=depth,
                                                   gene=gene, keep_fresh=keep)
    return variables
  return task.replace(init=init)
