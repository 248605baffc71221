"""Linear expansion of a learngene into layer parameters (TLEG).

A learngene is two pytrees with the shape of ONE transformer block, {"A": theta_A,
"B": theta_B}. Layer l (0-based) of an L-layer model gets theta_A + (l / L) * theta_B,
for every block parameter. Nothing here knows about ViT or GPT: any model whose blocks
are stacked on a leading axis (jaxlab's `Stack`, params at .../layers/block) works.

The auxiliary model is not a separate module: its trainable parameters are
{"shared": everything outside the stack, "gene": {"A", "B"}} and `assemble` turns them
into the plain model's parameters inside the forward pass, so gradients reach A and B.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from jaxlab.sharding import path_name

STACK_KEYS = ("layers", "block")


def _check_same_structure(a: Any, b: Any) -> None:
  sa = jax.tree_util.tree_structure(a)
  sb = jax.tree_util.tree_structure(b)
  if sa != sb:
    raise ValueError(f"theta_A and theta_B have different structures:\n  A: {sa}\n  B: {sb}")
  for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)):
    if jnp.shape(x) != jnp.shape(y):
      raise ValueError(f"theta_A and theta_B differ at {path_name(path)}: shapes {jnp.shape(x)} vs {jnp.shape(y)}")


def expand(gene: dict, depth: int) -> Any:
  """Per-layer block parameters stacked on a leading axis of size `depth`."""
  if not isinstance(depth, int) or depth <= 0:
    raise ValueError(f"depth must be a positive integer, got {depth!r}")
  if set(gene) != {"A", "B"}:
    raise ValueError(f"a learngene is {{'A': ..., 'B': ...}}, got keys {sorted(gene)}")
  _check_same_structure(gene["A"], gene["B"])
  coeff = jnp.arange(depth, dtype=jnp.float32) / depth

  def one(a, b):
    c = coeff.reshape((depth,) + (1,) * jnp.ndim(a)).astype(jnp.result_type(a))
    return a[None] + c * b[None]

  return jax.tree.map(one, gene["A"], gene["B"])


def interpolate_layers(stacked: Any, depth: int) -> Any:
  """A control initialisation (not TLEG): a trained model's stacked layers resampled to
  `depth` layers. Layer l sits at source position p = l (L0 - 1) / (depth - 1) (0 for
  depth 1), so first and last layers map to first and last; it is the linear blend of
  source layers floor(p) and floor(p) + 1 with weight p - floor(p). Depth L0 gives the
  layers back; a deeper target repeats blends of neighbours, a shallower one skips."""
  if not isinstance(depth, int) or depth <= 0:
    raise ValueError(f"depth must be a positive integer, got {depth!r}")
  src = {jnp.shape(x)[0] for x in jax.tree.leaves(stacked)}
  if len(src) != 1:
    raise ValueError(f"stacked layers disagree on their count: {sorted(src)}")
  n = src.pop()
  pos = jnp.arange(depth, dtype=jnp.float32) * ((n - 1) / (depth - 1) if depth > 1 else 0.0)
  lo = jnp.floor(pos).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, n - 1)
  frac = pos - lo

  def one(x):
    w = frac.reshape((depth,) + (1,) * (jnp.ndim(x) - 1)).astype(jnp.result_type(x))
    return (1 - w) * x[lo] + w * x[hi]

  return jax.tree.map(one, stacked)


def find_stack(params: dict) -> tuple[str, ...]:
  """Path of the one stacked-block subtree (e.g. ('encoder', 'layers', 'block'))."""
  found = []

  def walk(node, path):
    if not isinstance(node, dict):
      return
    if STACK_KEYS[0] in node and isinstance(node[STACK_KEYS[0]], dict) and STACK_KEYS[1] in node[STACK_KEYS[0]]:
      found.append(path + STACK_KEYS)
    for key, child in node.items():
      walk(child, path + (key,))

  walk(params, ())
  if len(found) != 1:
    raise ValueError(f"expected exactly one stacked block (…/layers/block) in the params, found {found}")
  return found[0]


def _get(tree: dict, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def _without(tree: dict, path: tuple[str, ...]) -> dict:
  """Copy of `tree` with the subtree at path[:-1] (the 'layers' dict) removed."""
  head, *rest = path
  if len(rest) == 1:
    return {k: v for k, v in tree.items() if k != head}
  return {**tree, head: _without(tree[head], tuple(rest))}


def _with(tree: dict, path: tuple[str, ...], value) -> dict:
  head, *rest = path
  if not rest:
    return {**tree, head: value}
  return {**tree, head: _with(tree.get(head, {}), tuple(rest), value)}


def init_gene(rng: jax.Array, theta_a: Any, b_std: float = 0.02) -> dict:
  """theta_A as given (one layer of a normal init); theta_B small random for linear
  kernels and zero for biases and LayerNorm parameters, as the TLEG reference."""
  leaves = jax.tree_util.tree_leaves_with_path(theta_a)
  keys = dict(zip((path_name(p) for p, _ in leaves), jax.random.split(rng, len(leaves))))

  def b(path, a):
    name = path_name(path)
    if name.endswith("kernel"):
      return b_std * jax.random.normal(keys[name], jnp.shape(a), jnp.result_type(a))
    return jnp.zeros_like(a)

  return {"A": theta_a, "B": jax.tree_util.tree_map_with_path(b, theta_a)}


def auxiliary_params(rng: jax.Array, plain_params: dict, b_std: float = 0.02) -> dict:
  """Auxiliary-model params from a plain model's init: shared parts carried over,
  theta_A = that init's first layer, theta_B fresh (see `init_gene`)."""
  path = find_stack(plain_params)
  theta_a = jax.tree.map(lambda x: x[0], _get(plain_params, path))
  return {"shared": _without(plain_params, path), "gene": init_gene(rng, theta_a, b_std)}


