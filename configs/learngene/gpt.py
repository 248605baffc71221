"""TLEG for a GPT (an extension beyond the paper): an auxiliary GPT whose layers are
expanded from a learngene, trained on next-token loss, then descendants of any depth.

  python -m jaxlab.main --config configs/learngene/gpt.py:auxiliary --workdir runs/lg_gpt/aux
  python -m jaxlab.main --config configs/learngene/gpt.py:descendant --workdir runs/lg_gpt/des3 \
      learngene.gene_workdir=runs/lg_gpt/aux model.num_layers=3
  python -m jaxlab.main --config configs/learngene/gpt.py:scratch --workdir runs/lg_gpt/scratch3 model.num_layers=3

Data is the quickstart corpus (pydoc_data.topics); the auxiliary model has 6 layers.
"""
from jaxlab.trainers import lm


def get_config(arg=None):
  c = lm.default_config()
  role = arg or "scratch"
  if role == "auxiliary":
    c.model.num_layers = 6
    c.learngene.mode = "auxiliary"
  elif role == "descendant":
    c.learngene.mode = "descendant"
  elif role != "scratch":
    raise ValueError(f"unknown role {role!r}; use auxiliary, descendant or scratch")
  c.lock()
  return c
