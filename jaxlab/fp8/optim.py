"""FP8-LM's levels as storage formats, and an AdamW whose moments and master weights live
in them (an optax GradientTransformation).

| level | GEMM | weight | weight grad | master | Adam m | Adam v |
| none  | BF16 | BF16   | BF16        | FP32   | FP32   | FP32   |
| O1    | FP8  | FP16   | FP8 (E4M3)  | -      | FP32   | FP32   |
| O2    | FP8  | FP16   | FP8 (E4M3)  | -      | FP8    | FP16   |
| O3    | FP8  | FP8    | FP8 (E4M3)  | FP16   | FP8    | FP16   |

Narrow tensors carry a per-tensor (per-layer for stacked parameters) scale. The formats
apply to matrices (kernels and embeddings, >99% of a GPT's parameters); biases and LayerNorm
vectors stay FP32 with FP32 moments, as in MS-AMP.

`scaled_adamw` is an optax GradientTransformation that returns additive updates, so it
chains with `optax.MultiSteps`, `optax.apply_if_finite` and the rest of optax. It computes
the next weight w' in FP32 (from the master copy where the level keeps one) and returns
u = w' - w, with w the parameters it was given: the stored weights' exact FP32 values
(`precision(level).values`). `precision(level).apply` adds u to the same values and rounds
once into the storage format, so w' reaches storage as the optimizer computed it, never
through FP16 or FP8 arithmetic on w + u, and a zero update leaves every stored byte as it
was. See train/state.py for the other store/view/wire functions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
import optax

from jaxlab.fp8 import dot, formats
from jaxlab.fp8.formats import E4M3, ScaledTensor
from jaxlab.sharding import path_name
from jaxlab.train.optim import is_matrix
from jaxlab.train.state import Precision

F32, F16, BF16 = jnp.float32, jnp.float16, jnp.bfloat16


@dataclasses.dataclass(frozen=True)
class Level:
  """Formats of one FP8-LM level (see the table above): whether GEMMs run in FP8, and the
  storage dtype of the weights, weight gradients, master weights, Adam m and Adam v. They
  apply to matrices; vectors stay FP32."""

  gemm_fp8: bool
  weight: Any
  grad: Any
  master: Any   # None: the weights are the master copy
  m: Any
  v: Any


LEVELS = {
    "none": Level(gemm_fp8=False, weight=BF16, grad=BF16, master=F32, m=F32, v=F32),
    "O1": Level(gemm_fp8=True, weight=F16, grad=E4M3, master=None, m=F32, v=F32),
    "O2": Level(gemm_fp8=True, weight=F16, grad=E4M3, master=None, m=E4M3, v=F16),
    "O3": Level(gemm_fp8=True, weight=E4M3, grad=E4M3, master=F16, m=E4M3, v=F16),
}
NARROW = (E4M3, F16)  # stored with a scale; BF16/FP32 have the range to go without


def get_level(name: str) -> Level:
  """The Level called `name` (none, O1, O2 or O3); ValueError for any other name."""
  if name not in LEVELS:
    raise ValueError(f"fp8.level={name!r} is not one of {sorted(LEVELS)}")
  return LEVELS[name]


def with_master(level: Level, dtype) -> Level:
  """`level` with its master copy of the weights in `dtype` (the `fp8.master` option): O1's
  and O2's weights are their own master copy, O3's master is a separate copy of its FP8
  weights. FP8-LM keeps it in FP16, whose 2^-11 relative rounding drops an update smaller
  than half an FP16 ulp of the weight; FP32 keeps such updates at 2 more bytes per
  parameter."""
  if not level.gemm_fp8:
    return level
  return dataclasses.replace(level, weight=dtype) if level.master is None else dataclasses.replace(level, master=dtype)


def _stacked(name: str) -> bool:
  return "/layers/" in f"/{name}/"


def encode(x, dtype, name: str):
  """x (float) -> `dtype` storage: a ScaledTensor for narrow formats, a cast otherwise. A
  ScaledTensor already in `dtype` (an FP8 weight gradient from its port) stays as it is."""
  if isinstance(x, ScaledTensor):
    if x.dtype == dtype:
      return x
    x = decode(x)
  if dtype in NARROW:
    return formats.to_scaled(x, dtype, stacked=_stacked(name))
  return x.astype(dtype)


def decode(x, dtype=F32):
  """Stored value -> `dtype`: dequantizes a ScaledTensor, casts anything else."""
  return x.dequantize(dtype) if isinstance(x, ScaledTensor) else x.astype(dtype)


def _map(fn, tree, *rest):
  """tree_map with the parameter name, treating ScaledTensor as a leaf."""
  return jax.tree_util.tree_map_with_path(lambda p, x, *r: fn(path_name(p), x, *r), tree, *rest,
                                          is_leaf=formats.is_scaled)


def decode_tree(tree, dtype=F32):
  """`decode` on every leaf of `tree`, ScaledTensors taken whole."""
  return jax.tree.map(lambda x: decode(x, dtype), tree, is_leaf=formats.is_scaled)


def _adam(g, m, v, w, lr, c1, c2, b1, b2, eps, weight_decay):
  """One AdamW step in FP32 on decoded g and w and stored m and v: (m', v', w')."""
  m32 = b1 * decode(m) + (1 - b1) * g
  v32 = b2 * decode(v) + (1 - b2) * g * g
  step = (m32 / c1) / (jnp.sqrt(v32 / c2) + eps)
  if weight_decay:
    step = step + weight_decay * w
  return m32, v32, w - lr * step


class ScaledAdamState(NamedTuple):
  """State of `scaled_adamw`: the step count, first and second moments in the level's m and v
  formats (ScaledTensors where narrow), and the master weights (`master` format for matrices,
  a (1,) FP32 placeholder for vectors)."""
  count: jax.Array
  mu: Any
  nu: Any
  master: Any  # () when the level has no master copy


def scaled_adamw(level: Level, learning_rate: optax.ScalarOrSchedule, b1=0.9, b2=0.999, eps=1e-8,
                 weight_decay=0.0) -> optax.GradientTransformation:
  """AdamW with m, v and master weights in `level`'s formats; `update(grads, state, params)`
  returns FP32 updates (see the module docstring). `init` takes the parameters in full
  precision (train/state.init_state passes the unrounded initial values, so O3's master starts
  from them, as in MS-AMP) or as stored. Gradients may arrive as ScaledTensors. Weight decay
  applies to kernels and embeddings only, as `train.optim.decay_mask`."""
  fmt = lambda name, dtype: dtype if is_matrix(name) else F32
  # Only matrices have a separate master copy; FP32 vectors are their own (a one-element
  # placeholder keeps the trees aligned: orbax refuses zero-size arrays).
  _master = lambda name, x: encode(x, level.master, name) if is_matrix(name) else jnp.zeros((1,), F32)

  def init(params):
    zeros = lambda name, p, dtype: encode(jnp.zeros(p.shape, F32), fmt(name, dtype), name)
    master = _map(lambda n, p: _master(n, decode(p)), params) if level.master is not None else ()
    return ScaledAdamState(count=jnp.zeros((), jnp.int32),
                           mu=_map(lambda n, p: zeros(n, p, level.m), params),
                           nu=_map(lambda n, p: zeros(n, p, level.v), params), master=master)

  def update(grads, state, params):
    if params is None:
      raise ValueError("scaled_adamw needs the parameters (update(grads, state, params)): weight decay and "
                       "the updates are computed from them")
    count = state.count + 1
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    c1, c2 = 1 - b1 ** count.astype(F32), 1 - b2 ** count.astype(F32)
    base = (_map(lambda n, m, p: m if is_matrix(n) else p, state.master, params) if level.master is not None
            else params)

    def one(name, g, m, v, w):
      m32, v32, new = _adam(decode(g), m, v, decode(w), lr, c1, c2, b1, b2, eps, weight_decay if is_matrix(name) else 0.0)
      return encode(m32, fmt(name, level.m), name), encode(v32, fmt(name, level.v), name), new

    results = _map(one, grads, state.mu, state.nu, base)
    is_triple = lambda x: isinstance(x, tuple) and len(x) == 3
    pick = lambda i: jax.tree.map(lambda t: t[i], results, is_leaf=is_triple)
    mu, nu, new = pick(0), pick(1), pick(2)
    master = _map(_master, new) if level.master is not None else ()
    updates = jax.tree.map(lambda w_new, w: w_new - decode(w), new, params, is_leaf=formats.is_scaled)
    return updates, ScaledAdamState(count=count, mu=mu, nu=nu, master=master)

  return optax.GradientTransformation(init, update)


_UINT = {1: jnp.uint8, 2: jnp.uint16}


def _bytes(tree):
  """Narrow floats (FP8, BF16) bitcast to unsigned integers of their width: XLA on CPU widens
  data movement (a dynamic slice or update) of types it cannot compute in and hoists that
  whole-tensor copy out of the loop; bits are moved as they are. (FP16 it moves as is. The
  state's FP8 tensors are bytes already, `ScaledTensor`: a bitcast of a whole array is a
  whole copy on CPU.)"""
  narrow = lambda a: jnp.issubdtype(a.dtype, jnp.floating) and a.dtype.itemsize in _UINT and a.dtype != F16
  return jax.tree.map(lambda a: lax.bitcast_convert_type(a, _UINT[a.dtype.itemsize]) if narrow(a) else a, tree)


def _unbytes(tree, like):
  return jax.tree.map(lambda a, l: lax.bitcast_convert_type(a, l.dtype) if a.dtype != l.dtype else a, tree, like)


def _take(tree, i):
  return jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, i, 0, keepdims=False), tree)


