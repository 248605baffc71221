"""Document selection: ScalingFilter's top-k% by quality factor (plus threshold and
temperature sampling) and the paper's baselines — random, perplexity gating, DSIR-style
importance resampling on hashed n-grams, and a hashed n-gram quality classifier.

Every selector returns a boolean keep-mask over the documents in input order. Shares are
percentages; the number kept is round(n * k / 100), so k=0 keeps nothing and k=100 all.
Ties are broken by input order (earlier first), so results are deterministic.

`select_scores` dispatches on a method name (`METHODS`) over rows of a scores file, and
`select_file` does the whole scores JSONL -> kept JSONL step (the CLI's `select`).
"""
from __future__ import annotations

import json
import os
import re
import zlib
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

_WORD = re.compile(r"\w+")

METHODS = ("topk", "threshold", "temperature", "random", "ppl_gate", "dsir", "classifier")


def _count(n: int, k_percent: float) -> int:
  if not 0.0 <= k_percent <= 100.0:
    raise ValueError(f"k_percent must be in [0, 100], got {k_percent}")
  return int(round(n * k_percent / 100.0))


def _keep_top(keys: np.ndarray, m: int) -> np.ndarray:
  """Mask of the m largest keys; ties go to the earlier document."""
  order = np.lexsort((np.arange(len(keys)), -keys))  # by -key, then by index
  mask = np.zeros(len(keys), bool)
  mask[order[:m]] = True
  return mask


def top_k(quality: Sequence[float], k_percent: float = 70.0) -> np.ndarray:
  """ScalingFilter: keep the k% of documents with the highest quality factor."""
  quality = np.asarray(quality, np.float64)
  return _keep_top(quality, _count(len(quality), k_percent))


def threshold(quality: Sequence[float], min_quality: float) -> np.ndarray:
  """Keep-mask of the documents whose quality factor is >= min_quality."""
  return np.asarray(quality, np.float64) >= min_quality


def temperature_sample(quality: Sequence[float], k_percent: float, temperature: float, seed: int = 0) -> np.ndarray:
  """k% sampled without replacement with probability proportional to d^(1/T) (Gumbel
  top-k); T -> 0 is top-k, large T is uniform."""
  if temperature <= 0:
    raise ValueError(f"temperature must be positive, got {temperature}")
  logits = np.log(np.maximum(np.asarray(quality, np.float64), 1e-300)) / temperature
  gumbel = np.random.default_rng(seed).gumbel(size=len(logits))
  return _keep_top(logits + gumbel, _count(len(logits), k_percent))


def random_select(n: int, k_percent: float, seed: int = 0) -> np.ndarray:
  """Keep-mask of round(n * k / 100) of n documents drawn uniformly without replacement."""
  return _keep_top(np.random.default_rng(seed).random(n), _count(n, k_percent))


def perplexity_gate(ppl: Sequence[float], low: float = 15.0, high: float = 85.0) -> np.ndarray:
  """Keep documents whose (large-model) perplexity lies within the [low, high]
  percentiles, both edges included (numpy's linear percentile interpolation)."""
  ppl = np.asarray(ppl, np.float64)
  lo, hi = np.percentile(ppl, [low, high])
  return (ppl >= lo) & (ppl <= hi)


# ------------------------------------------------------------------------------ hashed n-grams

def ngram_buckets(text: str, num_buckets: int, n_max: int = 2) -> np.ndarray:
  """The bucket (crc32, stable across runs) of each word 1..n_max-gram occurrence in text."""
  words = _WORD.findall(text.lower())
  return np.array([zlib.crc32(" ".join(words[i:i + n]).encode()) % num_buckets
                   for n in range(1, n_max + 1) for i in range(len(words) - n + 1)], np.int64)


def hashed_ngrams(text: str, num_buckets: int, n_max: int = 2) -> np.ndarray:
  """Counts of word 1..n_max-grams hashed (crc32, stable across runs) into buckets."""
  return np.bincount(ngram_buckets(text, num_buckets, n_max), minlength=num_buckets).astype(np.float32)


