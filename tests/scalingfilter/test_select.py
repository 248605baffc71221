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
