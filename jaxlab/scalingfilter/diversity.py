"""Semantic diversity: the Vendi score of document embeddings (ScalingFilter, section "diversity").

With unit-norm rows X (n x d), K = (1 + X X^T) / 2 and the score is exp(-sum l log l) over
the eigenvalues l of K / n. Since K / n = Z Z^T / (2n) with Z = [1, X], its non-zero
eigenvalues are those of the (d+1) x (d+1) dual matrix Z^T Z / (2n): one n x (d+1) Gram
product replaces an n x n eigendecomposition (10,000 documents: ~0.05 s instead of minutes).

Precision (JAX runs float32 unless x64 is switched on globally, which jaxlab does not do):
  * the Gram product runs in float32 on the device at Precision.HIGHEST (no TF32/bf16
    passes on GPU/TPU); measured against float64 on 10,000 x 384 it moves the score by
    ~2e-7 absolute, because its entries are sums of well-scaled products;
  * the small eigendecomposition runs in numpy float64 on the host: float32 eigensolvers
    err by ~eps * lambda_max per eigenvalue, and with d+1 eigenvalues near 1/(2d) each
    weighted by |log l + 1| ~ 6 that reaches 1e-5..1e-4 relative in the score (measured:
    4e-5 with jnp float32 eigh). A 385 x 385 float64 eigh costs milliseconds, provided
    the BLAS runs it on one thread: on a busy 2-core host OpenBLAS' spinning threads made
    it 1.5 s instead of 18 ms, so it is capped with threadpoolctl where that is installed.
"""
from __future__ import annotations

import contextlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _dual_gram(x: jax.Array) -> jax.Array:
  """Z^T Z with Z = [1, rows of x at unit norm]; zero rows stay zero (as sklearn's normalize)."""
  x = x.astype(jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  z = jnp.concatenate([jnp.ones((x.shape[0], 1), jnp.float32), x], axis=1)
  return jnp.dot(z.T, z, precision=jax.lax.Precision.HIGHEST)


def entropy_exp(eigenvalues: np.ndarray) -> float:
  """exp(-sum l log l), with 0 log 0 = 0 and tiny negative round-off clipped to 0."""
  w = np.clip(np.asarray(eigenvalues, np.float64), 0.0, None)
  w = w[w > 0]
  return float(np.exp(-np.sum(w * np.log(w))))


def _one_blas_thread():
  try:
    from threadpoolctl import threadpool_limits
  except ImportError:  # optional: only speed depends on it
    return contextlib.nullcontext()
  return threadpool_limits(1, user_api="blas")


def vendi_score(embeddings: Any) -> float:
  """Vendi score of [n, d] embeddings (rows normalised here) under K = (1 + cos) / 2."""
  x = jnp.asarray(embeddings)
  if x.ndim != 2 or x.shape[0] == 0:
    raise ValueError(f"expected embeddings of shape [n, d] with n >= 1, got {tuple(x.shape)}")
  n = x.shape[0]
  dual = np.asarray(_dual_gram(x), np.float64) / (2.0 * n)
  with _one_blas_thread():
    return entropy_exp(np.linalg.eigvalsh(dual))


def grouped_vendi(embeddings: Any, group_size: int = 10_000, seed: int = 0) -> tuple[float, float, list[float]]:
  """(mean, std, per_group) of the Vendi score over shuffled groups of `group_size` rows.

  As the reference: rows are shuffled (numpy Generator with `seed`) and cut into
  floor(n / group_size) full groups; the remainder is dropped, because the Vendi score is
  an effective count that grows with the group's size, so a short group would pull the
  mean down and inflate the spread. With fewer than group_size rows there is one group of
  all n (std 0). std is the population std (ddof=0, numpy's default, as the reference).
  """
  if group_size < 1:
    raise ValueError(f"group_size must be >= 1, got {group_size}")
  x = np.asarray(embeddings)
  n = x.shape[0]
  if n == 0:
    raise ValueError("grouped_vendi needs at least one embedding")
  order = np.random.default_rng(seed).permutation(n)
  num_groups = max(1, n // group_size)
  size = min(n, group_size)
  scores = [vendi_score(x[order[g * size:(g + 1) * size]]) for g in range(num_groups)]
  return float(np.mean(scores)), float(np.std(scores)), scores


def diversity(texts: Sequence[str], embedder=None, group_size: int = 10_000, seed: int = 0,
              max_length: int = 256, batch_size: int = 32) -> dict:
  """Semantic diversity of a corpus: embed (all-MiniLM-L6-v2 by default), then grouped Vendi."""
  if embedder is None:
    from jaxlab.models.bert import Embedder
    embedder = Embedder()
  emb = embedder.embed(list(texts), max_length=max_length, batch_size=batch_size)
  mean, std, groups = grouped_vendi(emb, group_size=group_size, seed=seed)
  return {"vendi_mean": mean, "vendi_std": std, "vendi_groups": groups, "num_docs": int(emb.shape[0]),
          "group_size": min(group_size, int(emb.shape[0])), "num_groups": len(groups)}
