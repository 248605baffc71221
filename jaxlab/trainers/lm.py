"""Language-model training: GPT on local text, the platform's reference trainer.

Offers the methods of jaxlab/trainers/methods.py (FP8-LM levels through `fp8.*`, TLEG
auxiliary models and descendants through `learngene.*`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab import checkpoint, config as config_lib, distributed, fp8, learngene, sharding
from jaxlab.data import builtin, pipeline, text, tokenizer as tokenizer_lib
from jaxlab.models import gpt, hf
from jaxlab.train import loop, optim, runs
from jaxlab.train.state import Task
from jaxlab.trainers import methods


def default_config() -> ml_collections.ConfigDict:
  """Every key the LM trainer reads; config files start from this and change values."""
  c = ml_collections.ConfigDict()
  c.trainer = "lm"
  c.seed = 0
  c.mesh = (("data", -1), ("model", 1))
  c.sharding = dict(layout="dp", extra_rules=())
  c.data = dict(files=("builtin:pydoc_topics",), text_field="text", validation_fraction=0.05, data_dir="")
  c.tokenizer = dict(path="", vocab_size=4096)
  c.model = dict(num_layers=4, d_model=128, num_heads=4, mlp_dim=0, max_len=256, tied_embeddings=True,
                 dropout=0.0, dtype="float32", remat=False)
  c.train = dict(seq_len=128, batch_size=16, steps=400, log_every=25, eval_every=200, eval_batches=0,
                 checkpoint_every=200, keep_checkpoints=3, stop_after=0, grad_accum=1)
  c.learngene = learngene.default_config()  # TLEG for GPT blocks
  c.fp8 = fp8.default_config()  # FP8-LM levels; "fp32" = plain FP32 training
  c.optim = dict(learning_rate=3e-3, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95,
                 eps=1e-8, grad_clip=1.0)
  return c


@dataclasses.dataclass
class Result:
  """What `train_and_evaluate` returns: held-out metrics as plain numbers (loss,
  perplexity, tokens; {} without validation data), where the run's files are, the data's
  reject counts, and the trained state with the model and tokenizer to use it."""
  workdir: str
  step: int
  finished: bool
  metrics: dict
  checkpoint_dir: str
  metrics_path: str
  plot_path: str | None
  rejects: dict
  state: Any
  model: gpt.GPT
  tokenizer: Any

  @property
  def params(self):
    """The trained parameters as stored (device arrays; FP8 levels may store them narrow)."""
    return self.state.params


def report(result: Result) -> str:
  """The end-of-run text `jaxlab.main` prints."""
  m, extra = result.metrics, []
  if "perplexity" in m:
    extra.append(f"held-out loss {m['loss']:.4f}  perplexity {m['perplexity']:.2f} ({m['tokens']:.0f} tokens)")
  return loop.report_lines(result, extra)


def corpus_paths(files, workdir: str) -> list[str]:
  """`builtin:NAME` -> an embedded corpus written under workdir/corpus; `shared:PATH` -> the
  shared data folder's PATH; else a path. A missing file fails naming `data.files`."""
  paths = []
  for spec in files:
    if spec.startswith("builtin:"):
      paths += builtin.materialize(spec.removeprefix("builtin:"), os.path.join(workdir, "corpus"))
    else:
      paths.append(builtin.resolve_shared(spec, "data.files"))
  for path in paths:
    if not os.path.exists(path):
      raise config_lib.ConfigError(f"data.files: {path!r} does not exist")
  try:
    return list(text.resolve_files(paths))
  except (FileNotFoundError, ValueError) as e:
    raise config_lib.ConfigError(f"data.files: {e}") from None


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> gpt.GPTConfig:
  """The GPT of `cfg.model` with the tokenizer's vocabulary size."""
  return gpt.GPTConfig.from_config(cfg.model, vocab_size)


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Config mistakes that would otherwise surface deep inside compilation."""
  req, m, t = config_lib.require, cfg.model, cfg.train
  req(m.dtype in gpt.DTYPES, "model.dtype", f"{m.dtype!r} is not one of {sorted(gpt.DTYPES)}")
  req(m.d_model % m.num_heads == 0, "model.num_heads", f"{m.num_heads} does not divide model.d_model={m.d_model}")
  req(t.seq_len <= m.max_len, "train.seq_len", f"{t.seq_len} exceeds model.max_len={m.max_len}")


def lm_loss_sums(logits, batch):
  """(sum of masked next-token NLL, number of real tokens) of one batch."""
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  return jnp.sum(nll * batch["mask"]), jnp.sum(batch["mask"])


def batch_spec(cfg: ml_collections.ConfigDict) -> dict:
  """The global batch's shapes and dtypes (what data/pipeline.lm_dataset yields, all processes)."""
  shape = (cfg.train.batch_size, cfg.train.seq_len)
  return {"inputs": jax.ShapeDtypeStruct(shape, jnp.int32), "targets": jax.ShapeDtypeStruct(shape, jnp.int32),
          "mask": jax.ShapeDtypeStruct(shape, jnp.float32)}


