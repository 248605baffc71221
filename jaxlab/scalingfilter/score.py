"""Corpus scoring with a meta-model pair: per-document mean next-token NLL under a small
and a large GPT, and the quality factor d(x) = PPL_small(x) / PPL_large(x)
= exp(L_small(x) - L_large(x)).

Unlike the reference (every document padded to 1024 tokens), documents are packed: several
share one row, each with its own positions and attention restricted to itself, so almost no
compute goes to padding (see pack_rows), and batches are sharded over all devices.

How a document is scored is a `ScoreOptions`: the context C (at most the length the
meta-models trained on), the boundaries (by default an EOS before and after the text, as the
LM trainer's packed stream shows every document, so the first token and the end are
predicted too; "none" scores the text's own tokens, as the reference), the rule for documents
longer than C (`spans`: one-token-overlap windows by default, `truncate` as the reference,
`stride`) and the compute dtype. L(x) is the mean NLL over the predictions the rule counts.

Output: one JSONL row per input document, in input order; rejected documents (bad JSON,
missing or non-string text, empty text, fewer than 2 tokens, invalid UTF-8, duplicate id)
go to `<output>.rejects.jsonl` with the reason. An interrupted run resumes: documents whose
id is already in the output or rejects file are skipped (and counted as `skipped_done`), a
torn last line is dropped; `overwrite=True` rescores from scratch instead.

In memory, `score_texts` scores a list of strings and returns arrays (no files); the
datatrove stage (jaxlab.scalingfilter.datatrove) scores Documents with `score_batch`.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import gzip
import json
import math
import os
import time
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlab import sharding
from jaxlab.config import ConfigError
from jaxlab.data import tokenizer as tokenizer_lib
from jaxlab.data.records import Reject, excerpt, field_at
from jaxlab.models import gpt, hf


@dataclasses.dataclass(frozen=True)
class MetaModel:
  """A scoring model: where it was loaded from, the GPT module, its parameters, its Hugging
  Face tokenizer and the sequence length it trained on (None: its `max_len`)."""

  path: str
  model: gpt.GPT
  params: Any
  tokenizer: Any
  trained_len: int | None = None

  @property
  def context(self) -> int:
    """The longest sequence (in tokens) it scores: the length it trained on, at most `max_len`.
    Positions past the training length were never trained, so they would score noise."""
    return min(self.model.cfg.max_len, self.trained_len or self.model.cfg.max_len)


def load_meta_model(path: str) -> MetaModel:
  """A GPT-2-format folder (config.json + model.safetensors + tokenizer files; context: its
  n_positions) or a jaxlab LM run directory (its latest checkpoint and tokenizer; context: the
  run's train.seq_len)."""
  if os.path.exists(os.path.join(path, "model.safetensors")):
    cfg, params = hf.load_gpt2(path)
    tok = tokenizer_lib.load_tokenizer(path)
  elif os.path.isdir(os.path.join(path, "checkpoints")):
    from jaxlab.train import runs  # orbax and the training loop: only for run directories
    run = runs.load_lm(path)
    return MetaModel(path, run.model, run.params, run.tokenizer, int(run.config.train.seq_len))
  else:
    raise FileNotFoundError(f"{path}: neither a GPT-2 folder (model.safetensors) nor a jaxlab run (checkpoints/)")
  return MetaModel(path, gpt.GPT(cfg), jax.tree.map(jnp.asarray, params), tok)


def check_pair(small: MetaModel, large: MetaModel) -> None:
  """The quality factor compares the two models token by token: same tokenizer only."""
  if small.tokenizer.backend_tokenizer.to_str() != large.tokenizer.backend_tokenizer.to_str():
    raise ValueError(f"the meta-models use different tokenizers ({small.path} vs {large.path}); "
                     "ScalingFilter needs a pair trained with the same tokenizer")


def windows(ids: np.ndarray, context: int) -> list[np.ndarray]:
  """Windows of <= context tokens overlapping by one token (see the module docstring)."""
  if context < 2:
    raise ValueError(f"context must be >= 2, got {context}")
  out, start = [], 0
  while True:
    out.append(ids[start:start + context])
    if start + context >= len(ids):
      return out
    start += context - 1


LONG_DOCS = ("window", "truncate", "stride")


def spans(ids: np.ndarray, context: int, long_docs: str = "window", min_context: int = 0, *,
          key: str = "min_context") -> list[tuple[np.ndarray, int]]:
  """The windows of <= context tokens a document is scored in, each with the number of its
  leading predictions that do not count (already made by the window before):
    window    windows overlapping by one token, each prediction once (see the module docstring)
    truncate  the first `context` tokens only, as the reference does
    stride    sliding windows (transformers' perplexity guide): each prediction after the first
              window has at least `min_context` tokens of context (default context // 2);
              each window scores context - min_context new tokens"""
  if long_docs == "window":
    return [(w, 0) for w in windows(ids, context)]
  if long_docs == "truncate":
    return [(ids[:context], 0)]
  if long_docs != "stride":
    raise ConfigError(f"long_docs={long_docs!r}: use one of {', '.join(LONG_DOCS)}")
  m = min_context or context // 2
  if not 1 <= m < context:
    raise ConfigError(f"{key}={min_context} must be in [1, context - 1] = [1, {context - 1}]")
  out, end = [(ids[:context], 0)], min(context, len(ids))
  while end < len(ids):  # tokens [0, end) are predicted; the next window starts m tokens before end
    start = end - m
    out.append((ids[start:start + context], m - 1))
    end = min(start + context, len(ids))
  return out


BOUNDARIES = ("eos", "none")
SCORE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class ScoreOptions:
  """How a document is scored (see the module docstring):
    long_docs    window | truncate | stride (see `spans`); window by default, the cheapest rule
                 that scores every token; truncate reproduces the reference; stride gives every
                 prediction after the first window at least `min_context` tokens of context
    min_context  stride's least context (0: context // 2)
    context      tokens per window (0: the pair's, the shorter training length); more than the
                 pair trained on is an error
    boundaries   eos: an EOS before and after the text, as in training; none: the text alone
    dtype        float32 | bfloat16 (parameters and compute; the NLL itself in float32)"""

  long_docs: str = "window"
  min_context: int = 0
  context: int = 0
  boundaries: str = "eos"
  dtype: str = "float32"

  def checked(self, pair_context: int | None = None, prefix: str = "") -> "ScoreOptions":
    """These options with `context` resolved against the pair's (when given); a ConfigError
    naming the key (`prefix` + field, e.g. score.context) for a bad value."""
    choices = {"long_docs": LONG_DOCS, "boundaries": BOUNDARIES, "dtype": SCORE_DTYPES}
    for key, allowed in choices.items():
      if getattr(self, key) not in allowed:
        raise ConfigError(f"{prefix}{key}={getattr(self, key)!r}: use one of {', '.join(allowed)}")
    if self.context < 0 or self.context == 1:
      raise ConfigError(f"{prefix}context={self.context}: use 0 (the pair's) or at least 2 tokens")
    if pair_context is not None and self.context > pair_context:
      raise ConfigError(f"{prefix}context={self.context} exceeds the {pair_context} tokens the meta-models trained "
                        "on (their positions beyond it are untrained); use at most that, or 0")
    context = self.context or pair_context
    if context is not None:
      spans(np.zeros(0, np.int32), context, self.long_docs, self.min_context, key=prefix + "min_context")
    return dataclasses.replace(self, context=context or 0)


TOKENS_PER_BATCH = 16384
PACK_LEN = 128  # shortest row (see row_lengths); on the Pile sample 64-128 ran ~15% faster than 512


@functools.lru_cache(maxsize=16)
def make_nll_fn(model: gpt.GPT, mesh):
  """jit: (params, tokens, segments, positions [B, T]) -> [B, T - 1] NLL of each next token
  that lies in the same document (segment > 0) as the one before it, else 0. Cached per
  (model, mesh), so repeated or resumed scoring in one process never recompiles."""
  data = NamedSharding(mesh, P("data"))

  def nll(params, tokens, segments, positions):
    logits = model.apply({"params": params}, tokens[:, :-1], positions=positions[:, :-1],
                         segment_ids=segments[:, :-1])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tokens[:, 1:])
    real = (segments[:, 1:] == segments[:, :-1]) & (segments[:, 1:] > 0)
    return jnp.where(real, nll, 0.0)

  jitted = jax.jit(nll, in_shardings=(NamedSharding(mesh, P()), data, data, data), out_shardings=data)
  # Numpy batches are placed first: with several processes jit refuses sharded numpy inputs.
  return lambda params, *batch: jitted(params, *jax.device_put(batch, data))


