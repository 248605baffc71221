"""ScalingFilter's reference recipe on the same exported weights: transformers'
GPT2LMHeadModel scores the first C tokens of each document (the tokenizer's truncation, no
BOS/EOS added) and d = exp(loss_small - loss_large). jaxlab's `truncate` rule with
boundaries="none" must give the same log d within 1e-3 (parity extra)."""
import numpy as np
import pytest

from jaxlab.scalingfilter import score

pytestmark = pytest.mark.parity


def reference_log_d(small, large, texts, context):
  torch = pytest.importorskip("torch", reason="the reference runs on PyTorch (the 'parity' extra)")
  import transformers
  losses = []
  for meta in (small, large):
    model = transformers.GPT2LMHeadModel.from_pretrained(meta.path, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(meta.path)
    with torch.no_grad():
      out = []
      for text in texts:
        ids = tok(text, truncation=True, max_length=context, return_tensors="pt")["input_ids"]
        out.append(float(model(ids, labels=ids).loss))
    losses.append(np.array(out))
  return losses[0] - losses[1]


def test_truncate_reproduces_the_reference(pair):
  small, large, texts = pair
  docs = [t[: 80 + 40 * i] for i, t in enumerate(texts[:24])]  # short ones and ones cut at the context
  got = score.score_texts(docs, small, large, options=score.ScoreOptions("truncate", boundaries="none"))
  want = reference_log_d(small, large, docs, small.context)
  assert got.n_tokens.max() > 2 * small.context  # truncation really happened
  np.testing.assert_allclose(np.log(got.quality_factor), want, atol=1e-3)
  assert np.max(np.abs(np.log(got.quality_factor) - want)) < 1e-4  # in fact float32-close
  default = score.score_texts(docs, small, large)  # windows + EOS: a different number, as documented
  assert np.max(np.abs(np.log(default.quality_factor) - want)) > 1e-3
