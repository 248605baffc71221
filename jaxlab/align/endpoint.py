"""A small client for OpenAI-compatible chat-completions endpoints (stdlib only).

The base URL and the API key come from the environment (names configurable, defaults
OPENAI_BASE_URL and OPENAI_API_KEY). Requests time out, transient failures (connection
errors, timeouts, HTTP 408/409/429/5xx) are retried with exponential backoff, others
fail at once; a reply without choices[0].message.content as a string is an error that
says what came back. The key is only ever placed in the Authorization header: it is
never logged, never part of an error message, never written anywhere.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Sequence

log = logging.getLogger("jaxlab.align.endpoint")

RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)


class EndpointError(RuntimeError):
  """The endpoint failed, or answered something that is not a chat completion."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """Settings of one OpenAI-compatible chat-completions model.

    model             the model name sent with every request
    base_url_env      environment variable with the base URL (e.g. https://api.openai.com/v1)
    api_key_env       environment variable with the API key (read per request, never stored)
    timeout           seconds per HTTP request
    retries, backoff  extra attempts on transient failures; the first wait is `backoff` seconds, doubling each time
    max_concurrency   requests in flight at once in chat_many
    temperature, max_tokens  sampling settings sent with every request
  """
  model: str
  base_url_env: str = "OPENAI_BASE_URL"
  api_key_env: str = "OPENAI_API_KEY"
  timeout: float = 30.0
  retries: int = 3              # extra attempts after the first
  backoff: float = 0.5          # seconds; doubles per retry
  max_concurrency: int = 4
  temperature: float = 0.0
  max_tokens: int = 256

  def base_url(self) -> str:
    """The base URL from `base_url_env`, without a trailing "/"; EndpointError if it is unset or empty."""
    url = os.environ.get(self.base_url_env, "")
    if not url:
      raise EndpointError(f"environment variable {self.base_url_env} is not set (the endpoint's base URL, "
                          "e.g. https://api.openai.com/v1)")
    return url.rstrip("/")

  def name(self) -> str:
    """Identifies the backend in caches: model and URL, never the key."""
    return f"openai:{self.model}@{self.base_url()}"


def _redact(text: str, key: str) -> str:
  return text.replace(key, "[redacted]") if key else text


def chat(ep: Endpoint, messages: list[dict]) -> str:
  """One chat completion; returns the first choice's message content."""
  url = ep.base_url() + "/chat/completions"
  key = os.environ.get(ep.api_key_env, "")
  if not key:
    raise EndpointError(f"environment variable {ep.api_key_env} is not set (the endpoint's API key)")
  body = json.dumps({"model": ep.model, "messages": messages, "temperature": ep.temperature,
                     "max_tokens": ep.max_tokens}).encode()
  last = ""
  for attempt in range(ep.retries + 1):
    if attempt:
      time.sleep(ep.backoff * 2 ** (attempt - 1))
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {key}"})
    try:
      with urllib.request.urlopen(request, timeout=ep.timeout) as response:
        raw = response.read()
    except urllib.error.HTTPError as e:
      detail = _redact(e.read()[:300].decode("utf-8", "replace"), key)
      last = f"HTTP {e.code}: {detail}"
      if e.code not in RETRY_STATUS:
        raise EndpointError(f"POST {url} failed with {last} (not retried)") from None
      log.warning("POST %s attempt %d/%d: HTTP %d", url, attempt + 1, ep.retries + 1, e.code)
      continue
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as e:
      reason = getattr(e, "reason", e)
      last = f"timed out after {ep.timeout}s" if isinstance(reason, (socket.timeout, TimeoutError)) else str(reason)
      log.warning("POST %s attempt %d/%d: %s", url, attempt + 1, ep.retries + 1, last)
      continue
    return _content(raw, url, key)
  raise EndpointError(f"POST {url} failed after {ep.retries + 1} attempts; last error: {last}")


def _content(raw: bytes, url: str, key: str) -> str:
  shown = _redact(raw[:200].decode("utf-8", "replace"), key)
  try:
    reply = json.loads(raw)
    content = reply["choices"][0]["message"]["content"]
  except (json.JSONDecodeError, UnicodeDecodeError):
    raise EndpointError(f"malformed reply from {url}: not JSON: {shown!r}") from None
  except (KeyError, IndexError, TypeError):
    raise EndpointError(f"malformed reply from {url}: no choices[0].message.content in {shown!r}") from None
  if not isinstance(content, str):
    raise EndpointError(f"malformed reply from {url}: message content is {type(content).__name__}, not a string")
  return content


def chat_many(ep: Endpoint, conversations: Sequence[list[dict]]) -> list[str]:
  """Completions in order, at most ep.max_concurrency requests in flight."""
  if ep.max_concurrency < 1:
    raise ValueError(f"max_concurrency must be >= 1, got {ep.max_concurrency}")
  with concurrent.futures.ThreadPoolExecutor(max_workers=ep.max_concurrency) as pool:
    return list(pool.map(lambda m: chat(ep, m), conversations))
