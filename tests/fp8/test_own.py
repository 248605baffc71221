"""FP8 in a user's own Flax module and optax loop (jaxlab.fp8.own), checked by hand."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from typing import Any

from jaxlab import fp8
from jaxlab.fp8 import own


class MLP(nn.Module):
  """A user's module: it only has to hand `dot_general_cls` to its Dense layers."""
  dot_general_cls: Any = None

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32, dot_general_cls=self.dot_general_cls, name="fc1")(x))
    return nn.Dense(4, dot_general_cls=self.dot_general_cls, name="fc2")(x)


class NoHook(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(4)(x)


def _data():
  x = jax.random.normal(jax.random.key(1), (16, 8)) * 3.0
  y = jnp.argmax(x[:, :4], axis=-1)
  return x, y


def _setup():
  model = own.inject(MLP(), fp8.Recipe(history=4))
  x, y = _data()
  variables = model.init(jax.random.key(0), x)
  tx = optax.adam(1e-2)

  def loss_fn(variables, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply(variables, x), y).mean()
  return model, variables, tx, loss_fn, x, y


def test_three_lines_train_with_delayed_scaling_recording_the_operands_amax():
  model, variables, tx, loss_fn, x, y = _setup()
  grad_fn = own.value_and_grad(loss_fn)

  @jax.jit
  def train_step(state, x, y):
    variables, opt_state = state
    loss, grads, variables = grad_fn(variables, x, y)
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    return ({**variables, "params": optax.apply_updates(variables["params"], updates)}, opt_state), loss

  step = own.checked(train_step)
  w1 = np.asarray(variables["params"]["fc1"]["kernel"])
  state, losses = (variables, tx.init(variables["params"])), []
  for _ in range(30):
    state, loss = step(state, x, y)
    losses.append(float(loss))
  meta = state[0]["fp8_meta"]["fc1"]["Fp8DotGeneral_0"]
  # Hand-worked: after the first of 30 steps slot 0 held max|x| and max|W1| of that step;
  # the input never changes, so every slot of its history holds max|x| now.
  np.testing.assert_allclose(np.asarray(meta["input_amax_history"]), np.full(4, np.abs(np.asarray(x)).max()), rtol=1e-6)
  assert float(meta["kernel_amax_history"][-1]) > 0 and float(meta["grad_amax_history"][0]) > 0
  assert losses[-1] < 0.5 * losses[0], losses  # it learns (the labels are a function of x)
  # And the step-1 kernel amax is the initial kernel's, recorded through the cotangent.
  first, _ = jax.jit(train_step)((variables, tx.init(variables["params"])), x, y)
  got = float(first[0]["fp8_meta"]["fc1"]["Fp8DotGeneral_0"]["kernel_amax_history"][0])
  assert got == pytest.approx(float(np.abs(w1).max()), rel=1e-6)


def test_a_step_that_differentiates_only_the_params_fails_naming_what_to_call():
  model, variables, tx, loss_fn, x, y = _setup()

  @jax.jit
  def plain_step(state, x, y):  # the usual Flax loop: jax.value_and_grad over the params alone
    variables, opt_state = state
    loss, grads = jax.value_and_grad(lambda p: loss_fn({**variables, "params": p}, x, y))(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    return ({**variables, "params": optax.apply_updates(variables["params"], updates)}, opt_state), loss

  step = own.checked(plain_step, steps=3)
  state = (variables, tx.init(variables["params"]))
  state, _ = step(state, x, y)
  state, _ = step(state, x, y)
  with pytest.raises(own.ScalingNotUpdated, match=r"fp8\.own\.value_and_grad"):
    step(state, x, y)


def test_current_scaling_has_no_scale_state_and_passes_unchecked():
  model = own.inject(MLP(), fp8.Recipe(scaling="current"))
  x, y = _data()
  variables = model.init(jax.random.key(0), x)
  assert "fp8_meta" not in variables
  loss_fn = lambda v, x, y: optax.softmax_cross_entropy_with_integer_labels(model.apply(v, x), y).mean()
  step = own.checked(lambda v: own.value_and_grad(loss_fn)(v, x, y)[2], steps=1)
  assert set(step(variables)) == {"params"}


def test_a_module_without_the_hook_is_refused_with_what_to_add():
  with pytest.raises(TypeError, match="dot_general_cls=self.dot_general_cls"):
    own.inject(NoHook())
