"""A tfds builder over local text files (.txt, .jsonl, .jsonl.gz).

`prepare_text` turns a list of files into an array_record dataset with a
`train` and a `validation` split, read back with tfds data sources (no
TensorFlow needed). Every candidate record (a .jsonl line, a .txt paragraph)
that cannot be used is counted by reason and written to a rejects file:
nothing is dropped silently.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
import dataclasses
import gzip
import hashlib
import json
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxlab.data.records import REJECT_REASONS, Reject, excerpt, field_at  # noqa: F401  (re-exported)

REJECTS_FILE = "rejects.jsonl"
REPORT_FILE = "report.json"
SPLITS = ("train", "validation")
_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz")


@dataclasses.dataclass(frozen=True)
class Record:
  """A good record: `index` counts candidates in its file, rejects included,
  so fixing a bad line never moves the records after it to another split."""

  source: str  # file name
  index: int
  line: int  # 1-based line where the record starts
  text: str


def _is_blank(raw: bytes) -> bool:
  try:
    return not raw.decode("utf-8").strip()
  except UnicodeDecodeError:
    return False  # an undecodable line has content: a reject, not a separator


def _paragraphs(lines: Iterable[bytes]) -> Iterator[list[tuple[int, bytes]]]:
  """Groups raw lines, numbered from 1, into blank-line separated runs."""
  paragraph: list[tuple[int, bytes]] = []
  for line_no, raw in enumerate(lines, 1):
    if not _is_blank(raw):
      paragraph.append((line_no, raw))
    elif paragraph:
      yield paragraph
      paragraph = []
  if paragraph:
    yield paragraph


def _paragraph_record(name: str, index: int, paragraph: list[tuple[int, bytes]]) -> Record | Reject:
  """A paragraph with an invalid UTF-8 line is rejected whole, at that line,
  rather than passed on with a line silently missing."""
  lines = []
  for line_no, raw in paragraph:
    try:
      lines.append(raw.decode("utf-8").rstrip("\r\n"))
    except UnicodeDecodeError:
      return Reject(name, line_no, "invalid_utf8", excerpt(raw))
  return Record(name, index, paragraph[0][0], "\n".join(lines))


def _read_txt(path: str) -> Iterator[Record | Reject]:
  """One record per paragraph."""
  name = os.path.basename(path)
  with open(path, "rb") as f:
    for index, paragraph in enumerate(_paragraphs(f)):
      yield _paragraph_record(name, index, paragraph)


class _Rejected(Exception):
  """Carries the reason a candidate record is rejected."""


def _parse_json_line(raw: bytes, text_field: str) -> str:
  """The text of one .jsonl line; raises _Rejected(reason)."""
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError:
    raise _Rejected("invalid_utf8") from None
  try:
    obj = json.loads(line)
  except (ValueError, RecursionError):  # malformed, too deep, too long a number
    raise _Rejected("bad_json") from None
  if not isinstance(obj, dict):
    raise _Rejected("not_object")
  try:
    text = field_at(obj, text_field)
  except KeyError:
    raise _Rejected("missing_field") from None
  if not isinstance(text, str):
    raise _Rejected("not_string")
  if not text.strip():
    raise _Rejected("empty_text")
  return text


def _read_jsonl(path: str, text_field: str) -> Iterator[Record | Reject]:
  """One record per line; `index` is the 0-based line number."""
  name = os.path.basename(path)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    for line_no, raw in enumerate(f, 1):
      try:
        yield Record(name, line_no - 1, line_no, _parse_json_line(raw, text_field))
      except _Rejected as e:
        yield Reject(name, line_no, str(e), excerpt(raw))


def read_records(path: str, text_field: str = "text") -> Iterator[Record | Reject]:
  """Every candidate record of one file, good or rejected, in file order."""
  if path.endswith(".txt"):
    return _read_txt(path)
  if path.endswith((".jsonl", ".jsonl.gz")):
    return _read_jsonl(path, text_field)
  raise ValueError(f"Unsupported file type {path!r}; expected one of {_SUFFIXES}")


def split_of(source: str, index: int, validation_fraction: float) -> str:
  """Deterministic split from a hash of (file name, record index)."""
  digest = hashlib.sha256(f"{source}\0{index}".encode()).digest()
  u = int.from_bytes(digest[:8], "big") / 2.0**64
  return "validation" if u < validation_fraction else "train"


def resolve_files(files: Sequence[str]) -> tuple[str, ...]:
  """Absolute paths; FileNotFoundError names the first missing file."""
  if isinstance(files, (str, os.PathLike)):
    files = [files]
  paths = tuple(os.path.abspath(os.fspath(f)) for f in files)
  for path in paths:
    if not os.path.isfile(path):
      raise FileNotFoundError(f"Text file not found: {path}")
    if not path.endswith(_SUFFIXES):
      raise ValueError(f"Unsupported file type {path!r}; expected one of {_SUFFIXES}")
  if not paths:
    raise ValueError("No input files given.")
  return paths


def config_name(files: Sequence[str], text_field: str, validation_fraction: float) -> str:
  """Stable name for this exact input: a changed, added or removed file (by
  path, size or mtime) or option gives a new name, so no stale reuse."""
  stats = [os.stat(p) for p in files]
  key = {
      "files": [[p, st.st_size, st.st_mtime_ns] for p, st in zip(files, stats)],
      "text_field": text_field,
      "validation_fraction": float(validation_fraction),
  }
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
  return f"h{digest[:20]}"


@dataclasses.dataclass
class LocalTextConfig(tfds.core.BuilderConfig):
  """Builder config: the input `files` (absolute paths), the dotted JSON field holding the text
  of a .jsonl record, and the fraction of records hashed into `validation`. `name` should come
  from `config_name`, so a changed input never reuses a stale dataset."""

  files: tuple[str, ...] = ()
  text_field: str = "text"
  validation_fraction: float = 0.05


def scan(config: LocalTextConfig, rejects_path: str) -> dict[str, Any]:
  """One pass over the inputs: writes one JSONL line per reject and returns
  the report (rejects per reason, records per split)."""
  rejects: collections.Counter[str] = collections.Counter()
  records = {split: 0 for split in SPLITS}
  with open(rejects_path, "w", encoding="utf-8") as out:
    for path in config.files:
      for item in read_records(path, config.text_field):
        if isinstance(item, Reject):
          rejects[item.reason] += 1
          out.write(json.dumps(dataclasses.asdict(item), ensure_ascii=False) + "\n")
        else:
          records[split_of(item.source, item.index, config.validation_fraction)] += 1
  return {
      "files": list(config.files),
      "text_field": config.text_field,
      "validation_fraction": config.validation_fraction,
      "num_records": records,
      "rejects": dict(sorted(rejects.items())),
  }


class LocalText(tfds.core.GeneratorBasedBuilder):
  """Text records from local files; instantiate with a `LocalTextConfig`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Records from local .txt/.jsonl(.gz) files.",
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "source": tfds.features.Text(),
            "index": np.int64,
        }),
        # Keep file order, so record i of a split is the i-th in the files.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Local files only.
    # `data_path` is tfds' temporary folder here, renamed into place when the
    # dataset is complete: report and rejects appear atomically with it.
    report = scan(self.builder_config, os.fspath(self.data_path / REJECTS_FILE))
    (self.data_path / REPORT_FILE).write_text(json.dumps(report, indent=1))
    if not any(report["num_records"].values()):
      raise ValueError(
          f"No usable records in {list(self.builder_config.files)};"
          f" rejects per reason: {report['rejects']}"
      )
    # tfds cannot write an empty split: leave it out, `prepare_text` opens it
    # as an empty source.
    return {
        split: self._generate_examples(split)
        for split in SPLITS
        if report["num_records"][split]
    }

  def _generate_examples(self, split: str):
    config = self.builder_config
    for file_pos, path in enumerate(config.files):
      for item in read_records(path, config.text_field):
        if isinstance(item, Record) and (
            split_of(item.source, item.index, config.validation_fraction) == split
        ):
          key = f"{file_pos:05d}:{item.index:012d}"
          yield key, {"text": item.text, "source": item.source, "index": item.index}


