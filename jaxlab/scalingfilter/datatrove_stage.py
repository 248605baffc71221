"""ScalingFilter as datatrove pipeline steps (the `datatrove` extra), for corpora that need
many tasks: datatrove shards the input files over tasks, runs them on its executors (local
processes, Slurm arrays, Ray), resumes a rerun by skipping completed tasks (an incomplete
task reruns from its start and its writers overwrite their files, so no document is lost
or written twice) and merges per-task stats.

  DocumentReader     jaxlab's reader as a datatrove reader: malformed records become
                     documents marked with their reason, so they are counted, not skipped
  ScoreDocuments     a filter that scores batches of documents with the meta-model pair
                     (jaxlab's packed scorer, score.score_batch) into their metadata and
                     drops the unscorable ones with their reason (stats: dropped_<reason>)
  QualityHistogram   pass 1: each task's histogram of log d, one small JSON per task
  QualityFilter      pass 2: keeps the top k% (or d >= min_quality) against the threshold
                     merged from all tasks' histograms; its exclusion writer gets the rest

Selection never sorts the corpus: the histograms hold one count per bin of log d (width
`bin_width`), so top-k keeps every document whose bin is at or above the boundary bin:
at least round(n k / 100) documents, more only by those sharing the boundary bin with the
last one needed. examples/scalingfilter_datatrove.py wires the steps into pipelines.
"""
from __future__ import annotations

import collections
import json
import math
from typing import Any, Iterator

from datatrove.data import Document, DocumentsPipeline
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers.disk_base import DiskWriter

from jaxlab.data.text import Reject
from jaxlab.scalingfilter import score as score_lib

REJECT_KEY = "jaxlab_reject"  # metadata key of a record the reader could not use
SCORE_FIELDS = ("nll_small", "nll_large", "ppl_small", "ppl_large", "quality_factor", "n_tokens")


class DocumentReader(BaseDiskReader):
  """Reads .jsonl, .jsonl.gz and .parquet files (over fsspec, sharded by file like every
  datatrove disk reader) with jaxlab's record parsing: a record's other fields go to the
  metadata (a `metadata` object is merged in, as datatrove's readers do); ids fall back to
  `file:line` (`file:row` for Parquet). A malformed record (bad JSON or UTF-8, not an
  object, missing or non-string text) is yielded as an empty document whose metadata
  `jaxlab_reject` holds the reason, for ScoreDocuments to count and drop; datatrove's own
  readers would log and skip it."""

  name = "jaxlab documents"

  def read_file(self, filepath: str) -> DocumentsPipeline:
    """Documents of one file, in file order."""
    if filepath.endswith((".jsonl", ".jsonl.gz")):
      records = score_lib.jsonl_records
    elif filepath.endswith(".parquet"):
      records = score_lib.parquet_records
    else:
      raise ValueError(f"{filepath}: DocumentReader reads .jsonl, .jsonl.gz and .parquet files "
                       "(pass glob_pattern to select them)")
    with self.data_folder.open(filepath, "rb", compression="infer") as f:
      for doc_id, text, record in records(f, filepath, self.text_key, self.id_key):
        yield self._document(doc_id, text, record, filepath)

  def _document(self, doc_id: str, text: Any, record: dict | None, filepath: str) -> Document:
    if isinstance(text, Reject):
      metadata = {REJECT_KEY: text.reason, "line": text.line}
      text = text.excerpt
    else:
      rest = {k: v for k, v in record.items() if k not in (self.text_key, self.id_key)}
      inner = rest.pop("metadata", {})
      metadata = (inner if isinstance(inner, dict) else {"metadata": inner}) | rest
    if self.add_file_path:
      metadata.setdefault("file_path", self.data_folder.resolve_paths(filepath))
    if self.default_metadata:
      metadata = self.default_metadata | metadata
    return Document(text=text, id=doc_id, metadata=metadata)


