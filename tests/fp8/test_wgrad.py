"""FP8 weight gradients (FP8-LM): the wgrad leaves the backward pass once, as E4M3 data with a
per-tensor scale, through the `fp8_grads` port; by dtype in the train step's gradients and
in its backward scan, equal to a numpy + ml_dtypes quantization of the wgrad GEMM."""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxlab import config as config_lib
from jaxlab.fp8 import dot, formats, optim as fo
from jaxlab.train import state as train_state
from jaxlab.trainers import lm

DIMS = (((1,), (0,)), ((), ()))


def test_port_carries_the_wgrad_quantized_once_and_the_kernel_cotangent_is_zero():
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x, w, g = jax.random.normal(kx, (16, 64)), jax.random.normal(kw, (64, 32)) * 0.05, jax.random.normal(kg, (16, 32))
  recipe = dot.Recipe("current")
  port = (jnp.zeros(w.shape, formats.E4M3), jnp.zeros((1, 1), jnp.float32))

  def f(x, w, port):
    return dot.fp8_dot_general(x, w, (), DIMS, recipe, port)

  _, vjp = jax.vjp(f, x, w, port)
  dx, dw, (q, scale) = vjp(g)
  assert q.dtype == jnp.float8_e4m3fn and q.shape == w.shape and scale.shape == (1, 1)
  np.testing.assert_array_equal(np.asarray(dw), 0.0)
  # Reference: the wgrad GEMM of the quantized operands (numpy, ml_dtypes), then one E4M3 cast
  # with scale amax / 448.
  def qdq(t, fmt):
    s = float(np.max(np.abs(t))) / float(ml_dtypes.finfo(fmt).max)
    return np.asarray(t, np.float32) / s, s
  xs, sx = qdq(x, ml_dtypes.float8_e4m3fn)
  gs, sg = qdq(g, ml_dtypes.float8_e5m2)
  xq = xs.astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * sx
  gq = gs.astype(ml_dtypes.float8_e5m2).astype(np.float32) * sg
  wgrad = xq.T @ gq
  s_ref = float(np.max(np.abs(wgrad))) / 448.0
  np.testing.assert_allclose(float(scale[0, 0]), s_ref, rtol=1e-5)
  expect = (wgrad / s_ref).astype(ml_dtypes.float8_e4m3fn).astype(np.float32)
  got = np.asarray(q.astype(jnp.float32))
  # The same E4M3 values, up to one E4M3 step where float32 accumulation order differs.
  step = np.maximum(np.abs(expect) * 2.0 ** -3, 2.0 ** -9)
  assert np.all(np.abs(got - expect) <= step + 1e-7)
  assert np.mean(got == expect) > 0.97
  # Without the port, the same dot returns the wgrad as w's cotangent (own loops, eval).
  _, vjp_plain = jax.vjp(lambda x, w: dot.fp8_dot_general(x, w, (), DIMS, recipe), x, w)
  np.testing.assert_allclose(np.asarray(vjp_plain(g)[1]), wgrad, rtol=1e-5, atol=1e-6)


@functools.cache  # three tests share O2's (immutable arrays; no step here donates them)
def _tiny_lm(level: str):
  cfg = config_lib.load(f"configs/fp8/gpt.py:{level}", [
      "tokenizer.path=", "tokenizer.vocab_size=256", "model.num_layers=2", "train.batch_size=4", "train.seq_len=32"])
  (stage,) = lm.stages(cfg)
  task = stage.task
  state = train_state.init_state(task, jax.random.key(0))
  rs = np.random.RandomState(0)
  batch = {"inputs": jnp.asarray(rs.randint(0, 256, (4, 32)), jnp.int32),
           "targets": jnp.asarray(rs.randint(0, 256, (4, 32)), jnp.int32), "mask": jnp.ones((4, 32), jnp.float32)}
  return task, state, batch


def _view(task, state):
  """The params and collections the train step hands the model."""
  return train_state.model_inputs(task, state)


def _kernels(tree):
  return {jax.tree_util.keystr(p): g for p, g in jax.tree_util.tree_leaves_with_path(tree, is_leaf=formats.is_scaled)
          if "kernel" in jax.tree_util.keystr(p)}


# O1's and O3's gradient port is O2's (O3's own weight path is checked below at O3): `make slow`
@pytest.mark.parametrize("level", [pytest.param("O1", marks=pytest.mark.slow), "O2",
                                   pytest.param("O3", marks=pytest.mark.slow)])
