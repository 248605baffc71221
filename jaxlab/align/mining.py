"""Preference mining (the paper's data pipeline): plain queries about the fine-tuning half
of the contents -> rephrased with aesthetic expectations -> top-K from a random gallery per
round (the pretrained retriever, rephrased query) -> re-ranked by relevance and by
aesthetics (the aesthetic model) -> a u x v grid -> every pair consistent with it, on the
ORIGINAL query; stored as a tfds dataset with each record's reference log-probabilities.

Relevance (`preferences.relevance`): "caption" orders the candidates by the similarity of
their captions to the rephrased query under a frozen sentence encoder, a signal other than
the retriever's own score; "retriever" reuses the retriever's score (so the rows only
re-cut its ranking)."""
from __future__ import annotations

import hashlib
import json
import os

import jax.numpy as jnp
import numpy as np

from jaxlab.align import aesthetic as aesthetic_lib, preferences as pref_lib
from jaxlab.align import rephrase as rephrase_lib, retrieval

RELEVANCE = ("caption", "retriever")


def mine_preferences(workdir: str, mcfg, params, mlp: aesthetic_lib.AestheticMLP, mlp_params, train: dict,
                     img_emb: np.ndarray, encoder, *, rephrase, preferences, seed: int, batch_size: int,
                     query_contents: dict[str, int], caption_encoder=None):
  """(tfds data source of preference records, stats) under workdir/preferences; the
  rephrasings are cached in workdir/rephrase_cache. `rephrase` and `preferences` are the
  config's groups; `train` is `testbed.load_split`'s dict and `img_emb` its image embeddings;
  `encoder` the text tower's encoder (align.texts); `query_contents` {plain query: content id}
  the queries mined; `caption_encoder` (align.texts.FrozenEncoder) embeds the captions and
  rephrased queries for preferences.relevance="caption"."""
  p, r = preferences, rephrase
  if p.relevance not in RELEVANCE:
    raise ValueError(f"preferences.relevance={p.relevance!r} is not one of {RELEVANCE}")
  if p.relevance == "caption" and caption_encoder is None:
    raise ValueError("preferences.relevance='caption' needs a caption_encoder")
  queries = list(query_contents)
  backend = rephrase_lib.backend_from_config(r)
  rephrased = (list(queries) if backend is None else
               rephrase_lib.rephrase(queries, r.style, backend, os.path.join(workdir, "rephrase_cache"), r.k))
  q_emb = retrieval.embed_texts(mcfg, params, encoder, queries, batch_size)
  r_emb = retrieval.embed_texts(mcfg, params, encoder, rephrased, batch_size)
  if p.relevance == "caption":
    cap_f, reph_f = caption_encoder.embed(train["captions"]), caption_encoder.embed(rephrased)
  aes = np.asarray(aesthetic_lib.score(mlp, mlp_params, jnp.asarray(img_emb)))
  # what the records depend on, the models included (by a fingerprint of their outputs)
  key = json.dumps(["grid v3", backend.name if backend else "none", r.style, r.k, p.to_dict(), seed, rephrased,
                    np.round(img_emb[:16], 5).tolist(), np.round(q_emb, 5).tolist(), np.round(aes[:16], 5).tolist()])
  name = "prefs_" + hashlib.sha256(key.encode()).hexdigest()[:12]
  rng = np.random.default_rng(seed + 3)
  out_q, out_r, out_c, out_content = [], [], [], []
  for _ in range(p.rounds):
    gallery = rng.choice(len(img_emb), p.gallery, replace=False)
    top = gallery[pref_lib.top_k(r_emb @ img_emb[gallery].T, p.top_k)]     # [Q, K] train indices
    for qi, cands in enumerate(top):
      # relevance to the rephrased query: relevance to the plain one runs against the
      # aesthetic expectations inside the rephrased top-K (the plain-caption images win)
      relevance = cap_f[cands] @ reph_f[qi] if p.relevance == "caption" else img_emb[cands] @ r_emb[qi]
      grid = pref_lib.build_grid(cands, relevance, aes[cands], p.u, p.v, p.stride)
      out_q.append(queries[qi]); out_r.append(rephrased[qi]); out_c.append(grid)
      out_content.append(query_contents[queries[qi]])
  pairs = pref_lib.grid_pairs(p.u, p.v, p.order)
  prefs = pref_lib.write_preferences(os.path.join(workdir, "preferences"), name, out_q, out_r, out_c, pairs)
  stats = {"records": len(out_q), "pairs_per_record": int(len(pairs)), "rephrased_example": rephrased[0],
           "queries": len(queries), "contents": len(set(query_contents.values())),
           **pref_lib.grid_stats(np.asarray(out_c), np.asarray(out_content), train["aesthetic"],
                                 train["content_id"], pairs)}
  return prefs, stats
