"""`bench/align_testbed.py --quick` end to end (make slow): every stage, every baseline, the
summary line the full study ends with."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_align_bench_quick_reports_every_system(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  run = subprocess.run([sys.executable, "bench/align_testbed.py", "--quick", "--workdir", str(tmp_path)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  for row in ("pretrained + rephrase at inference", "cascade: top-K re-ranked by aesthetic model",
              "oracle: top-K re-ranked by true aesthetic", "no rephrasing + DPO", "rephrase + plain fine-tuning",
              "rows by the retriever's own score"):
    assert row in run.stdout
  last = run.stdout.strip().splitlines()[-1]
  m = re.fullmatch(r"heldout_aes_gain=(\S+) heldout_rel_change=(\S+) rephrase_inference_gain=(\S+) "
                   r"cascade_gain=(\S+) oracle_gain=(\S+) seeds=1", last)
  assert m, last
  assert all(-100 <= float(x) <= 100 for x in m.groups())
