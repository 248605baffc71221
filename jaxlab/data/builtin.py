"""Corpora that ship with Python, so jaxlab runs on a fresh machine, and the
location of the optional shared data folder.

`shared:PATH` config values name files under the shared data folder: the folder named by
the environment variable `JAXLAB_SHARED_DATA` (`SHARED_DATA_ENV`) when it is set, else, in
a checkout, `<repo root>/../shared/data` where that exists.
"""

from __future__ import annotations

import os
import pathlib

SHARED_DATA_ENV = "JAXLAB_SHARED_DATA"


def _pydoc_topics_text() -> str:
  """CPython's help-topic prose, sorted by topic so the text never varies."""
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top

  return "\n\n".join(topics.topics[key] for key in sorted(topics.topics))


_CORPORA = {"pydoc_topics": _pydoc_topics_text}


def available() -> list[str]:
  """Names accepted by `materialize`."""
  return sorted(_CORPORA)


def materialize(name: str, out_dir: str) -> list[str]:
  """Writes the embedded corpus `name` as text file(s) in `out_dir`.

  Idempotent: an existing file with the same content is left untouched (so its
  mtime, which keys prepared datasets, does not change).

  Returns:
    The paths of the written files.
  """
  if name not in _CORPORA:
    raise ValueError(f"Unknown built-in corpus {name!r}; known: {available()}")
  text = _CORPORA[name]()
  path = pathlib.Path(out_dir) / f"{name}.txt"
  data = text.encode("utf-8")
  if not (path.is_file() and path.read_bytes() == data):
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a reader never sees a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
  return [str(path)]


def repo_root() -> pathlib.Path:
  """The folder that holds the `jaxlab` package (the checkout's root when run from one)."""
  return pathlib.Path(__file__).resolve().parents[2]


def _checkout_shared_dir() -> pathlib.Path | None:
  """`<repo root>/../shared/data` when jaxlab runs from a checkout and that folder exists."""
  root = repo_root()
  if not (root / "pyproject.toml").is_file():  # installed: site-packages is no checkout
    return None
  path = root.parent / "shared" / "data"
  return path if path.is_dir() else None


def shared_data_dir() -> pathlib.Path | None:
  """The shared data folder, or None where there is none (tests skip without it).

  `$JAXLAB_SHARED_DATA` when set (None if it names no folder), else the checkout default
  `<repo root>/../shared/data` when it exists.
  """
  env = os.environ.get(SHARED_DATA_ENV)
  if env:
    path = pathlib.Path(env).expanduser()
    return path if path.is_dir() else None
  return _checkout_shared_dir()


def resolve_shared(spec: str, key: str) -> str:
  """`shared:PATH` -> PATH under `shared_data_dir()`; other specs are returned unchanged.

  Raises:
    ConfigError: naming `key` and `JAXLAB_SHARED_DATA`, when `spec` is a `shared:` path and
      the variable names a missing folder, or is unset and there is no checkout default.
  """
  if not spec.startswith("shared:"):
    return spec
  root = shared_data_dir()
  if root is None:
    from jaxlab.config import ConfigError  # pylint: disable=g-import-not-at-top
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
      raise ConfigError(f"{key}: {spec!r} needs the shared data folder, but {SHARED_DATA_ENV}={env!r} "
                        "is not a folder")
    raise ConfigError(f"{key}: {spec!r} needs the shared data folder: set {SHARED_DATA_ENV} to it "
                      "(no checkout default ../shared/data on this machine)")
  return str(root / spec.removeprefix("shared:"))
