"""Does a quality score separate good documents from bad ones? Graded corruptions of clean
text of the kinds a web crawl really holds, and ROC-AUC of a score (clean vs corrupted) with a
bootstrap interval over source documents.

  bad = corrupt(text, "boilerplate", severity=2, rng=np.random.default_rng(0))
  auc, lo, hi = auc_interval(clean_scores, bad_scores, bad_sources)

Each corruption takes a severity 1 (light), 2 or 3 (heavy); `CORRUPTIONS` lists them:
  shuffle_words      the words of a share of the sentences shuffled in place (1/3, 2/3, all)
  shuffle_sentences  a share of the sentences moved to random places (1/3, 2/3, all)
  boilerplate        navigation, cookie, sharing and footer lines around and inside the text,
                     as many words as 1/4, 1/2, 1x the text's
  repeated_lines     a share of the lines (sentences) repeated 2-4 times in a row (1/5, 1/2, all)
  spam_list          keyword-stuffed promotion lines mixed in, 1/4, 1/2, 1x the text's words
  char_noise         character substitutions, insertions and deletions at 2%, 5%, 10%
  fragments          each sentence cut to its first 60%, 40%, 20% of words, ending in "..."
Higher scores must mean cleaner text: pass -perplexity, not perplexity.
"""
from __future__ import annotations

import re
import string
from typing import Callable, Sequence

import numpy as np

SEVERITIES = (1, 2, 3)

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")

NAVIGATION = (
    "Home | About Us | Contact | Blog | FAQ", "Skip to main content", "Menu", "Search this site",
    "Log in | Register | My Account", "You are here: Home > News > Article", "Categories", "Archives",
    "Subscribe to our newsletter", "Main navigation", "Toggle navigation", "Back to top",
)
COOKIES = (
    "We use cookies to improve your experience on our website. By continuing to browse, you agree to our use of cookies.",
    "Accept all cookies", "Cookie settings", "This site uses cookies. Learn more.",
)
SHARING = (
    "Share on Facebook", "Tweet", "Pin it", "Share via Email", "Print this page", "Like 0 | Share",
    "Leave a comment", "Posted in Uncategorized | 3 Comments", "Related posts:", "Read more »",
    "Previous article", "Next article", "Tags: news, updates, info",
)
FOOTER = (
    "© 2023 All rights reserved.", "Privacy Policy | Terms of Use | Sitemap", "Powered by WordPress",
    "Designed by Theme Studio", "Follow us on Twitter and Instagram", "Contact us: info@example.com",
)
BOILERPLATE = NAVIGATION + COOKIES + SHARING + FOOTER

SPAM_WORDS = (
    "cheap", "best", "buy", "online", "discount", "free", "shipping", "deal", "deals", "sale", "price", "prices",
    "viagra", "casino", "loans", "payday", "insurance", "replica", "watches", "handbags", "outlet", "coupon",
    "promo", "code", "review", "reviews", "top", "rated", "2023", "now", "click", "here", "order", "wholesale",
    "seo", "backlinks", "followers", "weight", "loss", "pills", "bitcoin", "crypto", "earn", "money", "fast",
)


def sentences(text: str) -> list[str]:
  """The text cut after sentence ends (. ! ? ; :) and at line breaks, empty pieces dropped."""
  return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _share(n: int, fraction: float) -> int:
  return max(1, int(round(n * fraction))) if n else 0


def shuffle_words(text: str, severity: int, rng: np.random.Generator) -> str:
  """Words shuffled within 1/3, 2/3 or all of the sentences (each sentence keeps its words)."""
  parts = sentences(text)
  for i in rng.choice(len(parts), _share(len(parts), severity / 3), replace=False):
    words = parts[i].split()
    rng.shuffle(words)
    parts[i] = " ".join(words)
  return " ".join(parts)


def shuffle_sentences(text: str, severity: int, rng: np.random.Generator) -> str:
  """1/3, 2/3 or all of the sentences taken out and put back at random places."""
  parts = sentences(text)
  moved = set(rng.choice(len(parts), _share(len(parts), severity / 3), replace=False).tolist())
  stay = [p for i, p in enumerate(parts) if i not in moved]
  for i in rng.permutation(sorted(moved)):
    stay.insert(int(rng.integers(len(stay) + 1)), parts[i])
  return " ".join(stay)


def _mix_lines(text: str, extra: list[str], rng: np.random.Generator, ends: bool) -> str:
  """The text's lines with `extra` lines inserted; with ends=True about a third go on top,
  a third at the bottom and the rest between lines, as a page's header, footer and sidebar."""
  lines = [l for l in text.split("\n") if l.strip()]
  for j, line in enumerate(extra):
    where = j % 3 if ends else 2
    pos = 0 if where == 0 else len(lines) if where == 1 else int(rng.integers(len(lines) + 1))
    lines.insert(pos, line)
  return "\n".join(lines)


def _lines_until(words: int, make: Callable[[], str]) -> list[str]:
  out, n = [], 0
  while n < words:
    out.append(make())
    n += len(out[-1].split())
  return out


