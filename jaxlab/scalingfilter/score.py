"""Corpus scoring with a meta-model pair: per-document mean next-token NLL under a small
and a large GPT, and the quality factor d(x) = PPL_small(x) / PPL_large(x)
= exp(L_small(x) - L_large(x)).

Unlike the reference (every document padded to 1024 tokens), documents are batched by
length into a bounded set of padded shapes and sharded over all devices.

Window rule: a document of n tokens has n - 1 next-token predictions. When n exceeds the
model's context C, it is cut into windows of at most C tokens, each starting at the last
token of the previous one (windows overlap by exactly one token), so every prediction is
made exactly once, with context restarting at each window. L(x) is the sum of the
predictions' NLL over all windows divided by n - 1.

Output: one JSONL row per input document, in input order; rejected documents (bad JSON,
missing or non-string text, empty text, fewer than 2 tokens, invalid UTF-8, duplicate id)
go to `<output>.rejects.jsonl` with the reason. An interrupted run resumes: documents whose
id is already in the output or rejects file are skipped, a torn last line is dropped.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import math
import os
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxlab import checkpoint, config as config_lib, sharding
from jaxlab.data import buckets
from jaxlab.data import tokenizer as tokenizer_lib
from jaxlab.models import gpt, hf


@dataclasses.dataclass(frozen=True)
class MetaModel:
  path: str
  model: gpt.GPT
  params: Any
  tokenizer: Any

  @property
  def context(self) -> int:
    return self.model.cfg.max_len


def load_meta_model(path: str) -> MetaModel:
  """A GPT-2-format folder (config.json + model.safetensors + tokenizer files) or a
  jaxlab LM run directory (its latest checkpoint and tokenizer)."""
  if os.path.exists(os.path.join(path, "model.safetensors")):
    cfg, params = hf.load_gpt2(path)
    tok = tokenizer_lib.load_tokenizer(path)
  elif os.path.isdir(os.path.join(path, "checkpoints")):
    from jaxlab.trainers import lm
    run_cfg = config_lib.read(path)
    tok = tokenizer_lib.load_tokenizer(run_cfg.tokenizer.path or os.path.join(path, "tokenizer"))
    cfg = lm.model_config(run_cfg, len(tok))
    params = checkpoint.restore_params(path)[1]
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


@functools.lru_cache(maxsize=16)
def make_nll_fn(model: gpt.GPT, mesh):
  """jit: (params, tokens [B, T], lengths [B]) -> per-row NLL sum over positions 1..len-1.
  Cached per (model, mesh), so repeated or resumed scoring in one process never recompiles."""
  data = NamedSharding(mesh, P("data"))

  def nll_sums(params, tokens, lengths):
    logits = model.apply({"params": params}, tokens[:, :-1])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
    real = jnp.arange(1, tokens.shape[1])[None, :] < lengths[:, None]
    return jnp.sum(jnp.where(real, nll, 0.0), axis=1)

  return jax.jit(nll_sums, in_shardings=(NamedSharding(mesh, P()), data, data), out_shardings=data)


def score_token_lists(docs: list[np.ndarray], nll_fns, *, context: int,
                      tokens_per_batch: int, row_multiple: int, params) -> np.ndarray:
  """[n_docs, 2] mean NLL per document under (small, large)."""
  spans = [windows(ids, context) for ids in docs]
  flat = [(d, w) for d, ws in enumerate(spans) for w in ws]
  lengths = [len(w) for _, w in flat]
  step = 16 if context >= 32 else 1
  plan = buckets.plan_batches(lengths, max(tokens_per_batch // context, 1), buckets.length_buckets(context, step),
                              row_multiple)
  sums = np.zeros((len(docs), 2))
  for idx, padded_len, rows in plan:
    tokens = np.zeros((rows, padded_len), np.int32)
    lens = np.zeros((rows,), np.int32)
    for r, i in enumerate(idx):
      tokens[r, :lengths[i]] = flat[i][1]
      lens[r] = lengths[i]
    for m, fn in enumerate(nll_fns):
      out = np.asarray(fn(params[m], tokens, lens))[:len(idx)]
      np.add.at(sums[:, m], [flat[i][0] for i in idx], out)
  predictions = np.array([len(ids) - 1 for ids in docs], np.float64)
  return sums / predictions[:, None]


# ------------------------------------------------------------------------------ input

def _open_text(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def read_documents(path: str, text_field: str = "text", id_field: str = "id") -> Iterator[tuple[str, Any]]:
  """(id, text) pairs, or (id, RejectReason) for malformed records, from a .jsonl(.gz) or
  .parquet file or a directory of .txt files (id = relative path)."""
  from jaxlab.data.text import field_at

  if os.path.isdir(path):
    for root, _, files in sorted(os.walk(path)):
      for name in sorted(files):
        if name.endswith(".txt"):
          full = os.path.join(root, name)
          rel = os.path.relpath(full, path)
          with open(full, "rb") as f:
            raw = f.read()
          try:
            yield rel, raw.decode("utf-8")
          except UnicodeDecodeError:
            yield rel, Reject("invalid_utf8")
  elif path.endswith(".parquet"):
    import pyarrow.parquet as pq
    table = pq.ParquetFile(path)
    row = 0
    for batch in table.iter_batches(columns=None):
      for record in batch.to_pylist():
        doc_id = record.get(id_field)
        yield (str(doc_id) if doc_id is not None else f"{os.path.basename(path)}:{row}"), \
            _text_or_reject(record, text_field, field_at)
        row += 1
  elif path.endswith((".jsonl", ".jsonl.gz")):
    with _open_text(path) as f:
      for line_no, raw in enumerate(f, 1):
        fallback = f"{os.path.basename(path)}:{line_no}"
        try:
          record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
          yield fallback, Reject("invalid_utf8")
          continue
        except json.JSONDecodeError:
          yield fallback, Reject("bad_json")
          continue
        if not isinstance(record, dict):
          yield fallback, Reject("not_object")
          continue
        doc_id = record.get(id_field)
        yield (str(doc_id) if doc_id is not None else fallback), _text_or_reject(record, text_field, field_at)
  else:
    raise ValueError(f"{path}: expected .jsonl, .jsonl.gz, .parquet or a directory of .txt files")


@dataclasses.dataclass(frozen=True)
class Reject:
  reason: str


def _text_or_reject(record: dict, text_field: str, field_at):
  try:
    text = field_at(record, text_field)
  except (KeyError, TypeError):
    return Reject("missing_field")
  if not isinstance(text, str):
    return Reject("not_string")
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


def score_file(input_path: str, output_path: str, small: MetaModel, large: MetaModel, *, text_field: str = "text",
               id_field: str = "id", tokens_per_batch: int = 16384, chunk_docs: int = 256, mesh=None,
               stop_after_chunks: int = 0, progress: bool = True) -> dict:
  """Score every document of `input_path` into `output_path` (resumable). Returns counts."""
  check_pair(small, large)
  mesh = mesh if mesh is not None else sharding.make_mesh([("data", -1)])
  context = min(small.context, large.context)
  rejects_path = output_path + ".rejects.jsonl"
  done = _completed_ids(output_path) | _completed_ids(rejects_path)
  resumed = len(done)
  nll_fns = (make_nll_fn(small.model, mesh), make_nll_fn(large.model, mesh))
  replicated = NamedSharding(mesh, P())
  params = (jax.device_put(small.params, replicated), jax.device_put(large.params, replicated))
  encoder = small.tokenizer.backend_tokenizer
  counts = {"scored": 0, "rejected": 0, "skipped_done": 0, "tokens": 0}
  seen: set[str] = set()
  bar = tqdm.tqdm(disable=not progress, unit="doc", desc="score")
  start = time.perf_counter()

  with open(output_path, "a") as out, open(rejects_path, "a") as rej:
    def reject(doc_id, reason):
      rej.write(json.dumps({"id": doc_id, "reason": reason}) + "\n")
      counts["rejected"] += 1

    def flush(chunk):
      if not chunk:
        return
      ids = [c[0] for c in chunk]
      encoded = encoder.encode_batch([c[1] for c in chunk])
      docs = [np.asarray(e.ids, np.int32) for e in encoded]
      usable = [i for i, d in enumerate(docs) if len(d) >= 2]
      nll = score_token_lists([docs[i] for i in usable], nll_fns, context=context,
                              tokens_per_batch=tokens_per_batch, row_multiple=mesh.shape["data"],
                              params=params) if usable else np.zeros((0, 2))
      by_doc = dict(zip(usable, nll))
      for i, doc_id in enumerate(ids):  # input order
        if i not in by_doc:
          reject(doc_id, "too_short")
          continue
        l_small, l_large = (float(v) for v in by_doc[i])
        out.write(json.dumps({"id": doc_id, "n_tokens": int(len(docs[i])), "nll_small": l_small,
                              "ppl_small": math.exp(l_small), "nll_large": l_large, "ppl_large": math.exp(l_large),
                              "quality_factor": math.exp(l_small - l_large)}) + "\n")
        counts["scored"] += 1
        counts["tokens"] += int(len(docs[i]))
      out.flush()
      rej.flush()
      bar.update(len(chunk))
      elapsed = max(time.perf_counter() - start, 1e-9)
      bar.set_postfix({"docs/s": f"{counts['scored'] / elapsed:.1f}", "tokens/s": f"{counts['tokens'] / elapsed:,.0f}"},
                      refresh=False)

    chunk, chunks = [], 0
    for doc_id, text in read_documents(input_path, text_field, id_field):
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
        flush(chunk)
        chunk, chunks = [], chunks + 1
        if stop_after_chunks and chunks >= stop_after_chunks:
          bar.close()
          return {**counts, "resumed_from": resumed, "finished": False}
    flush(chunk)
  bar.close()
  return {**counts, "resumed_from": resumed, "finished": True}