def row_lengths(context: int, pack_len: int) -> tuple[int, ...]:
  """Row capacities: pack_len, 1.5x, 2x, 3x, 4x, ... up to the context. A coarse grid keeps
  compiled shapes few; packing fills the spare room of a long document's row."""
  sizes, n = {context}, min(pack_len, context)
  while n < context:
    sizes |= {n, min(n * 3 // 2, context)}
    n *= 2
  return tuple(sorted(sizes))


def pack_rows(lengths: Sequence[int], capacities: Sequence[int]) -> list[tuple[int, list[int]]]:
  """First-fit decreasing bin packing: [(row capacity, item indices in row order)]. An item
  goes into the first row with room, else opens a row of the smallest capacity that fits it.
  Sorting makes rows nearly full; short rows keep attention (quadratic in the row) cheap."""
  rows, room = [], []
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    n = lengths[i]
    r = next((r for r, free in enumerate(room) if free >= n), len(rows))
    if r == len(rows):
      capacity = next(c for c in capacities if c >= n)
      rows.append((capacity, []))
      room.append(capacity)
    rows[r][1].append(i)
    room[r] -= n
  return rows


def batch_sizes(n_rows: int, full: int, row_multiple: int) -> list[int]:
  """Padded row counts covering n_rows: full batches, then the rest as descending powers of
  two times row_multiple, so few shapes compile and only device rounding adds empty rows."""
  rest = -(-(n_rows % full) // row_multiple)
  return [full] * (n_rows // full) + [row_multiple << b for b in reversed(range(rest.bit_length())) if rest >> b & 1]


def plan_packed(lengths: Sequence[int], *, context: int, pack_len: int, tokens_per_batch: int,
                row_multiple: int) -> list[tuple[int, list[list[int]], int]]:
  """Batches [(row capacity, rows of item indices, padded row count)] for items of <= context tokens."""
  rows = pack_rows(lengths, row_lengths(context, pack_len))
  plan = []
  for capacity in sorted({c for c, _ in rows}):
    same = [items for c, items in rows if c == capacity]
    full = max(tokens_per_batch // capacity // row_multiple, 1) * row_multiple
    start = 0
    for size in batch_sizes(len(same), full, row_multiple):
      plan.append((capacity, same[start:start + size], size))
      start += size
  return plan


def score_token_lists(docs: list[np.ndarray], nll_fns, *, context: int, tokens_per_batch: int, row_multiple: int,
                      params, pack_len: int = PACK_LEN, long_docs: str = "window", min_context: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
  """([n_docs, len(nll_fns)] mean NLL per document under each model (small, large), [n_docs]
  the number of predictions each mean is over): the predictions that `spans` counts. Every batch is dispatched before any result is read, so
  the host packs batch i + 1 while the device computes batch i (JAX dispatch is asynchronous)."""
  flat = [(d, w, skip) for d, ids in enumerate(docs) for w, skip in spans(ids, context, long_docs, min_context)]
  plan = plan_packed([len(w) for _, w, _ in flat], context=context, pack_len=pack_len,
                     tokens_per_batch=tokens_per_batch, row_multiple=row_multiple)
  sums = np.zeros((len(docs) + 1, len(nll_fns)))  # the last slot collects padding's zeros
  pending = []
  for capacity, rows, size in plan:
    tokens, segments, positions = (np.zeros((size, capacity), np.int32) for _ in range(3))
    owner = np.full((size, capacity), len(docs))
    for r, items in enumerate(rows):
      offset = 0
      for segment, i in enumerate(items, 1):
        d, w, skip = flat[i]
        span = slice(offset, offset + len(w))
        tokens[r, span], segments[r, span], positions[r, span], owner[r, span] = w, segment, np.arange(len(w)), d
        owner[r, offset:offset + skip] = len(docs)  # predictions made before: to the padding slot
        offset += len(w)
    pending.append((owner, [fn(params[m], tokens, segments, positions) for m, fn in enumerate(nll_fns)]))
  for owner, outputs in pending:
    for m, nll in enumerate(outputs):
      sums[:, m] += np.bincount(owner[:, :-1].ravel(), weights=np.asarray(nll, np.float64).ravel(),
                                minlength=len(docs) + 1)
  predictions = np.bincount([d for d, w, skip in flat], weights=[len(w) - 1 - skip for _, w, skip in flat],
                            minlength=len(docs))
  return sums[:-1] / predictions[:, None], predictions.astype(np.int64)


# ------------------------------------------------------------------------------ batches of texts

@dataclasses.dataclass(frozen=True)
class Scorer:
  """A meta-model pair made ready to score: parameters on the mesh, the compiled NLL
  functions, the shared tokenizer and the batching options. Built once per run (or per
  datatrove task) by `make_scorer`, used by `score_batch`."""

  nll_fns: tuple
  params: tuple
  encoder: Any
  eos_id: int | None
  options: ScoreOptions
  row_multiple: int
  tokens_per_batch: int
  pack_len: int


def _in_dtype(meta: MetaModel, dtype: str) -> tuple[gpt.GPT, Any]:
  """The model computing in `dtype`, with its parameters stored in it (float32: unchanged)."""
  if dtype == "float32":
    return meta.model, meta.params
  dt = gpt.DTYPES[dtype]
  model = gpt.GPT(dataclasses.replace(meta.model.cfg, dtype=dt, param_dtype=dt))
  return model, jax.tree.map(lambda x: jnp.asarray(x, dt), meta.params)


def make_scorer(small: MetaModel, large: MetaModel, *, options: ScoreOptions = ScoreOptions(),
                tokens_per_batch: int = TOKENS_PER_BATCH, pack_len: int = PACK_LEN, mesh=None) -> Scorer:
  """Check the pair (same tokenizer) and the options (a ConfigError naming the key before
  anything compiles; see ScoreOptions.checked), place both models' parameters on `mesh`
  (default: all devices on one "data" axis) in the options' dtype and build their NLL functions."""
  check_pair(small, large)
  options = options.checked(min(small.context, large.context))
  eos_id = small.tokenizer.eos_token_id
  if options.boundaries == "eos" and eos_id is None:
    raise ConfigError(f"boundaries='eos': the tokenizer of {small.path} has no eos token; use boundaries='none'")
  mesh = mesh if mesh is not None else sharding.make_mesh([("data", -1)])
  replicated = NamedSharding(mesh, P())
  (m_small, p_small), (m_large, p_large) = _in_dtype(small, options.dtype), _in_dtype(large, options.dtype)
  return Scorer(nll_fns=(make_nll_fn(m_small, mesh), make_nll_fn(m_large, mesh)),
                params=(jax.device_put(p_small, replicated), jax.device_put(p_large, replicated)),
                encoder=small.tokenizer.backend_tokenizer, eos_id=eos_id, options=options,
                row_multiple=mesh.shape["data"], tokens_per_batch=tokens_per_batch, pack_len=pack_len)


@dataclasses.dataclass(frozen=True)
class TextScores:
  """Scores of a list of texts, each array aligned with the input. A text that cannot be
  scored has NaN scores, n_tokens 0 (or its token count when too short) and a reason in
  `reasons` ("not_string", "empty_text", "too_short"); scored texts have reason "".
  `n_predictions` weighs a text's mean NLL back into a token sum (it counts the EOS
  boundaries' predictions and only what the long-document rule scores)."""

  n_tokens: np.ndarray
  nll_small: np.ndarray
  nll_large: np.ndarray
  reasons: tuple[str, ...]
  n_predictions: np.ndarray  # the next-token predictions each mean is over (0 when unscored)

  @property
  def ppl_small(self) -> np.ndarray:
    """exp(nll_small): the small model's perplexity."""
    return np.exp(self.nll_small)

  @property
  def ppl_large(self) -> np.ndarray:
    """exp(nll_large): the large model's perplexity."""
    return np.exp(self.nll_large)

  @property
  def quality_factor(self) -> np.ndarray:
    """d = PPL_small / PPL_large = exp(nll_small - nll_large)."""
    return np.exp(self.nll_small - self.nll_large)

  @property
  def scored(self) -> np.ndarray:
    """Boolean mask of the texts that have scores."""
    return np.array([not r for r in self.reasons], bool)

  def row(self, i: int) -> dict:
    """The scores-file fields of text i (n_tokens, nll/ppl of both models, quality_factor)."""
    l_small, l_large = float(self.nll_small[i]), float(self.nll_large[i])
    return {"n_tokens": int(self.n_tokens[i]), "nll_small": l_small, "ppl_small": math.exp(l_small),
            "nll_large": l_large, "ppl_large": math.exp(l_large), "quality_factor": math.exp(l_small - l_large)}


@dataclasses.dataclass(frozen=True)
class Prepared:
  """A batch of texts tokenized for scoring (host work, see prepare_batch): each scorable
  text's token ids (with the boundaries), every text's token count and reason."""
  ids: dict
  n_tokens: np.ndarray
  reasons: tuple[str, ...]


def prepare_batch(scorer: Scorer, texts: Sequence[Any]) -> Prepared:
  """Tokenize a batch of texts on the host (thread-safe: the scorer runs it for the next batch
  while the device scores this one)."""
  reasons = ["not_string" if not isinstance(t, str) else "empty_text" if not t.strip() else "" for t in texts]
  todo = [i for i, r in enumerate(reasons) if not r]
  encoded = scorer.encoder.encode_batch([texts[i] for i in todo]) if todo else []
  n_tokens = np.zeros(len(texts), np.int64)
  ids = {}
  edge = [scorer.eos_id] if scorer.options.boundaries == "eos" else []
  for i, e in zip(todo, encoded):
    n_tokens[i] = len(e.ids)
    if len(e.ids) < 2:  # the same texts are rejected with or without boundaries
      reasons[i] = "too_short"
    else:
      ids[i] = np.asarray(edge + e.ids + edge, np.int32)
  return Prepared(ids, n_tokens, tuple(reasons))


def score_prepared(scorer: Scorer, batch: Prepared) -> TextScores:
  """Score a tokenized batch, packed (see score_token_lists)."""
  o = scorer.options
  nll = np.full((len(batch.reasons), 2), np.nan)
  n_predictions = np.zeros(len(batch.reasons), np.int64)
  if batch.ids:
    nll[list(batch.ids)], n_predictions[list(batch.ids)] = score_token_lists(list(batch.ids.values()), scorer.nll_fns, context=o.context,
                                             tokens_per_batch=scorer.tokens_per_batch,
                                             row_multiple=scorer.row_multiple, params=scorer.params,
                                             pack_len=scorer.pack_len, long_docs=o.long_docs,
                                             min_context=o.min_context)
  return TextScores(batch.n_tokens, nll[:, 0], nll[:, 1], batch.reasons, n_predictions)


def score_batch(scorer: Scorer, texts: Sequence[Any]) -> TextScores:
  """Tokenize and score one batch of texts (prepare_batch, then score_prepared)."""
  return score_prepared(scorer, prepare_batch(scorer, texts))


def score_batches(scorer: Scorer, batches: Iterator[Sequence[Any]]) -> Iterator[TextScores]:
  """score_batch over a stream of batches, in order, with batch i + 1 tokenized on a host
  thread while batch i is scored."""
  with concurrent.futures.ThreadPoolExecutor(1) as host:
    pending = None
    for texts in batches:
      nxt = host.submit(prepare_batch, scorer, texts)
      if pending is not None:
        yield score_prepared(scorer, pending.result())
      pending = nxt
    if pending is not None:
      yield score_prepared(scorer, pending.result())


def score_texts(texts: Sequence[str], small: MetaModel | str, large: MetaModel | str, *,
                options: ScoreOptions = ScoreOptions(), tokens_per_batch: int = TOKENS_PER_BATCH,
                pack_len: int = PACK_LEN, mesh=None, batch_docs: int = 4096) -> TextScores:
  """Score a list of strings in memory (no files): `small` and `large` are MetaModels or
  paths for `load_meta_model`; `options` says how (ScoreOptions). Returns arrays aligned
  with `texts` (see TextScores); texts that cannot be scored are NaN with their reason,
  never dropped."""
  small = load_meta_model(small) if isinstance(small, str) else small
  large = load_meta_model(large) if isinstance(large, str) else large
  scorer = make_scorer(small, large, options=options, tokens_per_batch=tokens_per_batch, pack_len=pack_len,
                       mesh=mesh)
  texts = list(texts)
  parts = list(score_batches(scorer, (texts[i:i + batch_docs] for i in range(0, len(texts), batch_docs))))
  if not parts:
    return TextScores(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), (), np.zeros(0, np.int64))
  cat = lambda f: np.concatenate([getattr(p, f) for p in parts])  # noqa: E731
  return TextScores(cat("n_tokens"), cat("nll_small"), cat("nll_large"), sum((p.reasons for p in parts), ()),
                    cat("n_predictions"))


# ------------------------------------------------------------------------------ input

DATA_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet", ".txt")
TFDS_PREFIX = "tfds:"


def _open_text(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


@dataclasses.dataclass(frozen=True)
class InputFile:
  """One unit of input: a data file (`name` is its path relative to the folder it was
  found in, which prefixes fallback ids) or a tfds dataset `tfds:NAME[:split]`."""
  path: str
  name: str


def expand_inputs(specs: Sequence[str]) -> list[InputFile]:
  """Input specs -> the sorted list of input units. A directory stands for every
  .jsonl, .jsonl.gz, .parquet and .txt file under it (recursively, sorted by relative
  path); a .txt file is one document whose id is that relative path."""
  if isinstance(specs, str):
    specs = [specs]
  out = []
  for spec in specs:
    if spec.startswith(TFDS_PREFIX):
      out.append(InputFile(spec, spec))
    elif os.path.isdir(spec):
      found = sorted(os.path.relpath(os.path.join(root, f), spec) for root, _, files in os.walk(spec)
                     for f in files if f.endswith(DATA_SUFFIXES))
      if not found:
        raise ValueError(f"{spec}: a directory with no {', '.join(DATA_SUFFIXES)} files")
      out += [InputFile(os.path.join(spec, rel), rel) for rel in found]
    elif os.path.isfile(spec):
      if not spec.endswith(DATA_SUFFIXES):
        raise ValueError(f"{spec}: expected one of {', '.join(DATA_SUFFIXES)}, a directory, or tfds:NAME[:split]")
      out.append(InputFile(spec, os.path.basename(spec)))
    else:
      raise FileNotFoundError(f"{spec}: no such file or directory")
  return out


def parse_tfds_spec(spec: str) -> tuple[str, str]:
  """`tfds:NAME[:split]` -> (NAME, split); NAME may carry a config and version
  (`local_text/hXXXX/1.0.0`); the split defaults to train."""
  name, _, split = spec.removeprefix(TFDS_PREFIX).partition(":")
  if not name:
    raise ValueError(f"{spec!r}: expected tfds:NAME[:split]")
  return name, split or "train"


def _decode_record(value):
  """tfds data sources return text as bytes, nested features as dicts, numbers as numpy."""
  if isinstance(value, dict):
    return {k: _decode_record(v) for k, v in value.items()}
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return _INVALID_UTF8
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray) and value.ndim == 0:
    return value.item()
  return value


def read_tfds(spec: str, text_field: str = "text", id_field: str = "id", data_dir: str | None = None,
              ) -> Iterator[tuple[str, Any]]:
  """(id, text) pairs from a prepared tfds dataset, read with `tfds.data_source` (array_record,
  no TensorFlow). The id is the record's `id_field` when it has one, else `NAME/split:i`.
  jaxlab's LocalText builder (jaxlab.data.text) is registered on import, so its datasets
  open by name (`local_text/<config>`); use id_field=index for its record index."""
  import tensorflow_datasets as tfds

  name, split = parse_tfds_spec(spec)
  source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  for i in range(len(source)):
    record = _decode_record(source[i])
    doc_id = record.get(id_field)
    doc_id = str(doc_id) if doc_id is not None and doc_id is not _INVALID_UTF8 else f"{name}/{split}:{i}"
    yield doc_id, _text_or_reject(record, text_field, f"{name}/{split}", i + 1)


def jsonl_records(f, name: str, text_field: str = "text", id_field: str = "id"
                  ) -> Iterator[tuple[str, Any, dict | None]]:
  """(id, text or Reject, record or None) for each line of an open binary JSONL file;
  `name` prefixes fallback ids (`name:line`). Readers over other file systems share it."""
  for line_no, raw in enumerate(f, 1):
    fallback = f"{name}:{line_no}"
    try:
      record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
      yield fallback, Reject(name, line_no, "invalid_utf8", excerpt(raw)), None
      continue
    except json.JSONDecodeError:
      yield fallback, Reject(name, line_no, "bad_json", excerpt(raw)), None
      continue
    if not isinstance(record, dict):
      yield fallback, Reject(name, line_no, "not_object", excerpt(raw)), None
      continue
    doc_id = record.get(id_field)
    yield (str(doc_id) if doc_id is not None else fallback), _text_or_reject(record, text_field, name, line_no), record


def parquet_records(f, name: str, text_field: str = "text", id_field: str = "id"
                    ) -> Iterator[tuple[str, Any, dict]]:
  """(id, text or Reject, record) for each row of an open Parquet file (fallback id `name:row`, 0-based)."""
  import pyarrow.parquet as pq
  row = 0
  for batch in pq.ParquetFile(f).iter_batches(columns=None):
    for record in batch.to_pylist():
      doc_id = record.get(id_field)
      yield ((str(doc_id) if doc_id is not None else f"{name}:{row}"),
             _text_or_reject(record, text_field, name, row + 1), record)
      row += 1


def _read_jsonl(path: str, name: str, text_field: str, id_field: str) -> Iterator[tuple[str, Any]]:
  with _open_text(path) as f:
    yield from ((i, t) for i, t, _ in jsonl_records(f, name, text_field, id_field))


def _read_parquet(path: str, name: str, text_field: str, id_field: str) -> Iterator[tuple[str, Any]]:
  with open(path, "rb") as f:
    yield from ((i, t) for i, t, _ in parquet_records(f, name, text_field, id_field))


def read_input(unit: InputFile, text_field: str = "text", id_field: str = "id",
               data_dir: str | None = None) -> Iterator[tuple[str, Any]]:
  """(id, text) pairs, or (id, Reject) for malformed records, of one input unit."""

  if unit.path.startswith(TFDS_PREFIX):
    yield from read_tfds(unit.path, text_field, id_field, data_dir)
  elif unit.path.endswith(".txt"):
    with open(unit.path, "rb") as f:
      raw = f.read()
    try:
      yield unit.name, raw.decode("utf-8")
    except UnicodeDecodeError:
      yield unit.name, Reject(unit.name, 1, "invalid_utf8")
  elif unit.path.endswith(".parquet"):
    yield from _read_parquet(unit.path, unit.name, text_field, id_field)
  elif unit.path.endswith((".jsonl", ".jsonl.gz")):
    yield from _read_jsonl(unit.path, unit.name, text_field, id_field)
  else:
    raise ValueError(f"{unit.path}: expected one of {', '.join(DATA_SUFFIXES)} or tfds:NAME[:split]")


def read_documents(path, text_field: str = "text", id_field: str = "id",
                   data_dir: str | None = None) -> Iterator[tuple[str, Any]]:
  """(id, text) pairs, or (id, Reject) for malformed records, from a .jsonl(.gz), .parquet
  or .txt file, a directory of them (a .txt file is one document, id = relative path),
  a tfds dataset `tfds:NAME[:split]` (with `data_dir`), or a list of these."""
  for unit in expand_inputs(path):
    yield from read_input(unit, text_field, id_field, data_dir)


# Stands in for a tfds field whose bytes are not UTF-8, until the record's text is chosen.
_INVALID_UTF8 = object()


def _text_or_reject(record: dict, text_field: str, file: str, line: int) -> str | Reject:
  try:
    text = field_at(record, text_field)
  except (KeyError, TypeError):
    return Reject(file, line, "missing_field")
  if text is _INVALID_UTF8:
    return Reject(file, line, "invalid_utf8")
  if not isinstance(text, str):
    return Reject(file, line, "not_string")
  return text


# ------------------------------------------------------------------------------ resumable output

def _completed_ids(path: str) -> set[str]:
  """Ids already written; a torn last line (killed mid-write) is cut off."""
  if not os.path.exists(path):
    return set()
  with open(path, "rb") as f:
    data = f.read()
  keep = data[:data.rfind(b"\n") + 1]
  if len(keep) != len(data):
    with open(path, "wb") as f:
      f.write(keep)
  return {json.loads(line)["id"] for line in keep.splitlines() if line.strip()}


def score_file(input_path, output_path: str, small: MetaModel, large: MetaModel, *, text_field: str = "text",
               id_field: str = "id", data_dir: str | None = None, **kwargs) -> dict:
  """Score every document of `input_path` (a file, a directory, `tfds:NAME[:split]`, or a
  list of these; see read_documents) into `output_path` (resumable). Returns counts."""
  return score_documents(read_documents(input_path, text_field, id_field, data_dir), output_path, small, large,
                         **kwargs)


def shard_inputs(units: Sequence[InputFile], process_index: int, process_count: int) -> list[InputFile]:
  """This process's input units: every process_count-th, starting at process_index."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} out of range for process_count {process_count}")
  return list(units[process_index::process_count])


def part_path(output_dir: str, process_index: int, process_count: int) -> str:
  """The output file of one process: `output_dir/part-IIIII-of-NNNNN.jsonl`."""
  return os.path.join(output_dir, f"part-{process_index:05d}-of-{process_count:05d}.jsonl")


def score_sharded(inputs, output_dir: str, small: MetaModel, large: MetaModel, *, text_field: str = "text",
                  id_field: str = "id", data_dir: str | None = None, process_index: int | None = None,
                  process_count: int | None = None, **kwargs) -> dict:
  """Per-host scoring: the input units (files; a directory counts as its files) are split
  over the JAX processes, each reading only its own (units[process_index::process_count]) and
  writing `part-IIIII-of-NNNNN.jsonl` (+ .rejects.jsonl) under `output_dir`. Each process
  scores with its local devices. The parts together hold one row (or reject) per document;
  `read_parts` joins them and refuses an id that appears in two parts."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  mine = shard_inputs(expand_inputs(inputs), process_index, process_count)
  os.makedirs(output_dir, exist_ok=True)
  docs = (doc for unit in mine for doc in read_input(unit, text_field, id_field, data_dir))
  if kwargs.get("mesh") is None and process_count > 1:
    kwargs["mesh"] = sharding.make_mesh([("data", -1)], jax.local_devices())
  counts = score_documents(docs, part_path(output_dir, process_index, process_count), small, large, **kwargs)
  return {**counts, "process_index": process_index, "process_count": process_count,
          "inputs": [u.name for u in mine]}


def read_parts(output_dir: str) -> tuple[list[dict], list[dict]]:
  """(rows, rejects) of every part under output_dir, in part order. Raises when the parts
  are not from one run (mixed process counts, a part missing) or an id occurs twice."""
  names = sorted(f for f in os.listdir(output_dir) if f.startswith("part-") and f.endswith(".jsonl")
                 and not f.endswith(".rejects.jsonl"))
  counts = {n.split("-of-")[1].removesuffix(".jsonl") for n in names}
  if len(counts) != 1 or len(names) != int(counts.pop()):
    raise ValueError(f"{output_dir}: incomplete or mixed parts {names}")
  rows, rejects = [], []
  for name in names:
    path = os.path.join(output_dir, name)
    rows += [json.loads(l) for l in open(path) if l.strip()]
    if os.path.exists(path + ".rejects.jsonl"):
      rejects += [json.loads(l) for l in open(path + ".rejects.jsonl") if l.strip()]
  seen: dict[str, int] = {}
  for r in rows + rejects:
    seen[r["id"]] = seen.get(r["id"], 0) + 1
  repeated = sorted(i for i, c in seen.items() if c > 1)
  if repeated:
    raise ValueError(f"{output_dir}: {len(repeated)} id(s) in more than one part, e.g. {repeated[:5]}")
  return rows, rejects


def score_documents(documents, output_path: str, small: MetaModel, large: MetaModel, *,
                    tokens_per_batch: int = TOKENS_PER_BATCH, pack_len: int = PACK_LEN, chunk_docs: int = 256,
                    mesh=None, stop_after_chunks: int = 0, progress: bool = True, overwrite: bool = False,
                    options: ScoreOptions = ScoreOptions()) -> dict:
  """Score (id, text-or-Reject) pairs into `output_path`. An existing output is resumed:
  ids already in it (or in its rejects file) are skipped and keep their old scores, counted
  in `skipped_done`; overwrite=True deletes both files first and rescores everything."""
  scorer = make_scorer(small, large, options=options, tokens_per_batch=tokens_per_batch, pack_len=pack_len,
                       mesh=mesh)
  rejects_path = output_path + ".rejects.jsonl"
  if overwrite:
    for path in (output_path, rejects_path):
      if os.path.exists(path):
        os.remove(path)
  done = _completed_ids(output_path) | _completed_ids(rejects_path)
  resumed = len(done)
  counts = {"scored": 0, "rejected": 0, "skipped_done": 0, "tokens": 0}
  seen: set[str] = set()
  bar = tqdm.tqdm(disable=not progress, unit="doc", desc="score")
  start = time.perf_counter()

  finished = True
  with open(output_path, "a") as out, open(rejects_path, "a") as rej:
    def reject(doc_id, reason):
      rej.write(json.dumps({"id": doc_id, "reason": reason}) + "\n")
      counts["rejected"] += 1

    def chunks():
      """Chunks of (id, text) to score, in input order; what cannot be scored is rejected as read."""
      nonlocal finished
      chunk, n = [], 0
      for doc_id, text in documents:
        if doc_id in seen:  # a repeated id: rejected once, also across a resume
          if doc_id + "#dup" not in done:
            reject(doc_id + "#dup", "duplicate_id")
            done.add(doc_id + "#dup")
          continue
        seen.add(doc_id)
        if doc_id in done:
          counts["skipped_done"] += 1
          continue
        if isinstance(text, Reject):
          reject(doc_id, text.reason)
        elif not text.strip():
          reject(doc_id, "empty_text")
        else:
          chunk.append((doc_id, text))
        if len(chunk) == chunk_docs:
          yield chunk
          chunk, n = [], n + 1
          if stop_after_chunks and n >= stop_after_chunks:
            finished = False
            return
      if chunk:
        yield chunk

    in_flight = []  # score_batches tokenizes the next chunk while it scores this one

    def texts():
      for chunk in chunks():
        in_flight.append(chunk)
        yield [t for _, t in chunk]

    for scores in score_batches(scorer, texts()):
      chunk = in_flight.pop(0)
      for i, (doc_id, _) in enumerate(chunk):  # input order
        if scores.reasons[i]:
          reject(doc_id, scores.reasons[i])
          continue
        out.write(json.dumps({"id": doc_id, **scores.row(i)}) + "\n")
        counts["scored"] += 1
        counts["tokens"] += int(scores.n_tokens[i])
      out.flush()
      rej.flush()
      bar.update(len(chunk))
      elapsed = max(time.perf_counter() - start, 1e-9)
      bar.set_postfix({"docs/s": f"{counts['scored'] / elapsed:.1f}", "tokens/s": f"{counts['tokens'] / elapsed:,.0f}"},
                      refresh=False)
  bar.close()
  return {**counts, "resumed_from": resumed, "finished": finished}
