"""Query rephrasing: an LLM rewrites a query with explicit aesthetic expectations.

Styles (the paper's prompt styles), each a prompt template:
  details     add details of what a beautiful image of the query looks like
  list        a k-item list of aesthetic qualities
  keywords    a keyword dict (JSON) of subject and aesthetic attributes
  reorganise  reorganise the query into one fluent, aesthetics-first description

Backends share one interface, `Backend(name, complete)` with
complete(requests: list[Request]) -> list[str]:
  offline_backend()      deterministic template expansion (the default; no model needed)
  gpt_backend(...)       jaxlab's GPT generating locally (greedy), e.g. from an lm run
  openai_backend(...)    an OpenAI-compatible chat-completions endpoint (align/endpoint.py)
`rephrase(queries, style, backend, cache_dir)` caches results on disk by
(backend name, style, k, query): one JSON file per key, the key never included.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

STYLES = ("details", "list", "keywords", "reorganise")

TEMPLATES = {
    "details": ("Rewrite the image search query below so that it also describes what a beautiful, high-quality "
                "image of it looks like (composition, sharpness, colour). Answer with the rewritten query only.\n"
                "Query: {query}"),
    "list": ("List {k} aesthetic qualities that the best images for the search query below have, as "
             "'<query>: 1. ... 2. ...' on one line. Answer with that line only.\nQuery: {query}"),
    "keywords": ("Turn the image search query below into a JSON object with the key \"subject\" and one key per "
                 "aesthetic expectation (composition, sharpness, colour). Answer with the JSON only.\n"
                 "Query: {query}"),
    "reorganise": ("Reorganise the image search query below into one fluent description that starts with the "
                   "aesthetic qualities of an ideal result. Answer with the description only.\nQuery: {query}"),
}

# The offline expander's aesthetic expectations, (attribute, phrase), worded as an LLM might
# and never with the captions' words (testbed.CAPTION_PHRASES; a test checks they are disjoint):
# they reach the captions only through a text encoder that knows English.
AESTHETIC_PHRASES = (("composition", "the subject sits right in the middle of the picture"),
                     ("sharpness", "sharp and clear edges"),
                     ("colour", "harmonious, gentle colours"),
                     ("overall", "a beautiful, high quality shot"))


@dataclasses.dataclass(frozen=True)
class Request:
  """One rephrasing request: `query` rewritten in `style` (one of STYLES).

  `k` is the item count of the "list" style; the offline expander also adds that many aesthetic terms."""
  query: str
  style: str
  k: int = 3

  def prompt(self) -> str:
    """The style's template filled in with the query and k: what an LLM backend is sent."""
    return TEMPLATES[self.style].format(query=self.query, k=self.k)


@dataclasses.dataclass(frozen=True)
class Backend:
  """A rephrasing backend: `complete` maps requests to rephrased texts, one per request, in order.

  `name` is part of the cache key, so cached results of different backends never mix."""
  name: str
  complete: Callable[[list[Request]], list[str]]


def check_style(style: str) -> str:
  """Returns `style` unchanged; ValueError if it is not one of STYLES."""
  if style not in STYLES:
    raise ValueError(f"unknown rephrasing style {style!r}; use one of {STYLES}")
  return style


def expand(query: str, style: str, k: int = 3) -> str:
  """The deterministic offline rephrasing of one query: its first k aesthetic expectations
  (AESTHETIC_PHRASES) in the style's form."""
  check_style(style)
  terms = AESTHETIC_PHRASES[:max(1, min(k, len(AESTHETIC_PHRASES)))]
  phrases = [p for _, p in terms]
  if style == "details":
    return f"{query}, " + ", ".join(phrases)
  if style == "list":
    return f"{query}: " + " ".join(f"{i + 1}. {p}" for i, p in enumerate(phrases))
  if style == "keywords":
    return json.dumps({"subject": query, **{a: p for a, p in terms}})
  return "A picture with " + ", ".join(phrases) + f": {query}"   # reorganise


def offline_backend() -> Backend:
  """The deterministic template expander (`expand`) as a backend: no model, no network."""
  return Backend("offline", lambda requests: [expand(r.query, r.style, r.k) for r in requests])


