"""FP8 GEMMs in your own Flax model and your own training loop, in three lines.

    model = fp8.own.inject(MyModel(), fp8.Recipe())             # 1. FP8 dot in its Dense layers
    grad_fn = fp8.own.value_and_grad(loss_fn)                    # 2. differentiates the scale state too
    step = fp8.own.checked(jax.jit(train_step))                  # 3. fails if the scales never move

`loss_fn(variables, *args) -> loss` (or `(loss, aux)` with `has_aux=True`) takes the whole
variables dict ({'params': ..., 'fp8_meta': ...}) as `model.apply` does. The model must
pass a `dot_general_cls` field to its `nn.Dense` / `nn.DenseGeneral` layers (the convention
of flax's own `fp8_ops` and of jaxlab's models).

Why line 2: under delayed scaling the amax of every GEMM operand reaches the scale state
through its cotangent (see `jaxlab.fp8.dot`), so a step that differentiates only the
params never records one, and every step falls back to just-in-time scaling from the current
amax. `checked` catches that: it compares the `fp8_meta` collection in the step's first
argument and first output for the first few calls (a host copy of a few small arrays) and
raises with what to call instead.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from jaxlab.fp8 import dot
from jaxlab.fp8.dot import COLLECTION, Recipe


class ScalingNotUpdated(RuntimeError):
  """The train step ran several times and `fp8_meta` never changed."""


def inject(model: nn.Module, recipe: Recipe = Recipe()) -> nn.Module:
  """`model` with FP8 GEMMs (`recipe`) in the layers it builds with its `dot_general_cls`."""
  if "dot_general_cls" not in {f.name for f in dataclasses.fields(model)}:
    raise TypeError(f"{type(model).__name__} has no `dot_general_cls` field: give the module one and pass it to "
                    "its nn.Dense / nn.DenseGeneral layers (nn.Dense(..., dot_general_cls=self.dot_general_cls))")
  return model.clone(dot_general_cls=dot.dot_general_cls(recipe))


def value_and_grad(loss_fn: Callable, has_aux: bool = False) -> Callable:
  """`fn(variables, *args) -> (loss, grads, variables)`: grads of `loss_fn` w.r.t.
  `variables['params']`, and `variables` with the amax histories advanced by this step's
  observations (`dot.update_meta`). With `has_aux`, loss is `(loss, aux)`. Pure: use it
  inside a jitted step."""
  def fn(variables, *args):
    variables = dict(variables)
    params, meta = variables.pop("params"), variables.pop(COLLECTION, None)

    def loss_of(params, meta):
      return loss_fn({**variables, "params": params, **({COLLECTION: meta} if meta is not None else {})}, *args)

    if meta is None:  # current or block scaling: no scale state
      loss, grads = jax.value_and_grad(loss_of, has_aux=has_aux)(params, None)
      return loss, grads, {**variables, "params": params}
    loss, (grads, observations) = jax.value_and_grad(loss_of, argnums=(0, 1), has_aux=has_aux)(params, meta)
    return loss, grads, {**variables, "params": params, COLLECTION: dot.update_meta(meta, observations)}
  return fn


def _meta(tree) -> list:
  """Leaves under an `fp8_meta` key anywhere in `tree`, as host arrays."""
  found = []

  def visit(path, leaf):
    if any(getattr(k, "key", None) == COLLECTION for k in path):
      found.append(np.asarray(leaf))
  jax.tree_util.tree_map_with_path(visit, tree)
  return found


def checked(step: Callable, steps: int = 3) -> Callable:
  """`step(state, ...)` that, for its first `steps` calls, compares the `fp8_meta` leaves of
  its first argument with those of its output; if they never changed, raises
  `ScalingNotUpdated` naming what to call. Steps whose state has no `fp8_meta` collection
  (current or block scaling) pass unchecked; after the first change nothing is compared."""
  seen = {"calls": 0, "changed": False}

  def run(state, *args, **kwargs) -> Any:
    before = _meta(state) if not seen["changed"] and seen["calls"] < steps else None
    out = step(state, *args, **kwargs)
    if before:
      seen["calls"] += 1
      after = _meta(out)
      seen["changed"] = len(after) != len(before) or any(not np.array_equal(a, b) for a, b in zip(before, after))
      if not seen["changed"] and seen["calls"] == steps:
        raise ScalingNotUpdated(
            f"fp8_meta (the FP8 amax histories) did not change in {steps} steps: the step differentiates only "
            "the params, so delayed scaling never sees an amax. Compute gradients with "
            "jaxlab.fp8.own.value_and_grad(loss_fn) (it returns the variables with fp8_meta advanced), or "
            "differentiate fp8_meta too and apply jaxlab.fp8.dot.update_meta(meta, its_gradient).")
    return out
  return run
