"""Testbed rendering and labels, the real preference fixture through the same loaders,
the aesthetic MLP, and the align trainer end to end on a tiny config."""
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import config as config_lib
from jaxlab.align import aesthetic, hpir, judge
from jaxlab.align import finetune, testbed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "align", "testbed.py")


def test_render_follows_the_factors():
  rng = np.random.default_rng(0)
  clean = testbed.render("red square", (1.0, 1.0, 1.0), 16, rng)
  # centred, sharp, harmonious: red centre, neutral corner, no noise
  assert tuple(clean[8, 8]) == (230, 26, 26) and tuple(clean[0, 0]) == (235, 230, 217)
  noisy = testbed.render("red square", (1.0, 0.0, 1.0), 16, rng)
  assert np.abs(noisy.astype(int) - clean.astype(int)).mean() > 5
  skewed = testbed.render("red square", (0.0, 1.0, 1.0), 16, rng)
  red = np.all(skewed == clean[8, 8], axis=-1)
  ys, xs = np.nonzero(red)
  assert np.hypot(ys.mean() + 0.5 - 8, xs.mean() + 0.5 - 8) > 3   # pushed off-centre


def test_captions_tokens_and_hpir_labels(tmp_path):
  tb = testbed.prepare_testbed(str(tmp_path), num_train=16, num_val=160, num_test=200, hpir_queries=60,
                               hpir_set_size=2)
  rec = tb.test[0]
  assert rec["image"].shape == (16, 16, 3) and rec["image"].dtype == np.uint8
  truth = np.asarray(rec["factors"]).mean()
  assert float(rec["aesthetic"]) == pytest.approx(truth, rel=1e-6)
  caption = testbed.as_text(rec["caption"])
  assert caption.startswith(testbed.query_for(testbed.as_text(rec["content"])))
  tok = testbed.word_tokenizer()
  tokens, mask = testbed.encode(tok, ["a red circle, crisp", "a weird red circle"], 8)
  vocab = tok.get_vocab()
  assert tokens[0].tolist() == [vocab[w] for w in ("a", "red", "circle", ",", "crisp", "[EOS]")] + [0, 0]
  assert tokens[1, 1] == vocab["[UNK]"] and mask.sum(1).tolist() == [6, 5]
  tune, held = testbed.content_split()
  records = hpir.load_hpir(tb.hpir["test/heldout/aesthetic"])   # the generic HPIR loader reads the labels
  assert len(records) == 60
  row = {testbed.as_text(tb.test[i]["id"]): tb.test[i] for i in range(len(tb.test))}
  aes = {k: float(v["aesthetic"]) for k, v in row.items()}
  agree = np.mean([(np.mean([aes[i] for i in r.results_a]) > np.mean([aes[i] for i in r.results_b]))
                   == (r.choice == "a") for r in records])
  assert 0.7 < agree < 1.0                                   # drawn from the truth, with noise
  assert {r.confidence for r in records} <= {0.6, 0.8, 1.0}
  # held-out contents only, worded by the held-out templates only
  held_queries = testbed.queries("rendered", held, testbed.HELDOUT_TEMPLATES)
  assert {r.query for r in records} <= set(held_queries)
  assert all(int(row[i]["content_id"]) == held_queries[r.query] for r in records for i in r.results_a + r.results_b)
  # relevance: the annotators follow the mean grade (1 same content, 0.5 same colour or shape), by hand
  rel = hpir.load_hpir(tb.hpir["test/finetune/relevance"])
  names = testbed.CONTENTS

  def grade(q_content, image_id):
    qc, ic = names[q_content].split(), testbed.as_text(row[image_id]["content"]).split()
    return 1.0 if qc == ic else 0.5 if (qc[0] == ic[0] or qc[1] == ic[1]) else 0.0

  tune_queries = testbed.queries("rendered", tune, testbed.HELDOUT_TEMPLATES)
  diffs = [np.mean([grade(tune_queries[r.query], i) for i in r.results_a])
           - np.mean([grade(tune_queries[r.query], i) for i in r.results_b]) for r in rel]
  assert all(d != 0 for d in diffs)
  agree = np.mean([(d > 0) == (r.choice == "a") for d, r in zip(diffs, rel)])
  assert 0.85 < agree <= 1.0
  # validation: its own images (none of test's) and its own labels over them
  assert len(tb.validation) == 160
  val_ids = {testbed.as_text(tb.validation[i]["id"]) for i in range(160)}
  assert all(i.startswith("validation-") for i in val_ids)
  val_images = np.stack([tb.validation[i]["image"] for i in range(160)]).reshape(160, -1)
  test_images = np.stack([tb.test[i]["image"] for i in range(200)]).reshape(200, -1)
  assert not (val_images[:, None, :] == test_images[None, :, :]).all(-1).any()
  val_records = hpir.load_hpir(tb.hpir["validation/heldout/aesthetic"])
  assert len(val_records) == 60 and all(set(r.results_a + r.results_b) <= val_ids for r in val_records)
  with pytest.raises(ValueError, match="num_test must be positive"):
    testbed.prepare_testbed(str(tmp_path), num_test=0)


