"""The text of an HLO module, parsed: computations of instructions (name, result type, opcode,
operands, attributes). Both the lowered form (`lowered.as_text(dialect="hlo")`, what
`jaxlab.fp8.hlo` classifies) and the optimized one (`compiled.as_text()`, what
`jaxlab.targets.kernel_traffic` reads) parse."""
from __future__ import annotations

import dataclasses
import re

_TYPE = re.compile(r"^(\w+)\[([^\]]*)\]")
ITEMSIZE = dict(pred=1, s8=1, u8=1, f8e4m3fn=1, f8e5m2=1, s16=2, u16=2, f16=2, bf16=2, s32=4, u32=4, f32=4,
                s64=8, u64=8, f64=8)
_ARRAY = re.compile(r"\b(" + "|".join(ITEMSIZE) + r")\[([\d,]*)\]")


def nbytes(type_text: str) -> int:
  """Bytes of the arrays an HLO type text names (one array, or each of a tuple's)."""
  total = 0
  for dtype, dims in _ARRAY.findall(type_text):
    n = ITEMSIZE[dtype]
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += n
  return total


def entry(text: str) -> str:
  """The name of a module's ENTRY computation."""
  m = re.search(r"^ENTRY %?([\w.\-]+)", text, re.M)
  if not m:
    raise ValueError("no ENTRY computation in this HLO text")
  return m.group(1)


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction: its name, result type text, opcode, operand names, the text after its
  operands (attributes such as `calls=`, `metadata={op_name=...}`, `backend_config=`) and
  whether it is its computation's ROOT."""
  name: str
  type: str
  opcode: str
  operands: tuple[str, ...]
  attributes: str = ""
  root: bool = False

  def attribute(self, pattern: str) -> str | None:
    """The first group of regex `pattern` in the attributes (e.g. r'calls=%?([\\w.\\-]+)'), or None."""
    m = re.search(pattern, self.attributes)
    return m.group(1) if m else None

  @property
  def element_type(self) -> str:
    """The element type ("f32", "f8e4m3fn", ...), "" for a tuple."""
    m = _TYPE.match(self.type)
    return m.group(1) if m else ""

  @property
  def num_elements(self) -> int:
    """Elements of an array result (1 for a scalar); -1 for a tuple."""
    m = _TYPE.match(self.type)
    if not m:
      return -1
    n = 1
    for d in filter(None, m.group(2).split(",")):
      n *= int(d.strip().lstrip("<=").split(":")[0])
    return n


def _matching(text: str, start: int) -> int:
  """Index just past the bracket that closes the one at text[start]."""
  open_, close = text[start], {"(": ")", "{": "}", "[": "]"}[text[start]]
  depth = 0
  for i in range(start, len(text)):
    if text[i] == open_:
      depth += 1
    elif text[i] == close:
      depth -= 1
      if depth == 0:
        return i + 1
  raise ValueError(f"unbalanced {open_!r} in {text[:80]!r}")


def _split_top(args: str) -> list[str]:
  out, depth, cur = [], 0, []
  for ch in args:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == "," and depth == 0:
      out.append("".join(cur))
      cur = []
    else:
      cur.append(ch)
  if "".join(cur).strip():
    out.append("".join(cur))
  return out


def _instruction(line: str) -> Instruction | None:
  body = line.strip()
  root = body.startswith("ROOT ")
  if root:
    body = body[5:]
  name, eq, rest = body.partition(" = ")
  if not eq or " " in name.strip():
    return None
  rest = rest.lstrip()
  if rest.startswith("("):
    end = _matching(rest, 0)
  else:
    m = re.match(r"\w+\[[^\]]*\](\{[^}]*\})?|\w+\[\]|\w+", rest)
    if not m:
      return None
    end = m.end()
  type_, rest = rest[:end], rest[end:].lstrip()
  m = re.match(r"([\w\-]+)\(", rest)
  if not m:
    return None
  close = _matching(rest, m.end() - 1)
  # (an operand may be printed after a comment, "/*index=5*/%copy.829")
  args = (re.sub(r"/\*.*?\*/", " ", a) for a in _split_top(rest[m.end():close - 1]))
  operands = tuple(a.split()[-1].lstrip("%") for a in args if a.split())
  return Instruction(name.strip().lstrip("%"), type_, m.group(1), operands, rest[close:], root)


def parse(text: str) -> dict[str, dict[str, Instruction]]:
  """{computation: {instruction name: Instruction}} of an HLO module's text, in order."""
  comps: dict[str, dict[str, Instruction]] = {}
  current = None
  for line in text.splitlines():
    if not line.strip() or line.lstrip().startswith("//"):
      continue
    if not line.startswith(" ") and line.rstrip().endswith("{"):
      head = line.rstrip()[:-1].split("(")[0].split()  # "ENTRY main.1 {", "%region_0 (p: f32[]) -> f32[] {"
      current = head[-1].lstrip("%") if head else "?"
      comps[current] = {}
      continue
    if line.strip() == "}":
      current = None
      continue
    if current is not None:
      ins = _instruction(line)
      if ins is not None:
        comps[current][ins.name] = ins
  return comps
