"""ScalingFilter scoring: quality factor against per-token log-probs computed directly,
the window rule, one row per input however the run is split, rejects, resume."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import sharding
from jaxlab.data import tokenizer as tokenizer_lib
from jaxlab.scalingfilter import score


_FORWARD = {}


def direct_nll(meta, ids):
  """Mean NLL of tokens 1..n-1 from one forward pass per window. Each window is followed by
  arbitrary filler up to the context length, which a causal model cannot look at, so one
  compiled shape serves every window; no masking, bucketing or batching involved."""
  if id(meta) not in _FORWARD:  # one compilation per model, not per call
    _FORWARD[id(meta)] = jax.jit(lambda x: jax.nn.log_softmax(meta.model.apply({"params": meta.params}, x)[0]))
  forward = _FORWARD[id(meta)]
  total = 0.0
  for w in score.windows(np.asarray(ids), meta.context):
    filled = np.full((1, meta.context - 1), 7, np.int32)
    filled[0, :len(w) - 1] = w[:-1]
    logp = np.asarray(forward(jnp.asarray(filled)))
    total += -float(np.sum(logp[np.arange(len(w) - 1), w[1:]]))
  return total / (len(ids) - 1)


def bounded(meta, ids):
  """The tokens the scorer sees by default: the text between two EOS, as in training."""
  return [meta.tokenizer.eos_token_id] + list(ids) + [meta.tokenizer.eos_token_id]


def test_window_rule_by_hand():
  ids = np.arange(10)
  got = [list(w) for w in score.windows(ids, 4)]
  assert got == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]  # each of tokens 1..9 predicted once
  assert [list(w) for w in score.windows(np.arange(4), 4)] == [[0, 1, 2, 3]]
  assert [list(w) for w in score.windows(np.arange(5), 4)] == [[0, 1, 2, 3], [3, 4]]


def write_jsonl(path, records):
  with open(path, "w") as f:
    for r in records:
      f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def test_quality_factor_against_direct_log_probs(pair, tmp_path):
  small, large, texts = pair
  docs = [t[:400] for t in texts[:12]] + [texts[20][:60]]  # long ones (several windows) and a short one
  write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(docs)])
  counts = score.score_file(str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), small, large,
                            tokens_per_batch=256, chunk_docs=5, progress=False)
  rows = [json.loads(l) for l in open(tmp_path / "out.jsonl")]
  assert counts["scored"] == len(docs) == len(rows) and [r["id"] for r in rows] == [f"d{i}" for i in range(len(docs))]
  enc = small.tokenizer.backend_tokenizer
  assert max(r["n_tokens"] for r in rows) > 2 * small.context  # windows really were used
  for r, text in zip(rows, docs):
    ids = enc.encode(text).ids
    l_small, l_large = direct_nll(small, bounded(small, ids)), direct_nll(large, bounded(large, ids))
    assert r["n_tokens"] == len(ids)
    np.testing.assert_allclose([r["nll_small"], r["nll_large"]], [l_small, l_large], rtol=2e-5)
    np.testing.assert_allclose(r["quality_factor"], np.exp(l_small - l_large), rtol=5e-5)
    np.testing.assert_allclose(r["quality_factor"], r["ppl_small"] / r["ppl_large"], rtol=1e-9)


def test_one_row_per_input_regardless_of_devices_batches_or_interruption(pair, tmp_path):
  small, large, texts = pair
  records = [{"id": f"d{i}", "text": t[: 40 + 17 * i]} for i, t in enumerate(texts[:30])]
  records += ["{broken json", {"id": "nofield"}, {"id": "empty", "text": "   "}, {"id": "d3", "text": "dup"},
              {"id": "num", "text": 7}, {"id": "tiny", "text": "a"}]
  write_jsonl(tmp_path / "in.jsonl", records)

  def run(name, **kw):
    out = tmp_path / f"{name}.jsonl"
    return out, score.score_file(str(tmp_path / "in.jsonl"), str(out), small, large, progress=False, **kw)

  full, counts = run("full", tokens_per_batch=512, chunk_docs=7)
  one_dev, _ = run("one", tokens_per_batch=64, chunk_docs=30,
                   mesh=sharding.make_mesh([("data", 1)], jax.devices()[:1]))
  part, first = run("part", tokens_per_batch=512, chunk_docs=7, stop_after_chunks=2)
  assert not first["finished"]
  with open(part, "a") as f:
    f.write('{"id": "d99", "n_tok')  # a torn line, as if killed mid-write
  _, second = run("part", tokens_per_batch=512, chunk_docs=7)
  assert second["finished"] and second["resumed_from"] > 0

  read = lambda p: [json.loads(l) for l in open(p)]
  a, b, c = read(full), read(one_dev), read(part)
  assert [r["id"] for r in a] == [f"d{i}" for i in range(30)] == [r["id"] for r in b] == [r["id"] for r in c]
  for x, y, z in zip(a, b, c):
    assert x == z  # same device layout and batches: identical after resume
    np.testing.assert_allclose([x["nll_small"], x["nll_large"]], [y["nll_small"], y["nll_large"]], rtol=2e-5)
  rejects = {r["id"]: r["reason"] for r in read(str(full) + ".rejects.jsonl")}
  assert rejects == {"in.jsonl:31": "bad_json", "nofield": "missing_field", "empty": "empty_text",
                     "d3#dup": "duplicate_id", "num": "not_string", "tiny": "too_short"}
  assert {r["id"]: r["reason"] for r in read(str(part) + ".rejects.jsonl")} == rejects
  assert counts["scored"] + counts["rejected"] == len(records)


def test_mismatched_tokenizers_are_refused(pair, tmp_path):
  small, large, texts = pair
  other = tokenizer_lib.train_bpe(texts[:10], vocab_size=280, out_dir=str(tmp_path / "tok2"))
  with pytest.raises(ValueError, match="different tokenizers"):
    score.check_pair(small, score.MetaModel(large.path, large.model, large.params, other))


def test_cli_select_keeps_the_top_share(pair, tmp_path):
  from jaxlab.scalingfilter import __main__ as cli
  small, large, texts = pair
  write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": t[:120]} for i, t in enumerate(texts[:10])])
  score.score_file(str(tmp_path / "in.jsonl"), str(tmp_path / "s.jsonl"), small, large, progress=False)
  assert cli.main(["select", "--scores", str(tmp_path / "s.jsonl"), "--output", str(tmp_path / "k.jsonl"),
                   "--k", "30"]) == 0
  rows = [json.loads(l) for l in open(tmp_path / "s.jsonl")]
  kept = [json.loads(l)["id"] for l in open(tmp_path / "k.jsonl")]
  best = sorted(rows, key=lambda r: -r["quality_factor"])[:3]
  assert sorted(kept) == sorted(r["id"] for r in best)
  with pytest.raises(SystemExit):
    cli.main(["select", "--scores", str(tmp_path / "s.jsonl"), "--output", "x", "--method", "dsir"])


def test_tfds_input_gives_the_same_rows_as_jsonl(pair, tmp_path):
  """The same documents as a JSONL file and as the platform's LocalText array_record dataset
  built from it (read through tfds.data_source by the CLI) score to identical rows."""
  from jaxlab.data import text as text_lib
  from jaxlab.scalingfilter import __main__ as cli
  small, large, texts = pair
  docs = [t[: 50 + 23 * i] for i, t in enumerate(texts[:14])]
  write_jsonl(tmp_path / "docs.jsonl", [{"id": i, "text": t} for i, t in enumerate(docs)])
  data = text_lib.prepare_text([str(tmp_path / "docs.jsonl")], data_dir=str(tmp_path / "tfds"),
                               validation_fraction=0.0)
  name = "/".join(data.data_path.rstrip("/").split("/")[-3:-1])  # local_text/<config>
  score.score_file(str(tmp_path / "docs.jsonl"), str(tmp_path / "from_jsonl.jsonl"), small, large, progress=False)
  assert cli.main(["score", "--small", small.path, "--large", large.path, "--input", f"tfds:{name}:train",
                   "--data-dir", str(tmp_path / "tfds"), "--id-field", "index",
                   "--output", str(tmp_path / "from_tfds.jsonl"), "--allow-worse-large"]) == 0
  a = (tmp_path / "from_jsonl.jsonl").read_text().splitlines()
  b = (tmp_path / "from_tfds.jsonl").read_text().splitlines()
  assert len(a) == len(docs) and [json.loads(l) for l in a] == [json.loads(l) for l in b]
  # no id field: ids fall back to NAME/split:i, nested fields are reached by dotted paths
  got = list(score.read_documents(f"tfds:{name}", data_dir=str(tmp_path / "tfds"), id_field="nope"))
  assert got[3] == (f"{name}/train:3", docs[3])
  assert list(score.read_documents(f"tfds:{name}", text_field="index", data_dir=str(tmp_path / "tfds")))[0][1] == \
      score.Reject(f"{name}/train", 1, "not_string")


def test_per_host_shards_union_is_one_row_per_document(pair, tmp_path):
  small, large, texts = pair
  root = tmp_path / "in"
  (root / "sub").mkdir(parents=True)
  expected_ids = []
  for f in range(5):  # 5 files over 3 processes: shards of 2, 2 and 1 files
    records = [{"id": f"f{f}d{i}", "text": texts[5 * f + i][:60 + 30 * i]} for i in range(4)]
    write_jsonl(root / f"part{f}.jsonl", records + ["{bad"])
    expected_ids += [r["id"] for r in records]
  (root / "sub" / "note.txt").write_text(texts[40][:200])
  expected_ids.append("sub/note.txt")
  whole, _ = tmp_path / "whole.jsonl", score.score_file(str(root), str(tmp_path / "whole.jsonl"), small, large,
                                                        progress=False)
  counts = [score.score_sharded([str(root)], str(tmp_path / "parts"), small, large, process_index=p,
                                process_count=3, progress=False) for p in range(3)]
  assert [c["inputs"] for c in counts] == [["part0.jsonl", "part3.jsonl"], ["part1.jsonl", "part4.jsonl"],
                                           ["part2.jsonl", "sub/note.txt"]]
  rows, rejects = score.read_parts(str(tmp_path / "parts"))
  assert sorted(r["id"] for r in rows) == sorted(expected_ids)  # exactly one row per document
  assert sorted(r["id"] for r in rejects) == [f"part{f}.jsonl:5" for f in range(5)]  # and one per bad line
  assert sum(c["scored"] for c in counts) == len(expected_ids)
  single = {r["id"]: r for r in map(json.loads, open(whole))}
  for r in rows:
    np.testing.assert_allclose(r["quality_factor"], single[r["id"]]["quality_factor"], rtol=5e-5)
    assert r["n_tokens"] == single[r["id"]]["n_tokens"]
  # the same id in files read by two processes is caught when the parts are joined
  write_jsonl(root / "part5.jsonl", [{"id": "f0d0", "text": "again the same id here"}])
  for p in range(2):
    score.score_sharded([str(root)], str(tmp_path / "dup"), small, large, process_index=p, process_count=2,
                        progress=False)
  with pytest.raises(ValueError, match="more than one part"):
    score.read_parts(str(tmp_path / "dup"))
  (tmp_path / "dup" / "part-00001-of-00002.jsonl").unlink()
  with pytest.raises(ValueError, match="incomplete"):
    score.read_parts(str(tmp_path / "dup"))
  with pytest.raises(ValueError, match="process_index"):
    score.shard_inputs([], 3, 3)


def test_packing_plan_by_hand():
  assert score.row_lengths(1024, 128) == (128, 192, 256, 384, 512, 768, 1024)
  assert score.row_lengths(32, 16) == (16, 24, 32) and score.row_lengths(32, 64) == (32,)
  rows = score.pack_rows([5, 3, 9, 2, 4], capacities=(8, 12, 16))
  # longest first; the 9 opens a 12-slot row whose spare room takes the 3
  assert rows == [(12, [2, 1]), (8, [0, 3]), (8, [4])]
  assert score.batch_sizes(11, 4, 1) == [4, 4, 2, 1]
  assert score.batch_sizes(5, 4, 2) == [4, 2] and score.batch_sizes(0, 4, 1) == []
  plan = score.plan_packed([30, 20, 10, 6, 6, 5, 31], context=32, pack_len=16, tokens_per_batch=64, row_multiple=1)
  assert plan == [(16, [[2, 3], [4, 5]], 2), (24, [[1]], 1), (32, [[6], [0]], 2)]


@pytest.mark.slow  # one of make test's longest; CI's make slow runs it
def test_packed_scoring_equals_one_document_per_row(pair):
  """Rows holding several documents (positions restart, attention stays inside a document)
  give each document the NLL it gets alone in an unmasked, unpacked forward pass."""
  small, large, texts = pair
  enc = small.tokenizer.backend_tokenizer
  docs = [np.asarray(enc.encode(t[:15 + 9 * i]).ids, np.int32) for i, t in enumerate(texts[:16])]
  docs = [d for d in docs if len(d) >= 2] + [np.asarray(enc.encode(texts[30][:300]).ids, np.int32)]  # + windows
  lengths = [len(w) for d in docs for w in score.windows(d, small.context)]
  plan = score.plan_packed(lengths, context=small.context, pack_len=small.context, tokens_per_batch=128,
                           row_multiple=1)
  assert max(len(row) for _, rows, _ in plan for row in rows) >= 3  # really packed
  mesh = sharding.make_mesh([("data", 1)], jax.devices()[:1])
  fns = tuple(score.make_nll_fn(m.model, mesh) for m in (small, large))
  packed, predictions = score.score_token_lists(docs, fns, context=small.context, tokens_per_batch=128,
                                                row_multiple=1, params=(small.params, large.params),
                                                pack_len=small.context)
  assert predictions.tolist() == [len(d) - 1 for d in docs]  # windows overlap by one: each prediction once
  for m, meta in enumerate((small, large)):
    forward = jax.jit(lambda x: meta.model.apply({"params": meta.params}, x))
    for d, ids in enumerate(docs):
      total = 0.0
      for w in score.windows(ids, meta.context):
        logp = jax.nn.log_softmax(forward(jnp.asarray(w[None, :-1])))[0]
        total -= float(jnp.sum(logp[jnp.arange(len(w) - 1), w[1:]]))
      np.testing.assert_allclose(packed[d, m], total / (len(ids) - 1), atol=1e-5)


def test_score_texts_returns_arrays_matching_direct_log_probs(pair):
  """The notebook API: a list of strings in, arrays out; unscorable entries are NaN with a reason."""
  from jaxlab import scalingfilter
  small, large, texts = pair
  docs = [texts[0][:300], "", texts[1][:40], 7, "a", texts[2][:90]]
  got = scalingfilter.score_texts(docs, small, large.path, batch_docs=4)  # a path loads the model
  enc = small.tokenizer.backend_tokenizer
  assert got.reasons == ("", "empty_text", "", "not_string", "too_short", "")
  assert got.scored.tolist() == [True, False, True, False, False, True]
  for i in (0, 2, 5):
    ids = enc.encode(docs[i]).ids
    assert got.n_tokens[i] == len(ids) and got.n_predictions[i] == len(ids) + 1  # EOS -> text -> EOS
    np.testing.assert_allclose([got.nll_small[i], got.nll_large[i]],
                               [direct_nll(small, bounded(small, ids)), direct_nll(large, bounded(large, ids))],
                               rtol=2e-5)
  np.testing.assert_allclose(got.quality_factor[[0, 2, 5]], got.ppl_small[[0, 2, 5]] / got.ppl_large[[0, 2, 5]])
  assert np.isnan(got.quality_factor[[1, 3, 4]]).all() and got.n_tokens[4] == 1
  assert scalingfilter.score_texts([], small, large).n_tokens.shape == (0,)


def test_cli_rerun_says_it_resumes_and_overwrite_rescores(pair, tmp_path, capsys):
  """Rerunning with the same ids keeps the old scores and says so; --overwrite rescores. The
  second run swaps the pair, so rescored quality factors are the reciprocals of the first."""
  from jaxlab.scalingfilter import __main__ as cli
  small, large, texts = pair
  write_jsonl(tmp_path / "in.jsonl", [{"id": f"d{i}", "text": t[:100]} for i, t in enumerate(texts[:6])])
  out = str(tmp_path / "s.jsonl")
  args = ["score", "--allow-worse-large", "--input", str(tmp_path / "in.jsonl"), "--output", out]  # a random pair
  assert cli.main(args + ["--small", small.path, "--large", large.path]) == 0
  first = [json.loads(l) for l in open(out)]
  capsys.readouterr()
  assert cli.main(args + ["--small", large.path, "--large", small.path]) == 0
  assert "6 documents already there were skipped" in capsys.readouterr().err
  assert [json.loads(l) for l in open(out)] == first
  assert cli.main(args + ["--small", large.path, "--large", small.path, "--overwrite"]) == 0
  again = [json.loads(l) for l in open(out)]
  assert [r["id"] for r in again] == [r["id"] for r in first]
  np.testing.assert_allclose([r["quality_factor"] for r in again], [1 / r["quality_factor"] for r in first], rtol=1e-5)
  # --sharded writes one part per process into a directory; a directory without --sharded is refused
  assert cli.main(args[:-1] + [str(tmp_path / "parts"), "--sharded", "--small", small.path, "--large", large.path]) == 0
  assert [json.loads(l) for l in open(tmp_path / "parts" / "part-00000-of-00001.jsonl")] == first
  with pytest.raises(SystemExit, match="--sharded"):
    cli.main(args[:-1] + [str(tmp_path / "parts"), "--small", small.path, "--large", large.path])


def test_spans_by_hand():
  ids = np.arange(10)
  got = [(list(w), skip) for w, skip in score.spans(ids, 4, "stride", min_context=2)]
  # each of tokens 4..9 is predicted once, from at least 2 tokens of context
  assert got == [([0, 1, 2, 3], 0), ([2, 3, 4, 5], 1), ([4, 5, 6, 7], 1), ([6, 7, 8, 9], 1)]
  assert [list(w) for w, _ in score.spans(ids, 4, "truncate")] == [[0, 1, 2, 3]]
  assert [(list(w), s) for w, s in score.spans(ids[:5], 4, "window")] == [([0, 1, 2, 3], 0), ([3, 4], 0)]
  with pytest.raises(score.ConfigError, match="long_docs='slide'"):
    score.spans(ids, 4, "slide")
  with pytest.raises(score.ConfigError, match="min_context=4"):
    score.spans(ids, 4, "stride", min_context=4)


def _token_logp(meta, w):
  """log p(w[t] | w[:t]) for t = 1..len(w)-1, from one unpacked forward pass (see direct_nll)."""
  if id(meta) not in _FORWARD:
    _FORWARD[id(meta)] = jax.jit(lambda x: jax.nn.log_softmax(meta.model.apply({"params": meta.params}, x)[0]))
  filled = np.full((1, meta.context - 1), 7, np.int32)
  filled[0, :len(w) - 1] = w[:-1]
  logp = np.asarray(_FORWARD[id(meta)](jnp.asarray(filled)))
  return logp[np.arange(len(w) - 1), w[1:]]


def test_truncate_and_stride_against_direct_log_probs(pair):
  """truncate: the mean NLL of the first C tokens. stride: transformers' perplexity-guide loop
  (windows begin every C - m tokens, each scores only the tokens past the previous window)."""
  small, large, texts = pair
  docs = [texts[3][:500], texts[4][:90], texts[5][:260]]
  enc = small.tokenizer.backend_tokenizer
  c, m = small.context, 12
  # boundaries="none": the text's own tokens, as the reference and transformers' guide score them
  trunc = score.score_texts(docs, small, large, options=score.ScoreOptions("truncate", boundaries="none"))
  stride = score.score_texts(docs, small, large, options=score.ScoreOptions("stride", m, boundaries="none"))
  for i, text in enumerate(docs):
    ids = np.asarray(enc.encode(text).ids)
    for meta, got_t, got_s in ((small, trunc.nll_small, stride.nll_small), (large, trunc.nll_large, stride.nll_large)):
      np.testing.assert_allclose(got_t[i], -_token_logp(meta, ids[:c]).mean(), rtol=2e-5)
      total, prev_end = 0.0, 0
      for begin in range(0, len(ids), c - m):
        end = min(begin + c, len(ids))
        logp = _token_logp(meta, ids[begin:end])  # predictions of tokens begin+1 .. end-1
        total -= logp[max(prev_end, begin + 1) - begin - 1:].sum()
        prev_end = end
        if end == len(ids):
          break
      np.testing.assert_allclose(got_s[i], total / (len(ids) - 1), rtol=2e-5)
  assert trunc.n_tokens.max() > 3 * c  # long documents really were cut
  with pytest.raises(score.ConfigError, match="long_docs"):
    score.score_texts(docs, small, large, options=score.ScoreOptions("first"))


def test_context_is_the_training_length_and_no_more(pair, tmp_path):
  """A model scores in windows of the length it trained on; asking for more names the key,
  in the API, the CLI and the pipeline config, before anything compiles."""
  import dataclasses
  from jaxlab import config as config_lib
  from jaxlab.scalingfilter import __main__ as cli
  from jaxlab.trainers import scalingfilter as pipeline
  small, large, texts = pair
  short = dataclasses.replace(small, trained_len=12)
  assert short.context == 12 and small.context == small.model.cfg.max_len == 32
  doc = texts[6][:200]
  ids = bounded(small, small.tokenizer.backend_tokenizer.encode(doc).ids)
  got = score.score_texts([doc], short, dataclasses.replace(large, trained_len=12))
  np.testing.assert_allclose(got.nll_small[0], direct_nll(short, ids), rtol=2e-5)  # windows of 12 tokens
  assert abs(got.nll_small[0] - direct_nll(small, ids)) > 1e-3  # ... which differ from windows of 32
  with pytest.raises(score.ConfigError, match="context=16 exceeds the 12 tokens"):
    score.score_texts([doc], short, large, options=score.ScoreOptions(context=16))
  write_jsonl(tmp_path / "in.jsonl", [{"id": "a", "text": doc}])
  with pytest.raises(SystemExit, match="--context=64 exceeds the 32"):
    cli.main(["score", "--small", small.path, "--large", large.path, "--input", str(tmp_path / "in.jsonl"),
              "--output", str(tmp_path / "o.jsonl"), "--context", "64", "--allow-worse-large"])
  assert not (tmp_path / "o.jsonl").exists()
  repo = __import__("pathlib").Path(__file__).resolve().parents[2]
  cfg = config_lib.load(str(repo / "configs" / "scalingfilter" / "pipeline.py") + ":builtin",
                        ["score.context=512", "small.train.seq_len=128"])
  with pytest.raises(config_lib.ConfigError, match="score.context=512 exceeds the 128"):
    pipeline.validate(cfg)
  with pytest.raises(config_lib.ConfigError, match="score.boundaries='bos'"):
    pipeline.validate(config_lib.load(str(repo / "configs" / "scalingfilter" / "pipeline.py") + ":builtin",
                                      ["score.boundaries=bos"]))


def test_bfloat16_scoring_stays_near_float32(pair):
  """dtype=bfloat16 stores and computes in bfloat16 (the NLL itself in float32): log d moves,
  but by far less than the spread of log d over documents."""
  small, large, texts = pair
  docs = [t[:200] for t in texts[:10]]
  f32 = score.score_texts(docs, small, large)
  bf16 = score.score_texts(docs, small, large, options=score.ScoreOptions(dtype="bfloat16"))
  scorer = score.make_scorer(small, large, options=score.ScoreOptions(dtype="bfloat16"))
  assert {x.dtype for x in jax.tree.leaves(scorer.params)} == {jnp.dtype(jnp.bfloat16)}
  delta = np.abs(np.log(bf16.quality_factor) - np.log(f32.quality_factor))
  assert 0 < delta.max() < 0.02, delta
  assert delta.max() < 0.2 * np.std(np.log(f32.quality_factor))