def test_content_halves_share_every_colour_and_shape():
  tune, held = testbed.content_split()
  assert len(tune) == len(held) == 12 and not set(tune) & set(held)
  for half in (tune, held):
    words = [testbed.CONTENTS[c].split() for c in half]
    assert {w[0] for w in words} == set(testbed.COLOURS) and {w[1] for w in words} == set(testbed.SHAPES)
  assert not set(testbed.TRAIN_TEMPLATES) & set(testbed.HELDOUT_TEMPLATES)


def test_rephrasings_and_captions_share_no_aesthetic_word():
  from jaxlab.align import rephrase
  stop = {"a", "an", "the", "and", "in", "of", "with"}
  tokens = lambda t: set(t.lower().replace(",", " ").replace(":", " ").replace(".", " ").replace('"', " ")
                         .replace("{", " ").replace("}", " ").replace("-", " ").split())
  q = "a red circle"
  rephrased = set().union(*(tokens(rephrase.expand(q, s, k=4)) for s in rephrase.STYLES)) - tokens(q)
  caption = set().union(*(tokens(p) for pair in testbed.CAPTION_PHRASES.values() for side in pair for p in side))
  assert rephrased and caption
  assert not (rephrased - stop) & (caption - stop), (rephrased - stop) & (caption - stop)


def test_real_preference_fixture_through_the_loaders(shared_data, tmp_path):
  folder = shared_data / "images" / "preference_example"
  images, records = testbed.load_ranking_folder(str(folder), image_size=16)
  assert sorted(images) == ["1.webp", "2.webp", "3.webp", "4.webp"]
  assert all(im.shape == (16, 16, 3) and im.dtype == np.uint8 for im in images.values())
  path = hpir.write_hpir(str(tmp_path / "fixture.jsonl"), records)
  loaded = hpir.load_hpir(path)
  assert loaded == records and len(loaded) == 6 and {r.choice for r in loaded} == {"a", "b"}
  reward = json.loads((folder / "ranking.json").read_text())["reference_reward"]
  # the published rewards agree with the published human order: accuracy 1, reversed 0
  assert hpir.evaluate_hpir(loaded, lambda q, ids: np.array([reward[i] for i in ids]))["accuracy"] == 1.0
  assert hpir.evaluate_hpir(loaded, lambda q, ids: np.array([-reward[i] for i in ids]))["accuracy"] == 0.0
  j = judge.aesthetic_judge(lambda ids: np.array([reward[i] for i in ids]))
  assert [judge.order_consistent(j, r.query, r.results_a, r.results_b) for r in loaded] == [r.choice for r in loaded]
  # and the pixels go through the image tower
  from jaxlab.models.vit import ViT, ViTConfig
  vit = ViT(ViTConfig(num_classes=0, image_size=16, patch_size=4, channels=3, num_layers=1, d_model=16, num_heads=2))
  pixels = jnp.asarray(np.stack(list(images.values())), jnp.float32) / 255.0
  feats = jax.jit(vit.init_with_output)(jax.random.key(0), pixels)[0]
  assert feats.shape == (4, 16) and np.all(np.isfinite(np.asarray(feats)))


def test_aesthetic_mlp_laion_shape_and_normalisation():
  mlp = aesthetic.AestheticMLP()
  params = jax.eval_shape(mlp.init, jax.random.key(0), jnp.zeros((1, 768)))["params"]
  assert [params[f"dense_{i}"]["kernel"].shape for i in range(4)] == [(768, 1024), (1024, 128), (128, 64), (64, 16)]
  assert params["out"]["kernel"].shape == (16, 1)
  small = aesthetic.AestheticMLP(hidden=(4,), dropout=(0.0,))
  p = jax.jit(small.init)(jax.random.key(0), jnp.zeros((1, 3)))["params"]
  e = jnp.array([[3.0, 4.0, 0.0]])
  # no nonlinearity (LAION): score = W2 (W1 e/|e| + b1) + b2, on the unit vector
  u = e / 5.0
  want = (u @ p["dense_0"]["kernel"] + p["dense_0"]["bias"]) @ p["out"]["kernel"] + p["out"]["bias"]
  np.testing.assert_allclose(np.asarray(jax.jit(aesthetic.score, static_argnums=0)(small, p, e)),
                             np.asarray(want[:, 0]), rtol=1e-5)
  assert float(aesthetic.mse_loss(small, p, e, want[:, 0])) == pytest.approx(0.0, abs=1e-10)


