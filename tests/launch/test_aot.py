"""python -m jaxlab.aot: compile every stage's train step for 8 devices from shapes alone."""
import os
import pathlib

import pytest

from jaxlab import aot

REPO = pathlib.Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.py") + ":toy"
TP = ["--devices", "8", "--mesh", "(('data', 4), ('model', 2))", "sharding.layout=tp"]


def args(*extra):
  # a corpus that does not exist: the check reads no data
  return ["--config", QUICKSTART, *TP, "data.files=('/nonexistent/corpus.jsonl',)", *extra]


def test_compiles_and_reports_per_device_memory(tmp_path):
  overrides = ["data.files=('/nonexistent/corpus.jsonl',)", "sharding.layout=tp", "mesh=(('data', 4), ('model', 2))",
               f"data.data_dir={tmp_path / 'data'}"]
  [result] = aot.check(QUICKSTART, overrides)
  out = aot.report(result)
  assert out.startswith("stage lm: compiled") and "8 cpu devices, mesh data=4 x model=2, layout tp" in out
  assert not (tmp_path / "data").exists()  # no data prepared
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


def test_a_wrong_partition_rule_is_reported_with_the_stage_and_parameter(capsys):
  # LayerNorm scales are (layers=2, 64): splitting the layer axis over data=4 cannot work.
  rule = "sharding.extra_rules=((r'ln_1/scale$', ('data', None)),)"
  assert aot.main(args(rule)) == 2
  err = capsys.readouterr().err
  assert ("sharding error in stage lm: params/decoder/layers/block/ln_1/scale with shape (2, 64): dimension 2 is "
          "not divisible by 4 (mesh axes ('data',) of rule 'ln_1/scale$' -> ('data', None))") in err
  assert aot.main(args("sharding.extra_rules=((r'wte', ('tensor', None)),)")) == 2
  assert "names mesh axis 'tensor'; the mesh has ('data', 'model')" in capsys.readouterr().err


def test_devices_must_match_a_started_backend(capsys, monkeypatch):
  import jax
  jax.devices()  # started with the suite's 8 (alone in a worker, the test would start it with 16)
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))  # main rewrites it; restored after
  assert aot.main(["--config", QUICKSTART, "--devices", "16"]) == 2
  assert "already runs JAX with 8 devices" in capsys.readouterr().err


@pytest.mark.slow  # five full compiles; the next test compiles align's stages up to the failing one in make test
def test_every_stage_of_multi_stage_trainers_compiles(capsys):
  """align: pretrain, aesthetic, finetune; scalingfilter: the meta-model pair. From shapes
  alone (the pipeline's score.input does not exist; align renders no testbed)."""
  assert aot.main(["--config", str(REPO / "configs" / "align" / "testbed.py") + ":tiny"]) == 0
  out = capsys.readouterr().out
  assert [l.split(":")[0] for l in out.splitlines() if l.startswith("stage ")] == [
      "stage pretrain", "stage aesthetic", "stage finetune"]
  assert aot.main(["--config", str(REPO / "configs" / "scalingfilter" / "pipeline.py") + ":builtin",
                   "score.input=/nonexistent.jsonl", "small.train.batch_size=8", "large.train.batch_size=8"]) == 0
  out = capsys.readouterr().out
  assert [l.split(":")[0] for l in out.splitlines() if l.startswith("stage ")] == ["stage small", "stage large"]


def test_a_wrong_rule_in_a_later_stage_names_that_stage(capsys):
  # the aesthetic MLP's 16-wide layer cannot split over data=8; the two-tower's stages have no such name
  spec = str(REPO / "configs" / "align" / "testbed.py") + ":tiny"
  rule = "sharding.extra_rules=((r'params/out/kernel$', (None, 'data')),)"
  assert aot.main(["--config", spec, rule]) == 2
  err = capsys.readouterr().err
  assert "sharding error in stage aesthetic: params/out/kernel" in err, err


@pytest.mark.slow  # a full compile on a TP mesh; tests/fp8/test_hlo.py checks the count in make test
def test_dump_hlo_writes_each_stage_and_counts_fp8_dots(tmp_path, capsys):
  # The toy GPT in BF16 at O2 with a tied head: 6 projections in the scanned block, each
  # with its forward, dgrad and wgrad GEMM on FP8 operands.
  argv = ["--dump-hlo", str(tmp_path / "hlo"), *args("fp8.level=O2", "model.dtype=bfloat16")]
  assert aot.main(argv) == 0
  out = capsys.readouterr().out
  text = (tmp_path / "hlo" / "lm.hlo.txt").read_text()
  assert text.startswith("HloModule") and "f8e4m3fn" in text and "f8e5m2" in text
  assert "dots of the lowered step: 18 of " in out and ", 0 blocked" in out
  assert f"lowered HLO written to {tmp_path / 'hlo' / 'lm.hlo.txt'}" in out


def test_xla_options_reach_the_compiler(capsys):
  assert aot.xla_options(["a=true", "b=FALSE", "c=-3", "d=CPU_X"]) == {"a": True, "b": False, "c": -3, "d": "CPU_X"}
  assert aot.main(["--xla-option", "novalue", *args()]) == 2
  assert "expected KEY=VALUE" in capsys.readouterr().err
  # XLA itself checks the value: the option is passed, not dropped
  with pytest.raises(Exception, match="xla_cpu_scheduler_type, 'BOGUS' is not a valid enum value"):
    aot.main(["--xla-option", "xla_cpu_scheduler_type=BOGUS", *args()])
  assert aot.main(["--xla-option", "xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", *args()]) == 0
  assert "estimated peak" in capsys.readouterr().out
