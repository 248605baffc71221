"""Embedding and evaluating retrieval systems on the testbed: batched encoders, recall@k over
fixed-size galleries, and, for any system given as a [queries, images] score matrix (an
embedding model, or a cascade that re-ranks its top-K), HPIR agreement per label file and
the true aesthetic and relevance of each query's top results."""
from __future__ import annotations

import functools

import jax
import numpy as np

from jaxlab.align import hpir, preferences as pref_lib, testbed
from jaxlab.models import two_tower as tt


@functools.lru_cache(maxsize=4)
def encoders(mcfg: tt.TwoTowerConfig):
  """(jitted image encoder, jitted text encoder) of the two-tower model `mcfg`."""
  model = tt.TwoTower(mcfg)
  return (jax.jit(functools.partial(tt.embed_images, model)),
          jax.jit(functools.partial(tt.embed_texts, model)))


def _batched(fn, params, arrays, batch_size: int) -> np.ndarray:
  """fn(params, *batch) over the rows of arrays, the last batch padded (one compile)."""
  n = len(arrays[0])
  out = []
  for start in range(0, n, batch_size):
    chunk = [a[start:start + batch_size] for a in arrays]
    pad = batch_size - len(chunk[0])
    chunk = [np.concatenate([c, np.repeat(c[-1:], pad, 0)]) if pad else c for c in chunk]
    out.append(np.asarray(fn(params, *chunk))[:batch_size - pad])
  return np.concatenate(out)


def embed_images(mcfg, params, images, batch_size=256) -> np.ndarray:
  """Unit-norm image embeddings [n, embed_dim] of images [n, S, S, 3] in [0, 1]."""
  return _batched(encoders(mcfg)[0], params, [images], batch_size)


def embed_texts(mcfg, params, encoder, texts, batch_size=256) -> np.ndarray:
  """Unit-norm text embeddings [n, embed_dim] of strings, encoded by `encoder` (align.texts)."""
  tokens, mask = encoder.encode(list(texts))
  return _batched(encoders(mcfg)[1], params, [tokens, mask], batch_size)


def gallery_recall(cap, img, content, gallery: int, ks=(1, 5)) -> dict:
  """recall@k of caption i -> images (relevant = same content), averaged over the disjoint
  galleries [0, g), [g, 2g), ... (a split smaller than g is one gallery; a partial last
  one is left out)."""
  starts = range(0, max(len(img) - gallery, 0) + 1, gallery)
  per = [hpir.recall_at_k(cap[s:s + gallery] @ img[s:s + gallery].T,
                          content[s:s + gallery, None] == content[None, s:s + gallery], ks) for s in starts]
  return {f"r@{k}": float(np.mean([r[f"r@{k}"] for r in per])) for k in ks}


def cascade_scores(scores: np.ndarray, rerank: np.ndarray, k: int) -> np.ndarray:
  """A cascade: each query's top-k images by `scores` [Q, G] re-ranked by `rerank` [G] (e.g. an
  aesthetic model), above every other image, which keep their order. Returns rank-valued
  scores [Q, G] (higher = earlier): top-k images get 2 + (k - rank by rerank) / k, the rest
  their original score squashed into (-1, 1) by tanh."""
  scores, rerank = np.asarray(scores, np.float64), np.asarray(rerank, np.float64)
  top = pref_lib.top_k(scores, k)                                        # [Q, k]
  order = np.argsort(-rerank[top], axis=1, kind="stable")                # best re-ranked first
  out = np.tanh(scores)
  ranked = np.take_along_axis(top, order, 1)
  np.put_along_axis(out, ranked, 2.0 + (k - np.arange(k)[None, :]) / k, 1)
  return out


def evaluate_scores(scores: np.ndarray, query_index: dict[str, int], split: dict, label_sets: dict, *,
                    top_k: int, query_content: np.ndarray, source: str = "rendered") -> tuple[dict, np.ndarray]:
  """One system on one split: HPIR accuracy (plain and confidence-weighted) for every label set
  ({name: [HPIRRecord]}), and for the queries (rows of `scores` [Q, images]) the mean true aesthetic and
  relevance grade of their top_k, and the share of those showing the query's content; returns
  (metrics, top_k indices [Q, top_k]). `query_index` maps a record's query to its row; `split` is
  `testbed.load_split`'s dict; `query_content` [Q] each row's content id."""
  index = {i: n for n, i in enumerate(split["ids"])}
  out = {}
  for name, records in label_sets.items():
    res = hpir.evaluate_hpir(records, lambda q, ids: scores[query_index[q], [index[i] for i in ids]])
    out[name] = {"accuracy": res["accuracy"], "weighted_accuracy": res["weighted_accuracy"]}
  top = pref_lib.top_k(scores, top_k)
  grades = np.stack([testbed.relevance_grade(source, c, split["content_id"][t]) for c, t in zip(query_content, top)])
  out["top_true_aesthetic"] = float(split["aesthetic"][top].mean())
  out["top_relevance"] = float(grades.mean())
  out["top_relevant"] = float(np.mean(split["content_id"][top] == np.asarray(query_content)[:, None]))
  return out, top


def caption_recall(mcfg, params, split: dict, img: np.ndarray, *, batch_size: int, recall_gallery: int) -> dict:
  """recall@1/5 caption -> image of an embedding model on a split (relevant = same content),
  the mean over the split's disjoint galleries of `recall_gallery` images; `img` are the
  model's embeddings of the split's images."""
  cap = _batched(encoders(mcfg)[1], params, [split["tokens"], split["mask"]], batch_size)
  return gallery_recall(cap, img, split["content_id"], recall_gallery)