class ScoreDocuments(BaseFilter):
  """Scores documents with a meta-model pair (GPT-2 folders or jaxlab LM runs, as paths:
  the step is pickled to datatrove's workers, which load the models on first use) and
  writes nll_small, nll_large, ppl_small, ppl_large, quality_factor and n_tokens into each
  document's metadata. Documents that cannot be scored are dropped with their reason
  (reader rejects, empty_text, not_string, too_short, duplicate_id within the task) to the
  exclusion writer and counted in the stats as dropped_<reason>; `tokens` counts the
  scored tokens. `batch_size` documents are packed and scored together; `options` (a
  score.ScoreOptions) say how a document is scored."""

  name = "ScalingFilter score"

  def __init__(self, small: str, large: str, *, batch_size: int = 256,
               tokens_per_batch: int = score_lib.TOKENS_PER_BATCH, pack_len: int = score_lib.PACK_LEN,
               options: score_lib.ScoreOptions = score_lib.ScoreOptions(),
               exclusion_writer: DiskWriter | None = None):
    super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
    options.checked()  # fail where the pipeline is built, not in a worker
    self.small, self.large, self.options = small, large, options
    self.tokens_per_batch, self.pack_len = tokens_per_batch, pack_len
    self._scorer = None
    self._seen: set[str] = set()

  def scorer(self) -> score_lib.Scorer:
    """The pair made ready on this process's devices (loaded once per task)."""
    if self._scorer is None:
      small, large = score_lib.load_meta_model(self.small), score_lib.load_meta_model(self.large)
      self._scorer = score_lib.make_scorer(small, large, options=self.options,
                                           tokens_per_batch=self.tokens_per_batch, pack_len=self.pack_len)
    return self._scorer

  def filter(self, doc: Document) -> bool | tuple[bool, str]:
    """One document: a batch of one."""
    return self.filter_batch([doc])[0]

  def filter_batch(self, batch: list[Document]) -> list[bool | tuple[bool, str]]:
    """Scores the batch; True for scored documents, (False, reason) for the others."""
    reasons = []
    for doc in batch:  # the order of checks is the one-process scorer's (score_documents)
      if doc.id in self._seen:
        reasons.append("duplicate_id")
        continue
      self._seen.add(doc.id)
      reasons.append(doc.metadata.get(REJECT_KEY, ""))
    todo = [i for i, r in enumerate(reasons) if not r]
    scores = score_lib.score_batch(self.scorer(), [batch[i].text for i in todo])
    for j, i in enumerate(todo):
      if scores.reasons[j]:
        reasons[i] = scores.reasons[j]
        continue
      batch[i].metadata.update(scores.row(j))
      self.stat_update("tokens", value=int(scores.n_tokens[j]))
    return [(False, r) if r else True for r in reasons]


def log_quality(metadata: dict) -> float:
  """log d of a scored document, from its NLLs (exact, unlike log(quality_factor))."""
  return float(metadata["nll_small"]) - float(metadata["nll_large"])


def quality_bin(log_d: float, bin_width: float) -> int:
  """The histogram bin of log d: floor(log d / bin_width)."""
  return math.floor(log_d / bin_width)


class QualityHistogram(PipelineStep):
  """Pass 1 of selection: passes scored documents through unchanged and, when its task's
  input is exhausted, writes `{rank:05d}.json` to `output_folder`: the task's number of
  documents and their count per bin of log d (bin = floor(log d / bin_width)). A rerun
  of the task overwrites the file."""

  name = "ScalingFilter histogram"
  type = "📊 - STATS"

  def __init__(self, output_folder, bin_width: float = 1e-4):
    super().__init__()
    if not bin_width > 0:
      raise ValueError(f"bin_width must be positive, got {bin_width}")
    self.output_folder = get_datafolder(output_folder)
    self.bin_width = bin_width

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
    """Yields every document; writes the histogram at the end of the task."""
    counts: collections.Counter = collections.Counter()
    for doc in data or ():
      counts[quality_bin(log_quality(doc.metadata), self.bin_width)] += 1
      yield doc
    with self.output_folder.open(f"{rank:05d}.json", "wt") as f:
      json.dump({"rank": rank, "world_size": world_size, "bin_width": self.bin_width,
                 "documents": sum(counts.values()), "counts": {str(b): c for b, c in sorted(counts.items())}}, f)


