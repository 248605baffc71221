"""The judge protocol: rank two result sets, ask again with the order swapped; answers
that disagree (position bias) count as a tie ("order consistency").

A judge is a function judge(query, first_images, second_images) -> "first" | "second".
Offline: `score_judge(score_fn)` prefers the set with the higher mean score(query, images);
the trainer's judge scores from the testbed's ground truth with its own noise (relevance
first, then aesthetics), never from the aesthetic model that built the training pairs.
`aesthetic_judge(score_fn)` ignores the query. Online: `openai_vision_judge(...)` asks an
OpenAI-compatible vision model.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Judge = Callable[[str, Sequence, Sequence], str]


def order_consistent(judge: Judge, query: str, set_a, set_b) -> str:
  """'a', 'b', or 'tie' when the two orders disagree."""
  first = judge(query, set_a, set_b)
  second = judge(query, set_b, set_a)
  for answer in (first, second):
    if answer not in ("first", "second"):
      raise ValueError(f"a judge must answer 'first' or 'second', got {answer!r}")
  if first == "first" and second == "second":
    return "a"
  if first == "second" and second == "first":
    return "b"
  return "tie"


def score_judge(score: Callable[[str, Sequence], np.ndarray]) -> Judge:
  """score(query, images) -> one score per image; the first set wins ties of the mean (a position
  bias that the swapped order turns into a tie)."""
  def judge(query, first, second):
    return "first" if float(np.mean(score(query, first))) >= float(np.mean(score(query, second))) else "second"
  return judge


def aesthetic_judge(score: Callable[[Sequence], np.ndarray]) -> Judge:
  """score(images) -> aesthetic scores; the first set wins ties of the mean (a position
  bias that the swapped order turns into a tie)."""
  def judge(query, first, second):
    del query
    return "first" if float(np.mean(score(first))) >= float(np.mean(score(second))) else "second"
  return judge


def compare(judge: Judge, queries: Sequence[str], sets_a: Sequence, sets_b: Sequence) -> dict:
  """Win / tie / loss rates of system A over system B across queries."""
  out = [order_consistent(judge, q, a, b) for q, a, b in zip(queries, sets_a, sets_b)]
  n = max(len(out), 1)
  return {"win": out.count("a") / n, "tie": out.count("tie") / n, "loss": out.count("b") / n, "count": len(out)}


def openai_vision_judge(endpoint, to_png: Callable = None) -> Judge:
  """A judge asking an OpenAI-compatible vision model which of two result sets is better
  for the query. Images go as PNG data URLs; the answer must start with 1 or 2."""
  import base64
  import re

  from jaxlab.align import endpoint as endpoint_lib

  def url(image) -> str:
    return "data:image/png;base64," + base64.b64encode((to_png or png_bytes)(image)).decode()

  def judge(query, first, second):
    content = [{"type": "text", "text": (
        f"Two result sets were retrieved for the image search query {query!r}. Which set better satisfies "
        "the query and human aesthetic preference? Answer with 1 or 2 only.")}]
    for n, images in ((1, first), (2, second)):
      content.append({"type": "text", "text": f"Set {n}:"})
      content += [{"type": "image_url", "image_url": {"url": url(im)}} for im in images]
    answer = endpoint_lib.chat(endpoint, [{"role": "user", "content": content}])
    match = re.match(r"\s*(?:set\s*)?([12])\b", answer, re.IGNORECASE)
    if not match:
      raise endpoint_lib.EndpointError(f"judge reply {answer[:80]!r} does not start with 1 or 2")
    return "first" if match.group(1) == "1" else "second"
  return judge


def png_bytes(image) -> bytes:
  """[H, W, 3] uint8 (or float in [0, 1]) -> PNG bytes."""
  import io

  from PIL import Image
  arr = np.asarray(image)
  if arr.dtype != np.uint8:
    arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).save(buf, format="PNG")
  return buf.getvalue()
