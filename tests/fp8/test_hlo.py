"""Which dots take FP8 operands in the form XLA's GPU GEMM rewriter turns into FP8 GEMMs:
the HLO reader against hand-written modules, then the real LM train step at every FP8 level,
lowered through the trainer's own stage, against flax.linen.fp8_ops on the same model."""

import pytest

from jaxlab import config as config_lib, sharding
from jaxlab.fp8 import hlo
from jaxlab.train import loop
from jaxlab.trainers import classify, lm

# Written by hand in the syntax of `Lowered.as_text(dialect="hlo")`: one dot of each kind.
MODULE = """HloModule m, entry_computation_layout={(f8e4m3fn[4,8]{1,0}, f8e5m2[8,3]{1,0}, f32[])->f32[4,3]{1,0}}

%region_0.1 (a.2: f32[], b.3: f32[]) -> f32[] {
  %a.2 = f32[] parameter(0)
  %b.3 = f32[] parameter(1)
  ROOT %add.4 = f32[] add(f32[] %a.2, f32[] %b.3)
}

ENTRY main.9 {
  q.1 = f8e4m3fn[4,8]{1,0} parameter(0)
  g.2 = f8e5m2[8,3]{1,0} parameter(1)
  s.3 = f32[] parameter(2)
  direct = f32[4,3]{1,0} dot(q.1, g.2), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  cq = bf16[4,8]{1,0} convert(q.1)
  sb = bf16[] convert(s.3)
  bs = bf16[4,8]{1,0} broadcast(sb), dimensions={}
  dq = bf16[4,8]{1,0} multiply(cq, bs)
  tq = bf16[8,4]{0,1} transpose(dq), dimensions={1,0}
  cg = bf16[8,3]{1,0} convert(g.2)
  dequantized = bf16[4,3]{1,0} dot(tq, cg), lhs_contracting_dims={0}, rhs_contracting_dims={0}
  wide = f32[4,8]{1,0} convert(dq)
  cg32 = f32[8,3]{1,0} convert(g.2)
  blocked = f32[4,3]{1,0} dot(wide, cg32), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  y = f32[4,3]{1,0} multiply(blocked, blocked)
  yt = f32[3,4]{0,1} transpose(y), dimensions={1,0}
  plain = f32[4,4]{1,0} dot(y, yt), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT t = (f32[4,3]{1,0}, bf16[4,3]{1,0}, f32[4,3]{1,0}) tuple(direct, dequantized, blocked)
}
"""


def test_reader_classifies_hand_written_dots():
  report = hlo.fp8_dots(MODULE)
  by_name = {d.name: d for d in report.dots}
  assert set(by_name) == {"direct", "dequantized", "blocked", "plain"}
  assert by_name["direct"].fp8                    # dot on FP8 arrays
  assert by_name["dequantized"].fp8               # convert, scalar multiply, transpose: rewritable
  assert not by_name["blocked"].fp8               # convert -> multiply -> convert: the rewriter stops
  assert by_name["blocked"].lhs_fp8 is False and by_name["blocked"].rhs_fp8 is True
  # FP8 data one op too many away from the dot; a GEMM on another GEMM's output is not a miss.
  assert [d.name for d in report.blocked] == ["blocked"]
  assert "2 of 4 dots in FP8 form, 1 blocked: main.9/blocked" == report.summary()
  assert hlo.parse(MODULE)["region_0.1"]["add.4"].operands == ("a.2", "b.3")


def _lowered_dots(level: str, *overrides: str) -> hlo.DotReport:
  # The toy quickstart in BF16 (as on a GPU) with an untied head: per scanned block q, k, v, out, fc, proj, plus
  # lm_head; the scan body appears once in the module, so 7 FP8 projections.
  cfg = config_lib.load("configs/quickstart.py:toy",
                        ["model.tied_embeddings=False", "model.dtype=bfloat16", f"fp8.level={level}", *overrides])
  (stage,) = lm.stages(cfg)
  low = loop.lower_step(stage.task, stage.options, sharding.make_mesh(stage.options.mesh), stage.batch)
  return hlo.fp8_dots(low.lowered.as_text(dialect="hlo"))


PROJECTIONS = 7


@pytest.fixture(scope="module")
def flax_dots():
  return _lowered_dots("flax")


@pytest.mark.parametrize("level,scaling", [("O1", "delayed"), ("O2", "delayed"), ("O3", "delayed"),
                                           ("O2", "current"), ("O2", "block")])
def test_every_gemm_of_the_train_step_is_fp8(level, scaling, flax_dots):
  report = _lowered_dots(level, f"fp8.scaling={scaling}")
  assert not report.blocked, f"{level}/{scaling}: dots not in FP8 form: {report.summary()}"
  # Forward, dgrad and wgrad of every projection; the same count as flax's direct FP8 dots.
  assert len(report.fp8) == 3 * PROJECTIONS, report.summary()
  assert len(flax_dots.fp8) == len(report.fp8), (flax_dots.summary(), report.summary())


@pytest.mark.parametrize("high_precision,fp8_gemms", [(None, 3 * 6), ((), 3 * 7 + 2)])
def test_classify_keeps_the_vits_ends_out_of_fp8_by_default(high_precision, fp8_gemms):
  """The classify trainer's default keeps the patch embedding and the head out of FP8 (its
  FP8 parity, README): per scanned block q, k, v, out, fc, proj in FP8, 3 GEMMs each; with
  `fp8.high_precision=()` the head's 3 too and the patch embedding's forward and wgrad (the
  images take no gradient, so it has no dgrad)."""
  cfg = classify.default_config()
  cfg.fp8.level = "O2"
  cfg.model.update(num_layers=2, d_model=32, num_heads=2)
  if high_precision is not None:
    cfg.fp8.high_precision = high_precision
  (stage,) = classify.stages(cfg)
  low = loop.lower_step(stage.task, stage.options, sharding.make_mesh(stage.options.mesh), stage.batch)
  report = hlo.fp8_dots(low.lowered.as_text(dialect="hlo"))
  assert not report.blocked, report.summary()
  assert len(report.fp8) == fp8_gemms, report.summary()


def test_bf16_step_has_no_fp8_dots():
  report = _lowered_dots("none")
  assert not report.fp8 and not report.blocked and len(report.dots) >= 3 * PROJECTIONS