def _layer_like(tree):
  """Shapes and dtypes of one layer of each stacked array in `tree` (what `_unbytes` restores)."""
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), tree)


def _fenced(fn, i, *args):
  """fn(*args), behind a fusion boundary where the arguments hold FP32 arrays: a conditional
  on the loop index (always true; the two branches are the same) whose operands are the
  slices already read. Without it XLA fuses the FP32 slice reads of m and v into each
  consumer, so the weight's update reads the whole old m and v buffers while they are updated
  in place, and XLA copies both whole (XLA on CPU drops an optimization_barrier; a conditional
  it keeps). With FP8/FP16 moments (O2, O3) it copies nothing whole, and the fence would
  only add a copy of one layer's slices."""
  if not any(a.dtype == F32 and a.size > 1 for a in jax.tree.leaves(args)):
    return fn(*args)
  return lax.cond(i >= 0, fn, fn, *args)


def _layer_loop(update, g, carry):
  """`update(g_i, carry_i) -> carry_i` for each layer i of stacked arrays, written back into
  `carry` slice by slice (a fori_loop whose carry is updated in place: with the state donated,
  its buffers are the step's outputs, and one layer's FP32 temporaries are live at a time)."""
  g_like, c_like = _layer_like(g), _layer_like(carry)
  g8 = _bytes(g)

  def body(i, c8):
    new = _fenced(lambda g_i, c_i: _bytes(update(_unbytes(g_i, g_like), _unbytes(c_i, c_like))), i, _take(g8, i),
                  _take(c8, i))
    return jax.tree.map(lambda a, x: lax.dynamic_update_index_in_dim(a, x, i, 0), c8, new)

  return _unbytes(lax.fori_loop(0, jax.tree.leaves(g)[0].shape[0], body, _bytes(carry)), carry)


