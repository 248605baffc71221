"""Bytes the compiled train step sends for gradient sync: FP8 all-reduce vs BF16 baseline.

  python bench/fp8_comm.py [--devices 8] [--config configs/quickstart.py:toy]

Compiles the LM trainer's step (its stage, jaxlab.train.loop.compile_step: the exact program training
would run) on simulated CPU devices for `fp8.level=none` (BF16 mixed precision, XLA's own
all-reduce) and `fp8.level=O2 fp8.comm=True` (the FP8 all-reduce), lists every collective in
the optimized HLO and prices it with ring-algorithm costs (jaxlab.fp8.comm.wire_bytes).
CPU XLA widens BF16 reductions to F32, so the baseline is priced at 2 bytes an element.
Last line: comm_bytes_ratio=<FP8 bytes / BF16 bytes>.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--config", default="configs/quickstart.py:toy")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from jaxlab import config as config_lib, sharding
  from jaxlab.fp8 import comm
  from jaxlab.train import loop
  from jaxlab.trainers import lm

  totals = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, overrides, price in (("BF16 (none)", ["fp8.level=none"], "bf16"),
                                   ("FP8 O2 + fp8.comm", ["fp8.level=O2", "fp8.comm=True"], None)):
      cfg = config_lib.load(args.config, [f"data.data_dir={tmp}/data", *overrides])
      (stage,) = lm.stages(cfg)
      out = loop.compile_step(stage.task, stage.options, sharding.make_mesh(stage.options.mesh), stage.batch)
      ops = comm.collectives(out.compiled.as_text())
      by_kind = collections.Counter()
      for op, dtype, count in ops:
        by_kind[(op, dtype)] += comm.wire_bytes(op, dtype, count, args.devices, as_dtype=price and
                                                ("bf16" if dtype in ("f32", "bf16") else None))
      totals[name] = sum(by_kind.values())
      print(f"{name}: {len(ops)} collectives")
      for (op, dtype), b in sorted(by_kind.items()):
        print(f"  {op:<12} {dtype:<4} {b / 1024:10.1f} KiB sent per device per step")
  base, fp8 = totals["BF16 (none)"], totals["FP8 O2 + fp8.comm"]
  print(f"{args.devices} devices, {args.config}: FP8 {fp8 / 1024:.1f} KiB vs BF16 {base / 1024:.1f} KiB per device")
  print(f"comm_bytes_ratio={fp8 / base:.3f}")


if __name__ == "__main__":
  main()