def _load(*overrides, arg="tiny"):
  return config_lib.load(f"{CONFIG}:{arg}", list(overrides))


def test_config_mistakes_fail_before_work_naming_the_key(tmp_path):
  from jaxlab.trainers import align
  with pytest.raises(config_lib.ConfigError, match="did you mean 'preferences.top_k'"):
    _load("preferences.topk=3")
  cases = [("preferences.top_k=3", "preferences.top_k: 3 < 7 needed for a 2 x 2 grid"),
           ("dpo.train.batch_size=7", "dpo.train.batch_size: 7 is not divisible"),
           ("rephrase.backend=claude", "rephrase.backend"), ("rephrase.style=poem", "rephrase.style"),
           ("pretrain.loss=hinge", "pretrain.loss"), ("model.patch_size=3", "model.patch_size"),
           ("pretrain.workdir=/nonexistent", "pretrain.workdir"), ("data.source=drawings", "data.source"),
           ("model.text_tower=gpt", "model.text_tower"), ("preferences.relevance=magic", "preferences.relevance"),
           ("eval.cascade_k=2", "eval.cascade_k: must be >= eval.top_k=4"),
           ("eval.weight_average=1.5", "eval.weight_average: must be in"),
           ("dpo.contrastive_batch=12", "dpo.contrastive_batch: 12 is not a multiple of dpo.train.batch_size=8")]
  for override, msg in cases:
    with pytest.raises(config_lib.ConfigError, match=msg):
      align.train_and_evaluate(_load(override), str(tmp_path / "w"))
  with pytest.raises(config_lib.ConfigError, match="dpo.contrastive_batch: is 0 and dpo.contrastive_candidates is off"):
    align.train_and_evaluate(_load("dpo.contrastive_batch=0", "dpo.contrastive_candidates=False"), str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")     # nothing prepared, nothing compiled


def test_weight_average_is_wise_ft_leaf_by_leaf():
  from jaxlab.trainers import align
  pre = {"w": np.array([[1.0, -2.0]], np.float32), "b": {"c": np.array([4.0], np.float32)}}
  fine = {"w": np.array([[3.0, 2.0]], np.float32), "b": {"c": np.array([0.0], np.float32)}}
  mid = align.weight_average(pre, fine, 0.25)  # 0.75 * pre + 0.25 * fine, by hand
  np.testing.assert_allclose(mid["w"], [[1.5, -1.0]])
  np.testing.assert_allclose(mid["b"]["c"], [3.0])
  np.testing.assert_array_equal(align.weight_average(pre, fine, 1.0)["w"], fine["w"])
  np.testing.assert_array_equal(align.weight_average(pre, fine, 0.0)["b"]["c"], pre["b"]["c"])


def _cli(workdir, *overrides):
  """`python -m jaxlab.main` in a fresh process, as a user runs it: 8 simulated devices and,
  to keep this test's many small XLA compiles cheap, LLVM optimisation level 0."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8 "
             "--xla_backend_optimization_level=0")
  return subprocess.run([sys.executable, "-m", "jaxlab.main", "--config", f"{CONFIG}:tiny", "--workdir", workdir,
                         *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_trainer_end_to_end_tiny(tmp_path):
  from jaxlab.trainers import align
  workdir = str(tmp_path / "run")
  args = ("dpo.train.log_every=1", "pretrain.train.log_every=1")
  run = _cli(workdir, *args)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "held-out contents" in run.stdout and "oracle (true aesthetic)" in run.stdout
  report = json.load(open(os.path.join(workdir, "report.json")))
  p = report["preferences"]
  assert p["queries"] == 36 and p["contents"] == 12 and p["records"] == 36 and p["pairs_per_record"] == 5
  assert p["rephrased_example"] == "a red circle, the subject sits right in the middle of the picture, " \
                                   "sharp and clear edges, harmonious, gentle colours"
  assert set(report["contents"]["heldout"]).isdisjoint(report["contents"]["finetune"])
  for split in ("test", "validation"):
    assert set(report[split]) == set(align.SYSTEMS)
    for name, m in report[split].items():
      for key in ("heldout/aesthetic", "heldout/relevance", "finetune/aesthetic", "finetune/relevance"):
        assert 0.0 <= m[key]["accuracy"] <= 1.0
      assert ("r@1" in m) == (name in align.EMBEDDING_SYSTEMS)
    j = report[split]["pretrained"]["judge_vs_pretrained"]
    assert j["tie"] == 1.0 and j["count"] == 12 * len(align.testbed.HELDOUT_TEMPLATES)   # itself: all ties
  rows = [json.loads(l) for l in open(os.path.join(workdir, "finetune", "metrics.jsonl"))]
  first = next(r for r in rows if "preference_loss" in r)
  assert first["step"] == 1
  assert first["preference_loss"] == pytest.approx(math.log(2), rel=1e-5)   # policy == reference at step 0


def test_gallery_recall_is_the_mean_over_disjoint_galleries():
  from jaxlab.align.retrieval import gallery_recall
  content = np.array([0, 0, 1, 1, 0, 1, 0, 1, 0, 1, 0])
  img = np.eye(2)[content]
  cap = img.copy()
  cap[[6, 7]] = cap[[7, 6]]      # second gallery: captions 6 and 7 point at the other content
  cap[8:] = 1 - cap[8:]          # the partial third gallery (3 images) is wrong everywhere...
  out = gallery_recall(cap, img, content, gallery=4, ks=(1,))
  assert out == {"r@1": pytest.approx((1.0 + 0.5) / 2)}   # ...and left out
  # a split smaller than the gallery is one gallery
  assert gallery_recall(cap[:3], img[:3], content[:3], gallery=4, ks=(1,)) == {"r@1": 1.0}


def _np_clip_loss(img, txt, scale):
  """Symmetric InfoNCE with the diagonal as targets, in numpy."""
  logits = scale * img @ txt.T
  ce = lambda z: np.mean(np.log(np.exp(z).sum(1)) - np.diag(z))
  return 0.5 * (ce(logits) + ce(logits.T))


@pytest.mark.parametrize("candidates", [True, False])
def test_finetune_loss_pairs_candidates_with_their_own_captions(candidates):
  from jaxlab.models import two_tower as tt
  from jaxlab.trainers import align
  from jaxlab.align import texts
  cfg = _load(f"dpo.contrastive_candidates={candidates}", "dpo.contrastive_weight=0.5", "model.text_tower=words")
  tok = testbed.word_tokenizer()
  mcfg = align.model_config(cfg.model, cfg.data.image_size, texts.WordEncoder(cfg.model.max_len))
  model = tt.TwoTower(mcfg)
  rng = np.random.default_rng(0)
  b, n, r, s, length = 2, 3, 2, cfg.data.image_size, mcfg.text.max_len
  words = [f"a {c} {w}" for c in testbed.COLOURS for w in ("crisp", "blurry")]   # 12 distinct captions
  tokens, mask = testbed.encode(tok, words[:b * (n + r) + b], length)
  batch = {"cand_images": rng.uniform(0, 1, (b, n, s, s, 3)).astype(np.float32),
           "images": rng.uniform(0, 1, (b, r, s, s, 3)).astype(np.float32),
           "q_tokens": tokens[:b], "q_mask": mask[:b],
           "cand_tokens": tokens[b:b + b * n].reshape(b, n, -1), "cand_mask": mask[b:b + b * n].reshape(b, n, -1),
           "tokens": tokens[b + b * n:].reshape(b, r, -1), "mask": mask[b + b * n:].reshape(b, r, -1),
           "pairs": np.array([[[0, 1], [0, 2], [1, 2]]] * b)}
  params = jax.jit(model.init)(jax.random.key(1), batch["cand_images"][0], tokens[:n], mask[:n])["params"]
  emb_img = lambda x: np.asarray(tt.embed_images(model, params, x.reshape((-1, s, s, 3))))
  emb_txt = lambda t, m: np.asarray(tt.embed_texts(model, params, t.reshape(-1, length), m.reshape(-1, length)))
  scale = float(np.exp(params["logit_scale"]))
  cand, q = emb_img(batch["cand_images"]).reshape(b, n, -1), emb_txt(batch["q_tokens"], batch["q_mask"])
  z = scale * np.einsum("be,bne->bn", q, cand)
  batch["ref_logp"] = z - np.log(np.exp(z).sum(1, keepdims=True))     # the reference = the policy: DPO is log 2
  pair_img = emb_img(batch["images"])
  pair_txt = emb_txt(batch["tokens"], batch["mask"])
  if candidates:   # the candidates, each with its own caption, before the random pairs
    pair_img = np.concatenate([cand.reshape(b * n, -1), pair_img])
    pair_txt = np.concatenate([emb_txt(batch["cand_tokens"], batch["cand_mask"]), pair_txt])
  want = _np_clip_loss(pair_img, pair_txt, scale)
  value, metrics = jax.jit(lambda p, x: finetune.finetune_loss(model, cfg.dpo, cfg.pretrain, {"params": p}, x))(params, batch)
  assert float(metrics["preference_loss"]) == pytest.approx(math.log(2), rel=1e-5)
  assert float(metrics["contrastive"]) == pytest.approx(want, rel=1e-4)
  assert float(value) == pytest.approx(math.log(2) + 0.5 * want, rel=1e-4)
