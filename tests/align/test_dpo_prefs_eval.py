"""Ranked DPO, preference grids, HPIR accuracy, the order-consistency judge, recall: all
against values worked by hand."""
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.align import dpo, hpir, judge, preferences

logsig = lambda x: -math.log1p(math.exp(-x))


def test_dpo_hand_values():
  q = jnp.array([[1.0, 0.0]])
  cands = jnp.array([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]])
  ref_cands = jnp.array([[[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]])
  logp = dpo.candidate_log_probs(q, cands, 2.0)           # sims 1, 0, 0.6 at scale 2
  z = math.log(math.exp(2.0) + 1.0 + math.exp(1.2))
  np.testing.assert_allclose(np.asarray(logp[0]), [2.0 - z, -z, 1.2 - z], rtol=1e-6)
  ref = dpo.candidate_log_probs(q, ref_cands, 2.0)        # all sims 0: log(1/3) each
  np.testing.assert_allclose(np.asarray(ref[0]), [-math.log(3)] * 3, rtol=1e-6)
  pairs = jnp.array([[[0, 1], [1, 2]]])
  # h = beta * ((logp_w - ref_w) - (logp_l - ref_l)); the ref terms cancel (uniform ref)
  h = [0.5 * 2.0, 0.5 * (0.0 - 1.2)]
  np.testing.assert_allclose(np.asarray(dpo.pair_margins(logp, ref, pairs, 0.5)[0]), h, rtol=1e-6)
  eps = 0.1
  per = [-(1 - eps) * logsig(x) - eps * logsig(-x) for x in h]
  loss, acc = dpo.dpo_loss(logp, ref, pairs, beta=0.5, label_smoothing=eps)
  assert float(loss) == pytest.approx(sum(per) / 2, rel=1e-6)
  assert float(acc) == 0.5
  # a non-uniform reference: its term enters with the opposite sign
  ref2 = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
  h2 = 0.5 * ((2.0 - z - math.log(0.5)) - (-z - math.log(0.25)))
  loss2, _ = dpo.dpo_loss(logp, ref2, jnp.array([[[0, 1]]]), beta=0.5)
  assert float(loss2) == pytest.approx(-logsig(h2), rel=1e-6)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_dpo_is_log2_at_init(eps):
  rng = np.random.default_rng(0)
  q = rng.normal(size=(3, 4)); c = rng.normal(size=(3, 6, 4))
  logp = dpo.candidate_log_probs(jnp.asarray(q), jnp.asarray(c), 7.0)
  pairs = jnp.asarray(np.broadcast_to(preferences.grid_pairs(2, 3), (3, 12, 2)))
  h = dpo.pair_margins(logp, logp, pairs, 0.3)
  assert np.all(np.asarray(h) == 0.0)
  loss, _ = dpo.dpo_loss(logp, logp, pairs, beta=0.3, label_smoothing=eps)
  assert float(loss) == pytest.approx(math.log(2), rel=1e-6)


def test_grid_pairs_hand_listed():
  assert {tuple(p) for p in preferences.grid_pairs(2, 2)} == {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)}
  want_2x3 = {(0, 1), (0, 2), (0, 3), (0, 4), (0, 5), (1, 2), (1, 4), (1, 5), (2, 5), (3, 4), (3, 5), (4, 5)}
  got = preferences.grid_pairs(2, 3)
  assert {tuple(p) for p in got} == want_2x3 and len(got) == 12
  for u, v in ((1, 1), (1, 4), (3, 3), (4, 2)):
    pairs = preferences.grid_pairs(u, v)
    assert len(pairs) == (u * (u + 1) // 2) * (v * (v + 1) // 2) - u * v
    assert preferences.consistent(pairs, u, v)
    # never both (a, b) and (b, a): a strict partial order
    assert not {tuple(p) for p in pairs} & {(b, a) for a, b in pairs}
  assert not preferences.consistent(np.array([[1, 2]]), 2, 2)  # (0,1) vs (1,0): incomparable
  # relevance_first adds exactly those cross pairs, the more relevant row's cell winning
  assert {tuple(p) for p in preferences.grid_pairs(2, 2, "relevance_first")} == {
      (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}
  for u, v in ((1, 4), (3, 3), (4, 2)):
    total = {tuple(p) for p in preferences.grid_pairs(u, v, "relevance_first")}
    assert len(total) == u * v * (u * v - 1) // 2 and total >= {tuple(p) for p in preferences.grid_pairs(u, v)}
    assert all(w // v < l // v or (w // v == l // v and w < l) for w, l in total)
  with pytest.raises(ValueError, match="preferences.order"):
    preferences.grid_pairs(2, 2, "aesthetic_first")
  with pytest.raises(ValueError, match="1 x 1"):
    preferences.grid_pairs(0, 2)


def test_build_grid_hand_case():
  ids = np.arange(10, 18)
  relevance = np.array([8, 7, 6, 5, 4, 3, 2, 1], float)      # already in relevance order
  aesthetic = np.array([0, 0, 5, 0, 1, 0, 9, 0], float)
  # stride 2 keeps ids 10, 12, 14, 16 -> rows [10, 12], [14, 16] -> by aesthetics [12, 10], [16, 14]
  assert preferences.build_grid(ids, relevance, aesthetic, 2, 2, stride=2).tolist() == [12, 10, 16, 14]
  with pytest.raises(ValueError, match="needs 7 candidates"):
    preferences.build_grid(ids[:6], relevance[:6], aesthetic[:6], 2, 2, stride=2)
  sims = np.array([[0.1, 0.9, 0.5, 0.7]])
  assert preferences.top_k(sims, 3).tolist() == [[1, 3, 2]]


def test_grid_stats_hand_case():
  # two 1 x 2 grids (pair: cell 0 over cell 1) over 4 images; query contents 0 and 1
  truth = np.array([0.9, 0.1, 0.2, 0.8])
  content = np.array([0, 0, 1, 1])
  grids = np.array([[0, 1], [2, 1]])
  s = preferences.grid_stats(grids, np.array([0, 1]), truth, content, preferences.grid_pairs(1, 2))
  assert s["true_aesthetic_top_cell"] == pytest.approx(0.55)
  assert s["true_aesthetic_grid"] == pytest.approx(0.325)
  assert s["relevant_share"] == pytest.approx(0.75)       # images 0, 1 for query 0; image 2 for query 1
  assert s["same_content_pair_accuracy"] == pytest.approx(1.0)   # only grid 0's pair is same-content


def _records(confs, choices):
  return [hpir.HPIRRecord(f"q{i}", ("x",), ("y",), c, f) for i, (f, c) in enumerate(zip(confs, choices))]


def test_hpir_accuracy_hand_case():
  recs = _records([1.0, 0.5, 0.8, 0.2], ["a", "b", "a", "b"])
  out = hpir.hpir_accuracy(recs, ["a", "a", "tie", "b"])   # credit 1, 0, 0.5, 1
  assert out["accuracy"] == pytest.approx(2.5 / 4)
  assert out["weighted_accuracy"] == pytest.approx((1.0 + 0.0 + 0.4 + 0.2) / 2.5)
  assert hpir.set_choice([1, 3], [2, 2]) == "tie" and hpir.set_choice([1, 4], [2, 2]) == "a"
  scores = {"x": 1.0, "y": 0.0}
  assert hpir.evaluate_hpir(recs, lambda q, ids: np.array([scores[i] for i in ids]))["accuracy"] == 0.5
  with pytest.raises(ValueError, match="2 choices"):
    hpir.hpir_accuracy(recs, ["a", "b"])


def test_load_hpir_round_trip_and_errors(tmp_path):
  recs = _records([0.9, 0.6], ["a", "b"])
  path = hpir.write_hpir(str(tmp_path / "h.jsonl"), recs)
  assert hpir.load_hpir(path) == recs
  bad = tmp_path / "bad.jsonl"
  good = json.dumps({"query": "q", "results_a": ["x"], "results_b": ["y"], "choice": "a", "confidence": 1})
  for line, msg in ((json.dumps({"query": "q"}), r"bad.jsonl:2: missing field"),
                    (good.replace('"a", "conf', '"c", "conf'), "'choice' must be 'a' or 'b'"),
                    (good.replace('"confidence": 1', '"confidence": 1.5'), r"confidence.*\[0, 1\]"),
                    (good.replace('["x"]', '[]'), "non-empty list"),
                    ("{not json", r"bad.jsonl:2: not JSON")):
    bad.write_text(good + "\n" + line + "\n")
    with pytest.raises(ValueError, match=msg):
      hpir.load_hpir(str(bad))


def test_order_consistent_judge():
  scores = {"p": 1.0, "q": 0.2, "r": 0.5}
  fair = judge.aesthetic_judge(lambda ims: np.array([scores[i] for i in ims]))
  assert judge.order_consistent(fair, "x", ["p"], ["q"]) == "a"
  assert judge.order_consistent(fair, "x", ["q", "r"], ["p"]) == "b"
  assert judge.order_consistent(fair, "x", ["r"], ["r"]) == "tie"   # equal: position bias -> tie
  biased = lambda q, first, second: "first"
  assert judge.order_consistent(biased, "x", ["p"], ["q"]) == "tie"
  out = judge.compare(fair, ["1", "2", "3", "4"], [["p"], ["q"], ["r"], ["p"]], [["q"], ["p"], ["r"], ["r"]])
  assert (out["win"], out["tie"], out["loss"]) == (0.5, 0.25, 0.25)
  with pytest.raises(ValueError, match="'first' or 'second'"):
    judge.order_consistent(lambda *a: "1", "x", ["p"], ["q"])


def test_recall_at_k_hand_case():
  sims = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.8], [0.1, 0.7, 0.6]])
  rel = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]], bool)
  # query 0: top1 hit; query 1: relevant is 3rd; query 2: relevant is 2nd
  assert hpir.recall_at_k(sims, rel, (1, 2, 3)) == {"r@1": pytest.approx(1 / 3), "r@2": pytest.approx(2 / 3),
                                                    "r@3": 1.0}
