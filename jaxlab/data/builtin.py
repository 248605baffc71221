"""Corpora that ship with Python, so jaxlab runs on a fresh machine, and the
location of the optional shared data folder."""

from __future__ import annotations

import os
import pathlib


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
  """The folder that holds the `jaxlab` package."""
  return pathlib.Path(__file__).resolve().parents[2]


def shared_data_dir() -> pathlib.Path | None:
  """`<repo root>/../shared/data` when it exists (tests skip without it)."""
  path = repo_root().parent / "shared" / "data"
  return path if path.is_dir() else None


def resolve_shared(spec: str, key: str) -> str:
  """`shared:PATH` -> ../shared/data/PATH (a ConfigError naming `key` when absent); other
  specs are returned unchanged."""
  if not spec.startswith("shared:"):
    return spec
  root = shared_data_dir()
  if root is None:
    from jaxlab.config import ConfigError
    raise ConfigError(f"{key}: {spec!r} needs ../shared/data, which is absent on this machine")
  return str(root / spec.removeprefix("shared:"))
