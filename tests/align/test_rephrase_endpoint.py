"""Rephrasing backends and the OpenAI-compatible client against a real HTTP server on
127.0.0.1 (stdlib http.server in a thread): timeouts, retries, malformed replies,
bounded concurrency, and the API key never reaching logs, errors or cache files."""
import http.server
import json
import logging
import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.align import endpoint, judge, rephrase

KEY = "sk-test-7f3a9c1e-SECRET"


class Server:
  """Each POST runs behaviour(n, body, headers) -> (status, reply bytes, delay seconds)."""

  def __init__(self, behaviour):
    self.behaviour, self.requests, self.auth = behaviour, [], []
    self.in_flight = self.max_in_flight = 0
    self.lock = threading.Lock()
    outer = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with outer.lock:
          n = len(outer.requests)
          outer.requests.append((self.path, body))
          outer.auth.append(self.headers.get("Authorization"))
          outer.in_flight += 1
          outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
        try:
          status, reply, delay = outer.behaviour(n, body, self.headers)
          time.sleep(delay)
        finally:
          # Leave the count before replying: once the client has the reply it may send its
          # next request, which must not overlap this one in the count.
          with outer.lock:
            outer.in_flight -= 1
        try:
          self.send_response(status)
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(reply)))
          self.end_headers()
          self.wfile.write(reply)
        except (BrokenPipeError, ConnectionResetError):
          pass

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.httpd.daemon_threads = True
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

  def __enter__(self):
    self.thread.start()
    return self

  def __exit__(self, *exc):
    self.httpd.shutdown()
    self.httpd.server_close()

  @property
  def url(self):
    return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


def ok(text):
  return 200, json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode(), 0.0


def echo_query(n, body, headers):
  prompt = body["messages"][0]["content"]
  return ok("pretty " + prompt.rsplit("Query: ", 1)[-1])


@pytest.fixture
def env(monkeypatch):
  def set_url(url):
    monkeypatch.setenv("OPENAI_BASE_URL", url)
  monkeypatch.setenv("OPENAI_API_KEY", KEY)
  return set_url


def ep(**kw):
  return endpoint.Endpoint(**{"model": "test-model", "timeout": 2.0, "retries": 2, "backoff": 0.01, **kw})


def test_offline_styles_are_deterministic():
  q = "a red circle"
  mid, sharp, colour = ("the subject sits right in the middle of the picture", "sharp and clear edges",
                        "harmonious, gentle colours")
  assert rephrase.expand(q, "details") == f"a red circle, {mid}, {sharp}, {colour}"
  assert rephrase.expand(q, "list", k=2) == f"a red circle: 1. {mid} 2. {sharp}"
  assert json.loads(rephrase.expand(q, "keywords")) == {"subject": q, "composition": mid, "sharpness": sharp,
                                                         "colour": colour}
  assert rephrase.expand(q, "reorganise") == f"A picture with {mid}, {sharp}, {colour}: a red circle"
  for style in rephrase.STYLES:
    assert q in rephrase.Request(q, style).prompt()
  with pytest.raises(ValueError, match="unknown rephrasing style 'fancy'"):
    rephrase.expand(q, "fancy")


def test_openai_backend_request_cache_and_concurrency(env, tmp_path, caplog):
  caplog.set_level(logging.DEBUG)
  def slow_echo(n, body, headers):
    status, reply, _ = echo_query(n, body, headers)
    return status, reply, 0.1
  with Server(slow_echo) as server:
    env(server.url)
    backend = rephrase.openai_backend(ep(max_concurrency=2))
    queries = [f"query {i}" for i in range(6)]
    out = rephrase.rephrase(queries, "details", backend, cache_dir=str(tmp_path / "cache"))
    assert out == [f"pretty {q}" for q in queries]
    assert len(server.requests) == 6 and 1 <= server.max_in_flight <= 2
    path, body = server.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "test-model"
    assert set(server.auth) == {f"Bearer {KEY}"}
    # second call: all cached, no request
    assert rephrase.rephrase(queries, "details", backend, cache_dir=str(tmp_path / "cache")) == out
    assert len(server.requests) == 6
    # another style is another key
    rephrase.rephrase(queries[:1], "list", backend, cache_dir=str(tmp_path / "cache"))
    assert len(server.requests) == 7
  for name in os.listdir(tmp_path / "cache"):
    assert KEY not in (tmp_path / "cache" / name).read_text()
  assert KEY not in caplog.text


