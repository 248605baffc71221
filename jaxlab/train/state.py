"""Train state and the pure training step shared by every trainer."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any  # non-param variable collections (e.g. FP8 scale state); {} if none


@dataclasses.dataclass(frozen=True)
class Task:
  """What a trainer hands to the shared loop: pure functions and its data.

  init(rng) -> variables                      {'params': ..., other collections}
  loss(variables, batch, rng) -> (loss, (metrics, new_non_param_collections))
  eval_sums(variables, batch) -> {name: sum}  summed over all eval batches
  summarize(sums) -> {name: value}            e.g. mean loss and perplexity
  train_data                                  a grain IterDataset (checkpointed by the loop)
  eval_data() -> iterable of batches          a fresh pass over held-out data, or None
  units_per_batch: (name, count)              for throughput, e.g. ("tokens", B * T)
  """
  init: Callable
  loss: Callable
  eval_sums: Callable | None
  summarize: Callable | None
  train_data: Any
  eval_data: Callable | None
  units_per_batch: tuple[str, int]


def init_state(task: Task, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  variables = dict(task.init(rng))
  params = variables.pop("params")
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), model_state=variables)


def make_train_step(task: Task, tx: optax.GradientTransformation, schedule: optax.Schedule | None = None):
  """step(state, batch, rng) -> (state, metrics); rng is folded with the step number."""
  def step(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      return task.loss({"params": params, **state.model_state}, batch, rng)

    (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)}
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state={**state.model_state, **model_state})
    return new_state, metrics
  return step


def make_eval_step(task: Task):
  def step(state: TrainState, batch: dict):
    return task.eval_sums({"params": state.params, **state.model_state}, batch)
  return step
