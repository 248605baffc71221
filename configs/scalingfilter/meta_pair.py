"""ScalingFilter meta-model pair: a small and a large GPT trained on the same data, with
the same tokenizer and data order (same seed, same data config, same batches).

  python -m jaxlab.main --config configs/scalingfilter/meta_pair.py:small --workdir runs/sf/small
  python -m jaxlab.main --config configs/scalingfilter/meta_pair.py:large --workdir runs/sf/large \
      tokenizer.path=runs/sf/small/tokenizer
  python -m jaxlab.scalingfilter score --small runs/sf/small --large runs/sf/large \
      --input ../shared/data/text/pile_sample.jsonl --text-field contents --output runs/sf/scores.jsonl

Data: Shakespeare + Pride and Prejudice from ../shared/data, or `:small,builtin` /
`:large,builtin` for the pydoc corpus on a fresh machine.
"""
from jaxlab.trainers import lm


def get_config(arg=None):
  size, _, source = (arg or "small").partition(",")
  c = lm.default_config()
  if source == "builtin":
    c.data.files = ("builtin:pydoc_topics",)
  elif source == "":
    c.data.files = ("shared:text/tinyshakespeare.txt", "shared:text/pride_and_prejudice.txt")
  else:
    raise ValueError(f"unknown data source {source!r}; use '' (../shared) or 'builtin'")
  c.tokenizer.vocab_size = 8192
  if size == "small":
    c.model.update(num_layers=2, d_model=128, num_heads=4)
  elif size == "large":
    c.model.update(num_layers=6, d_model=256, num_heads=8)
  else:
    raise ValueError(f"unknown meta-model size {size!r}; use small or large")
  c.train.update(seq_len=128, batch_size=16, steps=1500, eval_every=500, checkpoint_every=500)
  c.lock()
  return c
