"""Ranked DPO for a retrieval model.

The policy's log-probability of candidate image x for query q is a log-softmax over that
query's candidate set C(q):  log pi(x | q) = s(q, x) / tau - logsumexp_{y in C(q)} s(q, y) / tau,
with s the cosine similarity and 1 / tau the model's own logit scale. For a preference
pair (w preferred over l) and a frozen reference model:

  h = beta * [(log pi(w) - log pi_ref(w)) - (log pi(l) - log pi_ref(l))]
  loss = -(1 - eps) * log sigmoid(h) - eps * log sigmoid(-h)      (label smoothing eps)

At initialisation (policy = reference) h = 0 and the loss is log 2 for every pair,
whatever eps. The trainer adds lambda times the contrastive loss on image-text pairs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def candidate_log_probs(query_emb, cand_emb, scale):
  """query_emb [B, E], cand_emb [B, N, E] (unit rows), scale -> log pi [B, N]."""
  sims = jnp.einsum("be,bne->bn", query_emb, cand_emb)
  return jax.nn.log_softmax(scale * sims, axis=-1)


def pair_margins(logp, ref_logp, pairs, beta: float):
  """logp, ref_logp [B, N]; pairs [B, P, 2] int (winner, loser) -> h [B, P]."""
  ratio = logp - ref_logp
  take = lambda col: jnp.take_along_axis(ratio, pairs[..., col], axis=1)
  return beta * (take(0) - take(1))


def dpo_loss(logp, ref_logp, pairs, beta: float, label_smoothing: float = 0.0, pair_mask=None):
  """Mean ranked-DPO loss over all (valid) pairs, and the fraction with h > 0."""
  h = pair_margins(logp, ref_logp, pairs, beta)
  per_pair = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)
  w = jnp.ones_like(h) if pair_mask is None else pair_mask.astype(h.dtype)
  denom = jnp.maximum(jnp.sum(w), 1.0)
  return jnp.sum(per_pair * w) / denom, jnp.sum((h > 0) * w) / denom
