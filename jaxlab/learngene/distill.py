"""Soft distillation (DeiT/TLEG): KL to the teacher's temperature-softened outputs,
mixed with cross-entropy on the labels."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# How the summed KL is divided: DeiT's soft loss (which TLEG trains with) divides by
# batch x classes (torch's `outputs.numel()`); "batch" is the textbook per-example mean.
NORMALIZATIONS = ("batch_classes", "batch")


def soft_distillation_loss(student_logits, teacher_logits, labels, *, alpha: float = 1.0, tau: float = 1.0,
                           mask=None, normalize: str = "batch_classes"):
  """(1 - alpha) * CE(student, labels) + alpha * tau^2 * KL(p_teacher^tau || p_student^tau).

  The KL is summed over classes and examples, then divided by (unmasked) examples x classes
  (`normalize="batch_classes"`, DeiT's soft distillation) or by examples only ("batch").
  CE is the mean over examples. tau^2 keeps the soft term's gradient scale independent of
  tau (Hinton et al.). The reference (alpha=1, tau=1) is pure KL to the teacher.
  Returns (loss, {"ce", "kl"}) with "kl" as normalised.
  """
  if normalize not in NORMALIZATIONS:
    raise ValueError(f"normalize={normalize!r} is not one of {NORMALIZATIONS}")
  teacher = jax.lax.stop_gradient(teacher_logits)
  log_p_t = jax.nn.log_softmax(teacher / tau, axis=-1)
  log_p_s = jax.nn.log_softmax(student_logits / tau, axis=-1)
  kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1) * tau**2
  ce = optax.softmax_cross_entropy_with_integer_labels(student_logits, labels)
  mask = jnp.ones_like(ce) if mask is None else mask
  count = jnp.maximum(jnp.sum(mask), 1.0)
  kl_div = count * student_logits.shape[-1] if normalize == "batch_classes" else count
  kl, ce = jnp.sum(kl * mask) / kl_div, jnp.sum(ce * mask) / count
  return (1.0 - alpha) * ce + alpha * kl, {"ce": ce, "kl": kl}
