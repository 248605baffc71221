"""A GPT on Shakespeare and Pride and Prejudice from ../shared/data.

  python -m jaxlab.main --config configs/gpt_shakespeare.py --workdir runs/shakespeare
  ... --config configs/gpt_shakespeare.py:small   (6 layers, 384 wide: the benchmark shape)
"""
from jaxlab.models import gpt
from jaxlab.trainers import lm


def get_config(arg=None):
  c = lm.default_config()
  c.data.files = ("shared:text/tinyshakespeare.txt", "shared:text/pride_and_prejudice.txt")
  c.tokenizer.vocab_size = 8192
  size = arg or "tiny"
  layers, d_model, heads, max_len = gpt.SIZES[size]
  c.model.update(num_layers=layers, d_model=d_model, num_heads=heads, max_len=max_len)
  c.train.update(seq_len=min(256, max_len), batch_size=16, steps=2000, log_every=50, eval_every=500,
                 checkpoint_every=500)
  c.optim.learning_rate = 1e-3
  c.lock()
  return c
