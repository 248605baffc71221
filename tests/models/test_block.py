"""The attention kernel choice of the shared transformer block (models/block.py)."""
import ml_collections
import numpy as np
import jax
import jax.numpy as jnp
import pytest

from jaxlab.models import block, gpt


@pytest.mark.parametrize("dtype, head_dim, masked, traceable, expected", [
    (jnp.bfloat16, 128, False, True, True),    # GPT-1.3B's heads in BF16
    (jnp.float16, 64, False, True, True),
    (jnp.float32, 128, False, True, False),    # cuDNN's flash attention is BF16/FP16 only
    (jnp.bfloat16, 100, False, True, False),   # head_dim not a multiple of 8
    (jnp.bfloat16, 256, False, True, False),   # over 128 (pre-Hopper limit)
    (jnp.bfloat16, 128, True, True, False),    # a padding or document mask
    (jnp.bfloat16, 128, False, False, False),  # a JAX that cannot trace cuDNN attention
])
def test_auto_takes_cudnn_only_where_it_applies(monkeypatch, dtype, head_dim, masked, traceable, expected):
  monkeypatch.setattr(block, "cudnn_traceable", lambda: traceable)
  assert block.cudnn_applies(dtype, head_dim, masked) == expected


def test_this_cpu_only_jax_cannot_trace_cudnn_attention():
  assert not block.cudnn_traceable()


def test_an_unknown_kernel_is_named():
  with pytest.raises(ValueError, match="attention='flash'"):
    block.BlockConfig(d_model=8, num_heads=2, mlp_dim=16, attention="flash")
  with pytest.raises(ValueError, match="attention='flash'"):
    block.attend(*(jnp.zeros((1, 4, 2, 8)),) * 3, None, True, "flash")
  model = ml_collections.ConfigDict(dict(max_len=8, num_layers=1, d_model=8, num_heads=2, mlp_dim=16,
                                         tied_embeddings=True, dropout=0.0, dtype="float32", remat=False,
                                         attention="flash"))
  with pytest.raises(ValueError, match="model.attention: 'flash'"):
    gpt.GPTConfig.from_config(model, vocab_size=16)
  del model["attention"]
  assert gpt.GPTConfig.from_config(model, vocab_size=16).block().attention == "auto"  # optional key


def test_auto_attention_is_causal_softmax_attention():
  """The block's attention (auto: XLA's kernel here) against softmax attention written out in numpy."""
  cfg = block.BlockConfig(d_model=16, num_heads=2, mlp_dim=32, causal=True)
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  attn = block.Attention(cfg)
  params = attn.init(jax.random.key(1), x)["params"]
  y = attn.apply({"params": params}, x)

  p = jax.tree.map(np.asarray, params)
  dense = lambda name, h: np.asarray(h) @ p[name]["kernel"] + p[name]["bias"]
  q, k, v = (dense(n, x).reshape(2, 5, 2, 8) for n in ("query", "key", "value"))
  scores = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(8)
  scores = np.where(np.tril(np.ones((5, 5), bool)), scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  out = np.einsum("bnts,bsnh->btnh", weights, v).reshape(2, 5, 16)
  np.testing.assert_allclose(y, dense("out", out), rtol=1e-5, atol=1e-5)
