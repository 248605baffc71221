"""ScalingFilter scoring on one GPU, in one run under 5 minutes: jaxlab's packed scorer against
transformers' GPT2LMHeadModel with SDPA attention and length-sorted dynamic batching (the
recipe a PyTorch user would pick), on the same weights and documents, bfloat16.

  python bench/gpu/scalingfilter_speed.py             # one GPU (H100/H200)
  python bench/gpu/scalingfilter_speed.py --dry-run   # anywhere: tiny shapes on CPU, seconds

Meta-models in GPT-2 124M and 774M shapes (12 x 768 and 36 x 1280, context 1024, vocabulary
50304), random weights (no downloads), a BPE tokenizer trained locally on CPython's pydoc
prose. Documents: pieces of that prose with lengths drawn log-uniformly from 30 to 3000
tokens (so about a fifth are longer than the context and scored in windows), EOS before and
after each (jaxlab's default rule; the peer scores the very same token sequences).

Checks (exit status 1): in float32 on the first 64 documents, the peer's log d equals
jaxlab's within 1e-3 (the same work); every number is finite. Speed: predictions scored per
second for both models together, tokenization included, median of --repeats passes after
a warm one. Last line: `vs_dynamic=<jaxlab / peer tokens/s> jaxlab_tokens_s=.. dynamic_tokens_s=..`.
Goal: vs_dynamic >= 1.5.

Imports: jax, flax, optax, numpy, tokenizers, transformers, torch, safetensors and
ml_collections (jaxlab.config). The GPU image has all but ml_collections: `pip download
--no-deps -d bench/gpu/wheels ml_collections` here, carry bench/gpu/wheels, and there
`pip install --no-index --no-deps bench/gpu/wheels/*.whl` first (as for fp8_speed.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, os.path.dirname(HERE))
if "--dry-run" in sys.argv:
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import scalingfilter_score as cpu_bench  # noqa: E402  (the peer's batching, shared with the CPU bench)
from jaxlab.data import tokenizer as tokenizer_lib  # noqa: E402
from jaxlab.models import gpt, hf  # noqa: E402
from jaxlab.scalingfilter import score  # noqa: E402

SHAPES = {"small": (12, 768, 12), "large": (36, 1280, 20)}
DRY_SHAPES = {"small": (1, 64, 2), "large": (2, 64, 2)}


def corpus(n: int, seed: int = 0) -> list[str]:
  """n pieces of pydoc prose, word counts log-uniform in [25, 2500] (about 1.2 tokens a word)."""
  from pydoc_data import topics
  words = " ".join(topics.topics[k] for k in sorted(topics.topics)).split()
  rng = np.random.default_rng(seed)
  out = []
  for length in np.exp(rng.uniform(np.log(25), np.log(2500), n)).astype(int):
    start = int(rng.integers(0, len(words) - length))
    out.append(" ".join(words[start:start + length]))
  return out


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--docs", type=int, default=2000)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--peer-tokens", type=int, default=32768, help="tokens per batch of the dynamic peer")
  p.add_argument("--tokens-per-batch", type=int, default=65536, help="jaxlab's packed tokens per batch")
  p.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU: checks the script, no figures")
  args = p.parse_args()
  import torch
  import transformers
  device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
  shapes, context = (DRY_SHAPES, 64) if args.dry_run else (SHAPES, 1024)
  n_docs = 24 if args.dry_run else args.docs
  texts = corpus(n_docs)
  tmp = tempfile.mkdtemp()
  tok = tokenizer_lib.train_bpe(texts[:500], vocab_size=4096 if args.dry_run else 8192, out_dir=os.path.join(tmp, "t"))
  vocab = len(tok) if args.dry_run else 50304  # GPT-2's head width; ids above the tokenizer's are never seen
  folders = []
  for name, (layers, width, heads) in shapes.items():
    cfg = gpt.GPTConfig(vocab_size=vocab, max_len=context, num_layers=layers, d_model=width, num_heads=heads)
    params = gpt.GPT(cfg).init(jax.random.key(layers), jnp.zeros((1, 8), jnp.int32))["params"]
    folders.append(hf.save_gpt2(os.path.join(tmp, name), params, cfg, tok))
  metas = [score.load_meta_model(f) for f in folders]
  hf_tok = transformers.AutoTokenizer.from_pretrained(folders[0])
  print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}, torch {torch.__version__} "
        f"({device}); {len(texts)} documents; shapes {shapes}, context {context}, vocabulary {vocab}")
  failures = []

  # 1. the same work: float32 log d of both systems on the first 64 documents
  check = texts[:64]
  f32 = score.make_scorer(*metas, options=score.ScoreOptions())
  ours = np.log(score.score_texts(check, *metas).quality_factor)
  peers = [transformers.GPT2LMHeadModel.from_pretrained(f, dtype=torch.float32, attn_implementation="sdpa")
           .to(device).eval() for f in folders]
  _, theirs = cpu_bench.peer_pass(peers, hf_tok, check, f32, tok.eos_token_id, args.peer_tokens, device=device)
  gap = float(np.max(np.abs(ours - theirs)))
  print(f"float32 agreement on {len(check)} documents: max |log d difference| {gap:.1e}")
  if not gap < 1e-3:
    failures.append(f"float32 log d differs from the peer's by {gap:.1e}")

  # 2. speed in bfloat16
  bf16 = score.ScoreOptions(dtype="bfloat16")
  scorer = score.make_scorer(*metas, options=bf16)
  predictions = sum(len(w) - 1 - skip for _, w, skip in cpu_bench.sequences(scorer, texts))
  peers = [m.to(torch.bfloat16) for m in peers]

  def timed(fn):
    fn()
    times = []
    for _ in range(args.repeats):
      t = time.perf_counter()
      out = fn()
      times.append(time.perf_counter() - t)
    return statistics.median(times), out

  t_ours, got = timed(lambda: score.score_texts(texts, *metas, options=bf16, tokens_per_batch=args.tokens_per_batch))

  def peer():
    out = cpu_bench.peer_pass(peers, hf_tok, texts, scorer, tok.eos_token_id, args.peer_tokens, device=device)
    if device == "cuda":
      torch.cuda.synchronize()
    return out[1]

  t_peer, peer_log_d = timed(peer)
  if not (np.isfinite(got.quality_factor).all() and np.isfinite(peer_log_d).all()):
    failures.append("non-finite scores in bfloat16")
  bf16_gap = float(np.max(np.abs(np.log(got.quality_factor) - peer_log_d)))
  ours_tps, peer_tps = predictions / t_ours, predictions / t_peer
  print(f"bfloat16, {predictions} predictions: jaxlab {ours_tps:,.0f} tokens/s ({t_ours:.2f} s), torch SDPA "
        f"length-sorted {args.peer_tokens} {peer_tps:,.0f} tokens/s ({t_peer:.2f} s); max |log d| difference "
        f"{bf16_gap:.1e} (bfloat16 rounding)")
  for f in failures:
    print("FAILED:", f)
  print(f"vs_dynamic={ours_tps / peer_tps:.2f} jaxlab_tokens_s={ours_tps:.0f} dynamic_tokens_s={peer_tps:.0f}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
