"""bench/learngene_mnist.py: its plateau, reach and speedup rules on curves worked by hand,
and (slow) the --quick study end to end, with a rerun read back from its cache."""
import importlib.util
import math
import pathlib
import re
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("learngene_mnist", REPO / "bench" / "learngene_mnist.py")
study = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(study)


def test_eval_steps_start_at_zero_and_refine_early():
  steps = study.eval_steps(1200)
  assert steps[:3] == [0, 10, 20] and 200 in steps and 225 in steps and 1000 in steps and 1050 in steps
  assert steps[-1] == 1200 and all(b > a for a, b in zip(steps, steps[1:]))
  assert [study.resolution(s) for s in (0, 10, 200, 225, 1000, 1050)] == [0, 10, 10, 25, 25, 50]


def test_plateau_by_hand():
  rising = [(0, 0.1), (100, 0.5), (200, 0.7), (300, 0.8), (400, 0.9)]
  # window 200 at step 400: mean over (200, 400] = 0.85, over (0, 200] = 0.6 -> still improving
  assert study.plateau(rising, window=200, delta=0.01, min_steps=0) is None
  flat = rising + [(500, 0.9), (600, 0.92), (700, 0.9), (800, 0.91)]
  # at 800: (600, 800] -> (0.9 + 0.91) / 2 = 0.905; (400, 600] -> (0.9 + 0.92) / 2 = 0.91: gain -0.005 < 0.01
  assert study.plateau(flat, window=200, delta=0.01, min_steps=0) == pytest.approx(0.905)
  assert study.plateau(flat, window=200, delta=0.01, min_steps=1000) is None  # too early to stop
  assert study.plateau(flat[:3], window=200, delta=0.01, min_steps=0) is None  # less than two windows


def test_reach_uses_a_trailing_mean():
  curve = [(0, 0.2), (10, 0.95), (20, 0.5), (30, 0.9), (40, 0.92), (50, 0.94)]
  # trailing 3-means: .2, .575, .55, .783, .773, .92 -> one lucky 0.95 at step 10 does not count
  assert study.reach(curve, 0.9) == 50
  assert study.reach(curve, 0.2) == 0
  assert study.reach(curve, 0.99) is None


def test_speedup_and_bounds():
  scratch = {"reach": 1000, "steps": 1500}
  des = {"reach": 200, "steps": 200}
  never = {"reach": None, "steps": 1500}
  assert study.speedup(study.cost(scratch), study.cost(des)) == (5.0, "=")
  assert study.speedup(study.cost(scratch), study.cost(des, 300)) == (2.0, "=")  # 1000 / (200 + 300)
  assert study.speedup(study.cost(scratch), study.cost(never)) == (pytest.approx(1000 / 1500), "<")
  assert study.speedup(study.cost(never), study.cost(des)) == (7.5, ">")
  assert study.speedup(study.cost(scratch), study.cost({"reach": 0, "steps": 0}))[0] == math.inf
  assert study.geomean([2.0, 8.0]) == pytest.approx(4.0)
  assert study.fmt_speed([(2.0, "="), (8.0, "<")]) == "<4.00x (2.00-8.00)"


def test_records_and_class_subsets():
  data, (xtr, ytr), (xte, yte) = study.load_digits("digits", (5, 6, 7, 8, 9))
  assert data.num_classes == 5 and set(ytr) == set(range(5)) and len(data.train) == len(ytr)
  full = study.load_digits("digits")
  assert len(ytr) == int(sum(full[1][1] >= 5)) and len(yte) == int(sum(full[2][1] >= 5))
  batch = next(study.batches(xtr, ytr, 16, seed=0))
  assert batch["images"].shape == (16, 8, 8, 1) and batch["images"].max() <= 1.0
  padded = study.eval_batches(xte, yte)
  assert sum(float(b["mask"].sum()) for b in padded) == len(yte)


@pytest.mark.slow
def test_quick_study_end_to_end_and_cached_rerun(tmp_path):
  cmd = [sys.executable, str(REPO / "bench" / "learngene_mnist.py"), "--quick", "--out", str(tmp_path)]
  first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
  assert first.returncode == 0, first.stderr[-3000:]
  last = first.stdout.strip().splitlines()[-1]
  pattern = (r"min_speedup=[\d.inf]+ min_speedup_vs_kd=[\d.inf]+ min_speedup_vs_interp=[\d.inf]+ seeds=1 "
             r"converged=[01] stored_ratio=[\d.]+")
  assert re.fullmatch(pattern, last), last
  assert "| 2 |" in first.stdout and "| 4 |" in first.stdout and "transfer" in first.stdout
  for name in ("learngene_mnist_quick.png", "learngene_transfer_quick.png", "learngene_mnist_quick.md"):
    assert (tmp_path / "results" / name).stat().st_size > 0
  start = time.perf_counter()
  again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.strip().splitlines()[-1] == last  # every stage read back from the cache
  assert "steps, accuracy" not in again.stdout  # nothing retrained
  assert time.perf_counter() - start < 120
