"""Vendi score through the dual matrix vs the direct n x n eigenvalue formula and closed forms."""
import numpy as np
import pytest

from jaxlab.scalingfilter import diversity


def unit_rows(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def direct_vendi(x):
  """Independent reference: eigenvalues of the n x n K / n in float64."""
  x = unit_rows(x)
  k = (1.0 + x @ x.T) / 2.0
  w = np.linalg.eigvalsh(k / len(x))
  w = w[w > 1e-15]
  return float(np.exp(-np.sum(w * np.log(w))))


def orthogonal_closed_form(n):
  # K = I/2 + 11^T/2: eigenvalue (n+1)/2 once (on the ones vector) and 1/2 (n-1) times,
  # so K/n has (n+1)/(2n) once and 1/(2n) n-1 times (they sum to 1).
  big, small = (n + 1) / (2 * n), 1 / (2 * n)
  return float(np.exp(-big * np.log(big) - (n - 1) * small * np.log(small)))


@pytest.mark.parametrize("n,d,scale", [(300, 16, 1.0), (200, 384, 1.0), (500, 8, 0.05)])
def test_matches_direct_eigenvalue_formula(n, d, scale):
  rng = np.random.default_rng(n)
  # scale < 1: tight cluster around a shared direction, a score near 1
  x = rng.standard_normal((n, d)) * scale + rng.standard_normal(d)
  got = diversity.vendi_score(x.astype(np.float32))
  np.testing.assert_allclose(got, direct_vendi(x.astype(np.float32)), rtol=1e-5)


def test_single_document_is_one():
  assert diversity.vendi_score(np.array([[0.3, -2.0, 1.0]], np.float32)) == pytest.approx(1.0, abs=1e-6)


def test_identical_documents_are_one():
  x = np.tile(np.random.default_rng(0).standard_normal((1, 32)), (50, 1)).astype(np.float32)
  assert diversity.vendi_score(x) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_orthogonal_documents_closed_form(n):
  q, _ = np.linalg.qr(np.random.default_rng(n).standard_normal((24, n)))
  x = (q.T * np.arange(1, n + 1)[:, None]).astype(np.float32)  # orthogonal, not unit: rows get normalised
  expected = orthogonal_closed_form(n)
  assert diversity.vendi_score(x) == pytest.approx(expected, rel=1e-5)
  assert direct_vendi(x) == pytest.approx(expected, rel=1e-6)  # float32 rows: orthogonal to ~1e-7
  # n = 2 by hand: eigenvalues 3/4 and 1/4
  if n == 2:
    assert expected == pytest.approx(np.exp(-0.75 * np.log(0.75) - 0.25 * np.log(0.25)))


def test_matches_vendi_score_package():
  vendi = pytest.importorskip("vendi_score.vendi", reason="needs the vendi_score package (pip install vendi_score)")
  x = np.random.default_rng(1).standard_normal((400, 64))
  u = unit_rows(x)
  ref = vendi.score_K((1.0 + u @ u.T) / 2.0)
  assert diversity.vendi_score(x.astype(np.float32)) == pytest.approx(ref, rel=1e-5)


def test_grouped_hand_checked():
  e = np.eye(3, dtype=np.float32)
  x = np.stack([e[0], e[0], e[1], e[2], e[0]])  # 5 rows, groups of 2: the fifth shuffled row is dropped
  mean, std, groups = diversity.grouped_vendi(x, group_size=2, seed=3)
  order = np.random.default_rng(3).permutation(5)  # the documented shuffle
  pair = (4 / 3) ** 0.75 * 4 ** 0.25                # two orthogonal rows: eigenvalues 3/4, 1/4
  expected = [1.0 if np.array_equal(x[order[2 * g]], x[order[2 * g + 1]]) else pair for g in range(2)]
  assert len(groups) == 2
  np.testing.assert_allclose(groups, expected, rtol=1e-5)
  assert mean == pytest.approx(np.mean(expected), rel=1e-5)
  assert std == pytest.approx(np.std(expected), rel=1e-5, abs=1e-6)


def test_grouped_single_group_when_corpus_is_small():
  x = np.random.default_rng(2).standard_normal((40, 8)).astype(np.float32)
  for group_size in (40, 100):  # exactly one group, or fewer rows than a group: one group of all n
    mean, std, groups = diversity.grouped_vendi(x, group_size=group_size, seed=5)
    assert len(groups) == 1 and std == 0.0
    assert mean == pytest.approx(direct_vendi(x), rel=1e-5)  # order does not change the score


def test_rejects_empty():
  with pytest.raises(ValueError):
    diversity.vendi_score(np.zeros((0, 4), np.float32))
