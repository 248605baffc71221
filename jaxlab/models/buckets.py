"""Length bucketing: batches of similar-length sequences padded to a bounded set of
shapes, so little compute goes to padding and few programs are compiled."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def length_buckets(max_length: int, step: int = 16) -> tuple[int, ...]:
  """Padded lengths: multiples of `step` up to max_length (bounds compiles, wastes < step tokens a row)."""
  return tuple(range(step, max_length, step)) + (max_length,)


def plan_batches(lengths: Sequence[int], batch_size: int, buckets: Sequence[int],
                 row_multiple: int = 1) -> list[tuple[np.ndarray, int, int]]:
  """Group sequences of similar length: [(indices, padded_length, padded_rows)].

  Sorting by length keeps padding small; padded_length is the smallest bucket that fits the
  batch and padded_rows the batch size, or for the one short batch the next power of two,
  so only len(buckets) * (log2(batch_size) + 2) shapes are ever compiled. Rows are rounded
  up to `row_multiple` (the data-parallel device count).
  """
  lengths = np.asarray(lengths)
  order = np.argsort(-lengths, kind="stable")
  plan = []
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    longest = int(lengths[idx].max())
    padded_len = next(b for b in buckets if b >= longest)
    rows = batch_size if len(idx) == batch_size else min(batch_size, 1 << (len(idx) - 1).bit_length())
    rows = -(-rows // row_multiple) * row_multiple
    plan.append((idx, padded_len, rows))
  return plan