def test_train_step_gradients_of_fp8_kernels_are_e4m3_from_the_backward_pass(level):
  task, state, batch = _tiny_lm(level)
  assert dot.GRADS not in state.model_state  # the port is the step's, not state
  view, model_state = _view(task, state)
  out = train_state.local_gradients(task, view, model_state, batch, jax.random.key(1), 1)
  kernels = _kernels(out[3])
  assert len(kernels) == 6  # query, key, value, out, fc, proj (stacked over the 2 layers)
  for name, g in kernels.items():
    assert isinstance(g, formats.ScaledTensor) and g.dtype == jnp.float8_e4m3fn, name
    assert g.scale.shape == (2, 1, 1), name  # per layer
  # The same gradients as the portless path (which quantizes the wgrad after a BF16/FP16 trip),
  # up to an E4M3 step: the port changes where the cast happens, not the value. Both decode
  # the weights first (a portless dot is handed decoded weights), so their forwards agree.
  decoded = task.replace(precision=fo.precision(fo.LEVELS[level]))
  kernels = _kernels(train_state.local_gradients(decoded, *_view(decoded, state), batch, jax.random.key(1), 1)[3])
  portless = decoded.replace(grad_ports=None)
  plain = _kernels(train_state.local_gradients(portless, *_view(portless, state), batch, jax.random.key(1), 1)[3])
  for name, g in kernels.items():
    a, b = np.asarray(g.dequantize()), np.asarray(plain[name].dequantize())
    tol = np.abs(b) * 2.0 ** -2 + float(np.max(np.abs(b))) * 2.0 ** -8
    assert np.all(np.abs(a - b) <= tol), name
    assert np.abs(a).max() > 0, name
  # The backward scan itself emits them in E4M3: no FP16/BF16/FP32 array of a stacked
  # kernel's shape leaves it.
  jaxpr = jax.make_jaxpr(lambda v: train_state.local_gradients(task, v, model_state, batch,
                                                                 jax.random.key(1), 1)[3])(view)
  shapes = {tuple(g.shape) for g in kernels.values()}
  scans = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
  backward = scans[-1]
  outs = [(tuple(v.aval.shape), v.aval.dtype) for v in backward.outvars]
  assert any(s in shapes and d == jnp.float8_e4m3fn for s, d in outs)
  wide = [(s, d) for s, d in outs if s in shapes and d != jnp.float8_e4m3fn]
  assert not wide, wide


def test_microbatches_accumulate_fp8_gradients_in_their_format():
  task, state, batch = _tiny_lm("O2")
  view, model_state = _view(task, state)
  one = _kernels(train_state.local_gradients(task, view, model_state, batch, jax.random.key(1), 1)[3])
  two = _kernels(train_state.local_gradients(task, view, model_state, batch, jax.random.key(1), 2)[3])
  for name, g in two.items():
    assert g.dtype == jnp.float8_e4m3fn, name
    a, b = np.asarray(g.dequantize()), np.asarray(one[name].dequantize())
    # mean of two half-batch gradients = the full-batch gradient, within FP8 rounding
    assert np.abs(a - b).max() <= 0.2 * np.abs(b).max(), name


# O1's wgrad and weight path is O2's (they differ in the optimizer's formats): `make slow`
@pytest.mark.parametrize("level", [pytest.param("O1", marks=pytest.mark.slow), "O2", "O3"])
def test_fp8_kernels_are_decoded_inside_the_layers_not_copied_whole(level):
  """The step hands the FP8 dots their kernels as stored (FP16 at O1/O2, O3's E4M3 bytes as
  uint8) with the scales beside them, so no wide array of a stacked kernel's shape is
  computed outside the layers' scan (the decoded FP16 copy the step used to make, 2 bytes per
  parameter), and a train step matches the one that decodes first, to a rounding of the
  stored format."""
  task, state, batch = _tiny_lm(level)
  view, model_state = _view(task, state)
  kernels = {k: v for k, v in _kernels(view).items()}
  assert len(kernels) == 6 and len(model_state[dot.SCALES]) > 0
  want = np.uint8 if level == "O3" else np.float16
  assert {v.dtype for v in kernels.values()} == {np.dtype(want)}
  for name, v in kernels.items():  # the stored data itself (O3's bytes), not decoded values
    np.testing.assert_array_equal(np.asarray(v), np.asarray(_kernels(state.params)[name].data).view(want))
  shapes = {tuple(v.shape) for v in kernels.values()}
  jaxpr = jax.make_jaxpr(lambda v: train_state.local_gradients(task, v, model_state, batch,
                                                                 jax.random.key(1), 1)[3])(view)
  # (broadcasts are the stored values' zero cotangents, replaced by the ports' and dead code;
  # 1-byte arrays are the E4M3 gradients and their bytes, as a ScaledTensor keeps them)
  wide = [(e.primitive.name, tuple(o.aval.shape), o.aval.dtype) for e in jaxpr.jaxpr.eqns for o in e.outvars
          if e.primitive.name not in ("scan", "broadcast_in_dim") and tuple(o.aval.shape) in shapes
          and o.aval.dtype.itemsize > 1]
  assert not wide, wide
  decoded_jaxpr = jax.make_jaxpr(lambda p: train_state.local_gradients(
      task.replace(precision=fo.precision(fo.LEVELS[level])), fo.precision(fo.LEVELS[level]).view(p),
      state.model_state, batch, jax.random.key(1), 1)[3])(state.params)
  assert any(e.primitive.name not in ("scan", "broadcast_in_dim") and tuple(o.aval.shape) in shapes
             and o.aval.dtype == jnp.float16 for e in decoded_jaxpr.jaxpr.eqns for o in e.outvars)  # the check bites
  # one train step, against the same step with a precision that decodes every weight first
  decoded = task.replace(precision=fo.precision(fo.LEVELS[level]))
  step_a = jax.jit(train_state.make_train_step(task))
  step_b = jax.jit(train_state.make_train_step(decoded))
  new_a, m_a = step_a(state, batch, jax.random.key(2))
  new_b, m_b = step_b(state, batch, jax.random.key(2))
  np.testing.assert_allclose(m_a["loss"], m_b["loss"], rtol=1e-3)
  np.testing.assert_allclose(m_a["grad_norm"], m_b["grad_norm"], rtol=0.05)
  for name, w in _kernels(new_a.params).items():
    a, b = np.asarray(w.dequantize()), np.asarray(_kernels(new_b.params)[name].dequantize())
    step = 2.0 ** -3 if level == "O3" else 2.0 ** -10  # one E4M3 / FP16 rounding
    assert np.all(np.abs(a - b) <= step * np.abs(b) + 1e-3 * np.abs(b).max()), name
