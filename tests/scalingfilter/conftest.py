"""Shared by the scalingfilter tests: a random toy meta-model pair as GPT-2 folders, and toy
sizes for both meta-models of configs/scalingfilter/pipeline.py."""
import jax
import jax.numpy as jnp
import pytest

from jaxlab.data import tokenizer as tokenizer_lib
from jaxlab.models import gpt, hf
from jaxlab.scalingfilter import score


@pytest.fixture(scope="session")
def pair(tmp_path_factory):
  """A small and a large random GPT sharing one locally trained tokenizer, as GPT-2 folders."""
  from pydoc_data import topics
  root = tmp_path_factory.mktemp("pair")
  texts = [topics.topics[k] for k in sorted(topics.topics)[:60]]
  tok = tokenizer_lib.train_bpe(texts, vocab_size=300, out_dir=str(root / "tok"))
  models = []
  for name, layers, width in (("small", 1, 16), ("large", 2, 32)):
    cfg = gpt.GPTConfig(vocab_size=len(tok), max_len=32, num_layers=layers, d_model=width, num_heads=2)
    params = gpt.GPT(cfg).init(jax.random.key(layers), jnp.zeros((1, 4), jnp.int32))["params"]
    hf.save_gpt2(str(root / name), params, cfg, tok)
    models.append(score.load_meta_model(str(root / name)))
  return models[0], models[1], texts


@pytest.fixture
def toy_pipeline_overrides():
  return _toy_pipeline_overrides


def _toy_pipeline_overrides(tmp_path, docs) -> list[str]:
  """A 1-layer small and a 2-layer large GPT (d_model 32), 4 steps each, scoring `docs`."""
  toy = []
  for run in ("small", "large"):
    toy += [f"{run}.tokenizer.vocab_size=300", f"{run}.model.d_model=32", f"{run}.model.num_heads=2",
            f"{run}.model.max_len=32", f"{run}.train.seq_len=16", f"{run}.train.batch_size=8",
            f"{run}.train.steps=4", f"{run}.train.eval_every=0", f"{run}.train.eval_batches=2",
            f"{run}.train.checkpoint_every=4", f"{run}.data.data_dir={tmp_path / 'data'}"]
  # 4 steps cannot make the large model the better one: the premise check warns instead of refusing
  return toy + ["small.model.num_layers=1", "large.model.num_layers=2", f"score.input={docs}",
                "score.allow_worse_large=True"]
