"""bench/gpu/scalingfilter_speed.py runs to its last line in a dry run (tiny shapes on CPU),
with jaxlab and the PyTorch peer agreeing in float32 (the script exits non-zero otherwise)."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.parity
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_dry_run_reaches_its_last_line():
  pytest.importorskip("torch", reason="the peer is PyTorch (the 'parity' extra)")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu", "scalingfilter_speed.py"), "--dry-run"],
                       capture_output=True, text=True, env=env, timeout=600)
  assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
  last = run.stdout.strip().splitlines()[-1]
  assert last.startswith("vs_dynamic=") and "jaxlab_tokens_s=" in last, last
  agreement = next(l for l in run.stdout.splitlines() if l.startswith("float32 agreement"))
  assert float(agreement.rsplit(" ", 1)[1]) < 1e-3, agreement
