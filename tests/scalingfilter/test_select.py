"""Selectors against small cases checked by hand: shares, edges, ties, k=0 and k=100."""
import numpy as np
import pytest

from jaxlab.scalingfilter import select


def test_top_k_by_hand_with_ties_and_edges():
  d = [1.0, 3.0, 2.0, 3.0, 0.5]
  assert select.top_k(d, 40).tolist() == [False, True, False, True, False]   # round(5*0.4) = 2: the two 3.0s
  assert select.top_k(d, 20).tolist() == [False, True, False, False, False]  # tie at 3.0: earlier wins
  assert select.top_k(d, 60).tolist() == [False, True, True, True, False]
  assert not select.top_k(d, 0).any() and select.top_k(d, 100).all()
  assert select.top_k(np.arange(10.0), 70).sum() == 7  # the paper's 70%
  with pytest.raises(ValueError, match="k_percent"):
    select.top_k(d, 101)


def test_threshold_and_temperature():
  d = np.array([0.9, 1.1, 1.0, 2.0])
  assert select.threshold(d, 1.0).tolist() == [False, True, True, True]
  # tiny T is top-k; the sample always has the requested size
  assert select.temperature_sample(d, 50, 1e-6).tolist() == select.top_k(d, 50).tolist()
  assert select.temperature_sample(d, 50, 100.0, seed=3).sum() == 2
  # high quality is picked more often at T=1: d=2.0 beats d=0.9 over many seeds
  picks = np.mean([select.temperature_sample(d, 25, 1.0, seed=s) for s in range(400)], 0)
  assert picks[3] > picks[0]


def test_random_select_share_and_seed():
  a, b = select.random_select(200, 30, seed=1), select.random_select(200, 30, seed=1)
  assert a.sum() == 60 and (a == b).all() and (a != select.random_select(200, 30, seed=2)).any()


def test_perplexity_gate_percentile_edges():
  ppl = np.arange(1.0, 22.0)  # 1..21: the 15th percentile is 4.0, the 85th is 18.0 (linear interpolation)
  keep = select.perplexity_gate(ppl)
  assert ppl[keep].min() == 4.0 and ppl[keep].max() == 18.0 and keep.sum() == 15
  assert select.perplexity_gate(ppl, 0, 100).all()


def test_hashed_ngrams_counts():
  f = select.hashed_ngrams("The cat the CAT", 1_000_003, n_max=2)
  # unigrams: the x2, cat x2; bigrams: "the cat" x2, "cat the" x1 -> counts {2, 2, 2, 1}
  assert sorted(f[f > 0].tolist()) == [1.0, 2.0, 2.0, 2.0]


def test_dsir_prefers_target_like_documents():
  target = ["the court held that the statute applies to the defendant"] * 5
  legal = [f"the court found the defendant liable under statute {i}" for i in range(10)]
  recipes = [f"mix flour sugar and eggs then bake for {i} minutes" for i in range(10)]
  keep = select.dsir(legal + recipes, target, 50, num_buckets=4096, seed=0)
  assert keep.sum() == 10 and keep[:10].sum() >= 9


def test_quality_classifier_separates_held_out_examples():
  good = [f"the committee published a detailed report on water quality in region {i}" for i in range(20)]
  bad = [f"click here buy now free free free winner {i} !!!" for i in range(20)]
  score = select.train_quality_classifier(good[:15], bad[:15], num_buckets=4096, steps=200)
  s = score(good[15:] + bad[15:])
  assert (s[:5] > 0.5).all() and (s[5:] < 0.5).all()
  keep = select.classifier_select(good[15:] + bad[15:], good[:15], bad[:15], 50, num_buckets=4096, steps=200)
  assert keep.tolist() == [True] * 5 + [False] * 5


