"""ScalingFilter scoring speed against what a user would pick instead, on the same weights and
documents, in one run:

  jaxlab     the packed scorer (`score_texts`: documents packed into rows, jit, the next batch
             tokenized on a host thread while this one runs)
  dynamic    transformers' GPT2LMHeadModel with SDPA attention on the same token sequences,
             sorted by length and batched up to --peer-tokens tokens, padded only to each
             batch's longest (the strongest PyTorch recipe on CPU)
  alone      the same PyTorch model, one sequence per call at its own length (no padding)
  reference  ScalingFilter's recipe: each document truncated to C tokens, batches of 12 in
             input order padded to the batch's longest

  python bench/scalingfilter_score.py [--docs 48] [--long-docs 3] [--repeats 3]

Two rules, each system scoring exactly the same predictions: `window` (jaxlab's default:
EOS before and after each text, documents longer than the context C cut into one-token-overlap
windows) and `truncate` (the reference's: the first C tokens, no EOS). Documents: the first
--docs Pile documents (../shared/data, else pydoc topics) plus --long-docs documents of about
2C tokens (Pride and Prejudice, else pydoc), so windows are timed. Weights are random, in GPT-2
124M's width (d_model 768) with 6 and 12 layers, tokenizer trained locally; no downloads.

tokens/s counts the predictions scored (both models), tokenization included, median of
--repeats warm passes (every shape compiled before). `host` is jaxlab's tokenization and
packing alone (no model) over its wall time. Every system's log d must agree with jaxlab's
within 1e-3. Last line: `vs_dynamic=<jaxlab / dynamic, window> vs_reference=<jaxlab /
reference, truncate>`. Goal on this CPU: vs_dynamic >= 1.25.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxlab.data import builtin, tokenizer as tokenizer_lib
from jaxlab.models import gpt, hf
from jaxlab.scalingfilter import score

RULES = {"window": score.ScoreOptions(), "truncate": score.ScoreOptions("truncate", boundaries="none")}


def documents(n: int, n_long: int, long_chars: int) -> list[str]:
  root = builtin.shared_data_dir()
  if root is not None:
    with open(root / "text" / "pile_sample.jsonl") as f:
      texts = [json.loads(l)["contents"] for l in f]
    book = (root / "text" / "pride_and_prejudice.txt").read_text()
  else:
    from pydoc_data import topics
    texts = [topics.topics[k] for k in sorted(topics.topics)]
    book = "\n\n".join(texts)
  short = [t for t in texts if t.strip()][:n]
  start = len(book) // 4  # past the Gutenberg header
  return short + [book[start + i * long_chars:start + (i + 1) * long_chars] for i in range(n_long)]


def sequences(scorer: score.Scorer, texts: list[str]) -> list[tuple[int, np.ndarray, int]]:
  """(document, tokens, predictions to skip) of every window jaxlab scores: the workload."""
  prepared = score.prepare_batch(scorer, texts)
  o = scorer.options
  return [(d, w, skip) for d, ids in prepared.ids.items() for w, skip in score.spans(ids, o.context, o.long_docs,
                                                                                         o.min_context)]


def torch_nll(model, seqs, n_docs: int, pad_id: int, peer_tokens: int, device: str = "cpu"):
  """Mean NLL per document of the sequences under a PyTorch GPT-2, batched by length:
  sorted, then as many rows per batch as fit in peer_tokens (1 row when peer_tokens is 0)."""
  import torch
  sums, counts = np.zeros(n_docs), np.zeros(n_docs)
  order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][1]))
  batches, batch = [], []
  for i in order:
    width = max(len(seqs[j][1]) for j in batch + [i])
    if batch and (not peer_tokens or width * (len(batch) + 1) > peer_tokens):
      batches.append(batch)
      batch = []
    batch.append(i)
  batches.append(batch)
  with torch.inference_mode():
    for batch in batches:
      width = max(len(seqs[i][1]) for i in batch)
      ids = torch.full((len(batch), width), pad_id)
      mask = torch.zeros((len(batch), width), dtype=torch.long)
      for r, i in enumerate(batch):
        ids[r, :len(seqs[i][1])] = torch.from_numpy(seqs[i][1].astype(np.int64))
        mask[r, :len(seqs[i][1])] = 1
      ids, mask = ids.to(device), mask.to(device)
      logp = torch.log_softmax(model(ids, attention_mask=mask).logits[:, :-1].float(), -1)
      nll = -logp.gather(-1, ids[:, 1:, None])[..., 0].cpu().numpy()
      for r, i in enumerate(batch):
        d, w, skip = seqs[i]
        sums[d] += nll[r, skip:len(w) - 1].sum()
        counts[d] += len(w) - 1 - skip
  return sums / counts


def peer_pass(models, tok, texts, scorer, pad_id, peer_tokens, device: str = "cpu"):
  """One PyTorch pass: tokenize with transformers' tokenizer (as a user would), build the same
  sequences as jaxlab, score with both models. Returns (seconds, log d)."""
  t = time.perf_counter()
  ids = tok(texts)["input_ids"]
  o = scorer.options
  edge = [scorer.eos_id] if o.boundaries == "eos" else []
  seqs = [(d, w, skip) for d, x in enumerate(ids)
          for w, skip in score.spans(np.asarray(edge + x + edge, np.int64), o.context, o.long_docs, o.min_context)]
  small, large = (torch_nll(m, seqs, len(texts), pad_id, peer_tokens, device) for m in models)
  return time.perf_counter() - t, small - large


def reference_pass(models, tok, texts, context, batch: int = 12):
  """ScalingFilter's recipe: each document truncated to its first C tokens, batches of 12 in
  input order padded to the batch's longest (float32 here: the reference's fp16 is a GPU
  setting). Returns (seconds, log d)."""
  import torch
  out = []
  t = time.perf_counter()
  with torch.inference_mode():
    for model in models:
      losses = []
      for i in range(0, len(texts), batch):
        enc = tok(texts[i:i + batch], truncation=True, max_length=context, padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"]
        logp = torch.log_softmax(model(ids, attention_mask=mask).logits[:, :-1].float(), -1)
        nll = -logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
        losses += (nll.sum(1) / mask[:, 1:].sum(1)).tolist()
      out.append(np.array(losses))
  return time.perf_counter() - t, out[0] - out[1]


def row_length_probe(folder: str, meta: score.MetaModel, repeats: int) -> list[str]:
  """Where the time goes: one model at fixed row lengths (T=128 x 16 rows, T=1024 x 2 rows,
  the same tokens per batch), jaxlab's NLL function against PyTorch one sequence per call."""
  import torch
  import transformers
  from jaxlab import sharding
  model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
  fn = score.make_nll_fn(meta.model, sharding.make_mesh([("data", 1)], jax.devices()[:1]))
  lines = []
  for length, rows in ((128, 16), (1024, 2)):
    tokens = np.random.default_rng(0).integers(0, meta.model.cfg.vocab_size, (rows, length)).astype(np.int32)
    segments, positions = np.ones_like(tokens), np.tile(np.arange(length, dtype=np.int32), (rows, 1))
    t_jax, _ = median_time(lambda: np.asarray(fn(meta.params, tokens, segments, positions)), repeats)
    x = torch.from_numpy(tokens.astype(np.int64))
    with torch.inference_mode():
      t_torch, _ = median_time(lambda: [model(x[r:r + 1]) for r in range(rows)], repeats)
    lines.append(f"T={length} x {rows} rows ({meta.model.cfg.num_layers} layers): jaxlab {rows * length / t_jax:.0f} "
                 f"tokens/s, torch one sequence per call {rows * length / t_torch:.0f} tokens/s")
  return lines


