"""Two-tower model: contrastive losses against hand-worked values, and HF CLIP parity."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlab.models import two_tower as tt
from jaxlab.models.vit import ViT, ViTConfig


def test_softmax_contrastive_hand_values():
  img = jnp.eye(2)
  txt = jnp.eye(2)
  p = math.e / (math.e + 1)          # softmax([1, 0])[0]
  assert float(tt.softmax_contrastive_loss(img, txt, 1.0)) == pytest.approx(-math.log(p), rel=1e-6)
  # label smoothing 0.1 over 2 classes: target [0.95, 0.05]
  want = -(0.95 * math.log(p) + 0.05 * math.log(1 - p))
  assert float(tt.softmax_contrastive_loss(img, txt, 1.0, 0.1)) == pytest.approx(want, rel=1e-6)
  # both items positives of each other: uniform target -> log 2 in both directions
  assert float(tt.softmax_contrastive_loss(img, txt, 1.0, 0.0, jnp.ones((2, 2)))) == pytest.approx(
      -0.5 * math.log(p) - 0.5 * math.log(1 - p), rel=1e-6)


def test_sigmoid_contrastive_hand_values():
  img, txt, b = jnp.eye(2), jnp.eye(2), -1.0
  logsig = lambda x: -math.log1p(math.exp(-x))
  want = -(2 * logsig(1 + b) + 2 * logsig(-(0 + b))) / 2
  assert float(tt.sigmoid_contrastive_loss(img, txt, 1.0, b)) == pytest.approx(want, rel=1e-6)


def test_vit_defaults_unchanged_and_cls_features():
  cfg = ViTConfig(num_classes=10, image_size=8, patch_size=4, channels=1, num_layers=1, d_model=16, num_heads=2)
  params = jax.eval_shape(ViT(cfg).init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  assert set(params) == {"patch", "pos_embedding", "encoder", "ln_f", "head"}
  assert params["pos_embedding"].shape == (1, 4, 16)
  feat_cfg = ViTConfig(num_classes=0, image_size=8, patch_size=4, channels=1, num_layers=1, d_model=16, num_heads=2,
                       pool="cls", pre_norm=True, patch_bias=False)
  v = jax.eval_shape(ViT(feat_cfg).init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  assert v["params"]["pos_embedding"].shape == (1, 5, 16) and "bias" not in v["params"]["patch"]
  assert jax.eval_shape(ViT(feat_cfg).apply, v, jnp.ones((3, 8, 8, 1))).shape == (3, 16)
  with pytest.raises(ValueError, match="pool"):
    ViTConfig(num_classes=0, pool="max")


def _tiny_clip_config():
  from transformers import CLIPConfig
  text = dict(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              max_position_embeddings=12, hidden_act="quick_gelu", eos_token_id=39, bos_token_id=38,
              pad_token_id=0)
  vision = dict(image_size=16, patch_size=4, num_channels=3, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, hidden_act="quick_gelu")
  return CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


@pytest.mark.parity
def test_clip_parity_with_transformers(tmp_path):
  torch = pytest.importorskip("torch")
  from transformers import CLIPModel
  torch.manual_seed(0)
  hf = CLIPModel(_tiny_clip_config()).eval()
  with torch.no_grad():  # non-trivial LayerNorms and logit scale
    for name, p in hf.named_parameters():
      if "norm" in name or name == "logit_scale":
        p.add_(0.1 * torch.randn_like(p))
  hf.save_pretrained(tmp_path)
  cfg, params = tt.load_clip(str(tmp_path))

  rng = np.random.default_rng(0)
  pixels = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)          # NCHW for torch
  tokens = np.zeros((2, 10), np.int64)
  mask = np.zeros((2, 10), np.int64)
  tokens[0, :6] = [38, 5, 9, 17, 3, 39]; mask[0, :6] = 1
  tokens[1, :9] = [38, 11, 12, 13, 14, 15, 16, 2, 39]; mask[1, :9] = 1
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
             pixel_values=torch.tensor(pixels))
  model = tt.TwoTower(cfg)
  img, txt, scale, _ = jax.jit(model.apply)({"params": params}, jnp.asarray(pixels.transpose(0, 2, 3, 1)),
                                            jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32))
  np.testing.assert_allclose(np.asarray(img), out.image_embeds.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(txt), out.text_embeds.numpy(), atol=1e-5)
  np.testing.assert_allclose(np.asarray(scale * img @ txt.T), out.logits_per_image.numpy(), atol=1e-4)


def test_clip_import_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="CLIP folder"):
    tt.load_clip(str(tmp_path))
  with pytest.raises(ValueError, match="model_type 'clip'"):
    tt.clip_config_from_hf({"model_type": "bert"})
