"""Metrics from process 0: a JSONL file, TensorBoard events (tensorboardX, no TensorFlow)
and a loss-curve PNG."""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax


class MetricWriter:
  """Appends {"step", "split", ...} rows; on resume, rows past the restored step are
  dropped first so a replayed interval is not logged twice."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if os.path.exists(self.path):
      rows = read_rows(self.path)
      with open(self.path, "w") as f:
        for row in rows:
          if row["step"] <= resume_step:
            f.write(json.dumps(row) + "\n")
    from tensorboardX import SummaryWriter  # imported lazily: only process 0 writes
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    """Appends one row to the JSONL file and logs each metric to TensorBoard as `split/key`.
    Non-finite values are kept in the JSONL row but not sent to TensorBoard. A no-op
    outside process 0."""
    if not self.enabled:
      return
    row = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    for key, value in metrics.items():
      if math.isfinite(float(value)):
        self._tb.add_scalar(f"{split}/{key}", float(value), step)

  def close(self) -> None:
    """Flushes and closes the TensorBoard writer."""
    if self._tb is not None:
      self._tb.close()


def read_rows(path: str) -> list[dict]:
  """Every row of a metrics JSONL file, in file order; blank lines skipped."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_loss(metrics_path: str, png_path: str, key: str = "loss") -> str:
  """Train and eval loss against step, from the JSONL file."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rows = read_rows(metrics_path)
  fig, ax = plt.subplots(figsize=(6, 4))
  for split, style in (("train", "-"), ("eval", "o-")):
    points = [(r["step"], r[key]) for r in rows if r["split"] == split and key in r]
    if points:
      ax.plot(*zip(*points), style, label=f"{split} {key}")
  ax.set_xlabel("step")
  ax.set_ylabel(key)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)
  return png_path
