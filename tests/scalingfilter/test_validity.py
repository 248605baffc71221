"""The validity benchmark's pieces: corruptions do what their names say (checked on the text
itself, by hand-countable properties) and ROC-AUC against values worked by hand."""
import collections
import difflib

import numpy as np
import pytest

from jaxlab.scalingfilter import validity

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
        "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
        "the rightful property of some one or other of their daughters. My dear Mr. Bennet, said his lady to him "
        "one day, have you heard that Netherfield Park is let at last? Mr. Bennet replied that he had not.\n"
        "But it is, returned she; for Mrs. Long has just been here, and she told me all about it.")


def rng(seed=0):
  return np.random.default_rng(seed)


def test_roc_auc_by_hand():
  # pairs (clean, bad): (3,1) (3,2.5) (2,1) win, (2,2.5) loses -> 3/4
  assert validity.roc_auc([3, 2], [1, 2.5]) == pytest.approx(0.75)
  assert validity.roc_auc([1, 2], [1, 0]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)  # a tie counts one half
  point, lo, hi = validity.auc_interval([5, 6, 7], [1, 2, 3, 4], [0, 0, 1, 2], n_boot=50)
  assert (point, lo, hi) == (1.0, 1.0, 1.0)
  point, lo, hi = validity.auc_interval(rng(1).normal(size=40), rng(2).normal(size=80), np.arange(80) % 40)
  assert lo < point < hi and hi - lo > 0.1  # chance-level scores: a wide interval around 0.5
  with pytest.raises(ValueError, match="non-finite"):
    validity.auc_interval([1.0, np.nan], [0.0], [0])


def test_shuffles_keep_the_words_and_sentences():
  words = lambda t: collections.Counter(t.split())
  for sev in validity.SEVERITIES:
    out = validity.shuffle_words(TEXT, sev, rng())
    assert words(out) == words(" ".join(validity.sentences(TEXT))) and out != TEXT
    moved = validity.shuffle_sentences(TEXT, sev, rng())
    assert collections.Counter(validity.sentences(moved)) == collections.Counter(validity.sentences(TEXT))
  all_shuffled = validity.shuffle_words(TEXT, 3, rng())
  changed = sum(a != b for a, b in zip(validity.sentences(all_shuffled), validity.sentences(TEXT)))
  assert changed >= len(validity.sentences(TEXT)) - 1  # every sentence (a 2-word one may come back as it was)


def test_added_lines_keep_the_text_and_scale_with_severity():
  n = len(TEXT.split())
  for kind in ("boilerplate", "spam_list"):
    for sev, share in zip(validity.SEVERITIES, (0.25, 0.5, 1.0)):
      out = validity.corrupt(TEXT, kind, sev, rng())
      lines = out.split("\n")
      original = [l for l in lines if l in TEXT.split("\n")]
      assert original == TEXT.split("\n")  # the text's own lines, in order
      added = sum(len(l.split()) for l in lines if l not in original)
      assert round(share * n) <= added < share * n + 20
  assert any(l in validity.BOILERPLATE for l in validity.boilerplate(TEXT, 1, rng()).split("\n"))


def test_repeated_lines_and_fragments_by_count():
  parts = validity.sentences(TEXT)
  out = validity.repeated_lines(TEXT, 3, rng()).split("\n")
  runs = [(k, len(list(g))) for k, g in __import__("itertools").groupby(out)]
  assert [k for k, _ in runs] == parts and all(2 <= r <= 4 for _, r in runs)
  light = validity.repeated_lines(TEXT, 1, rng()).split("\n")
  assert len(light) > len(parts) and len(set(light)) == len(parts)
  for sev, keep in zip(validity.SEVERITIES, (0.6, 0.4, 0.2)):
    frags = validity.fragments(TEXT, sev, rng()).split("\n")
    assert len(frags) == len(parts) and all(f.endswith("...") for f in frags)
    for f, p in zip(frags, parts):
      assert p.startswith(f[:-3]) and len(f[:-3].split()) == max(1, round(len(p.split()) * keep))


def test_character_noise_grows_with_severity_and_repeats_with_the_seed():
  # about 2/3 of the touched characters cost one matching character each: ratio ~ 1 - rate * 2/3
  similarity = [difflib.SequenceMatcher(None, TEXT, validity.char_noise(TEXT, s, rng()), autojunk=False).ratio()
                for s in validity.SEVERITIES]
  assert 0.9 < similarity[2] < similarity[1] < similarity[0] < 0.997
  assert validity.char_noise(TEXT, 2, rng(3)) == validity.char_noise(TEXT, 2, rng(3))
  with pytest.raises(ValueError, match="unknown corruption"):
    validity.corrupt(TEXT, "typos", 1, rng())
  with pytest.raises(ValueError, match="severity"):
    validity.corrupt(TEXT, "char_noise", 4, rng())
