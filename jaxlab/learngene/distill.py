"""Soft distillation (DeiT/TLEG): KL to the teacher's temperature-softened outputs,
mixed with cross-entropy on the labels."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def soft_distillation_loss(student_logits, teacher_logits, labels, *, alpha: float = 1.0, tau: float = 1.0,
                           mask=None):
  """(1 - alpha) * CE(student, labels) + alpha * tau^2 * KL(p_teacher^tau || p_student^tau).

  KL is summed over classes and averaged over (unmasked) examples; tau^2 keeps the soft
  term's gradient scale independent of tau (Hinton et al.). The reference (alpha=1,
  tau=1) is pure KL to the teacher. Returns (loss, {"ce", "kl"}).
  """
  teacher = jax.lax.stop_gradient(teacher_logits)
  log_p_t = jax.nn.log_softmax(teacher / tau, axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits / tau, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1) * tau**2
  ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
  mask = jnp.ones_like(ce) if mask is None else mask
  count = jnp.maximum(jnp.sum(mask), 1.0)
  kl, ce = jnp.sum(kl * mask) / count, jnp.sum(ce * mask) / count
  return (1.0 - alpha) * ce + alpha * kl, {"ce": ce, "kl": kl}