def make_task(cfg, model: gpt.GPT, tok=None, data: text.TextData | None = None) -> Task:
  """The plain LM Task (before methods); without `data` a shapes-only task."""
  t = cfg.train
  schedule = optim.schedule(cfg.optim, t.steps)

  def init(model, rng):
    return model.init(rng, jnp.zeros((1, t.seq_len), jnp.int32))

  def loss(model, variables, batch, rng):
    logits, updates = model.apply(variables, batch["inputs"], deterministic=cfg.model.dropout == 0.0,
                                  rngs={"dropout": rng}, mutable=[k for k in variables if k != "params"])
    nll, count = lm_loss_sums(logits, batch)
    return nll / jnp.maximum(count, 1.0), ({"tokens": count}, updates)

  def eval_sums(model, variables, batch):
    nll, count = lm_loss_sums(model.apply(variables, batch["inputs"]), batch)
    return {"nll": nll, "tokens": count}

  def summarize(sums):
    mean = float(sums["nll"] / max(float(sums["tokens"]), 1.0))
    return {"loss": mean, "perplexity": float(jnp.exp(mean)), "tokens": float(sums["tokens"])}

  train_data = eval_data = None
  if data is not None:
    common = dict(tokenizer=tok, seq_len=t.seq_len, batch_size=t.batch_size // jax.process_count(), seed=cfg.seed,
                  process_index=jax.process_index(), process_count=jax.process_count())
    train_data = pipeline.lm_dataset(data.train, shuffle=True, num_epochs=None, **common)
    eval_data = lambda: pipeline.lm_dataset(data.validation, shuffle=False, num_epochs=1, **common)
  return Task(model=model, init=init, loss=loss, optimizer=optim.adamw(cfg.optim, t.steps), schedule=schedule,
              train_data=train_data, eval_sums=eval_sums, summarize=summarize, eval_data=eval_data,
              units_per_batch=("tokens", t.batch_size * t.seq_len))


def load_tokenizer(cfg, data: text.TextData, workdir: str):
  """A local tokenizer folder if configured, else a byte-level BPE trained on the
  training split (once; reused on resume)."""
  if cfg.tokenizer.path:
    return tokenizer_lib.load_tokenizer(cfg.tokenizer.path)
  out_dir = os.path.join(workdir, "tokenizer")
  if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
    return tokenizer_lib.load_tokenizer(out_dir)
  texts = (data.train[i]["text"] for i in range(len(data.train)))
  return tokenizer_lib.train_bpe(texts, vocab_size=cfg.tokenizer.vocab_size, out_dir=out_dir)


def _configured(cfg) -> tuple[ml_collections.ConfigDict, loop.Options]:
  cfg = methods.configure(cfg)
  validate(cfg)
  return cfg, loop.options(cfg)


def stages(cfg: ml_collections.ConfigDict, name: str = "lm") -> list[loop.Stage]:
  """The one stage, from shapes alone: the vocabulary is the configured tokenizer's, or
  `tokenizer.vocab_size` (the BPE target; a small corpus may give fewer tokens)."""
  cfg, opts = _configured(cfg)
  vocab = len(tokenizer_lib.load_tokenizer(cfg.tokenizer.path)) if cfg.tokenizer.path else cfg.tokenizer.vocab_size
  task = methods.apply(cfg, make_task(cfg, gpt.GPT(model_config(cfg, vocab))))
  return [loop.Stage(name, task, opts, batch_spec(cfg))]


def export_hf(workdir: str, out_dir: str, step: int | None = None) -> str:
  """Write the run's latest (or given) checkpoint as a GPT-2 folder (config.json,
  model.safetensors, tokenizer) that transformers.GPT2LMHeadModel.from_pretrained reads."""
  cfg = config_lib.read(workdir)
  tok = tokenizer_lib.load_tokenizer(runs.tokenizer_dir(cfg, workdir))
  _, params = checkpoint.restore_params(workdir, step)
  params = fp8.formats.plain(params)  # an FP8-level run stores FP16/FP8 weights with scales
  return hf.save_gpt2(out_dir, params, model_config(cfg, len(tok)), tok)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> Result:
  """Train a GPT on `cfg.data.files` into `workdir` (resuming from its checkpoints) and
  evaluate it on the held-out split. Config mistakes raise ConfigError naming the key
  before any data or compile work."""
  cfg, opts = _configured(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  loop.check_mesh(opts, mesh)
  with distributed.main_process_first("lm: data and tokenizer"):  # others reuse process 0's files
    files = corpus_paths(cfg.data.files, workdir)
    data = text.prepare_text(files, data_dir=cfg.data.data_dir or os.path.join(workdir, "data"),
                             text_field=cfg.data.text_field, validation_fraction=cfg.data.validation_fraction)
    if jax.process_index() == 0:
      rejected = sum(data.rejects.values())
      print(f"data: {data.num_records} records; {rejected} rejected {dict(data.rejects)}"
            + (f" -> {data.rejects_path}" if rejected else ""), flush=True)
    tok = load_tokenizer(cfg, data, workdir)
  task = methods.apply(cfg, make_task(cfg, gpt.GPT(model_config(cfg, len(tok))), tok, data))
  run = loop.run(task, opts, workdir, mesh, config=cfg, batch_spec=batch_spec(cfg))
  return Result(**vars(run), rejects=dict(data.rejects), model=task.model, tokenizer=tok)
