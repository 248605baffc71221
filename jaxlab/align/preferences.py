"""Preference pairs from retrieval: top-K -> re-rank -> stride sample -> u x v grid -> pairs.

For one query: take the top-K candidates (by the retrieval model on the rephrased query),
order them by relevance (the trainer uses the rephrased query: what the user asked for
plus its aesthetic expectations), keep every `stride`-th one
until u * v are sampled, cut them into u rows of v in that relevance order (row 0 the
most relevant), and sort each row by aesthetic score (column 0 the most aesthetic).

Partial order on grid cells: (r, c) is preferred over (r', c') when r <= r' and c <= c'
and the cells differ (at least as relevant a row and at least as aesthetic a rank within
it). Every such pair is emitted: (u(u+1)/2)(v(v+1)/2) - uv pairs, e.g. 5 for 2 x 2.
Candidates are stored in row-major grid order, so cell (r, c) is candidate r * v + c.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds


ORDERS = ("partial", "relevance_first")


def grid_pairs(u: int, v: int, order: str = "partial") -> np.ndarray:
  """[P, 2] int32 (winner, loser) indices of every pair the grid order ranks.

  "partial" (the paper): (r, c) over (r', c') when r <= r' and c <= c', the cells differing;
  a more relevant but less aesthetic cell and a less relevant but more aesthetic one are
  incomparable. "relevance_first": the grid's row-major order as a total order, so those
  pairs are added with the more relevant cell winning (relevance outranks aesthetics
  across rows), uv(uv - 1)/2 pairs in all."""
  if u < 1 or v < 1:
    raise ValueError(f"grid must be at least 1 x 1, got {u} x {v}")
  if order not in ORDERS:
    raise ValueError(f"preferences.order={order!r} is not one of {ORDERS}")
  # cell i = r * v + c; a later cell j in row-major order is never more relevant, and the
  # partial order also needs it to be no more aesthetic (column c2 >= c)
  out = [(i, j) for i in range(u * v) for j in range(i + 1, u * v)
         if order == "relevance_first" or j % v >= i % v]
  return np.asarray(out, np.int32).reshape(-1, 2)


def consistent(pairs: np.ndarray, u: int, v: int) -> bool:
  """No pair puts a cell above one that dominates it."""
  for w, l in pairs:
    (rw, cw), (rl, cl) = divmod(int(w), v), divmod(int(l), v)
    if not (rw <= rl and cw <= cl and (rw, cw) != (rl, cl)):
      return False
  return True


def build_grid(candidates: np.ndarray, relevance: np.ndarray, aesthetic: np.ndarray, u: int, v: int,
               stride: int = 1) -> np.ndarray:
  """Candidate ids [K] with their relevance and aesthetic scores -> [u * v] ids in grid
  (row-major) order. Needs K >= (u * v - 1) * stride + 1."""
  candidates, relevance, aesthetic = map(np.asarray, (candidates, relevance, aesthetic))
  need = (u * v - 1) * stride + 1
  if len(candidates) < need:
    raise ValueError(f"a {u} x {v} grid at stride {stride} needs {need} candidates, got {len(candidates)}")
  order = np.argsort(-relevance, kind="stable")[::stride][:u * v]
  rows = order.reshape(u, v)
  rows = np.take_along_axis(rows, np.argsort(-aesthetic[rows], axis=1, kind="stable"), axis=1)
  return candidates[rows.reshape(-1)]


def grid_stats(grids: np.ndarray, query_content: np.ndarray, truth: np.ndarray, content: np.ndarray,
               pairs: np.ndarray) -> dict:
  """Diagnostics of stored grids against the testbed's ground truth (never used to
  train): grids [R, N] image ids, query_content [R] the content each query asks for,
  truth / content [images] -> the mean true aesthetic of the top cell and of the grid,
  the share of candidates showing the query's content, and the share of same-content
  pairs whose winner has the higher true aesthetic."""
  a, c = truth[grids], content[grids]
  same = c[:, pairs[:, 0]] == c[:, pairs[:, 1]]
  right = a[:, pairs[:, 0]] > a[:, pairs[:, 1]]
  return {"true_aesthetic_top_cell": float(a[:, 0].mean()), "true_aesthetic_grid": float(a.mean()),
          "relevant_share": float(np.mean(c == query_content[:, None])),
          "same_content_pair_accuracy": float(np.sum(right & same) / max(np.sum(same), 1))}


def top_k(sims: np.ndarray, k: int) -> np.ndarray:
  """[Q, G] similarities -> [Q, k] gallery indices, best first."""
  if k > sims.shape[1]:
    raise ValueError(f"top-{k} from a gallery of {sims.shape[1]}")
  idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
  return np.take_along_axis(idx, np.argsort(-np.take_along_axis(sims, idx, 1), axis=1, kind="stable"), 1)


# ---------------------------------------------------------------------------- tfds storage

@dataclasses.dataclass
class PreferencesConfig(tfds.core.BuilderConfig):
  """tfds builder config of AlignPreferences.

  `source` is the .npz the records come from: query [R], rephrased [R], candidates [R, N], pairs [P, 2]."""
  source: str = ""        # an .npz: query [R], rephrased [R], candidates [R, N], pairs [P, 2]


class AlignPreferences(tfds.core.GeneratorBasedBuilder):
  """Preference records: a query, its rephrasing, its candidates in grid order (ids into
  the image collection) and every (winner, loser) pair of the grid order. The frozen
  reference's log-probabilities are not stored: the fine-tuning stage computes them with its
  own forward (trainers.align.reference_log_probs)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    with np.load(self.builder_config.source) as z:
      n, p = z["candidates"].shape[1], z["pairs"].shape[0]
    return self.dataset_info_from_configs(
        description="Retrieval preference pairs from a relevance x aesthetics grid.",
        features=tfds.features.FeaturesDict({
            "query": tfds.features.Text(), "rephrased": tfds.features.Text(),
            "candidates": tfds.features.Tensor(shape=(n,), dtype=np.int32),
            "pairs": tfds.features.Tensor(shape=(p, 2), dtype=np.int32)}),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    with np.load(self.builder_config.source) as z:
      for i in range(len(z["query"])):
        yield i, {"query": str(z["query"][i]), "rephrased": str(z["rephrased"][i]),
                  "candidates": z["candidates"][i].astype(np.int32),
                  "pairs": z["pairs"].astype(np.int32)}


def write_preferences(data_dir: str, name: str, queries, rephrased, candidates, pairs):
  """Store preference records as an array_record tfds dataset under data_dir; returns its
  train split as a random-access data source. `name` identifies the content (a rerun with
  the same name reuses what is there)."""
  candidates = np.asarray(candidates, np.int32)
  if candidates.ndim != 2 or len(candidates) != len(queries) or len(rephrased) != len(queries):
    raise ValueError(f"{len(queries)} queries, {len(rephrased)} rephrasings, candidates {candidates.shape}")
  os.makedirs(data_dir, exist_ok=True)
  source = os.path.join(data_dir, f"{name}.npz")
  if not os.path.exists(source):
    np.savez(source + ".tmp.npz", query=np.asarray(queries, str), rephrased=np.asarray(rephrased, str),
             candidates=candidates, pairs=np.asarray(pairs, np.int32))
    os.replace(source + ".tmp.npz", source)
  tfds.disable_progress_bar()
  builder = AlignPreferences(config=PreferencesConfig(name=name, source=source), data_dir=data_dir,
                             file_format="array_record")
  builder.download_and_prepare()
  return builder.as_data_source(split="train")
