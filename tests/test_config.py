"""Config loading and overrides: every mistake fails early and names the key."""
import json
import pathlib
import subprocess
import sys

import pytest

from jaxlab import config as config_lib
from jaxlab import trainers

REPO = pathlib.Path(__file__).resolve().parents[1]

QUICKSTART = str(REPO / "configs" / "quickstart.py")


def test_overrides_are_typed_and_applied():
  cfg = config_lib.load(QUICKSTART + ":toy", ["train.steps=7", "optim.learning_rate=1", "model.dropout=0.1",
                                              "model.tied_embeddings=false", "mesh=(('data', 4), ('model', 2))",
                                              "data.files=('a.txt','b.jsonl')", "model.dtype=bfloat16"])
  assert cfg.train.steps == 7 and cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)
  assert cfg.model.tied_embeddings is False and cfg.model.dtype == "bfloat16"
  assert tuple(cfg.mesh) == (("data", 4), ("model", 2)) and tuple(cfg.data.files) == ("a.txt", "b.jsonl")
  assert cfg.model.num_layers == 2  # from the :toy argument


def test_config_is_locked():
  cfg = config_lib.load(QUICKSTART)
  with pytest.raises(AttributeError):
    cfg.train.new_key = 1


@pytest.mark.parametrize("override,message", [
    ("train.step=5", r"unknown config key 'train.step'; did you mean 'train.steps'\?"),
    ("optim.learnin_rate=0.1", r"did you mean 'optim.learning_rate'"),
    ("modle.d_model=8", r"unknown config key 'modle.d_model'; did you mean 'model.d_model'"),
    ("train.steps=ten", r"train.steps: expected an int, got 'ten'"),
    ("train.steps=1.5", r"train.steps: expected an int"),
    ("model.tied_embeddings=2", r"model.tied_embeddings: expected a bool"),
    ("optim.learning_rate=fast", r"optim.learning_rate: expected a float"),
    ("train=3", r"train is a group of keys"),
    ("train.steps", r"not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.load(QUICKSTART, [override])


def test_cli_fails_before_compiling_and_writes_nothing(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.run([sys.executable, "-m", "jaxlab.main", "--config", QUICKSTART, "--workdir", str(workdir),
                         "train.batch_size=7"], capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert "train.batch_size: 7 is not divisible" in proc.stderr
  proc = subprocess.run([sys.executable, "-m", "jaxlab.main", "--config", QUICKSTART, "--workdir", str(workdir),
                         "trian.steps=1"], capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2 and "did you mean 'train.steps'" in proc.stderr
  assert not (workdir / "checkpoints").exists()


def test_semantic_errors_name_the_key(tmp_path):
  from jaxlab.trainers import lm
  for override, message in [("model.num_heads=3", "model.num_heads: 3 does not divide model.d_model=128"),
                            ("train.seq_len=1024", "train.seq_len: 1024 exceeds model.max_len=256"),
                            ("model.dtype=fp9", "model.dtype: 'fp9' is not one of"),
                            ("sharding.layout=zeta", "sharding.layout='zeta' is not one of"),
                            ("mesh=(('data', 3), ('model', 2))", "needs 6 devices but 8 are available"),
                            ("data.files=('missing.txt',)", "data.files: 'missing.txt' does not exist"),
                            ("fp8.master=fp8", "fp8.master: 'fp8' is not one of"),
                            ("fp8.master=fp32", "fp8.master: only O1, O2 and O3 keep FP16 master weights")]:
    cfg = config_lib.load(QUICKSTART, [override])
    with pytest.raises(ValueError, match=message):
      lm.train_and_evaluate(cfg, str(tmp_path / "w"))


def test_unknown_trainer():
  cfg = config_lib.load(QUICKSTART, ["trainer=nope"])
  with pytest.raises(config_lib.ConfigError, match="trainer: no trainer named 'nope'"):
    trainers.get(cfg.trainer)


def test_resolved_config_written(tmp_path):
  cfg = config_lib.load(QUICKSTART, ["train.steps=3"])
  path = config_lib.write(cfg, str(tmp_path))
  assert json.load(open(path))["train"]["steps"] == 3


def test_string_keys_take_the_text_as_written(tmp_path):
  # "none" is an FP8 level name, not Python's None.
  cfg = config_lib.load(str(REPO / "configs" / "quickstart.py") + ":toy", ["fp8.level=none", "model.dtype=bfloat16"])
  assert cfg.fp8.level == "none" and cfg.model.dtype == "bfloat16"
