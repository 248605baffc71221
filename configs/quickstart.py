"""Quickstart: a small GPT on Python's own documentation (pydoc_data.topics), CPU-sized.

  python -m jaxlab.main --config configs/quickstart.py --workdir runs/quickstart
  python -m jaxlab.main --config configs/quickstart.py:toy --workdir /tmp/q train.steps=20
"""
from jaxlab.trainers import lm


def get_config(arg=None):
  c = lm.default_config()
  if arg == "toy":  # seconds, for tests
    c.tokenizer.vocab_size = 512
    c.model.update(num_layers=2, d_model=64, num_heads=2, max_len=64)
    c.train.update(seq_len=32, batch_size=8, steps=20, log_every=5, eval_every=10, eval_batches=4,
                   checkpoint_every=10)
  elif arg not in (None, ""):
    raise ValueError(f"unknown quickstart variant {arg!r}; use '' or 'toy'")
  c.lock()
  return c
