"""bench/gpu/fp8_speed.py runs to its last line on CPU (--dry-run: tiny shapes, compile only),
so the script a GPU session gets is known to run and to pass its own HLO checks."""
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run_script(*flags: str) -> subprocess.CompletedProcess:
  """bench/gpu/fp8_speed.py with `flags`, in a process of its own, from the repository root."""
  return subprocess.run([sys.executable, str(REPO / "bench" / "gpu" / "fp8_speed.py"), *flags],
                        capture_output=True, text=True, timeout=600, cwd=REPO)


@pytest.mark.slow
def test_fp8_speed_dry_run_reaches_its_last_line():
  proc = _run_script("--dry-run")
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  last = proc.stdout.strip().splitlines()[-1]
  m = re.fullmatch(r"o2_vs_bf16=nan o2_vs_flax=nan fp8_gemms_o2=(\d+) fp8_gemms_flax=(\d+)", last)
  assert m and m[1] == m[2] and int(m[1]) > 0, last


@pytest.mark.slow
def test_fp8_speed_reports_a_level_that_does_not_finish_and_exits_non_zero():
  # On the H200 the O2 step once did not finish compiling in minutes: such a level must be
  # killed, named, and fail the run, while the other levels still report.
  proc = _run_script("--dry-run", "--level-timeout", "0.5", "--levels", "O2")
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  # ... with where its compile was (here: not started, or the passes it had run)
  assert re.search(r"FAILED: level O2: compile \+ 9 steps did not finish in \d+ s "
                   r"\((XLA had not started compiling the step|[\d.]+ s in XLA's HLO passes)", proc.stdout), \
      proc.stdout[-3000:]
  assert proc.stdout.strip().splitlines()[-1].startswith("o2_vs_bf16=nan")


@pytest.mark.slow
def test_a_level_whose_cudnn_attention_step_raises_is_run_again_with_xla_attention():
  # Here cuDNN attention cannot even be traced (no CUDA JAX): the level fails, named, and is
  # still compiled and reported with XLA attention, so a GPU session keeps its timing.
  proc = _run_script("--dry-run", "--attention", "cudnn", "--levels", "none")
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert "FAILED: level none: the step raised (exit status 1, traceback above); run again with XLA attention" \
      in proc.stdout, proc.stdout[-3000:]
  assert re.search(r"^none +nan +nan +nanx +[\d.]+ ", proc.stdout, re.M), proc.stdout[-3000:]  # the level's row


def _speed_module():
  spec = importlib.util.spec_from_file_location("fp8_speed", REPO / "bench" / "gpu" / "fp8_speed.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_compile_profile_reads_xla_pass_log_and_names_the_pass_a_killed_compile_was_in():
  # A real XLA log: a small jitted step compiled in a child process under the script's PASS_LOG.
  speed = _speed_module()
  code = ("import jax, jax.numpy as jnp\n"
          "def step(x):\n  return jax.lax.fori_loop(0, 3, lambda i, y: jnp.tanh(y @ y), x).sum()\n"
          "jax.jit(step).lower(jnp.ones((16, 16))).compile()\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", **speed.PASS_LOG})
  assert proc.returncode == 0, proc.stderr[-3000:]
  whole = speed.compile_profile(proc.stderr)
  assert whole["started"] and whole["running"] is None
  # passes every CPU compile runs; a pipeline's own total is not counted as a pass
  assert {"algsimp", "dce", "layout-assignment"} <= set(whole["passes"]), sorted(whole["passes"])
  assert "simplification" not in whole["passes"]
  assert 0 < sum(whole["passes"].values()) < 300
  # an unrelated module's passes are not counted
  assert not speed.compile_profile(proc.stderr, module="jit_other")["started"]

  # the log as it would end if the process were killed inside the step's last-started pass
  lines = proc.stderr.splitlines()
  first = next(i for i, l in enumerate(lines) if "pass pipeline on module jit_step:" in l)  # after jnp.ones'
  starts = [i for i, l in enumerate(lines)
            if i > first and re.search(r"hlo_pass_pipeline\.cc:\d+\]\s+HLO pass [^:]", l)]
  cut = starts[len(starts) // 2]
  name = re.search(r"HLO pass (\S+)", lines[cut])[1]
  killed = speed.compile_profile("\n".join(lines[:cut + 1]))
  assert killed["running"][1] == name
  text = speed.describe_profile(killed, killed_at=killed["running"][2] + 42.0)
  assert f"killed in pass {name}" in text and "for 42 s" in text, text
