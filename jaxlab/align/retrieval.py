"""Embedding and evaluating a two-tower retriever on the testbed: batched encoders, recall@k
over fixed-size galleries, HPIR agreement and the true aesthetic of the top results."""
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


def embed_texts(mcfg, params, tok, texts, max_len, batch_size=256) -> np.ndarray:
  """Unit-norm text embeddings [n, embed_dim] of strings (testbed tokenizer, `max_len` tokens)."""
  tokens, mask = testbed.encode(tok, texts, max_len)
  return _batched(encoders(mcfg)[1], params, [tokens, mask], batch_size)


def gallery_recall(cap, img, content, gallery: int, ks=(1, 5)) -> dict:
  """recall@k of caption i -> images (relevant = same content), averaged over the disjoint
  galleries [0, g), [g, 2g), ... (a split smaller than g is one gallery; a partial last
  one is left out)."""
  starts = range(0, max(len(img) - gallery, 0) + 1, gallery)
  per = [hpir.recall_at_k(cap[s:s + gallery] @ img[s:s + gallery].T,
                          content[s:s + gallery, None] == content[None, s:s + gallery], ks) for s in starts]
  return {f"r@{k}": float(np.mean([r[f"r@{k}"] for r in per])) for k in ks}


def evaluate(mcfg, params, split: dict, records, tok, *, top_k: int, batch_size: int,
             recall_gallery: int) -> tuple[dict, np.ndarray]:
  """HPIR accuracy, recall@1/5 (caption -> image, relevant = same content; the mean over the
  split's disjoint galleries of `recall_gallery` images), the mean true aesthetic of each
  content query's top-k, and those top-k lists (for the judge). `split` is
  `testbed.load_split`'s dict."""
  img = embed_images(mcfg, params, split["images"], batch_size)
  index = {i: n for n, i in enumerate(split["ids"])}
  queries = sorted({r.query for r in records} | {testbed.query_for(c) for c in testbed.CONTENTS})
  q_emb = dict(zip(queries, embed_texts(mcfg, params, tok, queries, mcfg.text.max_len, batch_size)))
  out = hpir.evaluate_hpir(records, lambda q, ids: img[[index[i] for i in ids]] @ q_emb[q])
  cap = embed_texts(mcfg, params, tok, split["captions"], mcfg.text.max_len, batch_size)
  out.update(gallery_recall(cap, img, split["content_id"], recall_gallery))
  content_q = [testbed.query_for(c) for c in testbed.CONTENTS]
  top = pref_lib.top_k(np.stack([q_emb[q] for q in content_q]) @ img.T, top_k)
  out["top_true_aesthetic"] = float(split["aesthetic"][top].mean())
  out["top_relevant"] = float(np.mean(split["content_id"][top] == np.arange(len(content_q))[:, None]))
  return out, top
