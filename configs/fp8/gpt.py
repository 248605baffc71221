"""FP8 mixed-precision training after FP8-LM: a GPT on Shakespeare and Pride and Prejudice
from ../shared/data at one FP8-LM level.

  python -m jaxlab.main --config configs/fp8/gpt.py:O2 --workdir runs/fp8_o2 fp8.comm=True
  python -m jaxlab.main --config configs/fp8/gpt.py:O2,tiny --workdir /tmp/fp8 train.steps=50
  python -m jaxlab.main --config configs/fp8/gpt.py:none,1.3b --workdir runs/bf16_1p3b   # on a GPU host

The argument is `LEVEL[,SIZE]`:
  LEVEL  fp32 (plain FP32), none (BF16 mixed precision, the baseline), O1, O2, O3 (FP8-LM),
         flax (flax.linen.fp8_ops GEMMs, the peer); every level but fp32 computes in bfloat16.
  SIZE   a key of jaxlab.models.gpt.SIZES (toy, tiny, small, ..., 1.3b); default small.
The recipe (fp8.scaling=delayed|current|block), FP8 gradient all-reduce (fp8.comm=True) and
the O3 ZeRO layout (sharding.layout=zero) are ordinary overrides.
"""
from jaxlab.fp8 import LEVEL_NAMES
from jaxlab.models import gpt
from jaxlab.trainers import lm


def get_config(arg=None):
  parts = [p.strip() for p in (arg or "O2").split(",")]
  if len(parts) > 2 or not parts[0]:
    raise ValueError(f"configs/fp8/gpt.py takes 'LEVEL[,SIZE]', got {arg!r}")
  level, size = parts[0], parts[1] if len(parts) == 2 else "small"
  if level not in LEVEL_NAMES:
    raise ValueError(f"unknown FP8 level {level!r} in {arg!r}; use one of {', '.join(LEVEL_NAMES)}")
  if size not in gpt.SIZES:
    raise ValueError(f"unknown GPT size {size!r} in {arg!r}; use one of {', '.join(gpt.SIZES)}")

  c = lm.default_config()
  c.data.files = ("shared:text/tinyshakespeare.txt", "shared:text/pride_and_prejudice.txt")
  c.tokenizer.vocab_size = 50257 if size == "1.3b" else 8192  # FP8-LM's 1.3B uses GPT-2's vocabulary
  layers, d_model, heads, max_len = gpt.SIZES[size]
  c.model.update(num_layers=layers, d_model=d_model, num_heads=heads, max_len=max_len,
                 dtype="float32" if level == "fp32" else "bfloat16", remat=size == "1.3b")
  c.fp8.level = level
  if size == "1.3b":  # a GPU/TPU host: FP8-LM's sequence length
    c.train.update(seq_len=2048, batch_size=8, steps=2000, log_every=50, eval_every=500, eval_batches=20,
                   checkpoint_every=500)
    c.optim.learning_rate = 2e-4
  else:
    c.train.update(seq_len=min(256, max_len), batch_size=16, steps=2000, log_every=50, eval_every=500,
                   checkpoint_every=500)
    c.optim.learning_rate = 1e-3
  c.lock()
  return c
