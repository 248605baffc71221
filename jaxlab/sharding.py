"""Meshes, partition rules and sharded state creation.

The config names a mesh (`mesh = (("data", -1), ("model", 1))`, -1 takes the remaining
devices) and a layout: an ordered list of (regex, PartitionSpec) rules matched against the
'/'-joined path of every array in the train state (params, optimizer moments, scale
state alike) plus logical-axis rules for activations. The first rule whose regex matches
(`re.search`) wins; an array no rule matches is an error.

Parameter names come from the one transformer block shared by every model (models/block.py),
so the same presets serve GPT, ViT and the BERT embedder. Block parameters carry a leading
layer axis (nn.scan), hence the leading None in their specs.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, tuple]]

# Column-parallel projections (output features split) and row-parallel ones (input split).
_COL = r"(query|key|value|fc)"
_ROW = r"(out|proj)"

LAYOUTS: dict[str, dict[str, list]] = {
    # Pure data parallelism: every array replicated, batch split over `data`.
    "dp": {
        "params": [(r".*", ())],
        "activations": [("batch", "data")],
    },
    # ZeRO-1 style: weights replicated, the optimizer's arrays for matrices (moments, any
    # master copy, also when stored as an array with a scale: ".../kernel/<field>") split
    # over `data`. A task that adds small per-tensor arrays under such paths (scales)
    # contributes rules that replicate them (Task.partition_rules).
    "zero": {
        "params": [
            (r"opt_state/.*layers/.*kernel(/|$)", (None, "data", None)),
            # along d_model: vocabularies (50257) rarely divide by the rank count
            (r"opt_state/.*(wte|wpe)/embedding(/|$)", (None, "data")),
            (r"opt_state/.*lm_head/kernel(/|$)", ("data", None)),
            (r".*", ()),
        ],
        "activations": [("batch", "data")],
    },
    # FSDP / ZeRO-3: weights (and with them optimizer moments and any master copy) split
    # over `data`; XLA all-gathers them for the matmul and reduces the gradients to their
    # shards (or gathers the activations instead: its choice).
    # Stored as an array with a scale (".../kernel/data", FP8 levels) the data is split the
    # same way (the task's rules keep the scales replicated); embeddings along d_model, as
    # in zero: vocabularies (50257) rarely divide by the rank count.
    "fsdp": {
        "params": [
            (rf"layers/.*{_COL}/kernel(/|$)", (None, "data", None)),
            (rf"layers/.*{_ROW}/kernel(/|$)", (None, "data", None)),
            (r"(wte|wpe)/embedding(/|$)", (None, "data")),
            (r"lm_head/kernel(/|$)", ("data", None)),
            (r".*", ()),
        ],
        "activations": [("batch", "data")],
    },
    # Megatron tensor parallelism: column-parallel then row-parallel, heads split.
    "tp": {
        "params": [
            (rf"layers/.*{_COL}/kernel(/|$)", (None, None, "model")),
            (rf"layers/.*{_COL}/bias$", (None, "model")),
            (rf"layers/.*{_ROW}/kernel(/|$)", (None, "model", None)),
            (r"wte/embedding(/|$)", ("model", None)),
            (r"lm_head/kernel(/|$)", (None, "model")),
            (r".*", ()),
        ],
        "activations": [("batch", "data"), ("heads", "model"), ("mlp", "model")],
    },
    # Both: tensor parallel inside, FSDP across.
    "fsdp_tp": {
        "params": [
            (rf"layers/.*{_COL}/kernel(/|$)", (None, "data", "model")),
            (rf"layers/.*{_COL}/bias$", (None, "model")),
            (rf"layers/.*{_ROW}/kernel(/|$)", (None, "model", "data")),
            (r"wte/embedding(/|$)", ("model", "data")),
            (r"wpe/embedding(/|$)", ("data",)),
            (r"lm_head/kernel(/|$)", ("data", "model")),
            (r".*", ()),
        ],
        "activations": [("batch", "data"), ("heads", "model"), ("mlp", "model")],
    },
}


class ShardingError(ValueError):
  """A mesh or partition rule that does not fit the devices or an array; names the array."""


def make_mesh(axes: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Mesh from config axes; exactly one size may be -1 (all remaining devices)."""
  devices = list(devices if devices is not None else jax.devices())
  names = tuple(name for name, _ in axes)
  sizes = [int(size) for _, size in axes]
  if sizes.count(-1) > 1:
    raise ShardingError(f"mesh {tuple(axes)}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if known == 0 or len(devices) % known:
      raise ShardingError(
          f"mesh {tuple(axes)}: {len(devices)} devices are not divisible by the fixed axes' product {known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ShardingError(
        f"mesh {tuple(axes)} needs {math.prod(sizes)} devices but {len(devices)} are available "
        f"({jax.default_backend()}); change the `mesh` config key")
  return jax.make_mesh(tuple(sizes), names, devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def layout_rules(layout: str, extra_rules: Rules = ()) -> list[tuple[str, tuple]]:
  """`extra_rules` (tried first) then the named layout's rules; an unknown layout fails."""
  if layout not in LAYOUTS:
    raise ShardingError(f"sharding.layout={layout!r} is not one of {sorted(LAYOUTS)}")
  return list(extra_rules) + list(LAYOUTS[layout]["params"])


def activation_rules(layout: str) -> list[tuple[str, Any]]:
  """The layout's logical-axis rules for activations (`nn.logical_axis_rules`)."""
  return list(LAYOUTS[layout]["activations"])


def path_name(path) -> str:
  """'/'-joined name of a pytree key path: params/layers/attn/query/kernel."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def spec_for(name: str, shape: tuple[int, ...], rules: Rules, mesh: Mesh) -> P:
  """The PartitionSpec of the first rule matching `name`, checked against shape and mesh."""
  for pattern, spec in rules:
    if re.search(pattern, name):
      spec = tuple(spec)
      if len(spec) > len(shape):
        raise ShardingError(f"rule {pattern!r} -> {spec} has more axes than {name} with shape {shape}")
      for dim, axes in zip(shape, spec):
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        for axis in axes:
          if axis not in mesh.shape:
            raise ShardingError(f"rule {pattern!r} names mesh axis {axis!r}; the mesh has {tuple(mesh.shape)}")
        size = math.prod(mesh.shape[a] for a in axes)
        if dim % size:
          raise ShardingError(
              f"{name} with shape {shape}: dimension {dim} is not divisible by {size} "
              f"(mesh axes {axes} of rule {pattern!r} -> {spec})")
      return P(*spec)
  raise ShardingError(f"no partition rule matches {name!r} (shape {shape}); add a rule or a catch-all '.*'")


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
  """NamedSharding for every array leaf of `tree` (concrete or abstract)."""
  def one(path, leaf):
    return NamedSharding(mesh, spec_for(path_name(path), tuple(np.shape(leaf)), rules, mesh))
  return jax.tree_util.tree_map_with_path(one, tree)


def create_sharded(init_fn: Callable, mesh: Mesh, rules: Rules, *args):
  """Run `init_fn(*args)` with its outputs created directly in their shardings."""
  abstract = jax.eval_shape(init_fn, *args)
  shardings = tree_shardings(abstract, mesh, rules)
  return jax.jit(init_fn, out_shardings=shardings)(*args), shardings


def batch_sharding(mesh: Mesh, batch_axis: str | tuple = "data") -> NamedSharding:
  """Batches split on their leading axis over `batch_axis`."""
  return NamedSharding(mesh, P(batch_axis))


def global_batch(local_batch: dict, sharding: NamedSharding) -> dict:
  """Assemble the global batch from this process's slice (multi-host safe)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
  """Activation sharding by logical axis names; a no-op outside a mesh context."""
  return nn.with_logical_constraint(x, logical_axes)