def features(texts: Sequence[str], num_buckets: int, n_max: int = 2) -> np.ndarray:
  """[len(texts), num_buckets] float hashed n-gram counts (`hashed_ngrams` per text)."""
  return np.stack([hashed_ngrams(t, num_buckets, n_max) for t in texts]) if texts else np.zeros((0, num_buckets))


def _sparse_ngrams(texts: Sequence[str], num_buckets: int, n_max: int) -> tuple[np.ndarray, np.ndarray]:
  """(bucket of every n-gram occurrence, index of its text): the corpus without a dense
  [texts, buckets] matrix, which at 20,000 texts x 10,000 buckets would take 800 MB."""
  buckets = [ngram_buckets(t, num_buckets, n_max) for t in texts]
  owner = np.repeat(np.arange(len(texts)), [len(b) for b in buckets])
  return (np.concatenate(buckets) if buckets else np.zeros(0, np.int64)), owner


def dsir_log_weights(texts: Sequence[str], target_texts: Sequence[str], *, num_buckets: int = 10_000,
                     n_max: int = 2) -> np.ndarray:
  """DSIR's (Xie et al. 2023) log importance weight of each text: bag-of-hashed-n-gram models
  of the raw corpus (`texts` themselves) and the target, add-one smoothed, and
  sum_j count_j * (log p_target_j - log p_raw_j) over the text's n-grams."""
  raw, owner = _sparse_ngrams(texts, num_buckets, n_max)
  target, _ = _sparse_ngrams(target_texts, num_buckets, n_max)
  log_p = lambda b: np.log((np.bincount(b, minlength=num_buckets) + 1.0) / (len(b) + num_buckets))
  return np.bincount(owner, weights=(log_p(target) - log_p(raw))[raw], minlength=len(texts))


def dsir(texts: Sequence[str], target_texts: Sequence[str], k_percent: float, *, num_buckets: int = 10_000,
         n_max: int = 2, seed: int = 0) -> np.ndarray:
  """Importance resampling (DSIR): k% of the texts resampled without replacement with
  probability proportional to their importance weight (`dsir_log_weights`; Gumbel top-k)."""
  log_w = dsir_log_weights(texts, target_texts, num_buckets=num_buckets, n_max=n_max)
  gumbel = np.random.default_rng(seed).gumbel(size=len(texts))
  return _keep_top(log_w + gumbel, _count(len(texts), k_percent))


def train_quality_classifier(positives: Sequence[str], negatives: Sequence[str], *, num_buckets: int = 2**14,
                             n_max: int = 2, steps: int = 300, learning_rate: float = 0.05, l2: float = 1e-4):
  """Logistic regression on log(1 + hashed n-gram counts), trained with optax Adam on
  the full batch. Returns score(texts) -> P(high quality)."""
  x = np.log1p(np.concatenate([features(positives, num_buckets, n_max), features(negatives, num_buckets, n_max)]))
  y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))]).astype(np.float32)
  if len(positives) == 0 or len(negatives) == 0:
    raise ValueError("the quality classifier needs both positive and negative examples")
  x, y = jnp.asarray(x), jnp.asarray(y)
  params = {"w": jnp.zeros(num_buckets), "b": jnp.zeros(())}
  tx = optax.adam(learning_rate)
  opt = tx.init(params)

  def loss(p):
    logits = x @ p["w"] + p["b"]
    return optax.sigmoid_binary_cross_entropy(logits, y).mean() + l2 * jnp.sum(p["w"] ** 2)

  @jax.jit
  def step(p, o):
    grads = jax.grad(loss)(p)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o

  for _ in range(steps):
    params, opt = step(params, opt)

  w, b = np.asarray(params["w"], np.float64), float(params["b"])

  def score(texts: Sequence[str]) -> np.ndarray:
    # Sparse: sum over each text's distinct buckets of log1p(count) * w, as x @ w on the dense features.
    buckets, owner = _sparse_ngrams(texts, num_buckets, n_max)
    cells, counts = np.unique(owner * num_buckets + buckets, return_counts=True)
    logits = np.bincount(cells // num_buckets, weights=np.log1p(counts) * w[cells % num_buckets],
                         minlength=len(texts)) + b
    return 1.0 / (1.0 + np.exp(-logits))

  return score


