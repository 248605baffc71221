"""`shared:` config paths: $JAXLAB_SHARED_DATA, the checkout default, and the errors."""

import pytest

from jaxlab.config import ConfigError
from jaxlab.data import builtin


def test_shared_env_variable_names_the_folder(monkeypatch, tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "y.txt").write_text("hello\n")
  monkeypatch.setenv(builtin.SHARED_DATA_ENV, str(tmp_path))
  assert builtin.SHARED_DATA_ENV == "JAXLAB_SHARED_DATA"
  assert builtin.shared_data_dir() == tmp_path
  path = builtin.resolve_shared("shared:x/y.txt", "data.files")
  assert path == str(tmp_path / "x" / "y.txt")
  with open(path) as f:
    assert f.read() == "hello\n"


def test_shared_env_variable_naming_a_missing_folder_is_a_config_error(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXLAB_SHARED_DATA", str(tmp_path / "missing"))
  assert builtin.shared_data_dir() is None
  with pytest.raises(ConfigError) as err:
    builtin.resolve_shared("shared:x/y.txt", "data.files")
  assert "data.files" in str(err.value)
  assert "JAXLAB_SHARED_DATA" in str(err.value)


def test_no_shared_folder_anywhere_says_to_set_the_variable(monkeypatch):
  monkeypatch.delenv("JAXLAB_SHARED_DATA", raising=False)
  monkeypatch.setattr(builtin, "_checkout_shared_dir", lambda: None)
  with pytest.raises(ConfigError, match=r"score\.input.*set JAXLAB_SHARED_DATA"):
    builtin.resolve_shared("shared:text/a.jsonl", "score.input")


def test_non_shared_specs_come_back_unchanged(monkeypatch, tmp_path):
  monkeypatch.setenv("JAXLAB_SHARED_DATA", str(tmp_path / "missing"))  # not consulted
  for spec in ("/abs/file.txt", "rel/file.jsonl", "builtin:pydoc_topics", "gs://bucket/x", ""):
    assert builtin.resolve_shared(spec, "data.files") == spec