class TextSource:
  """Random-access records `{'text': str, 'source': str, 'index': int}`.

  Wraps a tfds array_record data source, which returns strings as bytes.
  """

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return _decode(self._source[i])

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    # Batched reads where the source has them (array_record does).
    getitems = getattr(self._source, "__getitems__", None)
    if getitems is None:
      return [self[i] for i in indices]
    return [_decode(r) for r in getitems(indices)]

  def __repr__(self) -> str:
    return f"TextSource({self._source!r})"


def _decode(record: dict[str, Any]) -> dict[str, Any]:
  as_str = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
  return {
      "text": as_str(record["text"]),
      "source": as_str(record["source"]),
      "index": int(record["index"]),
  }


@dataclasses.dataclass(frozen=True)
class TextData:
  """A prepared text dataset: both splits as TextSources, records per split, rejects per
  reason, and where the rejects file and the dataset folder are."""

  train: TextSource
  validation: TextSource
  num_records: dict[str, int]
  rejects: dict[str, int]  # reason -> count
  rejects_path: str
  data_path: str  # the prepared dataset folder


def prepare_text(
    files: Sequence[str],
    *,
    data_dir: str,
    text_field: str = "text",
    validation_fraction: float = 0.05,
) -> TextData:
  """Prepares (once) and opens an array_record dataset over local text files."""
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
  paths = resolve_files(files)
  config = LocalTextConfig(
      name=config_name(paths, text_field, validation_fraction),
      files=paths,
      text_field=text_field,
      validation_fraction=validation_fraction,
  )
  builder = LocalText(config=config, data_dir=data_dir, file_format="array_record")
  tfds.disable_progress_bar()  # jaxlab shows its own progress; tfds bars would interleave
  builder.download_and_prepare()
  report = json.loads((builder.data_path / REPORT_FILE).read_text())
  # A split with no records was not written (see `_split_generators`).
  sources = {s: builder.as_data_source(split=s) for s in builder.info.splits}
  sources = {s: sources.get(s, ()) for s in SPLITS}
  num_records = {split: len(sources[split]) for split in SPLITS}
  if num_records != report["num_records"]:
    raise RuntimeError(
        f"Prepared dataset at {builder.data_path} has {num_records} records but"
        f" its report says {report['num_records']}; delete it to rebuild."
    )
  return TextData(
      train=TextSource(sources["train"]),
      validation=TextSource(sources["validation"]),
      num_records=num_records,
      rejects=report["rejects"],
      rejects_path=os.fspath(builder.data_path / REJECTS_FILE),
      data_path=os.fspath(builder.data_path),
  )
