"""Which dots of an HLO module take FP8 operands in the form XLA's GPU GEMM rewriter turns
into FP8 GEMMs.

The rewriter (xla/service/gpu/transforms/gemm_rewriter.cc) matches, for each operand of a
dot, an FP8 value followed by at most a convert and a multiply by a scalar scale (the
dequantize), then only layout ops (bitcast, broadcast, copy, reshape, slice, transpose)
into the dot. A dot taken directly on FP8 arrays is the simplest case of that form. Any
other op on the way (a second convert, an add, a fused select) leaves the dot a BF16/F32
GEMM on dequantized data. This module reads the text of a lowered module
(`jax.jit(f).lower(...).as_text(dialect="hlo")`, before optimisation, on any backend) and
classifies every dot, so the check runs on CPU:

  report = hlo.fp8_dots(lowered.as_text(dialect="hlo"))
  report.fp8, report.blocked   # dots in FP8 form; dots that touch FP8 data but are not
"""
from __future__ import annotations

import dataclasses
import re

from jaxlab.hlo_text import Instruction, parse

LAYOUT_OPS = frozenset({"bitcast", "broadcast", "copy", "reshape", "slice", "transpose"})
_FP8 = re.compile(r"^f8e\w+$")


def _is_scalar_like(comp: dict[str, Instruction], name: str) -> bool:
  """A scale: one element, or a broadcast of one."""
  ins = comp.get(name)
  while ins is not None and ins.opcode in LAYOUT_OPS and ins.num_elements != 1:
    ins = comp.get(ins.operands[0]) if ins.operands else None
  return ins is not None and ins.num_elements == 1


def in_fp8_form(comp: dict[str, Instruction], name: str) -> bool:
  """Whether the value `name` is an FP8 array, optionally converted once and multiplied once
  by a scalar (in that order), then passed through layout ops only."""
  def walk(name: str, stage: int) -> bool:
    # stage 0: layout ops, a multiply or a convert may come; 1: after the multiply, a
    # convert may come; 2: after the convert, only the FP8 value itself.
    ins = comp.get(name)
    if ins is None:
      return False
    if _FP8.match(ins.element_type):
      return True
    if stage == 0 and ins.opcode in LAYOUT_OPS and ins.operands:
      return walk(ins.operands[0], 0)
    if stage == 0 and ins.opcode == "multiply" and len(ins.operands) == 2:
      a, b = ins.operands
      return (walk(a, 1) and _is_scalar_like(comp, b)) or (walk(b, 1) and _is_scalar_like(comp, a))
    if stage <= 1 and ins.opcode == "convert" and ins.operands:
      return walk(ins.operands[0], 2)
    return False
  return walk(name, 0)


# A GEMM's output is new data, not its operands' FP8 data on the way to another GEMM.
_NEW_DATA = frozenset({"dot", "convolution", "custom-call", "while", "call", "fusion", "conditional"})


def _touches_fp8(comp: dict[str, Instruction], name: str, depth: int = 8) -> bool:
  """Whether FP8 data reaches `name` within `depth` producers, not through another GEMM
  (to report near misses: the dequantize of an FP8 tensor with one op too many)."""
  ins = comp.get(name)
  if ins is None:
    return False
  if _FP8.match(ins.element_type):
    return True
  if ins.opcode in _NEW_DATA:
    return False
  return depth > 0 and any(_touches_fp8(comp, o, depth - 1) for o in ins.operands)


@dataclasses.dataclass(frozen=True)
class Dot:
  """A dot of the module: where it is, its result type, and whether each operand is in FP8 form."""
  computation: str
  name: str
  type: str
  lhs_fp8: bool
  rhs_fp8: bool
  touches_fp8: bool

  @property
  def fp8(self) -> bool:
    """Both operands in FP8 form: an FP8 GEMM after XLA's rewrite."""
    return self.lhs_fp8 and self.rhs_fp8


@dataclasses.dataclass(frozen=True)
class DotReport:
  """Every dot of a module, split into FP8 GEMMs, near misses and plain dots."""
  dots: tuple[Dot, ...]

  @property
  def fp8(self) -> tuple[Dot, ...]:
    """Dots with both operands in FP8 form."""
    return tuple(d for d in self.dots if d.fp8)

  @property
  def blocked(self) -> tuple[Dot, ...]:
    """Dots that FP8 data reaches but not in the rewritable form."""
    return tuple(d for d in self.dots if not d.fp8 and d.touches_fp8)

  def summary(self) -> str:
    """One line: counts, then the names of blocked dots."""
    line = f"{len(self.fp8)} of {len(self.dots)} dots in FP8 form, {len(self.blocked)} blocked"
    if self.blocked:
      line += ": " + ", ".join(f"{d.computation}/{d.name}" for d in self.blocked)
    return line


def fp8_dots(text: str) -> DotReport:
  """Classify every dot of an HLO module's text."""
  dots = []
  for cname, comp in parse(text).items():
    for ins in comp.values():
      if ins.opcode != "dot" or len(ins.operands) != 2:
        continue
      lhs, rhs = ins.operands
      dots.append(Dot(cname, ins.name, ins.type, in_fp8_form(comp, lhs), in_fp8_form(comp, rhs),
                      _touches_fp8(comp, lhs) or _touches_fp8(comp, rhs)))
  return DotReport(tuple(dots))