def classifier_select(texts: Sequence[str], positives: Sequence[str], negatives: Sequence[str], k_percent: float,
                      **kwargs) -> np.ndarray:
  """Keep the k% of documents the quality classifier rates highest."""
  return _keep_top(train_quality_classifier(positives, negatives, **kwargs)(texts).astype(np.float64),
                   _count(len(texts), k_percent))


# ------------------------------------------------------------------------------ by method name

_threshold = threshold  # select_scores' `threshold` parameter shadows the function

def select_scores(rows: list[dict], method: str, *, k: float = 70.0, threshold: float = 1.0,
                  temperature: float = 1.0, low: float = 15.0, high: float = 85.0, seed: int = 0,
                  texts: Sequence[str] | Mapping[str, str] | None = None, target_texts: Sequence[str] | None = None,
                  positives: Sequence[str] | None = None, negatives: Sequence[str] | None = None) -> np.ndarray:
  """Boolean keep-mask over `rows` (scores-file rows: id, quality_factor, ppl_large) by `method`.

  k is a percentage; threshold is a minimum quality factor; low/high are ppl_large percentiles.
  dsir and classifier read document texts: `texts` aligned with rows, or a mapping id -> text.
  """
  if method not in METHODS:
    raise ValueError(f"unknown selection method {method!r}; use one of {', '.join(METHODS)}")
  needed = {"dsir": ("texts", "target_texts"), "classifier": ("texts", "positives", "negatives")}.get(method, ())
  given = {"texts": texts, "target_texts": target_texts, "positives": positives, "negatives": negatives}
  missing = [name for name in needed if given[name] is None]
  if missing:
    raise ValueError(f"method {method!r} needs {', '.join(missing)}")
  if isinstance(texts, Mapping):
    absent = [r["id"] for r in rows if r["id"] not in texts]
    if absent:
      raise KeyError(f"{len(absent)} scored documents are not in texts, e.g. {absent[0]!r}")
    texts = [texts[r["id"]] for r in rows]
  if texts is not None and method in needed and len(texts) != len(rows):
    raise ValueError(f"texts has {len(texts)} entries for {len(rows)} rows")
  quality = lambda: np.array([r["quality_factor"] for r in rows], np.float64)
  if method == "topk":
    return top_k(quality(), k)
  if method == "threshold":
    return _threshold(quality(), threshold)
  if method == "temperature":
    return temperature_sample(quality(), k, temperature, seed)
  if method == "random":
    return random_select(len(rows), k, seed)
  if method == "ppl_gate":
    return perplexity_gate([r["ppl_large"] for r in rows], low, high)
  if method == "dsir":
    return dsir(texts, target_texts, k, seed=seed)
  return classifier_select(texts, positives, negatives, k)  # deterministic: no seed


def select_file(scores_path: str, output_path: str, method: str = "topk", **kwargs) -> dict:
  """Write the rows of the scores JSONL that `method` keeps to output_path (JSONL, atomically);
  returns counts {"method", "documents", "kept"}. kwargs go to `select_scores`."""
  with open(scores_path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  keep = select_scores(rows, method, **kwargs)
  tmp = output_path + ".tmp"
  with open(tmp, "w") as f:  # a crash leaves the old output (or none), never a partial one
    for row, kept in zip(rows, keep):
      if kept:
        f.write(json.dumps(row) + "\n")
  os.replace(tmp, output_path)
  return {"method": method, "documents": len(rows), "kept": int(keep.sum())}
