"""HPIR-style evaluation (human preference of image retrieval) and retrieval recall.

HPIR format, one JSON object per line:
  {"query": str, "results_a": [image id, ...], "results_b": [image id, ...],
   "choice": "a" | "b", "confidence": float in [0, 1]}
The model prefers the result set with the higher mean score (e.g. its query-image
similarity); equal means are a tie. Accuracy is agreement with the human choice, a tie
counting one half; the weighted accuracy weights each query by the human confidence.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class HPIRRecord:
  """One HPIR comparison: two result sets (image ids) for `query` and the human verdict.

  `choice` is the preferred set, "a" or "b"; `confidence` in [0, 1] weights the query in the weighted accuracy."""
  query: str
  results_a: tuple[str, ...]
  results_b: tuple[str, ...]
  choice: str            # "a" or "b"
  confidence: float


def parse_record(obj: dict, where: str = "record") -> HPIRRecord:
  """Validates one decoded JSON object; returns it as an HPIRRecord (lists as tuples, confidence as float).

  Any missing or malformed field is a ValueError prefixed with `where` (e.g. "file:line")."""
  if not isinstance(obj, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
  missing = [k for k in ("query", "results_a", "results_b", "choice", "confidence") if k not in obj]
  if missing:
    raise ValueError(f"{where}: missing field(s) {missing}")
  if not isinstance(obj["query"], str) or not obj["query"]:
    raise ValueError(f"{where}: 'query' must be a non-empty string")
  for key in ("results_a", "results_b"):
    if not isinstance(obj[key], list) or not obj[key] or not all(isinstance(x, str) for x in obj[key]):
      raise ValueError(f"{where}: {key!r} must be a non-empty list of image ids")
  if obj["choice"] not in ("a", "b"):
    raise ValueError(f"{where}: 'choice' must be 'a' or 'b', got {obj['choice']!r}")
  conf = obj["confidence"]
  if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= conf <= 1.0:
    raise ValueError(f"{where}: 'confidence' must be a number in [0, 1], got {conf!r}")
  return HPIRRecord(obj["query"], tuple(obj["results_a"]), tuple(obj["results_b"]), obj["choice"], float(conf))


def load_hpir(path: str) -> list[HPIRRecord]:
  """All records of an HPIR JSON-lines file, in order; blank lines are skipped.

  FileNotFoundError if the file is missing; ValueError naming file:line for a bad line, or if there are no records."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"HPIR file {path} not found")
  out = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
      out.append(parse_record(obj, f"{path}:{n}"))
  if not out:
    raise ValueError(f"{path}: no HPIR records")
  return out


def write_hpir(path: str, records: Sequence[HPIRRecord]) -> str:
  """Writes `records` to `path` as HPIR JSON lines (what load_hpir reads); returns `path`."""
  with open(path, "w") as f:
    for r in records:
      f.write(json.dumps(dataclasses.asdict(r) | {"results_a": list(r.results_a), "results_b": list(r.results_b)})
              + "\n")
  return path


def set_choice(scores_a: Sequence[float], scores_b: Sequence[float]) -> str:
  """'a', 'b' or 'tie' by the mean score of each result set."""
  a, b = float(np.mean(scores_a)), float(np.mean(scores_b))
  return "a" if a > b else "b" if b > a else "tie"


def hpir_accuracy(records: Sequence[HPIRRecord], choices: Sequence[str]) -> dict:
  """Agreement of model choices ('a' / 'b' / 'tie') with the human choices."""
  if len(records) != len(choices):
    raise ValueError(f"{len(records)} HPIR records but {len(choices)} choices")
  if not records:
    raise ValueError("no HPIR records")
  credit = np.array([1.0 if c == r.choice else 0.5 if c == "tie" else 0.0 for r, c in zip(records, choices)])
  bad = [c for c in choices if c not in ("a", "b", "tie")]
  if bad:
    raise ValueError(f"choices must be 'a', 'b' or 'tie', got {bad[0]!r}")
  conf = np.array([r.confidence for r in records])
  weighted = float(np.sum(credit * conf) / np.sum(conf)) if np.sum(conf) > 0 else float("nan")
  return {"accuracy": float(np.mean(credit)), "weighted_accuracy": weighted, "count": len(records)}


def evaluate_hpir(records: Sequence[HPIRRecord], score: Callable[[str, Sequence[str]], np.ndarray]) -> dict:
  """score(query, image ids) -> one score per image (higher = preferred)."""
  return hpir_accuracy(records, [set_choice(score(r.query, r.results_a), score(r.query, r.results_b))
                                 for r in records])


def recall_at_k(sims: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
  """sims [Q, G] query-gallery scores, relevant [Q, G] bool -> {'r@k': fraction of
  queries with a relevant item among their top k}."""
  sims, relevant = np.asarray(sims), np.asarray(relevant, bool)
  if sims.shape != relevant.shape:
    raise ValueError(f"sims {sims.shape} and relevant {relevant.shape} differ")
  order = np.argsort(-sims, axis=1, kind="stable")
  hits = np.take_along_axis(relevant, order, axis=1)
  return {f"r@{k}": float(np.mean(hits[:, :k].any(axis=1))) for k in ks}