def rephrase(queries: Sequence[str], style: str, backend: Backend, cache_dir: str | None = None,
             k: int = 3) -> list[str]:
  """Rephrased queries in order; cached results are reused, the rest computed in one call."""
  check_style(style)
  requests = [Request(q, style, k) for q in queries]
  out: list[str | None] = [None] * len(requests)
  path = lambda r: os.path.join(cache_dir, hashlib.sha256(
      json.dumps([backend.name, r.style, r.k, r.query]).encode()).hexdigest() + ".json")
  if cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
    for i, r in enumerate(requests):
      if os.path.exists(path(r)):
        with open(path(r)) as f:
          out[i] = json.load(f)["text"]
  todo = [i for i, o in enumerate(out) if o is None]
  if todo:
    results = backend.complete([requests[i] for i in todo])
    if len(results) != len(todo):
      raise RuntimeError(f"backend {backend.name!r} returned {len(results)} results for {len(todo)} requests")
    for i, text in zip(todo, results):
      text = text.strip()
      if not text:
        raise ValueError(f"backend {backend.name!r} returned an empty rephrasing for {requests[i].query!r}")
      out[i] = text
      if cache_dir:
        r = requests[i]
        tmp = path(r) + ".tmp"
        with open(tmp, "w") as f:
          json.dump({"backend": backend.name, "style": r.style, "k": r.k, "query": r.query, "text": text}, f)
        os.replace(tmp, path(r))
  return out


# ---------------------------------------------------------------------------- OpenAI-compatible

def openai_backend(endpoint) -> Backend:
  """Rephrasing through an OpenAI-compatible chat-completions endpoint (align.endpoint.Endpoint)."""
  from jaxlab.align import endpoint as endpoint_lib

  def complete(requests):
    return endpoint_lib.chat_many(endpoint, [[{"role": "user", "content": r.prompt()}] for r in requests])
  return Backend(endpoint.name(), complete)


# ---------------------------------------------------------------------------- local GPT

def greedy_generate(model_cfg, params, prompt_ids: Sequence[int], max_new_tokens: int,
                    eos_id: int | None = None) -> list[int]:
  """Greedy continuation with jaxlab's GPT on one fixed-length buffer (causal attention,
  so the padding after the cursor never reaches the positions read): one compile."""
  length = min(model_cfg.max_len, len(prompt_ids) + max_new_tokens)
  if len(prompt_ids) >= length:
    raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room in max_len={model_cfg.max_len}")
  buf = np.zeros((1, length), np.int32)
  buf[0, :len(prompt_ids)] = prompt_ids
  step = _gpt_next(model_cfg)
  out = []
  for pos in range(len(prompt_ids), length):
    token = int(step(params, jnp.asarray(buf), pos - 1))
    if eos_id is not None and token == eos_id:
      break
    buf[0, pos] = token
    out.append(token)
  return out


@functools.lru_cache(maxsize=8)
def _gpt_next(model_cfg):
  from jaxlab.models.gpt import GPT
  model = GPT(model_cfg)
  return jax.jit(lambda params, tokens, pos: jnp.argmax(model.apply({"params": params}, tokens)[0, pos]))


def gpt_backend(model_cfg, params, tokenizer, max_new_tokens: int = 32, name: str = "gpt") -> Backend:
  """Local rephrasing with a jaxlab GPT and its tokenizer (a transformers tokenizer)."""
  def complete(requests):
    out = []
    for r in requests:
      ids = tokenizer(r.prompt() + "\n")["input_ids"][-(model_cfg.max_len - max_new_tokens):]
      new = greedy_generate(model_cfg, params, ids, max_new_tokens, tokenizer.eos_token_id)
      out.append(tokenizer.decode(new).split("\n")[0].strip() or r.query)
    return out
  return Backend(name, complete)


def gpt_backend_from_workdir(workdir: str, max_new_tokens: int = 32) -> Backend:
  """The GPT of an lm run (configs/quickstart.py, ...): its config, latest params, tokenizer."""
  from jaxlab.train import runs
  run = runs.load_lm(workdir)
  return gpt_backend(run.model.cfg, run.params, run.tokenizer, max_new_tokens, name=f"gpt:{os.path.abspath(workdir)}")


BACKENDS = ("offline", "openai", "gpt", "none")


def backend_from_config(r) -> Backend | None:
  """The backend a config's `rephrase` group names (None for "none": queries as written)."""
  if r.backend == "none":
    return None
  if r.backend == "offline":
    return offline_backend()
  if r.backend == "gpt":
    return gpt_backend_from_workdir(r.gpt_workdir)
  if r.backend == "openai":
    from jaxlab.align import endpoint
    return openai_backend(endpoint.Endpoint(
        model=r.model, base_url_env=r.base_url_env, api_key_env=r.api_key_env, timeout=r.timeout, retries=r.retries,
        max_concurrency=r.max_concurrency))
  raise ValueError(f"rephrase.backend={r.backend!r} is not one of {BACKENDS}")
