"""Train state and the pure training step shared by every trainer."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P


class TrainState(flax.struct.PyTreeNode):
  """Everything a step reads and writes; checkpointed whole by the loop."""
  step: jax.Array
  params: Any       # as stored: FP32 by default, narrower under a `Precision` that says so
  opt_state: Any
  model_state: Any  # non-param variable collections (e.g. scale histories); {} if none
  sync_state: Any = ()  # state of an explicit gradient sync (e.g. its scaling factor)


@dataclasses.dataclass(frozen=True)
class Precision:
  """How parameters are stored and how gradients travel; the identity by default.

  store(params)        full-precision initial params -> stored params
  view(stored)         stored -> the params the model computes with (and is differentiated by)
  view_state(stored)   stored -> read-only collections the model reads beside those params
                       (e.g. the scales of weights it is handed undecoded); not train state
  encode_grads(grads)  gradients as they travel to the optimizer (e.g. narrow with scales)
  accumulate(a, g, w)  a + w * g for encoded gradients (microbatches)
  decode_grads(grads)  back to float for clipping and the optimizer
  values(stored)       stored -> their exact values (e.g. FP32), the params the optimizer
                       is given and its updates are relative to
  apply(stored, upd)   stored params and the optimizer's updates -> next stored params
  """
  store: Callable = lambda p: p
  view: Callable = lambda p: p
  view_state: Callable = lambda p: {}
  values: Callable = lambda p: p
  encode_grads: Callable = lambda g: g
  accumulate: Callable = lambda a, g, w: jax.tree.map(lambda x, y: x + w * y, a, g)
  decode_grads: Callable = lambda g: g
  apply: Callable = optax.apply_updates


@dataclasses.dataclass(frozen=True)
class GradSync:
  """An explicit data-parallel gradient reduction, run inside `jax.shard_map` over `axis`.

  init() -> state; sync(local_grads, state) -> (mean_grads, state, metrics), where the grads
  are as `Precision.encode_grads` left them and the mean comes back decodable.
  """
  init: Callable
  sync: Callable
  axis: str = "data"


@dataclasses.dataclass(frozen=True)
class GradPorts:
  """Gradients that leave the backward pass through a variable collection instead of as their
  parameters' cotangents: a cotangent has its primal's dtype, so a gradient narrower than its
  parameter (an FP8 weight gradient of an FP16 weight) needs a narrow primal to arrive at.
  The model declares `collection` at init; the step passes it in as zeros (it is not part of
  the train state), differentiates it, and `merge(grads, cotangents)` puts what arrived in
  place of those parameters' gradients, before `Precision.encode_grads` (which must leave an
  arrival that is already in its format as it is). The task's loss must hand the model every
  collection in the variables it is given (the trainers' losses do): a port the model never
  reads receives a zero cotangent."""
  collection: str
  merge: Callable


@dataclasses.dataclass(frozen=True)
class Task:
  """What a trainer hands to the shared loop: a model, pure functions of it, the optimizer
  and the data. Methods change training by returning a changed Task (`dataclasses.replace`),
  never by special cases in the loop.

  model                                       the flax Module the functions run (or None)
  init(model, rng) -> variables               {'params': ..., other collections}
  loss(model, variables, batch, rng) -> (loss, (metrics, new_non_param_collections))
  optimizer                                   an optax GradientTransformation
  train_data                                  a grain IterDataset (checkpointed by the loop);
                                              None for a shapes-only task (ahead-of-time compile)
  eval_sums(model, variables, batch) -> {name: sum}   summed over all eval batches
  summarize(sums) -> {name: float}            e.g. mean loss and perplexity
  eval_data() -> iterable of batches          a fresh pass over held-out data, or None
  units_per_batch: (name, count)              for throughput, e.g. ("tokens", B * T)
  schedule                                    the learning-rate schedule, logged if given
  precision                                   storage/gradient formats (identity by default)
  observed: {collection: update(old, obs)}    collections that receive observations through
                                              their cotangent (e.g. amax); combined by max
                                              over microbatches and data shards
  grad_sync                                   explicit gradient all-reduce (None: XLA's own)
  grad_ports                                  gradients that arrive through a collection (GradPorts)
  optimizer_step(grads, opt_state, stored) -> (stored, opt_state, grad_norm)
                                              optional: `optimizer.update` and `precision.apply`
                                              in one (e.g. an in-place update that never holds a
                                              full-precision updates tree), on the optimizer's
                                              state, and the gradients' global norm (a metric);
                                              grads arrive encoded
  partition_rules                             (regex, spec) rules for arrays the task adds to
                                              the state, tried before the layout's rules
  after_first_step(task) -> task              optional: the Task the train steps after a fresh
                                              run's first one take (same state and outputs),
                                              without what only that step needs (e.g. FP8
                                              delayed scaling's just-in-time scales while its
                                              histories are empty); `steady` applies it. The
                                              first step of a fresh run, eval and everything
                                              else use the Task itself.
  """
  model: Any
  init: Callable
  loss: Callable
  optimizer: optax.GradientTransformation
  train_data: Any = None
  eval_sums: Callable | None = None
  summarize: Callable | None = None
  eval_data: Callable | None = None
  units_per_batch: tuple[str, int] = ("examples", 1)
  schedule: optax.Schedule | None = None
  precision: Precision = Precision()
  observed: dict = dataclasses.field(default_factory=dict)
  grad_sync: GradSync | None = None
  grad_ports: GradPorts | None = None
  optimizer_step: Callable | None = None
  partition_rules: tuple = ()
  after_first_step: Callable | None = None

  def replace(self, **changes) -> "Task":
    """A copy with `changes` (how a method transformation returns its Task)."""
    return dataclasses.replace(self, **changes)


def steady(task: Task) -> Task:
  """The Task a run's train steps take once its first step is done (`Task.after_first_step`)."""
  return task if task.after_first_step is None else task.after_first_step(task)


def init_state(task: Task, rng: jax.Array) -> TrainState:
  """The step-0 state: the task's variables, params stored in its precision, fresh optimizer."""
  variables = dict(task.init(task.model, rng))
  full = variables.pop("params")
  if task.grad_ports:
    variables.pop(task.grad_ports.collection, None)  # zeros the step makes, not state
  # The optimizer starts from the unrounded values (e.g. an FP16 master copy of FP8 weights),
  # in the tree its updates have: that of `precision.values`, not of storage.
  return TrainState(step=jnp.zeros((), jnp.int32), params=task.precision.store(full),
                    opt_state=task.optimizer.init(full),
                    model_state=variables,
                    sync_state=task.grad_sync.init() if task.grad_sync else ())


def _port_zeros(task: Task):
  """The step's zeros for the task's gradient ports ({} without ports), shaped at init."""
  if not task.grad_ports:
    return {}
  shapes = jax.eval_shape(lambda rng: task.init(task.model, rng), jax.random.key(0)).get(task.grad_ports.collection, {})
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def local_gradients(task: Task, view, model_state, batch, rng, microbatches: int):
  """Loss, metrics, updated collections, encoded gradients (any port gradients merged, then
  `Precision.encode_grads`) and observations for one (local) batch, accumulated over
  `microbatches` with lax.scan: gradients (`Precision.accumulate`) and metrics averaged,
  observations combined by max."""
  observed = {c: model_state[c] for c in task.observed if c in model_state}
  ports = task.grad_ports
  zeros = _port_zeros(task)

  def one(mb, mb_rng):
    def loss_fn(view, observed, port):
      extra = {ports.collection: port} if ports else {}
      return task.loss(task.model, {"params": view, **model_state, **observed, **extra}, mb, mb_rng)
    # (allow_int: a view may hand integer leaves, e.g. stored bytes, whose gradients come
    # through a port; theirs here are float0 and the port's merge replaces them)
    (loss, (metrics, updates)), (grads, obs, port_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1, 2), has_aux=True, allow_int=True)(view, observed, zeros)
    if ports:
      grads = ports.merge(grads, port_grads)
      updates = {k: v for k, v in updates.items() if k != ports.collection}
    return loss, metrics, updates, task.precision.encode_grads(grads), obs

  n = microbatches
  if n == 1:
    return one(batch, rng)
  split = jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n) + x.shape[1:]), batch)
  first = jax.tree.map(lambda x: x[0], split)
  shapes = jax.eval_shape(one, first, rng)
  acc0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def body(acc, inputs):
    mb, i = inputs
    out = one(mb, jax.random.fold_in(rng, i))
    loss, metrics, updates, grads, obs = out
    a_loss, a_metrics, _, a_grads, a_obs = acc
    add = lambda a, b: a + b / n
    return (add(a_loss, loss), jax.tree.map(add, a_metrics, metrics), updates,
            task.precision.accumulate(a_grads, grads, 1.0 / n), jax.tree.map(jnp.maximum, a_obs, obs)), None

  acc, _ = jax.lax.scan(body, acc0, (split, jnp.arange(n)))
  return acc


