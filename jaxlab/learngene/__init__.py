"""TLEG learngene linear expansion as functional transformations of param pytrees."""
from jaxlab.learngene.expansion import (assemble, auxiliary_params, count_params, descendant_params, expand,
                                        find_stack, init_gene)
from jaxlab.learngene.distill import soft_distillation_loss

__all__ = ["assemble", "auxiliary_params", "count_params", "descendant_params", "expand", "find_stack",
           "init_gene", "soft_distillation_loss"]
