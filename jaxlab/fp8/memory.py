"""Bytes per parameter of a real train state, by category.

Reads the arrays (or abstract shapes from `jax.eval_shape`) of a TrainState: weights from
`params`, master weights and Adam moments from the optimizer state (by their field names:
master, mu, nu), gradients from the step's own gradient format (the precision's encode of
the viewed parameters, evaluated abstractly), and every scale (ScaledTensor scales, amax
histories, the all-reduce's scaling factor) as overhead, reported separately.
"""
from __future__ import annotations

import jax
import numpy as np

from jaxlab.fp8 import formats
from jaxlab.sharding import path_name

CATEGORIES = ("weights", "gradients", "master", "m", "v")


def _bytes(tree) -> tuple[int, int]:
  """(data bytes, scale bytes) of a tree whose ScaledTensors count their scale separately."""
  data = scales = 0
  for leaf in jax.tree.leaves(tree, is_leaf=formats.is_scaled):
    if isinstance(leaf, formats.ScaledTensor):
      data += leaf.data.size * np.dtype(leaf.data.dtype).itemsize
      scales += leaf.scale.size * np.dtype(leaf.scale.dtype).itemsize
    else:
      data += leaf.size * np.dtype(leaf.dtype).itemsize
  return data, scales


def _field(tree, name: str):
  """All subtrees of the optimizer state under a field called `name`."""
  found = []
  def visit(path, leaf):
    names = path_name(path).split("/")
    if name in names:
      found.append(leaf)
  jax.tree_util.tree_map_with_path(visit, tree, is_leaf=formats.is_scaled)
  return found


def account(state, precision) -> dict:
  """{'weights'|'gradients'|'master'|'m'|'v'|'scales'|'total': bytes per parameter, 'params': n}."""
  n = sum(x.size for x in jax.tree.leaves(jax.tree.map(lambda l: l.data if formats.is_scaled(l) else l,
                                                        state.params, is_leaf=formats.is_scaled)))
  grads = jax.eval_shape(lambda p: precision.encode_grads(precision.view(p)), state.params)
  out, overhead = {}, 0
  for category, tree in (("weights", state.params), ("gradients", grads), ("master", _field(state.opt_state, "master")),
                         ("m", _field(state.opt_state, "mu")), ("v", _field(state.opt_state, "nu"))):
    data, scales = _bytes(tree)
    out[category] = data / n
    overhead += scales
  overhead += sum(_bytes(t)[0] for t in (state.model_state, state.sync_state))
  out["scales"] = overhead / n
  out["total"] = sum(out[c] for c in CATEGORIES)
  out["params"] = n
  return out