def _is_count(name: str) -> bool:
  """Metrics are batch means, except counts ("tokens", "*_count"), which add up over shards."""
  return name == "tokens" or name.endswith("_count")


def model_inputs(task: Task, state: TrainState):
  """(params, collections) the model computes with: the precision's view of the stored params
  and the state's collections with the view's read-only ones (`Precision.view_state`)."""
  prec = task.precision
  return prec.view(state.params), {**state.model_state, **prec.view_state(state.params)}


def optimizer_update(task: Task, grads, opt_state, stored):
  """(stored params, optimizer state, gradient global norm) after one update from encoded
  `grads`: `task.optimizer_step` where the task has one, else the precision's decode, the
  optax update and the precision's apply."""
  if task.optimizer_step is not None:
    return task.optimizer_step(grads, opt_state, stored)
  prec = task.precision
  grads = prec.decode_grads(grads)
  updates, opt_state = task.optimizer.update(grads, opt_state, prec.values(stored))
  return prec.apply(stored, updates), opt_state, optax.global_norm(grads)


def make_train_step(task: Task, microbatches: int = 1):
  """step(state, batch, rng) -> (state, metrics); rng is folded with the step number.

  Without `task.grad_sync` the step is written for the whole batch and XLA inserts the
  collectives its shardings need. With it, gradients are computed per data shard inside
  `jax.shard_map` and reduced by `grad_sync` (e.g. a narrow-format all-reduce); parameters are
  replicated over that axis in this mode.
  """
  schedule = task.schedule

  def gradients(state, batch, rng):
    view, model_state = model_inputs(task, state)
    sync = task.grad_sync
    if sync is None:
      loss, metrics, updates, grads, obs = local_gradients(task, view, model_state, batch, rng, microbatches)
      return loss, metrics, updates, grads, obs, state.sync_state

    def local(view, model_state, sync_state, batch, rng):
      rng = jax.random.fold_in(rng, jax.lax.axis_index(sync.axis))
      # The sync axis is manual in here: activations may no longer name it in constraints.
      rules = [(name, None if axes == sync.axis else axes) for name, axes in nn.get_logical_axis_rules()]
      with nn.logical_axis_rules(rules):
        loss, metrics, updates, grads, obs = local_gradients(task, view, model_state, batch, rng, microbatches)
      grads, sync_state, sync_metrics = sync.sync(grads, sync_state)
      mean = lambda x: jax.lax.pmean(x, sync.axis) if jnp.issubdtype(x.dtype, jnp.floating) else x
      metrics = {k: jax.lax.psum(v, sync.axis) if _is_count(k) else mean(v) for k, v in metrics.items()}
      obs = jax.tree.map(lambda x: jax.lax.pmax(x, sync.axis), obs)
      return mean(loss), {**metrics, **sync_metrics}, jax.tree.map(mean, updates), grads, obs, sync_state

    data = P(sync.axis)
    fn = jax.shard_map(local, in_specs=(P(), P(), P(), data, P()), out_specs=P(), axis_names={sync.axis},
                       check_vma=False)
    batch = jax.lax.with_sharding_constraint(batch, data)  # shard_map needs it split over the axis
    loss, metrics, updates, grads, obs, sync_state = fn(view, model_state, state.sync_state, batch, rng)
    return loss, metrics, updates, grads, obs, sync_state

  def step(state: TrainState, batch: dict, rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    loss, metrics, collections, grads, obs, sync_state = gradients(state, batch, rng)  # encoded
    params, opt_state, grad_norm = optimizer_update(task, grads, state.opt_state, state.params)
    # only the state's own collections come back (not the view's read-only ones)
    model_state = {**state.model_state, **{k: v for k, v in collections.items() if k in state.model_state}}
    for name, update in task.observed.items():
      if name in obs:
        model_state[name] = update(state.model_state[name], obs[name])
    metrics = {**metrics, "loss": loss, "grad_norm": grad_norm}
    if schedule is not None:
      metrics["learning_rate"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state,
                              sync_state=sync_state)
    return new_state, metrics
  return step


def make_eval_step(task: Task):
  """step(state, batch) -> the task's eval sums for one batch."""
  def step(state: TrainState, batch: dict):
    params, collections = model_inputs(task, state)
    return task.eval_sums(task.model, {"params": params, **collections}, batch)
  return step
