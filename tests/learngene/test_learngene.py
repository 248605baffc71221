"""TLEG: expansion by hand, the auxiliary model equals a plain model built from the
expanded gene, gradient identity for theta_B, distillation loss (both normalisations) and
the interpolated control by hand, config mistakes, checkpoints."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab import config as config_lib, learngene
from jaxlab.models import gpt, vit

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_expand_by_hand():
  gene = {"A": {"w": jnp.array([[1.0, 2.0]]), "b": jnp.array([0.5])},
          "B": {"w": jnp.array([[4.0, -8.0]]), "b": jnp.array([2.0])}}
  out = learngene.expand(gene, 4)
  # layer l = A + (l/4) B: l=0 -> A; l=1 -> [2, 0], 1.0; l=2 -> [3, -2], 1.5; l=3 -> [4, -4], 2.0
  np.testing.assert_allclose(out["w"], [[[1, 2]], [[2, 0]], [[3, -2]], [[4, -4]]])
  np.testing.assert_allclose(out["b"], [[0.5], [1.0], [1.5], [2.0]])
  np.testing.assert_allclose(learngene.expand(gene, 1)["w"], [[[1, 2]]])


def test_expand_errors():
  gene = {"A": {"w": jnp.ones((2, 3))}, "B": {"w": jnp.ones((2, 3))}}
  for depth in (0, -2, 2.0):
    with pytest.raises(ValueError, match="depth must be a positive integer"):
      learngene.expand(gene, depth)
  with pytest.raises(ValueError, match="different structures"):
    learngene.expand({"A": {"w": jnp.ones(3)}, "B": {"v": jnp.ones(3)}}, 2)
  with pytest.raises(ValueError, match=r"differ at w: shapes \(2, 3\) vs \(3, 2\)"):
    learngene.expand({"A": {"w": jnp.ones((2, 3))}, "B": {"w": jnp.ones((3, 2))}}, 2)
  with pytest.raises(ValueError, match="a learngene is"):
    learngene.expand({"A": {}}, 2)


CFG = vit.ViTConfig(num_classes=10, image_size=8, patch_size=2, channels=1, num_layers=5, d_model=32, num_heads=4)


def aux_setup(seed=0, b_std=0.05):
  model = vit.ViT(CFG)
  images = jax.random.uniform(jax.random.key(seed + 7), (3, 8, 8, 1))
  plain = model.init(jax.random.key(seed), images)["params"]
  aux = learngene.auxiliary_params(jax.random.key(seed + 1), plain, b_std)
  return model, images, aux, learngene.find_stack(plain)


def numpy_expand(gene, depth):
  """Independent expansion: a Python loop over layers, stacked with numpy."""
  return jax.tree.map(lambda a, b: np.stack([np.asarray(a) + (l / depth) * np.asarray(b) for l in range(depth)]),
                      gene["A"], gene["B"])


def test_auxiliary_logits_equal_plain_vit_from_expanded_gene():
  model, images, aux, stack = aux_setup()
  assert stack == ("encoder", "layers", "block")
  aux_logits = model.apply({"params": learngene.assemble(aux, CFG.num_layers, stack)}, images)
  plain = dict(aux["shared"])
  plain["encoder"] = {"layers": {"block": numpy_expand(aux["gene"], CFG.num_layers)}}
  np.testing.assert_allclose(np.asarray(aux_logits), np.asarray(model.apply({"params": plain}, images)),
                             rtol=1e-5, atol=1e-6)
  # the init rule: theta_B is zero for LayerNorm and biases, small random for kernels
  b = aux["gene"]["B"]
  assert float(jnp.abs(b["ln_1"]["scale"]).max()) == 0 and float(jnp.abs(b["attn"]["query"]["bias"]).max()) == 0
  assert 0.03 < float(jnp.std(b["mlp"]["fc"]["kernel"])) < 0.07


def test_theta_b_gradient_is_depth_weighted_sum_of_layer_gradients():
  model, images, aux, stack = aux_setup()
  labels = jnp.array([1, 2, 3])
  L = CFG.num_layers

  def loss_plain(params):
    logits = model.apply({"params": params}, images)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(3), labels])

  grad_aux = jax.grad(lambda p: loss_plain(learngene.assemble(p, L, stack)))(aux)
  grad_layers = jax.grad(loss_plain)(learngene.assemble(aux, L, stack))["encoder"]["layers"]["block"]
  expected_b = jax.tree.map(lambda g: sum((l / L) * np.asarray(g[l]) for l in range(L)), grad_layers)
  expected_a = jax.tree.map(lambda g: np.asarray(g).sum(0), grad_layers)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), y, rtol=1e-4, atol=1e-7),
               grad_aux["gene"]["B"], expected_b)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), y, rtol=1e-4, atol=1e-7),
               grad_aux["gene"]["A"], expected_a)
  assert float(jnp.abs(grad_aux["gene"]["B"]["mlp"]["fc"]["kernel"]).max()) > 0


def test_works_for_gpt_blocks():
  cfg = gpt.GPTConfig(vocab_size=50, max_len=8, num_layers=3, d_model=16, num_heads=2)
  model = gpt.GPT(cfg)
  tokens = jnp.arange(8)[None] % 50
  aux = learngene.auxiliary_params(jax.random.key(1), model.init(jax.random.key(0), tokens)["params"])
  stack = ("decoder", "layers", "block")
  deep = learngene.descendant_params(aux, 7, stack)
  deep_model = gpt.GPT(gpt.GPTConfig(vocab_size=50, max_len=8, num_layers=7, d_model=16, num_heads=2))
  assert deep_model.apply({"params": deep}, tokens).shape == (1, 8, 50)
  np.testing.assert_allclose(deep["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"][6],
                             np.asarray(aux["gene"]["A"]["mlp"]["fc"]["kernel"])
                             + 6 / 7 * np.asarray(aux["gene"]["B"]["mlp"]["fc"]["kernel"]), rtol=1e-6, atol=1e-7)


def test_soft_distillation_by_hand():
  s = jnp.array([[1.0, 0.0, -1.0]])
  t = jnp.array([[0.0, 2.0, 0.0]])
  tau, alpha = 2.0, 0.25
  # tau=2: p_t = softmax([0, 1, 0]) = [1, e, 1] / (2 + e); p_s = softmax([.5, 0, -.5])
  e = np.e
  p_t = np.array([1, e, 1]) / (2 + e)
  z = np.array([np.exp(0.5), 1.0, np.exp(-0.5)])
  p_s = z / z.sum()
  kl = float(np.sum(p_t * np.log(p_t / p_s))) * tau**2
  ce = -np.log(np.exp(0.0) / (np.exp(1.0) + 1.0 + np.exp(-1.0)))  # label 1
  loss, parts = learngene.soft_distillation_loss(s, t, jnp.array([1]), alpha=alpha, tau=tau, normalize="batch")
  np.testing.assert_allclose(float(parts["kl"]), kl, rtol=1e-5)
  np.testing.assert_allclose(float(parts["ce"]), ce, rtol=1e-5)
  np.testing.assert_allclose(float(loss), (1 - alpha) * ce + alpha * kl, rtol=1e-5)
  # the reference setting (alpha=1, tau=1): pure KL, zero when student equals teacher
  same, _ = learngene.soft_distillation_loss(t, t, jnp.array([0]), alpha=1.0, tau=1.0)
  assert abs(float(same)) < 1e-6


def test_gene_checkpoint_round_trip_and_descendant_init(tmp_path):
  from jaxlab import checkpoint
  from jaxlab.data import images
  from jaxlab.trainers import classify
  cfg_file = str(REPO / "configs" / "learngene" / "vit.py")
  common = [f"data.data_dir={tmp_path / 'data'}", "train.steps=3", "train.eval_every=0", "train.log_every=1",
            "model.d_model=32", "model.num_heads=2"]
  aux_cfg = config_lib.load(cfg_file + ":auxiliary", common)
  aux_run = classify.train_and_evaluate(aux_cfg, str(tmp_path / "aux"))
  trained = jax.device_get(aux_run.params)
  _, restored = checkpoint.restore_params(str(tmp_path / "aux"))
  jax.tree.map(np.testing.assert_array_equal, restored, trained)  # bit-exact round trip
  assert aux_run.parameters_stored == learngene.count_params(trained)

  des_cfg = config_lib.load(cfg_file + ":descendant",
                            common + [f"learngene.gene_workdir={tmp_path / 'aux'}", "model.num_layers=9"])
  data = images.prepare_images("digits", data_dir=str(tmp_path / "data"))
  task = learngene.apply(des_cfg, classify.make_task(des_cfg, data))  # as every trainer applies it
  init = task.init(task.model, jax.random.key(5))["params"]
  expected = numpy_expand(trained["gene"], 9)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), y, rtol=1e-6, atol=1e-7),
               init["encoder"]["layers"]["block"], expected)
  jax.tree.map(np.testing.assert_array_equal, {k: v for k, v in init.items() if k != "encoder"},
               {k: v for k, v in trained["shared"].items() if k != "encoder"})

  bad = config_lib.load(cfg_file + ":descendant", common + [f"learngene.gene_workdir={tmp_path / 'aux'}",
                                                           "model.d_model=64"])
  with pytest.raises(config_lib.ConfigError, match="model.d_model=64 differs from the learngene's 32"):
    learngene.configure(bad)  # before any data or compile work


def test_gpt_learngene_through_the_lm_trainer(tmp_path):
  """The extension: a 3-layer auxiliary GPT on the LM loss, then a 5-layer descendant
  built from its learngene (same tokenizer, depth changed). Exactness of the expansion is
  checked on the ViT above through the same `learngene.initial_params`."""
  from jaxlab import checkpoint
  from jaxlab.trainers import lm
  cfg_file = str(REPO / "configs" / "learngene" / "gpt.py")
  toy = ["tokenizer.vocab_size=300", "model.d_model=32", "model.num_heads=2", "model.max_len=32",
         "train.seq_len=16", "train.batch_size=8", "train.steps=3", "train.eval_every=0", "train.eval_batches=2",
         "train.log_every=1", f"data.data_dir={tmp_path / 'data'}"]
  aux = lm.train_and_evaluate(config_lib.load(cfg_file + ":auxiliary", toy + ["model.num_layers=3"]),
                              str(tmp_path / "aux"))
  assert set(aux.params) == {"shared", "gene"} and np.isfinite(aux.metrics["loss"])
  des_cfg = config_lib.load(cfg_file + ":descendant", toy + [f"learngene.gene_workdir={tmp_path / 'aux'}",
                                                             "model.num_layers=5", "train.steps=1"])
  des = lm.train_and_evaluate(des_cfg, str(tmp_path / "des"))
  assert len(des.tokenizer) == len(aux.tokenizer)
  assert checkpoint.manager(str(tmp_path / "des" / "checkpoints")).all_steps() == [1]
  assert des.params["decoder"]["layers"]["block"]["mlp"]["fc"]["kernel"].shape == (5, 32, 128)


def test_soft_distillation_deit_normalisation_by_hand():
  # two examples, three classes, tau = 1, alpha = 1 (the reference setting)
  s = jnp.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
  t = jnp.array([[np.log(2.0), 0.0, 0.0], [1.0, 0.0, 0.0]])
  # example 0: p_t = [1/2, 1/4, 1/4], p_s = [1/3]*3 -> KL = 1/2 ln(3/2) + 2 * 1/4 ln(3/4)
  # example 1: student equals teacher -> KL = 0
  kl_sum = 0.5 * np.log(1.5) + 0.5 * np.log(0.75)
  deit, parts = learngene.soft_distillation_loss(s, t, jnp.array([0, 0]))  # default: DeiT's batch x classes
  np.testing.assert_allclose(float(deit), kl_sum / (2 * 3), rtol=1e-5)
  np.testing.assert_allclose(float(parts["kl"]), kl_sum / 6, rtol=1e-5)
  per_example, _ = learngene.soft_distillation_loss(s, t, jnp.array([0, 0]), normalize="batch")
  np.testing.assert_allclose(float(per_example), kl_sum / 2, rtol=1e-5)
  # a masked-out example counts in neither the sum nor the divisor: 1 example x 3 classes
  masked, _ = learngene.soft_distillation_loss(s, t, jnp.array([0, 0]), mask=jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(float(masked), kl_sum / 3, rtol=1e-5)
  with pytest.raises(ValueError, match="normalize='mean'"):
    learngene.soft_distillation_loss(s, t, jnp.array([0, 0]), normalize="mean")


def test_interpolate_layers_by_hand():
  stacked = {"w": jnp.array([[0.0, 1.0], [10.0, 11.0], [20.0, 21.0]])}  # 3 layers of a 2-vector
  # depth 5: positions l * 2 / 4 = 0, .5, 1, 1.5, 2 -> blends of neighbours
  np.testing.assert_allclose(learngene.interpolate_layers(stacked, 5)["w"][:, 0], [0, 5, 10, 15, 20])
  np.testing.assert_allclose(learngene.interpolate_layers(stacked, 5)["w"][:, 1], [1, 6, 11, 16, 21])
  np.testing.assert_allclose(learngene.interpolate_layers(stacked, 3)["w"], stacked["w"])  # same depth: as is
  np.testing.assert_allclose(learngene.interpolate_layers(stacked, 2)["w"][:, 0], [0, 20])  # first and last
  np.testing.assert_allclose(learngene.interpolate_layers(stacked, 1)["w"][:, 0], [0])
  # depth 4: positions 0, 2/3, 4/3, 2 -> 0, 6.667, 13.333, 20
  np.testing.assert_allclose(learngene.interpolate_layers(stacked, 4)["w"][:, 0], [0, 20 / 3, 40 / 3, 20],
                             rtol=1e-6)
  with pytest.raises(ValueError, match="disagree"):
    learngene.interpolate_layers({"a": jnp.ones((3, 2)), "b": jnp.ones((4, 2))}, 2)


def test_config_mistakes_name_the_key(tmp_path):
  from jaxlab.trainers import classify
  cfg_file = str(REPO / "configs" / "learngene" / "vit.py")
  teacher = config_lib.load(cfg_file + ":teacher")
  classify.validate(teacher)  # the CNN teacher is a valid plain model
  assert type(classify.build_model(teacher.model, (8, 8, 1))).__name__ == "CNN"
  cases = [(":teacher", ["learngene.mode=auxiliary"], "model.kind"),
           (":scratch", ["model.kind=resnet"], "model.kind"),
           (":scratch", ["distill.normalize=mean"], "distill.normalize")]
  for role, overrides, key in cases:
    with pytest.raises(config_lib.ConfigError, match=key):
      classify.validate(config_lib.load(cfg_file + role, overrides))
  with pytest.raises(config_lib.ConfigError, match="learngene.gene_workdir"):
    learngene.configure(config_lib.load(cfg_file + ":interpolated"))


@pytest.mark.slow
def test_interpolated_control_and_cnn_teacher_through_the_trainer(tmp_path):
  """A CNN teacher, a plain depth-3 ViT distilled from it (checkpointed), and the control
  built from that run: its layers resampled to depth 5, as `learngene.apply` gives it."""
  from jaxlab import checkpoint
  from jaxlab.data import images
  from jaxlab.trainers import classify
  cfg_file = str(REPO / "configs" / "learngene" / "vit.py")
  common = [f"data.data_dir={tmp_path / 'data'}", "train.steps=2", "train.eval_every=0", "train.log_every=1",
            "model.d_model=16", "model.num_heads=2"]
  classify.train_and_evaluate(config_lib.load(cfg_file + ":teacher", common), str(tmp_path / "teacher"))
  plain = classify.train_and_evaluate(
      config_lib.load(cfg_file + ":scratch", common + ["model.num_layers=3",
                                                       f"distill.teacher_workdir={tmp_path / 'teacher'}"]),
      str(tmp_path / "plain"))
  assert np.isfinite(plain.metrics["loss"])
  _, trained = checkpoint.restore_params(str(tmp_path / "plain"))
  cfg = config_lib.load(cfg_file + ":interpolated", common + [f"learngene.gene_workdir={tmp_path / 'plain'}",
                                                              "model.num_layers=5"])
  data = images.prepare_images("digits", data_dir=str(tmp_path / "data"))
  task = learngene.apply(learngene.configure(cfg), classify.make_task(cfg, data))
  init = task.init(task.model, jax.random.key(3))["params"]
  src = trained["encoder"]["layers"]["block"]
  # positions l * 2 / 4: layers 0, (0+1)/2, 1, (1+2)/2, 2
  expected = jax.tree.map(lambda x: np.stack([x[0], (x[0] + x[1]) / 2, x[1], (x[1] + x[2]) / 2, x[2]]), src)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), y, rtol=1e-6, atol=1e-7),
               init["encoder"]["layers"]["block"], expected)
  np.testing.assert_array_equal(init["head"]["kernel"], trained["head"]["kernel"])
  aux_cfg = config_lib.load(cfg_file + ":descendant", common + [f"learngene.gene_workdir={tmp_path / 'plain'}"])
  with pytest.raises(config_lib.ConfigError, match="not an auxiliary"):
    learngene.configure(aux_cfg)  # a descendant needs a learngene, not a plain run
