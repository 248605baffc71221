"""TLEG learngene linear expansion as functional transformations of param pytrees."""
from jaxlab.learngene.expansion import (MODES, assemble, auxiliary_params, count_params, descendant_params,
                                        expand, find_stack, init_gene, initial_params, load_gene, model_params, validate)
from jaxlab.learngene.distill import soft_distillation_loss

__all__ = ["MODES", "assemble", "auxiliary_params", "count_params", "descendant_params", "expand", "find_stack",
           "init_gene", "initial_params", "load_gene", "model_params", "soft_distillation_loss", "validate"]