def _stack_update(values, finish, g, carry, with_master: bool):
  """A stacked matrix updated whole, its per-layer scales taken first: a loop over the layers
  takes the amax of each new FP32 value (reductions: nothing FP32 is stored), at O3 a second
  the amax of the weight the rounded master gives, then one pass over the whole stack
  recomputes every value and writes it with its layer's scale. XLA's GPU compile makes that
  pass one kernel writing over the donated state; XLA on CPU copies whole stacks in it, so
  CPU programs take `_layer_loop`. `values` and `finish` as for `_block_update`."""
  layers = jax.tree.leaves(g)[0].shape[0]
  g_like, c_like, g8, c8 = _layer_like(g), _layer_like(carry), _bytes(g), _bytes(carry)
  layer = lambda i: (_unbytes(_take(g8, i), g_like), _unbytes(_take(c8, i), c_like))

  def amax_pass(fn, n):
    body = lambda i, acc: tuple(a.at[i].set(x) for a, x in zip(acc, fn(i, *layer(i))))
    return lax.fori_loop(0, layers, body, (jnp.zeros((layers,), F32),) * n)

  amaxes = dict(zip("mvw", amax_pass(lambda i, g_i, c_i: tuple(formats.amax(x) for x in values(g_i, c_i)), 3)))
  of_layer = lambda i: lambda x, dtype, key: jnp.reshape(formats.scale_for(amaxes[key][i], dtype), (1,) * x.ndim)
  if with_master:  # the weight is the master cast down: its amax is the rounded master's
    amaxes["master"] = amaxes["w"]
    (amaxes["w"],) = amax_pass(lambda i, g_i, c_i: (formats.amax(decode(finish(*values(g_i, c_i), c_i[3],
                                                                                      of_layer(i))[3])),), 1)
  whole = lambda x, dtype, key: jnp.reshape(formats.scale_for(amaxes[key], dtype), (layers,) + (1,) * (x.ndim - 1))
  return finish(*values(g, carry), carry[3], whole)