def _write_scores(path, quality, ppl):
  import json
  rows = [{"id": i, "quality_factor": q, "ppl_large": p} for i, q, p in zip("abcde", quality, ppl)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return rows


def test_select_file_topk_and_ppl_gate_by_hand(tmp_path):
  import json
  scores = tmp_path / "scores.jsonl"
  rows = _write_scores(scores, [1.0, 3.0, 2.0, 0.5, 2.5], [10.0, 20.0, 30.0, 40.0, 50.0])
  out = tmp_path / "kept.jsonl"
  kept = lambda: [json.loads(l) for l in out.read_text().splitlines()]
  # round(5 * 0.4) = 2: the two largest quality factors, 3.0 (b) and 2.5 (e), in input order
  assert select.select_file(str(scores), str(out), "topk", k=40) == {"method": "topk", "documents": 5, "kept": 2}
  assert kept() == [rows[1], rows[4]] and not (tmp_path / "kept.jsonl.tmp").exists()
  # 25th/75th percentiles of 10..50 are 20 and 40 (positions 1 and 3), edges kept: b, c, d
  assert select.select_file(str(scores), str(out), "ppl_gate", low=25, high=75)["kept"] == 3
  assert [r["id"] for r in kept()] == ["b", "c", "d"]


def test_select_scores_names_missing_arguments(tmp_path):
  rows = _write_scores(tmp_path / "s.jsonl", [1.0] * 5, [1.0] * 5)
  with pytest.raises(ValueError, match="'dsir' needs texts$"):
    select.select_scores(rows, "dsir", target_texts=["x"])
  with pytest.raises(ValueError, match="needs texts, target_texts"):
    select.select_scores(rows, "dsir")
  with pytest.raises(ValueError, match="needs positives, negatives"):
    select.select_scores(rows, "classifier", texts=["t"] * 5)
  with pytest.raises(ValueError, match="unknown selection method"):
    select.select_scores(rows, "best")


def test_select_scores_takes_texts_by_id():
  rows = [{"id": f"d{i}", "quality_factor": 1.0} for i in range(6)]
  docs = ["the court held the statute applies"] * 3 + ["bake the cake for ten minutes"] * 3
  by_id = {f"d{i}": t for i, t in reversed(list(enumerate(docs)))}  # any order: aligned by id
  target = ["the court held that the statute applies"]
  keep = select.select_scores(rows, "dsir", k=50, texts=by_id, target_texts=target)
  assert keep.tolist() == select.dsir(docs, target, 50).tolist()
  with pytest.raises(KeyError, match="d5"):
    select.select_scores(rows, "dsir", texts={f"d{i}": "x" for i in range(5)}, target_texts=target)


def test_dsir_equals_the_dense_formula():
  """The sparse implementation against the formula on dense count matrices, same Gumbel noise."""
  texts = ["the court held the statute applies", "bake the cake", "", "the cake court the the"]
  target = ["the court held that the statute applies", "a court"]
  raw, tgt = select.features(texts, 64), select.features(target, 64)
  delta = np.log((tgt.sum(0) + 1) / (tgt.sum() + 64)) - np.log((raw.sum(0) + 1) / (raw.sum() + 64))
  keys = raw.astype(np.float64) @ delta + np.random.default_rng(5).gumbel(size=4)
  for k in (25, 50, 75):
    assert select.dsir(texts, target, k, num_buckets=64, seed=5).tolist() == select._keep_top(keys, round(4 * k / 100)).tolist()


def test_cli_select_20000_documents_in_seconds(tmp_path):
  """dsir and classifier over 20,000 documents: the input is read once and no dense
  [documents x buckets] matrix is built (the O(n^2) re-read took hours at this size)."""
  import json
  import time
  from jaxlab.scalingfilter import __main__ as cli
  legal = "the court held that the statute applies to the defendant".split()
  recipe = "mix flour sugar and eggs then bake the cake for minutes".split()
  rng = np.random.default_rng(0)
  picks = rng.integers(0, 10, (20_000, 12))
  with open(tmp_path / "docs.jsonl", "w") as f, open(tmp_path / "scores.jsonl", "w") as g:
    for i in range(20_000):
      words = legal if i % 2 else recipe
      f.write(json.dumps({"id": f"d{i}", "text": " ".join(words[j] for j in picks[i])}) + "\n")
      g.write(f'{{"id": "d{i}", "quality_factor": 1.0, "ppl_large": 1.0}}\n')
  for name, words in (("target", legal), ("neg", recipe)):  # 150 fresh documents of each kind
    (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps({"id": i, "text": " ".join(rng.choice(words, 12))})
                                                    + "\n" for i in range(150)))
  common = ["--scores", str(tmp_path / "scores.jsonl"), "--input", str(tmp_path / "docs.jsonl"), "--k", "50"]
  for method, extra in (("dsir", ["--target", str(tmp_path / "target.jsonl")]),
                        ("classifier", ["--positives", str(tmp_path / "target.jsonl"),
                                        "--negatives", str(tmp_path / "neg.jsonl")])):
    start = time.perf_counter()
    assert cli.main(["select", "--method", method, "--output", str(tmp_path / f"{method}.jsonl")] + common + extra) == 0
    elapsed = time.perf_counter() - start
    kept = [int(json.loads(l)["id"][1:]) for l in open(tmp_path / f"{method}.jsonl")]
    assert len(kept) == 10_000 and sum(i % 2 for i in kept) >= 9_900, method  # the legal (odd) documents
    assert elapsed < 20, f"{method} took {elapsed:.1f} s"
