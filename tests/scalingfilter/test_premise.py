"""ScalingFilter's premise check: both meta-models' held-out perplexities, computed against
per-token log-probs taken directly; the command line refuses a pair whose large model is not
the better one (or warns with --allow-worse-large), before writing anything."""
import json
import math

import numpy as np
import pytest

from jaxlab.scalingfilter import premise
from test_score import bounded, direct_nll


def _docs(texts):
  return [t[: 60 + 17 * i] for i, t in enumerate(texts[:8])]


def test_pair_perplexities_are_token_means_of_direct_log_probs(pair):
  small, large, texts = pair
  docs = _docs(texts) + ["", "   "]  # unscorable texts do not count
  check = premise.compare_pair(small, large, docs, source="toy")
  enc = small.tokenizer.backend_tokenizer
  ids = [enc.encode(d).ids for d in docs[:8]]
  preds = np.array([len(i) + 1 for i in ids])  # EOS, the text, EOS: every text token and the end predicted
  for model, got in ((small, check.ppl_small), (large, check.ppl_large)):
    want = math.exp(sum(direct_nll(model, bounded(model, i)) * p for i, p in zip(ids, preds)) / preds.sum())
    np.testing.assert_allclose(got, want, rtol=1e-5)
  assert check.n_texts == 8 and check.n_tokens == sum(map(len, ids))
  assert check.large_is_better == (check.ppl_large < check.ppl_small)
  with pytest.raises(premise.PremiseError, match="none of the 2 held-out texts"):
    premise.compare_pair(small, large, ["", " "])


def test_cli_refuses_a_pair_whose_large_model_is_worse(pair, tmp_path, capsys):
  from jaxlab.scalingfilter import __main__ as cli
  small, large, texts = pair
  docs = _docs(texts)
  check = premise.compare_pair(small, large, docs)
  better, worse = (large, small) if check.large_is_better else (small, large)
  path = tmp_path / "in.jsonl"
  path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(docs)))
  out = tmp_path / "scores.jsonl"
  args = ["score", "--input", str(path), "--output", str(out)]
  lo, hi = sorted([check.ppl_small, check.ppl_large])
  with pytest.raises(SystemExit) as e:
    cli.main(args + ["--small", better.path, "--large", worse.path])
  message = str(e.value.code)
  assert message.startswith("refused:") and "--allow-worse-large" in message
  assert f"small {lo:.3f}, large {hi:.3f}" in message and "first 8 of" in message
  assert not out.exists()  # refused before anything was written
  # the same pair, told to go on: it warns and scores
  with pytest.warns(UserWarning, match="not the better one"):
    assert cli.main(args + ["--small", better.path, "--large", worse.path, "--allow-worse-large"]) == 0
  assert len(out.read_text().splitlines()) == len(docs)
  # the pair the right way round passes, and says so; --held-out checks on other texts
  capsys.readouterr()
  assert cli.main(args + ["--small", worse.path, "--large", better.path, "--overwrite"]) == 0
  assert f"perplexity small {hi:.3f}, large {lo:.3f}" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="first 3 of"):
    cli.main(args + ["--small", better.path, "--large", worse.path, "--held-out", str(path), "--check-docs", "3"])