def boilerplate(text: str, severity: int, rng: np.random.Generator) -> str:
  """Page chrome (navigation, cookie notices, sharing links, footers) adding 1/4, 1/2 or 1x the text's words."""
  words = _share(len(text.split()), (0.25, 0.5, 1.0)[severity - 1])
  return _mix_lines(text, _lines_until(words, lambda: BOILERPLATE[int(rng.integers(len(BOILERPLATE)))]), rng, True)


def spam_list(text: str, severity: int, rng: np.random.Generator) -> str:
  """Keyword-stuffed lines (6-14 promotion words each) adding 1/4, 1/2 or 1x the text's words."""
  words = _share(len(text.split()), (0.25, 0.5, 1.0)[severity - 1])
  line = lambda: " ".join(SPAM_WORDS[i] for i in rng.integers(len(SPAM_WORDS), size=int(rng.integers(6, 15))))
  return _mix_lines(text, _lines_until(words, line), rng, False)


def repeated_lines(text: str, severity: int, rng: np.random.Generator) -> str:
  """1/5, 1/2 or all of the sentences, each on its own line, repeated 2-4 times in a row."""
  parts = sentences(text)
  chosen = set(rng.choice(len(parts), _share(len(parts), (0.2, 0.5, 1.0)[severity - 1]), replace=False).tolist())
  out = []
  for i, p in enumerate(parts):
    out += [p] * (int(rng.integers(2, 5)) if i in chosen else 1)
  return "\n".join(out)


def char_noise(text: str, severity: int, rng: np.random.Generator) -> str:
  """Each character substituted, deleted or followed by an inserted one with probability 2%, 5% or 10%."""
  rate = (0.02, 0.05, 0.10)[severity - 1]
  letters = string.ascii_letters + string.digits + string.punctuation
  out = []
  for ch in text:
    if rng.random() >= rate or ch == "\n":
      out.append(ch)
      continue
    op = int(rng.integers(3))
    if op == 0:
      out.append(letters[int(rng.integers(len(letters)))])
    elif op == 2:
      out.append(ch + letters[int(rng.integers(len(letters)))])
  return "".join(out)


def fragments(text: str, severity: int, rng: np.random.Generator) -> str:
  """Every sentence cut to its first 60%, 40% or 20% of words (at least one), ending in '...'."""
  keep = (0.6, 0.4, 0.2)[severity - 1]
  return "\n".join(" ".join(w[:_share(len(w), keep)]) + "..." for w in (s.split() for s in sentences(text)))


CORRUPTIONS: dict[str, Callable[[str, int, np.random.Generator], str]] = {
    "shuffle_words": shuffle_words, "shuffle_sentences": shuffle_sentences, "boilerplate": boilerplate,
    "repeated_lines": repeated_lines, "spam_list": spam_list, "char_noise": char_noise, "fragments": fragments,
}


def corrupt(text: str, kind: str, severity: int, rng: np.random.Generator) -> str:
  """The text with one corruption of `kind` (a key of CORRUPTIONS) at severity 1, 2 or 3."""
  if kind not in CORRUPTIONS:
    raise ValueError(f"unknown corruption {kind!r}; use one of {', '.join(CORRUPTIONS)}")
  if severity not in SEVERITIES:
    raise ValueError(f"severity must be one of {SEVERITIES}, got {severity}")
  return CORRUPTIONS[kind](text, severity, rng)


# ------------------------------------------------------------------------------ ROC-AUC

def roc_auc(clean: Sequence[float], bad: Sequence[float]) -> float:
  """P(a clean document scores above a corrupted one), ties counting one half (sklearn's ROC-AUC)."""
  from sklearn.metrics import roc_auc_score
  clean, bad = np.asarray(clean, np.float64), np.asarray(bad, np.float64)
  return float(roc_auc_score(np.r_[np.ones(len(clean)), np.zeros(len(bad))], np.r_[clean, bad]))


def auc_interval(clean: Sequence[float], bad: Sequence[float], bad_sources: Sequence[int], *,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
  """(ROC-AUC, low, high): the percentile bootstrap over source documents. clean[i] is source
  document i; bad[j] was made from source bad_sources[j]; a resample draws source documents
  with replacement and takes each one's clean and corrupted versions together, since they are
  not independent. Non-finite scores (an unscorable text) fail loudly rather than vanish."""
  clean, bad = np.asarray(clean, np.float64), np.asarray(bad, np.float64)
  src = np.asarray(bad_sources, np.int64)
  if not (np.isfinite(clean).all() and np.isfinite(bad).all()):
    raise ValueError("auc_interval: non-finite scores; count and report unscorable texts before ranking")
  point = roc_auc(clean, bad)
  rng = np.random.default_rng(seed)
  by_source = [np.flatnonzero(src == i) for i in range(len(clean))]
  boots = []
  for _ in range(n_boot):
    pick = rng.integers(len(clean), size=len(clean))
    b = np.concatenate([by_source[i] for i in pick])
    if len(b):
      boots.append(roc_auc(clean[pick], bad[b]))
  lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
  return point, float(lo), float(hi)