def _row_blocks(rows: int, max_rows: int = 4096, max_blocks: int = 256) -> int:
  """How many equal row blocks an unstacked matrix is updated in (1: whole)."""
  if rows > max_rows:
    for n in range(2, max_blocks + 1):
      if rows % n == 0 and rows // n <= max_rows:
        return n
  return 1


def _row_slicer(tree, blocks: int):
  """(tree as bits, take(bits, j) -> block j of the rows of `bits` (the tree as bits, or a loop's
  carry of them) as their own dtype) for an unstacked matrix's arrays in `blocks` row blocks;
  arrays without those rows (scales, placeholders) come whole."""
  n_rows = jax.tree.leaves(tree)[0].shape[0]
  rows = n_rows // blocks
  sliced = lambda a: a.ndim > 0 and a.shape[0] == n_rows
  like = jax.tree.map(lambda a: jax.ShapeDtypeStruct((rows,) + a.shape[1:] if sliced(a) else a.shape, a.dtype), tree)
  take = lambda bits, j: _unbytes(jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, j * rows, rows) if sliced(a)
                                               else a, bits), like)
  return _bytes(tree), take, rows, sliced


def _block_update(values, finish, g, carry, blocks: int, with_master: bool, one_pass: bool = False):
  """An unstacked matrix (an embedding) updated in `blocks` row blocks, in place, with
  per-tensor scales: a first loop takes the amax of each new FP32 value over the blocks, (at
  O3, with a master, a second the amax of the weight the master rounds to), and a last one
  recomputes each block and writes it with those scales. Recomputing is cheap next to
  holding the whole tensor's FP32 m, v and w at once. `one_pass` (a GPU program) writes the
  whole tensor in one pass after the amax loops, where XLA's GPU compile holds at most a
  byte-sized copy (at O2 on an H100: +0.08 bytes per parameter of the 1.3B model, for 6.3 GiB
  less traffic per step); XLA on CPU copies the whole tensor.
  `values(g_block, carry_block) -> (m32, v32, w32)`; `finish(m32, v32, w32, master, scale_fn)`
  -> the stored (m, v, w, master) of the block."""
  g8, take_g, _, _ = _row_slicer(g, blocks)
  c8, take_c, rows, sliced = _row_slicer(carry, blocks)
  block = lambda j, c=c8: (take_g(g8, j), take_c(c, j))

  def amax_pass(fn, init):
    return lax.fori_loop(0, blocks, lambda j, acc: jax.tree.map(jnp.maximum, acc, fn(*block(j))), init)

  zero = jnp.zeros((), F32)
  per_tensor = lambda a, dtype, x: jnp.reshape(formats.scale_for(a, dtype), (1,) * x.ndim)  # as stored
  a_m, a_v, a_w = amax_pass(lambda gb, cb: tuple(formats.amax(x) for x in values(gb, cb)), (zero, zero, zero))
  amaxes = {"m": a_m, "v": a_v, "w": a_w}
  scale = lambda x, dtype, key: per_tensor(amaxes[key], dtype, x)  # reads amaxes when traced
  if with_master:  # the weight is the master cast down: its amax is the rounded master's
    amaxes["master"] = a_w
    weight_amax = lambda gb, cb: formats.amax(decode(finish(*values(gb, cb), cb[3], scale)[3]))
    amaxes["w"] = amax_pass(weight_amax, zero)

  if one_pass:
    return finish(*values(g, carry), carry[3], scale)

  def write(j, carry8):
    # Block j's rows are read from the carry (not yet written), not from the loop's input: a
    # loop that reads its input while updating a carry started from it makes XLA copy both
    # whole. The old scales (whole arrays, already replaced in the carry) from the input.
    old = jax.tree.map(lambda a, c: c if sliced(a) else a, c8, carry8)
    new = _fenced(lambda gb, cb: _bytes(finish(*values(gb, cb), cb[3], scale)), j, *block(j, old))
    return jax.tree.map(lambda a, x: lax.dynamic_update_slice_in_dim(a, x, j * rows, 0) if sliced(a) else x,
                        carry8, new)

  return _unbytes(lax.fori_loop(0, blocks, write, c8), carry)


