"""ScalingFilter scoring speed: jaxlab's scorer (length-bucketed, jit) against the
reference approach — transformers' GPT2LMHeadModel (PyTorch) on the same exported
weights with every document padded to the maximum length — on the same documents in
one run. The quality factors must agree (|log d difference| < 1e-3).

  python bench/scalingfilter_score.py [--docs 48] [--small-layers 12 --large-layers 12]

Weights are random (no hub downloads), in GPT-2 124M shape by default, with a tokenizer
trained locally on the documents. Documents: ../shared/data/text/pile_sample.jsonl
(`contents`), else pydoc topics. Last line: `ratio=<jaxlab docs/s / reference docs/s>`.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.data import builtin, tokenizer as tokenizer_lib
from jaxlab.models import gpt, hf
from jaxlab.scalingfilter import score


def documents(n: int) -> list[str]:
  root = builtin.shared_data_dir()
  if root is not None:
    with open(root / "text" / "pile_sample.jsonl") as f:
      texts = [json.loads(l)["contents"] for l in f]
  else:
    from pydoc_data import topics
    texts = [topics.topics[k] for k in sorted(topics.topics)]
  return [t for t in texts if t.strip()][:n]


def reference_nll(folder: str, texts: list[str], max_len: int) -> tuple[np.ndarray, float]:
  """The reference recipe: pad every document to max_len, HF computes the loss."""
  import torch
  import transformers
  model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  out = []
  start = time.perf_counter()
  with torch.no_grad():
    for text in texts:
      ids = tok(text)["input_ids"][:max_len]
      padded = torch.full((1, max_len), tok.eos_token_id)
      padded[0, :len(ids)] = torch.tensor(ids)
      labels = torch.full((1, max_len), -100)
      labels[0, :len(ids)] = torch.tensor(ids)
      out.append(float(model(padded, labels=labels).loss))
  return np.array(out), time.perf_counter() - start


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--docs", type=int, default=48)
  p.add_argument("--small-layers", type=int, default=6)
  p.add_argument("--large-layers", type=int, default=12)
  p.add_argument("--max-len", type=int, default=1024)
  args = p.parse_args()
  texts = documents(args.docs)
  tmp = tempfile.mkdtemp()
  tok = tokenizer_lib.train_bpe(texts, vocab_size=8192, out_dir=os.path.join(tmp, "tok"))
  folders = []
  for name, layers in (("small", args.small_layers), ("large", args.large_layers)):
    cfg = gpt.GPTConfig(vocab_size=len(tok), max_len=args.max_len, num_layers=layers, d_model=768, num_heads=12)
    params = gpt.GPT(cfg).init(jax.random.key(layers), jnp.zeros((1, 8), jnp.int32))["params"]
    folders.append(hf.save_gpt2(os.path.join(tmp, name), params, cfg, tok))
  small, large = (score.load_meta_model(f) for f in folders)
  n_tokens = [len(tok(t)["input_ids"]) for t in texts]
  # documents the reference truncates would be windowed by jaxlab: compare only what both see whole
  texts = [t for t, n in zip(texts, n_tokens) if n <= args.max_len]
  n_tokens = [n for n in n_tokens if n <= args.max_len]
  print(f"{len(texts)} documents, mean {np.mean(n_tokens):.0f} tokens (max {max(n_tokens)}), padded to "
        f"{args.max_len} by the reference; GPT-2 shapes d_model 768, {args.small_layers} and {args.large_layers} "
        f"layers; {os.cpu_count()} CPUs, {jax.device_count()} {jax.default_backend()} device(s)")

  with open(os.path.join(tmp, "docs.jsonl"), "w") as f:
    for i, t in enumerate(texts):
      f.write(json.dumps({"id": str(i), "text": t}) + "\n")
  # one warm-up pass compiles the bucket shapes; the timed pass is a fresh output file
  score.score_file(os.path.join(tmp, "docs.jsonl"), os.path.join(tmp, "warm.jsonl"), small, large, progress=False)
  start = time.perf_counter()
  score.score_file(os.path.join(tmp, "docs.jsonl"), os.path.join(tmp, "scores.jsonl"), small, large, progress=False)
  jax_time = time.perf_counter() - start
  rows = [json.loads(l) for l in open(os.path.join(tmp, "scores.jsonl"))]
  ref_small, t_small = reference_nll(folders[0], texts, args.max_len)
  ref_large, t_large = reference_nll(folders[1], texts, args.max_len)
  ref_time = t_small + t_large
  log_d_ours = np.array([r["nll_small"] - r["nll_large"] for r in rows])
  log_d_ref = ref_small - ref_large
  gap = float(np.max(np.abs(log_d_ours - log_d_ref)))
  ours, ref = len(texts) / jax_time, len(texts) / ref_time
  print(f"jaxlab scorer (bucketed, jit)            {ours:8.2f} docs/s")
  print(f"reference (torch, padded to {args.max_len})       {ref:8.2f} docs/s")
  print(f"max |log d difference| = {gap:.2e} ({'ok' if gap < 1e-3 else 'MISMATCH'})")
  print(f"ratio={ours / ref:.2f}")


if __name__ == "__main__":
  main()
