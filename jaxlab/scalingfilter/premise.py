"""ScalingFilter's premise, checked before a corpus is scored: the large meta-model must be
the better one on text neither model trained on.

The quality factor d(x) = PPL_small(x) / PPL_large(x) ranks a document high when the large
model's extra capacity helps on it, which the paper derives from the scaling law of a pair
trained on the same data (the larger model has the lower loss). A pair where the large model
is not better on held-out text (too few steps, too little data, overfitting) still yields
numbers, but they rank documents by something else. So the command line and the pipeline
measure both models' held-out perplexity first, print both, and refuse to score when the
large one is not lower, unless told to go on (then they warn).

  check = premise.compare_pair(small, large, held_out_texts, source="held-out.jsonl")
  print(premise.require_larger_is_better(check))       # raises PremiseError when it is not
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Sequence

import jax
import numpy as np

from jaxlab import sharding
from jaxlab.scalingfilter import score as score_lib


class PremiseError(ValueError):
  """The large meta-model is not better than the small one on held-out text."""


@dataclasses.dataclass(frozen=True)
class PairCheck:
  """Both meta-models on the same held-out texts: perplexity = exp(token-weighted mean NLL)."""
  ppl_small: float
  ppl_large: float
  n_texts: int
  n_tokens: int
  source: str

  @property
  def large_is_better(self) -> bool:
    """The premise: the large model's held-out perplexity is the lower."""
    return self.ppl_large < self.ppl_small

  def describe(self) -> str:
    """One line with both perplexities and what they were measured on."""
    return (f"meta-model pair on held-out text ({self.source}: {self.n_texts} texts, {self.n_tokens} tokens): "
            f"perplexity small {self.ppl_small:.3f}, large {self.ppl_large:.3f}")

  def as_dict(self) -> dict:
    """Plain numbers for report.json, the verdict included."""
    return dict(dataclasses.asdict(self), large_is_better=self.large_is_better)


def compare_pair(small: score_lib.MetaModel, large: score_lib.MetaModel, texts: Sequence[str], *,
                 source: str = "held-out texts", **score_kwargs) -> PairCheck:
  """Score `texts` with both models (the scorer that scores the corpus, `score_texts`) and
  return their perplexities over all the texts' predictions together."""
  scores = score_lib.score_texts(list(texts), small, large, **score_kwargs)
  ok = scores.scored
  if not ok.any():
    raise PremiseError(f"none of the {len(texts)} held-out texts ({source}) could be scored")
  # each text's NLL is a mean over its predictions: weight it back to a token mean
  weights = scores.n_predictions[ok]
  nll = lambda v: float(np.sum(v[ok] * weights) / np.sum(weights))  # noqa: E731
  return PairCheck(math.exp(nll(scores.nll_small)), math.exp(nll(scores.nll_large)), int(ok.sum()),
                   int(scores.n_tokens[ok].sum()), source)


def require_larger_is_better(check: PairCheck, allow_worse_large: bool = False,
                             flag: str = "--allow-worse-large") -> str:
  """The check's line when the premise holds. Otherwise raise PremiseError naming `flag`, or
  with `allow_worse_large` warn and return the warning."""
  line = check.describe()
  if check.large_is_better:
    return line
  problem = (f"{line}: the large model is not the better one, so the quality factor does not rank "
             "documents as ScalingFilter assumes (train the large model longer or on more data)")
  if not allow_worse_large:
    raise PremiseError(f"{problem}; {flag} scores anyway")
  warnings.warn(problem, stacklevel=2)
  return f"WARNING: {problem}"


def held_out_texts(source, n: int, text_field: str = "text", id_field: str = "id",
                   data_dir: str | None = None) -> list[str]:
  """The first `n` non-empty texts of `source` (anything `score.read_documents` reads):
  malformed records are skipped here, as the scorer reports them itself."""
  texts = []
  for _, text in score_lib.read_documents(source, text_field, id_field, data_dir):
    if isinstance(text, str) and text.strip():
      texts.append(text)
      if len(texts) == n:
        break
  return texts


def check_before_scoring(small: score_lib.MetaModel, large: score_lib.MetaModel, source, *, n: int,
                         allow_worse_large: bool, flag: str, text_field: str = "text", id_field: str = "id",
                         data_dir: str | None = None, **score_kwargs) -> PairCheck:
  """compare_pair on the first `n` texts of `source`, then require_larger_is_better; prints
  the check's line. What the command line and the pipeline run before scoring."""
  if jax.process_count() > 1:  # every process checks on its own devices (and gets the same numbers)
    score_kwargs.setdefault("mesh", sharding.make_mesh([("data", -1)], jax.local_devices()))
  label = source if isinstance(source, str) else ", ".join(map(str, source))
  texts = held_out_texts(source, n, text_field, id_field, data_dir)
  check = compare_pair(small, large, texts, source=f"first {len(texts)} of {label}", **score_kwargs)
  print(require_larger_is_better(check, allow_worse_large, flag), flush=True)
  return check


def check_or_exit(small: score_lib.MetaModel, large: score_lib.MetaModel, source, **kwargs) -> PairCheck:
  """check_before_scoring for a command line: a refusal exits (status 1) with its reason."""
  try:
    return check_before_scoring(small, large, source, **kwargs)
  except PremiseError as e:
    raise SystemExit(f"refused: {e}") from None
