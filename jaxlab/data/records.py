"""Malformed input, reported the same way everywhere: a Reject names the file, the line and
the reason. Kept free of heavy imports (no tensorflow-datasets), so the ScalingFilter scorer
and other readers can use it on machines that only have jax and tokenizers."""
from __future__ import annotations

import dataclasses
from typing import Any

# Why a candidate record was rejected.
REJECT_REASONS = (
    "invalid_utf8",  # a line is not valid UTF-8
    "bad_json",  # a .jsonl line does not parse (blank lines included)
    "not_object",  # it parses, but is not a JSON object
    "missing_field",  # the object has no `text_field`
    "not_string",  # the field is there, but is not a string
    "empty_text",  # the text is empty or whitespace only
)
_EXCERPT_CHARS = 120


@dataclasses.dataclass(frozen=True)
class Reject:
  """A candidate record that cannot be used: its file name, where it starts (the 1-based
  line, or the row of a table or dataset), one of REJECT_REASONS and the first characters
  of that line when there is one. The text pipeline and the ScalingFilter scorer both
  report malformed input with it."""

  file: str
  line: int  # 1-based
  reason: str
  excerpt: str = ""


def excerpt(raw: bytes) -> str:
  """The first characters of a raw line, undecodable bytes escaped, for a Reject."""
  text = raw.rstrip(b"\r\n").decode("utf-8", errors="backslashreplace")
  return text[:_EXCERPT_CHARS]


def field_at(obj: Any, dotted: str) -> Any:
  """`obj['a']['b']` for `dotted='a.b'`; KeyError when any step is missing."""
  for key in dotted.split("."):
    if not isinstance(obj, dict) or key not in obj:
      raise KeyError(dotted)
    obj = obj[key]
  return obj