def assemble(aux_params: dict, depth: int, stack_path: tuple[str, ...]) -> dict:
  """Plain-model params of the given depth from {"shared", "gene"} (differentiable)."""
  return _with(aux_params["shared"], stack_path, expand(aux_params["gene"], depth))


def descendant_params(aux_params: dict, depth: int, stack_path: tuple[str, ...]) -> dict:
  """Initial params of a descendant of any depth (then trained as a plain model)."""
  return jax.tree.map(jnp.asarray, assemble(aux_params, depth, stack_path))


def count_params(tree: Any) -> int:
  """Number of scalars in all leaves of `tree`."""
  return int(sum(jnp.size(x) for x in jax.tree.leaves(tree)))


MODES = ("none", "auxiliary", "descendant", "interpolated")


def validate(cfg) -> None:
  """The `learngene` config group every trainer that offers it shares."""
  from jaxlab.config import require
  require(cfg.learngene.mode in MODES, "learngene.mode", f"{cfg.learngene.mode!r} is not one of {MODES}")
  require(cfg.learngene.mode != "descendant" or bool(cfg.learngene.gene_workdir), "learngene.gene_workdir",
          "a descendant needs the workdir of an auxiliary (learngene) run")
  require(cfg.learngene.mode != "interpolated" or bool(cfg.learngene.gene_workdir), "learngene.gene_workdir",
          "mode 'interpolated' needs the workdir of a plain (learngene.mode=none) run to resample")


def initial_params(mode: str, fresh: dict, rng: jax.Array, *, depth: int, b_std: float = 0.02,
                   gene: dict | None = None, keep_fresh: tuple[str, ...] = ()) -> dict:
  """What a trainer starts from, for `learngene.mode`:
  none        the model's fresh init
  auxiliary   {"shared", "gene"} built from the fresh init (see `auxiliary_params`)
  descendant  the plain model expanded from `gene` to `depth`; top-level entries named in
              `keep_fresh` (e.g. a classifier head for transfer) come from the fresh init
  interpolated  the control: `gene` is a trained plain model's params, its layers resampled
              to `depth` (`interpolate_layers`), the rest as trained; `keep_fresh` as above
  """
  if mode == "none":
    return fresh
  if mode == "auxiliary":
    return auxiliary_params(rng, fresh, b_std)
  if mode == "descendant":
    params = descendant_params(gene, depth, find_stack(fresh))
    return {**params, **{key: fresh[key] for key in keep_fresh}}
  if mode == "interpolated":
    path = find_stack(gene)
    params = jax.tree.map(jnp.asarray, _with(gene, path, interpolate_layers(_get(gene, path), depth)))
    return {**params, **{key: fresh[key] for key in keep_fresh}}
  raise ValueError(f"learngene.mode={mode!r} is not one of {MODES}")


def model_params(mode: str, params: dict, depth: int, stack_path: tuple[str, ...]) -> dict:
  """The plain model's params for a forward pass (expanded inside it for the auxiliary)."""
  return assemble(params, depth, stack_path) if mode == "auxiliary" else params


# Model settings a descendant may change; every other `model.*` key must match the learngene's.
MAY_DIFFER = ("num_layers", "dropout", "dtype", "remat")


def load_gene(gene_workdir: str, model_cfg, same_keys: tuple[str, ...] | None = None, *,
              source_mode: str = "auxiliary") -> dict:
  """{"shared", "gene"} of an auxiliary run (or, with source_mode="none", a plain run's params),
  after checking that this model differs from the source's only where a descendant may
  (`same_keys`: the keys to compare; default every key of its model group but MAY_DIFFER)."""
  from jaxlab import checkpoint

  check_gene_run(gene_workdir, model_cfg, same_keys, source_mode=source_mode)
  return checkpoint.restore_params(gene_workdir)[1]


def _as_json(value):
  """A config value as the run's config.json holds it (tuples come back as lists)."""
  return [_as_json(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_gene_run(gene_workdir: str, model_cfg, same_keys: tuple[str, ...] | None = None, *,
                   source_mode: str = "auxiliary"):
  """The source run's config, checked: a run of learngene.mode `source_mode` (an auxiliary
  run for a descendant, a plain one for the interpolated control) whose model matches
  `model_cfg` but for MAY_DIFFER (ConfigError naming the key otherwise)."""
  from jaxlab import config as config_lib

  gene_cfg = config_lib.read(gene_workdir)
  if gene_cfg.learngene.mode != source_mode:
    want = "an auxiliary (learngene)" if source_mode == "auxiliary" else f"a {source_mode!r}"
    raise config_lib.ConfigError(f"learngene.gene_workdir: {gene_workdir} is a {gene_cfg.learngene.mode!r} run, "
                                 f"not {want} run")
  keys = same_keys if same_keys is not None else [k for k in gene_cfg.model if k not in MAY_DIFFER]
  for key in keys:
    if key in model_cfg and _as_json(gene_cfg.model[key]) != _as_json(model_cfg[key]):
      raise config_lib.ConfigError(f"model.{key}={model_cfg[key]} differs from the learngene's "
                                   f"{gene_cfg.model[key]}; a descendant may change depth only")
  return gene_cfg