def read_histograms(folder) -> dict:
  """Merges the per-task histograms of one run: {"bin_width", "documents", "counts" (bin ->
  count)}. Raises when a task's histogram is missing or the files come from runs with
  different task counts or bin widths."""
  folder = get_datafolder(folder)
  parts = []
  for name in sorted(folder.list_files(glob_pattern="[0-9][0-9][0-9][0-9][0-9].json")):
    with folder.open(name, "rt") as f:
      parts.append(json.load(f))
  if not parts:
    raise FileNotFoundError(f"{folder.path}: no per-task histograms (NNNNN.json)")
  sizes, widths = {p["world_size"] for p in parts}, {p["bin_width"] for p in parts}
  ranks = sorted(p["rank"] for p in parts)
  if len(sizes) != 1 or len(widths) != 1 or ranks != list(range(sizes.copy().pop())):
    raise ValueError(f"{folder.path}: histograms of tasks {ranks} with world sizes {sorted(sizes)} and bin widths "
                     f"{sorted(widths)}: expected one run's tasks 0..N-1")
  counts: collections.Counter = collections.Counter()
  for p in parts:
    counts.update({int(b): c for b, c in p["counts"].items()})
  return {"bin_width": widths.pop(), "documents": sum(p["documents"] for p in parts), "counts": dict(counts)}


def top_k_bin(counts: dict[int, int], k_percent: float) -> float:
  """The lowest bin to keep so that at least round(n k / 100) documents are kept: walking
  down from the highest bin until the count is reached (-inf keeps all, +inf none)."""
  if not 0.0 <= k_percent <= 100.0:
    raise ValueError(f"k_percent must be in [0, 100], got {k_percent}")
  wanted = int(round(sum(counts.values()) * k_percent / 100.0))
  if wanted == 0:
    return math.inf
  kept = 0
  for b in sorted(counts, reverse=True):
    kept += counts[b]
    if kept >= wanted:
      return b
  return -math.inf


def _check_choice(k: float | None, min_quality: float | None) -> None:
  if (k is None) == (min_quality is None):
    raise ValueError(f"pass exactly one of k (a percentage) or min_quality (a quality factor); got k={k}, "
                     f"min_quality={min_quality}")
  if min_quality is not None and not min_quality > 0:
    raise ValueError(f"min_quality is a quality factor d > 0, got {min_quality}")


class QualityFilter(BaseFilter):
  """Pass 2 of selection: keeps the documents in the top `k` percent of the whole corpus by
  quality factor, from the merged histograms of QualityHistogram in `histograms` (see
  top_k_bin), or those with d >= `min_quality`; the others are dropped with reason
  "low_quality" to the exclusion writer. The merged threshold is computed once per task
  and written by task 0 to `histograms/threshold.json`."""

  name = "ScalingFilter select"

  def __init__(self, histograms, *, k: float | None = None, min_quality: float | None = None,
               exclusion_writer: DiskWriter | None = None):
    super().__init__(exclusion_writer=exclusion_writer)
    _check_choice(k, min_quality)
    self.histograms = get_datafolder(histograms)
    self.k, self.min_quality = k, min_quality
    self._lowest_bin = None

  def threshold(self) -> dict:
    """The merged selection rule: documents, bin_width, lowest kept bin and how many it keeps."""
    merged = read_histograms(self.histograms)
    width, counts = merged["bin_width"], merged["counts"]
    if self.k is not None:
      lowest = top_k_bin(counts, self.k)
      kept = sum(c for b, c in counts.items() if b >= lowest)
    else:
      lowest, kept = None, None  # min_quality compares each document's exact d
    return {"documents": merged["documents"], "bin_width": width, "k": self.k, "min_quality": self.min_quality,
            "lowest_bin": lowest if lowest is None or math.isfinite(lowest) else str(lowest), "kept": kept}

  def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
    """Merges the histograms, then filters (BaseFilter.run)."""
    rule = self.threshold()
    self._width = rule["bin_width"]
    lowest = rule["lowest_bin"]
    self._lowest_bin = float(lowest) if isinstance(lowest, str) else lowest
    if rank == 0:
      with self.histograms.open("threshold.json", "wt") as f:
        json.dump(rule, f)
    yield from super().run(data, rank, world_size)

  def filter(self, doc: Document) -> bool | tuple[bool, str]:
    """Keep (True) or (False, "low_quality")."""
    log_d = log_quality(doc.metadata)
    if self.min_quality is not None:
      keep = log_d >= math.log(self.min_quality)
    else:
      keep = quality_bin(log_d, self._width) >= self._lowest_bin
    return True if keep else (False, "low_quality")