def median_time(fn, repeats):
  fn()  # warm: compiles every shape (jaxlab), first-call allocations (torch)
  times, result = [], None
  for _ in range(repeats):
    t = time.perf_counter()
    result = fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times), result


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--docs", type=int, default=48)
  p.add_argument("--long-docs", type=int, default=3, help="documents of about 2x the context")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--peer-tokens", type=int, default=4096, help="tokens per batch of the dynamic peer")
  p.add_argument("--small-layers", type=int, default=6)
  p.add_argument("--large-layers", type=int, default=12)
  p.add_argument("--max-len", type=int, default=1024)
  p.add_argument("--probe-only", action="store_true", help="only the row-length probe (where the time goes)")
  args = p.parse_args()
  jax.config.update("jax_platforms", "cpu")  # the CPU comparison (bench/gpu/scalingfilter_speed.py: a GPU's)
  import torch
  import transformers

  texts = documents(args.docs, args.long_docs, long_chars=args.max_len * 9)
  tmp = tempfile.mkdtemp()
  tok = tokenizer_lib.train_bpe(texts, vocab_size=8192, out_dir=os.path.join(tmp, "tok"))
  folders = []
  for name, layers in (("small", args.small_layers), ("large", args.large_layers)):
    cfg = gpt.GPTConfig(vocab_size=len(tok), max_len=args.max_len, num_layers=layers, d_model=768, num_heads=12)
    params = gpt.GPT(cfg).init(jax.random.key(layers), jnp.zeros((1, 8), jnp.int32))["params"]
    folders.append(hf.save_gpt2(os.path.join(tmp, name), params, cfg, tok))
  small, large = (score.load_meta_model(f) for f in folders)
  if args.probe_only:
    print("\n".join(row_length_probe(folders[1], large, args.repeats)))
    return
  peers = [transformers.GPT2LMHeadModel.from_pretrained(f, dtype=torch.float32, attn_implementation="sdpa").eval()
           for f in folders]
  hf_tok = transformers.AutoTokenizer.from_pretrained(folders[0])
  n_tokens = [len(x) for x in hf_tok(texts)["input_ids"]]
  # a text of one token has no prediction of its own: the scorer rejects it (too_short), so
  # the comparison keeps what every system scores
  texts, n_tokens = [t for t, n in zip(texts, n_tokens) if n >= 2], [n for n in n_tokens if n >= 2]
  print(f"{len(texts)} documents ({args.docs} Pile + {args.long_docs} long), mean {np.mean(n_tokens):.0f} tokens, "
        f"max {max(n_tokens)} (context {args.max_len}); GPT-2 width 768, {args.small_layers} and {args.large_layers} "
        f"layers, float32; {os.cpu_count()} CPUs, {jax.device_count()} {jax.default_backend()} device(s); "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), median of {args.repeats} warm passes")
  print(f"{'rule':<9} {'system':<34} {'tokens/s':>9} {'vs jaxlab':>9}  max |log d - jaxlab|")
  speed, gaps = {}, []
  for rule, options in RULES.items():
    scorer = score.make_scorer(small, large, options=options)
    seqs = sequences(scorer, texts)
    predictions = sum(len(w) - 1 - skip for _, w, skip in seqs)
    wall, ours = median_time(lambda: score.score_texts(texts, small, large, options=options), args.repeats)
    host, _ = median_time(lambda: [score.plan_packed([len(w) for _, w, _ in sequences(scorer, texts)],
                                                     context=options.context or args.max_len, pack_len=score.PACK_LEN,
                                                     tokens_per_batch=score.TOKENS_PER_BATCH, row_multiple=1)],
                          args.repeats)
    log_d = np.log(ours.quality_factor)
    speed[rule, "jaxlab"] = predictions / wall
    print(f"{rule:<9} {'jaxlab (packed, jit)':<34} {speed[rule, 'jaxlab']:>9.0f} {1:>9.2f}  -   "
          f"(host: tokenize + pack {host / wall:.0%} of wall; {predictions} predictions)")
    runs = [("dynamic", f"torch SDPA, length-sorted {args.peer_tokens}", args.peer_tokens),
            ("alone", "torch SDPA, one sequence per call", 0)]
    for key, label, peer_tokens in runs:
      t, peer = median_time(lambda: peer_pass(peers, hf_tok, texts, scorer, tok.eos_token_id, peer_tokens)[1],
                            args.repeats)
      speed[rule, key] = predictions / t
      gaps.append(float(np.max(np.abs(peer - log_d))))
      print(f"{rule:<9} {label:<34} {speed[rule, key]:>9.0f} {speed[rule, key] / speed[rule, 'jaxlab']:>9.2f}  "
            f"{gaps[-1]:.1e}")
    if rule == "truncate":
      ref_time, ref = median_time(lambda: reference_pass(peers, hf_tok, texts, args.max_len), args.repeats)
      speed[rule, "reference"] = predictions / ref_time
      gaps.append(float(np.max(np.abs(ref[1] - log_d))))
      print(f"{rule:<9} {'reference (batches of 12, padded)':<34} {speed[rule, 'reference']:>9.0f} "
            f"{speed[rule, 'reference'] / speed[rule, 'jaxlab']:>9.2f}  {gaps[-1]:.1e}")
  print("\n".join(row_length_probe(folders[1], large, args.repeats)))
  ok = max(gaps) < 1e-3
  print(f"agreement: max |log d difference| {max(gaps):.1e} ({'ok' if ok else 'MISMATCH'})")
  best = max(speed["window", "dynamic"], speed["window", "alone"])
  print(f"vs_best_peer={speed['window', 'jaxlab'] / best:.2f} "
        f"truncate_vs_dynamic={speed['truncate', 'jaxlab'] / speed['truncate', 'dynamic']:.2f}")
  print(f"vs_dynamic={speed['window', 'jaxlab'] / speed['window', 'dynamic']:.2f} "
        f"vs_reference={speed['truncate', 'jaxlab'] / speed['truncate', 'reference']:.2f}")
  if not ok:
    raise SystemExit("log d disagrees with the peers: the speed figures compare different work")


if __name__ == "__main__":
  main()
