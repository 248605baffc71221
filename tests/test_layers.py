"""The layer contract (pyproject.toml [tool.importlinter]) holds, and an upward import breaks
it with a message that names both modules."""
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LINT = pathlib.Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter (the test extra) is not installed")


def lint(root: pathlib.Path) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(root))  # this tree's jaxlab, not the installed one
  return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root, env=env,
                        capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers():
  run = lint(REPO)
  assert run.returncode == 0, run.stdout + run.stderr
  assert "1 kept, 0 broken" in run.stdout


@pytest.mark.parametrize("module,line,expected", [
    # the move this contract guards: the testbed's HPIR labels came from the align method
    ("jaxlab/data/testbed.py", "from jaxlab.align import hpir\n", "jaxlab.data.testbed -> jaxlab.align.hpir"),
    # a method reaching into a trainer (what the scorer and the rephraser once did)
    ("jaxlab/scalingfilter/old_loader.py", "from jaxlab.trainers import lm\n",
     "jaxlab.scalingfilter.old_loader -> jaxlab.trainers.lm"),
    # one method importing another
    ("jaxlab/learngene/mixed.py", "from jaxlab import fp8\n", "jaxlab.learngene.mixed -> jaxlab.fp8"),
    # a platform module importing a model module from the data layer's sibling
    ("jaxlab/models/uses_data.py", "from jaxlab.data import text\n", "jaxlab.models.uses_data -> jaxlab.data.text"),
])
def test_an_upward_import_breaks_the_contract_naming_both_modules(tmp_path, module, line, expected):
  shutil.copytree(REPO / "jaxlab", tmp_path / "jaxlab", ignore=shutil.ignore_patterns("__pycache__"))
  shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
  (tmp_path / module).write_text(line)
  run = lint(tmp_path)
  assert run.returncode != 0, run.stdout
  assert "1 broken" in run.stdout and f"- {expected} (l.1)" in run.stdout, run.stdout
