"""GPT-2 interop: the same weights in transformers' GPT2LMHeadModel (PyTorch) and in jaxlab.

Needs the `parity` extra (torch); skipped with a reason where torch is absent.
"""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

from jaxlab.models import gpt, hf

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch", reason="parity tests need the 'parity' extra (torch==2.13.0)")
transformers = pytest.importorskip("transformers")


def random_params(cfg, seed=0):
  """Random values everywhere (LayerNorm and biases included) so no mapping slip can hide."""
  params = gpt.GPT(cfg).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(treedef, [0.2 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_transformers(tmp_path, tied):
  cfg = gpt.GPTConfig(vocab_size=97, max_len=16, num_layers=2, d_model=32, num_heads=4, tied_embeddings=tied)
  params = random_params(cfg)
  hf.save_gpt2(str(tmp_path), params, cfg)
  model = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 16))
  with torch.no_grad():
    ref = model(torch.tensor(tokens)).logits.numpy()
  ours = np.asarray(gpt.GPT(cfg).apply({"params": params}, jnp.asarray(tokens)))
  assert np.max(np.abs(ours - ref)) < 1e-4, np.max(np.abs(ours - ref))
  # and back: transformers' own save_pretrained output loads into the same params
  model.save_pretrained(str(tmp_path / "resaved"))
  cfg2, params2 = hf.load_gpt2(str(tmp_path / "resaved"))
  assert cfg2 == cfg
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, params2)


def test_trained_model_exports_to_transformers_with_same_loss(tmp_path):
  from jaxlab import config as config_lib
  from jaxlab.trainers import lm
  repo = __import__("pathlib").Path(__file__).resolve().parents[2]
  cfg = config_lib.load(str(repo / "configs" / "quickstart.py") + ":toy",
                        ["train.steps=6", "train.eval_every=0", "model.tied_embeddings=false"])
  summary = lm.train_and_evaluate(cfg, str(tmp_path / "run"))
  folder = lm.export_hf(str(tmp_path / "run"), str(tmp_path / "hf"))

  model = transformers.GPT2LMHeadModel.from_pretrained(folder, dtype=torch.float32).eval()
  tok = transformers.AutoTokenizer.from_pretrained(folder)
  from pydoc_data import topics
  ids = tok(topics.topics["assert"])["input_ids"][:cfg.train.seq_len + 1]
  with torch.no_grad():
    ref = float(model(torch.tensor([ids]), labels=torch.tensor([ids])).loss)
  logits = summary.model.apply({"params": summary.params}, jnp.asarray([ids[:-1]]))
  import optax
  ours = float(optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray([ids[1:]])).mean())
  assert abs(ours - ref) < 1e-5, (ours, ref)
  assert ref < np.log(cfg.tokenizer.vocab_size)  # it did learn something in 6 steps
