"""python -m jaxlab.aot: compile the quickstart's train step for 8 devices without training."""
import json
import pathlib

import pytest

from jaxlab import aot

REPO = pathlib.Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.py") + ":toy"
TP = ["--devices", "8", "--mesh", "(('data', 4), ('model', 2))", "sharding.layout=tp"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A small corpus; its data and tokenizer are prepared once and reused by every check."""
  from pydoc_data import topics
  root = tmp_path_factory.mktemp("aot")
  with open(root / "docs.jsonl", "w") as f:
    for key in sorted(topics.topics)[:60]:
      f.write(json.dumps({"body": topics.topics[key]}) + "\n")
  return root


def args(workdir, *extra):
  return ["--config", QUICKSTART, "--workdir", str(workdir), *TP, f"data.files=('{workdir / 'docs.jsonl'}',)",
          "data.text_field=body", *extra]


def test_compiles_and_reports_per_device_memory(workdir):
  overrides = [f"data.files=('{workdir / 'docs.jsonl'}',)", "data.text_field=body", "sharding.layout=tp",
               "mesh=(('data', 4), ('model', 2))"]
  result = aot.check(QUICKSTART, overrides, str(workdir))
  out = aot.report(result)
  assert "8 cpu devices, mesh data=4 x model=2, layout tp" in out
  for line in ("parameters", "optimizer state", "batch", "activations/temp", "estimated peak"):
    assert f"  {line} " in out
  d = result["per_device"]
  by_name = {p["name"]: p for p in result["params"]}
  # Tensor parallel: the MLP's first kernel is split over `model` (2) on its output axis.
  fc = by_name["decoder/layers/block/mlp/fc/kernel"]
  assert fc["shape"] == (2, 64, 256) and fc["device_shape"] == (2, 64, 128) and fc["bytes"] == 2 * 64 * 128 * 4
  assert by_name["ln_f/scale"]["device_shape"] == (64,)  # replicated
  assert d["parameters"] == sum(p["bytes"] for p in result["params"])
  assert d["parameters"] < 4 * result["num_params"]  # less than the full fp32 copy
  # AdamW: two moments shaped like the parameters, plus step counters.
  assert 2 * d["parameters"] <= d["optimizer"] <= 2 * d["parameters"] + 64
  # XLA's own account of the compiled program's inputs agrees with the shardings
  # (the rest is the 8-byte PRNG key).
  assert 0 <= d["arguments"] - (d["parameters"] + d["optimizer"] + d["batch"]) <= 8
  assert d["batch"] == 3 * (8 // 4) * 32 * 4  # inputs, targets, mask: 2 of 8 rows x 32 tokens each
  assert d["temporaries"] > 0


def test_a_wrong_partition_rule_is_reported_with_the_parameter(workdir, capsys):
  # LayerNorm scales are (layers=2, 64): splitting the layer axis over data=4 cannot work.
  rule = "sharding.extra_rules=((r'ln_1/scale$', ('data', None)),)"
  assert aot.main(args(workdir, rule)) == 2
  err = capsys.readouterr().err
  assert ("sharding error: params/decoder/layers/block/ln_1/scale with shape (2, 64): dimension 2 is not "
          "divisible by 4 (mesh axes ('data',) of rule 'ln_1/scale$' -> ('data', None))") in err
  assert aot.main(args(workdir, "sharding.extra_rules=((r'wte', ('tensor', None)),)")) == 2
  assert "names mesh axis 'tensor'; the mesh has ('data', 'model')" in capsys.readouterr().err


def test_devices_must_match_a_started_backend(capsys):
  assert aot.main(["--config", QUICKSTART, "--devices", "16"]) == 2
  assert "already runs JAX with 8 devices" in capsys.readouterr().err
