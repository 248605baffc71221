"""In-memory arrays as grain sources: for stages whose data is a few arrays on the host
(embeddings, rendered images, preference records), with the same checkpointable,
process-sharded, shuffled batching as the file-backed pipelines."""
from __future__ import annotations

import grain
import jax


class Rows:
  """A random-access view of equal-length arrays as records {name: row} (a grain source)."""

  def __init__(self, **arrays):
    self.arrays = arrays
    self.n = len(next(iter(arrays.values())))

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {k: v[i] for k, v in self.arrays.items()}


def local_batches(ds: grain.MapDataset, batch_size: int) -> grain.IterDataset:
  """This process's share of an endless MapDataset, in local batches of the global `batch_size`."""
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)).batch(
      batch_size // jax.process_count(), drop_remainder=True)


def process_slice(ds: grain.MapDataset) -> grain.MapDataset:
  """Every process_count-th record, starting at this process's index."""
  return ds[jax.process_index()::jax.process_count()]


def repeat_shuffled(rows: Rows, seed: int, batch_size: int) -> grain.IterDataset:
  """Endless reshuffled epochs of `rows`, this process's slice, in local batches."""
  return local_batches(process_slice(grain.MapDataset.source(rows)).shuffle(seed=seed).repeat(None), batch_size)