def _sum_of_squares(name, g, block_rows: int) -> jax.Array:
  """sum(decode(g) ** 2), layer by layer for a stacked matrix and row block by row block for
  an unstacked one (no whole FP32 copy)."""
  if not is_matrix(name) or len(g.shape) < 2:
    return jnp.sum(jnp.square(decode(g)))
  if _stacked(name) and g.shape[0] > 1:
    g8 = _bytes(g)
    like = _layer_like(g)
    body = lambda i, acc: acc + jnp.sum(jnp.square(decode(_unbytes(_take(g8, i), like))))
    return lax.fori_loop(0, g.shape[0], body, jnp.zeros((), F32))
  blocks = _row_blocks(g.shape[0], block_rows)
  g8, take, _, _ = _row_slicer(g, blocks)
  return lax.fori_loop(0, blocks, lambda j, acc: acc + jnp.sum(jnp.square(decode(take(g8, j)))), jnp.zeros((), F32))


def fused_update(level: Level, learning_rate: optax.ScalarOrSchedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                 grad_clip=0.0, block_rows: int = 4096, one_pass: bool = True):
  """`optimizer(level, ...)`'s update and `precision(level).apply` in one pass, for the train
  step (`Task.optimizer_step`): (encoded grads, opt_state, stored params) -> (stored params,
  opt_state, the gradients' global norm), on the same state as the optax chain (clipping
  state, ScaledAdamState).

  The optax path must hand a full FP32 updates tree from the optimizer to `apply`, and each
  narrow tensor's just-in-time scale needs its whole FP32 value before it can be written, so
  XLA keeps several FP32 copies of the largest tensors alive at once. Here every matrix is
  updated in place, as MS-AMP's fused kernel updates each tensor, with no updates tree. On the
  CPU (and with `one_pass=False`) a stacked matrix goes one layer at a time in a loop that
  writes each layer's m, v, master and weight back into the donated buffers (one layer's FP32
  temporaries at a time), and an unstacked one (the embedding) in row blocks of at most
  `block_rows`, after loops taking its per-tensor scales (`_block_update`). In a program for a
  GPU each is written in one pass over the whole tensor, after loops that only take the
  scales where the moments are narrow (`_stack_update`): XLA's GPU compile holds no FP32 copy
  there, while XLA on CPU copies whole stacks, and the loops' per-layer outputs and write-back
  kernels cost GPU memory traffic. `one_pass=False` suits state sharded under replicated
  weights (`sharding.layout=zero`): one pass gathers a whole stack's new weight at once (+0.24
  bytes per parameter per device for O3 on 8 H100s). Gradients are decoded, and clipped by
  their global norm as `optax.clip_by_global_norm` does, layer by layer too, and so is the
  norm computed (XLA on CPU does not fuse a decode into a
  reduction: a whole-tree norm held an FP32 copy of every gradient). The new weight is
  rounded once from the FP32 value, not from w + (w' - w), so it may differ from the optax
  path by one rounding."""
  fmt = lambda name, dtype: dtype if is_matrix(name) else F32
  has_master = level.master is not None

  def step(grads, opt_state, stored):
    clip_state, state = opt_state
    count = state.count + 1
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    c1, c2 = 1 - b1 ** count.astype(F32), 1 - b2 ** count.astype(F32)
    norm = jnp.sqrt(sum(jax.tree.leaves(_map(lambda n, g: _sum_of_squares(n, g, block_rows), grads))))
    trigger = norm < grad_clip

    def values(name, g, m, v, w, master):
      """FP32 m', v' and w' (before any master rounding) of one tensor, layer or row block."""
      g = decode(g)
      if grad_clip > 0:
        g = lax.select(trigger, g, (g / norm) * grad_clip)
      base = master if has_master and is_matrix(name) else w
      return _adam(g, m, v, decode(base), lr, c1, c2, b1, b2, eps, weight_decay if is_matrix(name) else 0.0)

    def finish(name, m32, v32, new, master, scale):
      """The stored m, v, weight and master; `scale(x, dtype, key)` gives a narrow tensor's scale."""
      put = lambda x, dtype, key: (formats.ScaledTensor.of(formats.quantize(x, dtype, scale(x, dtype, key)),
                                                           scale(x, dtype, key)) if dtype in NARROW else x.astype(dtype))
      if has_master and is_matrix(name):
        master = put(new, level.master, "master")
        new = decode(master)  # the weight is the new master copy cast down (MS-AMP's O3), one rounding
      return (put(m32, fmt(name, level.m), "m"), put(v32, fmt(name, level.v), "v"),
              put(new, fmt(name, level.weight), "w"), master)

    def one(name, g, m, v, w, master, stacked):
      jit = lambda x, dtype, key: formats.scale_for(formats.amax(x, formats.tensor_axes(x, stacked)), dtype)
      return finish(name, *values(name, g, m, v, w, master), master, jit)

    def leaf(name, g, m, v, w, master=None):
      master = jnp.zeros((1,), F32) if master is None else master
      values_of, finish_of = (lambda g, c: values(name, g, *c)), (lambda *a: finish(name, *a))
      # In a program for a GPU one pass over the whole tensor, elsewhere the loops (docstring)
      gpu_or = lambda whole, loops: (dot.on_gpu(whole, loops, g, m, v, w, master) if one_pass
                                     else loops(g, m, v, w, master))
      if is_matrix(name) and _stacked(name) and w.shape[0] > 1:
        by_layer = lambda g, *c: _layer_loop(lambda g_i, c_i: one(name, g_i, *c_i, stacked=False), g, c)
        if level.m in NARROW or level.v in NARROW:  # at once, XLA's GPU compile would hold FP32 stacks
          return gpu_or(lambda g, *c: _stack_update(values_of, finish_of, g, c, has_master), by_layer)
        return gpu_or(lambda g, *c: one(name, g, *c, stacked=True), by_layer)  # O1's weight scale fuses
      # (with FP32 moments, none and O1, the row-block loops' carries get copied: whole is cheaper)
      blocks = (_row_blocks(w.shape[0], block_rows) if is_matrix(name) and not _stacked(name) and level.m in NARROW
                else 1)
      if blocks > 1:
        by_blocks = lambda whole: lambda g, *c: _block_update(values_of, finish_of, g, c, blocks, has_master, whole)
        return gpu_or(by_blocks(True), by_blocks(False))
      return one(name, g, m, v, w, master, stacked=_stacked(name))

    rest = (state.master,) if has_master else ()
    results = _map(leaf, grads, state.mu, state.nu, stored, *rest)
    is_quad = lambda x: isinstance(x, tuple) and len(x) == 4
    pick = lambda i: jax.tree.map(lambda t: t[i], results, is_leaf=is_quad)
    new_state = ScaledAdamState(count=count, mu=pick(0), nu=pick(1), master=pick(3) if has_master else ())
    return pick(2), (clip_state, new_state), norm

  return step


