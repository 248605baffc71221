"""ScalingFilter scoring speed: jaxlab's scorer (documents packed into rows, jit) against
the reference approach — transformers' GPT2LMHeadModel (PyTorch) on the same exported
weights with every document padded to the maximum length — in one run. The quality
factors must agree (|log d difference| < 1e-3).

  python bench/scalingfilter_score.py [--docs 128] [--ref-docs 32] [--repeats 3]

Weights are random (no hub downloads), in GPT-2 124M shape (6 and 12 layers) by default,
with a tokenizer trained locally on the documents. Documents: ../shared/data/text/
pile_sample.jsonl (`contents`), else pydoc topics.

Timing: the scorer runs `--docs` documents through `score_file` (reading, tokenizing,
writing rows included). The first pass compiles its batch shapes and is reported as the
cold time; the steady state (what a corpus of millions of documents sees, the shapes
being compiled once) is the median of `--repeats` more passes over the same documents
into fresh output files. The reference is timed on the first `--ref-docs` documents only:
it pads every one to the same length, so its time per document does not depend on which
documents they are. docs/s is per document in both. Last line:
`ratio=<jaxlab steady docs/s / reference docs/s>`.
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


def reference_nll(folder: str, texts: list[str], max_len: int) -> tuple[np.ndarray, float, float]:
  """The reference recipe: pad every document to max_len, HF computes the loss. Returns the
  losses, wall and process cpu seconds."""
  import torch
  import transformers
  model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  out = []
  start, cpu = time.perf_counter(), time.process_time()
  with torch.no_grad():
    for text in texts:
      ids = tok(text)["input_ids"][:max_len]
      padded = torch.full((1, max_len), tok.eos_token_id)
      padded[0, :len(ids)] = torch.tensor(ids)
      labels = torch.full((1, max_len), -100)
      labels[0, :len(ids)] = torch.tensor(ids)
      out.append(float(model(padded, labels=labels).loss))
  return np.array(out), time.perf_counter() - start, time.process_time() - cpu


def timed_score(small, large, docs_path: str, out_path: str) -> tuple[float, float]:
  """(wall s, process cpu s) of one scoring pass into a fresh output file."""
  wall, cpu = time.perf_counter(), time.process_time()
  score.score_file(docs_path, out_path, small, large, progress=False)
  return time.perf_counter() - wall, time.process_time() - cpu


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--docs", type=int, default=128, help="documents the scorer is timed on")
  p.add_argument("--ref-docs", type=int, default=32, help="the first ones, timed with the reference too")
  p.add_argument("--repeats", type=int, default=3, help="warm scorer passes (median)")
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
  plan = score.plan_packed(n_tokens, context=args.max_len, pack_len=score.PACK_LEN,
                           tokens_per_batch=score.TOKENS_PER_BATCH, row_multiple=1)
  computed = sum(capacity * size for capacity, _, size in plan)
  print(f"{len(texts)} documents, mean {np.mean(n_tokens):.0f} tokens (max {max(n_tokens)}); the scorer packs them "
        f"into {computed} token slots ({computed / sum(n_tokens):.2f}x the real tokens), the reference pads each to "
        f"{args.max_len} ({args.max_len / np.mean(n_tokens):.1f}x); GPT-2 shapes d_model 768, {args.small_layers} "
        f"and {args.large_layers} layers; {os.cpu_count()} CPUs, {jax.device_count()} {jax.default_backend()} "
        f"device(s)")

  docs_path = os.path.join(tmp, "docs.jsonl")
  with open(docs_path, "w") as f:
    for i, t in enumerate(texts):
      f.write(json.dumps({"id": str(i), "text": t}) + "\n")
  cold, _ = timed_score(small, large, docs_path, os.path.join(tmp, "cold.jsonl"))
  warm = [timed_score(small, large, docs_path, os.path.join(tmp, f"warm{r}.jsonl")) for r in range(args.repeats)]
  jax_wall, jax_cpu = (float(np.median(w)) for w in zip(*warm))
  rows = [json.loads(l) for l in open(os.path.join(tmp, "warm0.jsonl"))]

  ref_texts = texts[:args.ref_docs]
  ref_small, t_small, c_small = reference_nll(folders[0], ref_texts, args.max_len)
  ref_large, t_large, c_large = reference_nll(folders[1], ref_texts, args.max_len)
  ref_time, ref_cpu = t_small + t_large, c_small + c_large
  log_d_ours = np.array([r["nll_small"] - r["nll_large"] for r in rows[:len(ref_texts)]])
  gap = float(np.max(np.abs(log_d_ours - (ref_small - ref_large))))
  n, n_ref = len(texts), len(ref_texts)
  ours, ref = n / jax_wall, n_ref / ref_time
  print(f"jaxlab scorer, cold (incl. compiles)    {n / cold:8.2f} docs/s   {n} docs, first pass")
  print(f"jaxlab scorer, warm (packed, jit)        {ours:8.2f} docs/s   {n} docs, median of {args.repeats}, "
        f"{n / jax_cpu:.2f} docs per cpu-s")
  print(f"reference (torch, padded to {args.max_len})       {ref:8.2f} docs/s   first {n_ref} docs, "
        f"{n_ref / ref_cpu:.2f} docs per cpu-s")
  print(f"max |log d difference| = {gap:.2e} over {n_ref} docs ({'ok' if gap < 1e-3 else 'MISMATCH'})")
  print(f"cold_ratio={n / cold / ref:.2f} cpu_ratio={(n / jax_cpu) / (n_ref / ref_cpu):.2f}")
  print(f"ratio={ours / ref:.2f}")


if __name__ == "__main__":
  main()