def test_timeouts_and_5xx_are_retried(env, caplog):
  caplog.set_level(logging.DEBUG)
  def flaky(n, body, headers):
    if n == 0:
      return 200, b"{}", 1.0          # longer than the timeout
    if n == 1:
      return 503, b'{"error": "busy"}', 0.0
    return ok("fine")
  with Server(flaky) as server:
    env(server.url)
    assert endpoint.chat(ep(timeout=0.3), [{"role": "user", "content": "hi"}]) == "fine"
    assert len(server.requests) == 3
  assert "timed out" in caplog.text and "HTTP 503" in caplog.text and KEY not in caplog.text


def test_gives_up_with_a_clear_error_and_no_key(env, caplog):
  caplog.set_level(logging.DEBUG)
  # a hostile server that echoes the Authorization header back in its error body
  echo_auth = lambda n, body, headers: (500, json.dumps({"error": headers["Authorization"]}).encode(), 0.0)
  with Server(echo_auth) as server:
    env(server.url)
    with pytest.raises(endpoint.EndpointError, match=r"failed after 3 attempts; last error: HTTP 500") as err:
      endpoint.chat(ep(), [{"role": "user", "content": "hi"}])
    assert len(server.requests) == 3
  assert KEY not in str(err.value) and "[redacted]" in str(err.value)
  assert KEY not in caplog.text


def test_client_errors_are_not_retried(env):
  with Server(lambda n, b, h: (401, b'{"error": "bad key"}', 0.0)) as server:
    env(server.url)
    with pytest.raises(endpoint.EndpointError, match=r"HTTP 401.*not retried"):
      endpoint.chat(ep(), [{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1


@pytest.mark.parametrize("reply,msg", [(b"<html>oops</html>", "not JSON"),
                                       (b'{"choices": []}', r"no choices\[0\].message.content"),
                                       (b'{"choices": [{"message": {"content": null}}]}', "not a string")])
def test_malformed_replies(env, reply, msg):
  with Server(lambda n, b, h: (200, reply, 0.0)) as server:
    env(server.url)
    with pytest.raises(endpoint.EndpointError, match="malformed reply.*" + msg):
      endpoint.chat(ep(), [{"role": "user", "content": "hi"}])


def test_missing_environment(monkeypatch):
  monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
  with pytest.raises(endpoint.EndpointError, match="OPENAI_BASE_URL is not set"):
    endpoint.chat(ep(), [])
  monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9")
  monkeypatch.delenv("OPENAI_API_KEY", raising=False)
  with pytest.raises(endpoint.EndpointError, match="OPENAI_API_KEY is not set"):
    endpoint.chat(ep(), [])


def test_vision_judge_sends_images_and_parses(env):
  answers = iter(["1", "1", "1", "Set 2 is better", "maybe"])
  with Server(lambda n, b, h: ok(next(answers))) as server:
    env(server.url)
    vj = judge.openai_vision_judge(ep())
    a, b = [np.zeros((4, 4, 3), np.uint8)], [np.full((4, 4, 3), 255, np.uint8)] * 2
    assert judge.order_consistent(vj, "a red circle", a, b) == "tie"   # "1" both times: position bias
    assert judge.order_consistent(vj, "a red circle", a, b) == "a"     # "1", then "2" once swapped
    content = server.requests[0][1]["messages"][0]["content"]
    urls = [c["image_url"]["url"] for c in content if c["type"] == "image_url"]
    assert len(urls) == 3 and all(u.startswith("data:image/png;base64,") for u in urls)
    with pytest.raises(endpoint.EndpointError, match="does not start with 1 or 2"):
      vj("q", a, b)


def test_local_gpt_greedy_matches_unpadded_reference():
  import transformers

  from jaxlab.align import testbed
  from jaxlab.models.gpt import GPT, GPTConfig
  tok = transformers.PreTrainedTokenizerFast(tokenizer_object=testbed.word_tokenizer(), eos_token="[EOS]",
                                             pad_token="[PAD]", unk_token="[UNK]")
  cfg = GPTConfig(vocab_size=len(tok), max_len=96, num_layers=1, d_model=32, num_heads=2)
  params = jax.jit(GPT(cfg).init)(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"]
  prompt = [5, 17, 42, 7]
  got = rephrase.greedy_generate(cfg, params, prompt, 3)
  ids = list(prompt)
  apply = jax.jit(GPT(cfg).apply)
  for _ in range(3):  # reference: the whole unpadded sequence each step
    ids.append(int(np.argmax(np.asarray(apply({"params": params}, jnp.asarray([ids])))[0, -1])))
  assert got == ids[len(prompt):]
  backend = rephrase.gpt_backend(cfg, params, tok, max_new_tokens=4)
  out = rephrase.rephrase(["a red circle"], "details", backend)
  assert isinstance(out[0], str) and out[0]