def _accumulate(a, g, weight, name):
  """a + weight * g; narrow gradients are summed in FP32 and requantized (MS-AMP adds FP8
  gradients the same way), so the running sum keeps its format."""
  if isinstance(a, ScaledTensor):
    return encode(decode(a) + weight * decode(g), a.dtype, name)
  return a + weight * decode(g, a.dtype)


def precision(level: Level, dots: dict | None = None) -> Precision:
  """Storage and gradient formats of `level` for the train step (train/state.py).

  `dots` maps kernel names ('/'-joined parameter paths) to the path of the FP8 dot that
  reads them (`fp8.dot.Fp8DotGeneral`). Those kernels are handed to the model undecoded: the
  view gives their stored values (O3's E4M3 ones as their bytes, uint8) and `view_state`
  their scales in the dots' `SCALES` collection, so each layer decodes its own slice inside
  the layers' scan (no whole decoded copy of the weights) and O3's E4M3 values reach the
  GEMM as stored, not requantized. Other matrices are decoded to the compute dtype."""
  dots = dots or {}
  compute = F16 if level.weight == E4M3 else level.weight  # O3's FP8 weights are used as FP16

  def stored_format(name):
    return level.weight if is_matrix(name) else F32

  def view_one(name, p):
    if name in dots and isinstance(p, ScaledTensor):
      # O3's E4M3 weights go as their stored bytes (uint8): flax's Dense promotes its kernel
      # with the inputs, and 8-bit floats have no implicit promotion; the byte values survive
      # the cast to the compute dtype exactly, per layer inside the scan (`dot.stored_e4m3`),
      # where FP16 values would be a whole 2-byte copy (the train step differentiates uint8
      # leaves to float0: their gradients arrive at the FP8 dots' ports)
      return p.data
    return decode(p, compute) if is_matrix(name) else p

  def view_state(stored):
    flat = {path_name(p): x for p, x in jax.tree_util.tree_leaves_with_path(stored, is_leaf=formats.is_scaled)}
    scales = {}
    for name, path in dots.items():
      if isinstance(flat.get(name), ScaledTensor):
        node = scales
        for key in path:
          node = node.setdefault(key, {})
        node["kernel_scale"] = flat[name].scale
    return {dot.SCALES: scales} if scales else {}

  def apply(stored, updates):
    return _map(lambda n, w, u: encode(decode(w) + u, stored_format(n), n), stored, updates)

  return Precision(
      store=lambda params: _map(lambda n, p: encode(p, stored_format(n), n), params),
      view=lambda stored: _map(view_one, stored),
      view_state=view_state,
      values=decode_tree,
      encode_grads=lambda grads: _map(lambda n, g: encode(g, level.grad, n) if is_matrix(n) else g, grads),
      accumulate=lambda acc, grads, weight: _map(lambda n, a, g: _accumulate(a, g, weight, n), acc, grads),
      decode_grads=decode_tree,
      apply=apply)


def optimizer_step(level: Level, schedule: optax.Schedule, cfg, one_pass: bool = True):
  """`fused_update` with `optimizer(level, schedule, cfg)`'s hyperparameters (and state)."""
  return fused_update(level, schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                      grad_clip=cfg.grad_clip, one_pass=one_pass)


def optimizer(level: Level, schedule: optax.Schedule, cfg) -> optax.GradientTransformation:
  """Global-norm clipping (on the decoded gradients) then the scaled AdamW. `cfg` is the
  trainers' optim config (b1, b2, eps, weight_decay, grad_clip)."""
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0 else optax.identity(),
      scaled_adamw(level, schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
