"""Aesthetic alignment on the testbed (jaxlab/align/testbed.py): pretrain a two-tower model,
train the aesthetic model, build preferences from rephrased queries about the fine-tuning
half of the contents, fine-tune with ranked DPO, and report every system (baselines
included) on the held-out contents: HPIR (aesthetic and relevance), recall and the judge.

  python -m jaxlab.main --config configs/align/testbed.py --workdir runs/align/full
  # ablations, reusing the pretrained model and the aesthetic model of that run
  R=runs/align/full; REUSE="pretrain.workdir=$R/pretrain aesthetic.workdir=$R/aesthetic"
  python -m jaxlab.main --config configs/align/testbed.py:no_rephrase --workdir runs/align/no_rephrase $REUSE
  python -m jaxlab.main --config configs/align/testbed.py:sft --workdir runs/align/sft $REUSE
  # an OpenAI-compatible endpoint for rephrasing (OPENAI_BASE_URL, OPENAI_API_KEY in the environment)
  python -m jaxlab.main --config configs/align/testbed.py --workdir runs/align/llm rephrase.backend=openai \
      rephrase.model=gpt-4o-mini $REUSE

Arguments (comma-separated): tiny (a CPU-seconds run for tests), no_rephrase, sft,
sigmoid (SigLIP loss for pretraining), photos (crops of real photographs instead of rendered
shapes: data.source=photos), words (the small trainable text tower over the testbed's closed
word vocabulary instead of the frozen MiniLM: model.text_tower=words).
"""
from jaxlab.trainers import align


def get_config(arg=None):
  c = align.default_config()
  for part in filter(None, (arg or "").split(",")):
    if part == "tiny":
      c.data.update(num_train=240, num_val=120, num_test=120, hpir_queries=20, hpir_set_size=2)
      c.model.update(image_layers=1, text_layers=1, d_model=32, embed_dim=32, max_len=16)
      c.pretrain.train.update(batch_size=32, steps=2)
      c.aesthetic.train.update(batch_size=32, steps=2)
      c.aesthetic.update(hidden=(16,), dropout=(0.0,))
      c.preferences.update(rounds=1, gallery=120, top_k=8, u=2, v=2, stride=2)
      c.dpo.train.update(batch_size=8, steps=2)
      c.dpo.contrastive_batch = 16     # random pairs beside the candidates: both paths run
      c.eval.batch_size = 64
    elif part == "no_rephrase":
      c.rephrase.backend = "none"
    elif part == "sft":
      c.dpo.objective = "sft"
    elif part == "sigmoid":
      c.pretrain.loss = "sigmoid"
    elif part == "photos":
      c.data.source = "photos"
    elif part == "words":
      c.model.text_tower = "words"
    else:
      raise ValueError(f"unknown argument {part!r}; use tiny, no_rephrase, sft, sigmoid, photos or words")
  c.lock()
  return c
