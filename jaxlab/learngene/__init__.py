"""TLEG learngene linear expansion (Xia et al., AAAI 2024).

Functional pieces on param pytrees (`expand`, `init_gene`, `auxiliary_params`, `assemble`,
`descendant_params`), the DeiT soft-distillation loss, and the training method as one
transformation of a trainer's Task: `cfg = learngene.configure(cfg)`, then
`task = learngene.apply(cfg, task)` (see jaxlab/learngene/method.py).
"""
from jaxlab.learngene.distill import NORMALIZATIONS, soft_distillation_loss
from jaxlab.learngene.expansion import (MAY_DIFFER, MODES, assemble, auxiliary_params, check_gene_run, count_params,
                                        descendant_params, expand, find_stack, init_gene, initial_params,
                                        interpolate_layers, load_gene, model_params, validate)
from jaxlab.learngene.method import NAME, apply, configure, default_config

__all__ = ["NAME", "MAY_DIFFER", "MODES", "NORMALIZATIONS", "apply", "assemble", "auxiliary_params", "check_gene_run", "configure",
           "count_params", "default_config", "descendant_params", "expand", "find_stack", "init_gene",
           "initial_params", "interpolate_layers", "load_gene", "model_params", "soft_distillation_loss", "validate"]
