"""Every notebook in colab/ runs top to bottom (tiny settings; the install cell is skipped
because jaxlab is importable here)."""
import os
import pathlib

import psutil
import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra (nbformat, nbclient, ipykernel) is not installed")
nbclient = pytest.importorskip("nbclient")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))
# The minute per notebook, counted in CPU seconds of its kernel (wall time on a shared
# test machine says more about the neighbours than about the notebook), with headroom: XLA's
# compiles dominate, and their CPU seconds vary by a fifth from run to run on the same VM.
# Measured alone on the 2-core dev machine (2026-12-08): quickstart 19, fp8 50-54, learngene 37-40,
# scalingfilter 37-40, align 64-73; beside other slow tests (-n 2, as in `make slow`) align 56.
# CI's `make slow` measured align at 91 when it still built a 1000-image validation split.
CPU_BUDGET_S = 120
CELL_TIMEOUT_S = 600  # only there to turn a hang into a failure


def test_there_are_notebooks():
  assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "fp8", "learngene", "scalingfilter", "align"}


# The quickstart runs in `make test`; the method notebooks (one XLA compile per training run
# each) run in `make slow`, which CI runs too.
@pytest.mark.parametrize("path", [pytest.param(p, marks=() if p.stem == "quickstart" else pytest.mark.slow)
                                  for p in NOTEBOOKS], ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
  nb = nbformat.read(path, as_version=4)
  first_code = next(c for c in nb.cells if c.cell_type == "code")
  assert "find_spec(\"jaxlab\") is None" in first_code.source and "pip" in first_code.source, \
      "the first code cell must install jaxlab only when it is missing"
  # The kernel inherits this environment: CPU with one device, as on a Colab CPU runtime
  # (compiling for the suite's 8 simulated devices would only cost time), and the repo on
  # the path (so it imports this checkout's jaxlab).
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  monkeypatch.setenv("MPLBACKEND", "Agg")
  client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  with client.setup_kernel():
    kernel = psutil.Process(client.km.provisioner.process.pid)
    for index, cell in enumerate(nb.cells):
      client.execute_cell(cell, index)  # raises CellExecutionError with the traceback
    times = kernel.cpu_times()
  cpu = times.user + times.system + times.children_user + times.children_system
  print(f"{path.name}: {cpu:.1f} CPU seconds")
  assert cpu < CPU_BUDGET_S, f"{path.name} used {cpu:.0f} CPU seconds"
