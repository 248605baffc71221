"""Every notebook in colab/ runs top to bottom (tiny settings; the install cell is skipped
because jaxlab is importable here)."""
import os
import pathlib
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extra (nbformat, nbclient, ipykernel) is not installed")
nbclient = pytest.importorskip("nbclient")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "colab").glob("*.ipynb"))
BUDGET_S = 60  # the limit per notebook


def test_there_are_notebooks():
  assert {p.stem for p in NOTEBOOKS} >= {"quickstart", "learngene", "scalingfilter"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
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
  client = nbclient.NotebookClient(nb, timeout=BUDGET_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
  start = time.perf_counter()
  client.execute()
  elapsed = time.perf_counter() - start
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
  assert not errors
  assert elapsed < BUDGET_S, f"{path.name} took {elapsed:.0f} s"
