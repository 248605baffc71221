"""Language-model training: GPT on local text, the platform's reference trainer."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab import config as config_lib
from jaxlab import distributed, learngene, sharding
from jaxlab.data import builtin, pipeline, text, tokenizer as tokenizer_lib
from jaxlab.models import gpt
from jaxlab.train import loop, optim
from jaxlab.train.state import Task
from jaxlab import fp8

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


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
  c.learngene = dict(mode="none", gene_workdir="", b_std=0.02)  # TLEG for GPT blocks (see trainers/classify.py)
  c.fp8 = fp8.default_config()  # FP8-LM levels; "fp32" = plain FP32 training
  c.optim = dict(learning_rate=3e-3, warmup_steps=50, min_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95,
                 eps=1e-8, grad_clip=1.0)
  return c


def report(summary: dict) -> str:
  extra = []
  if "perplexity" in summary:
    extra.append(f"held-out loss {summary['loss']:.4f}  perplexity {summary['perplexity']:.2f} "
                 f"({summary['tokens']:.0f} tokens)")
  return loop.report_lines(summary, extra)


def resolve_files(files, workdir: str) -> list[str]:
  """`builtin:NAME` -> an embedded corpus; `shared:PATH` -> ../shared/data/PATH; else a path."""
  paths = []
  for spec in files:
    if spec.startswith("builtin:"):
      paths += builtin.materialize(spec.removeprefix("builtin:"), os.path.join(workdir, "corpus"))
    else:
      paths.append(builtin.resolve_shared(spec, "data.files"))
  for path in paths:
    if not os.path.exists(path):
      raise config_lib.ConfigError(f"data.files: {path!r} does not exist")
  return paths


def model_config(cfg: ml_collections.ConfigDict, vocab_size: int) -> gpt.GPTConfig:
  m = cfg.model
  return gpt.GPTConfig(vocab_size=vocab_size, max_len=m.max_len, num_layers=m.num_layers, d_model=m.d_model,
                       num_heads=m.num_heads, mlp_dim=m.mlp_dim, tied_embeddings=m.tied_embeddings,
                       dropout=m.dropout, dtype=DTYPES[m.dtype], remat=m.remat)


def validate(cfg: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Config mistakes that would otherwise surface deep inside compilation."""
  req, m, t = config_lib.require, cfg.model, cfg.train
  loop.validate(cfg, mesh)
  learngene.validate(cfg)
  req(m.dtype in DTYPES, "model.dtype", f"{m.dtype!r} is not one of {sorted(DTYPES)}")
  req(m.d_model % m.num_heads == 0, "model.num_heads", f"{m.num_heads} does not divide model.d_model={m.d_model}")
  req(t.seq_len <= m.max_len, "train.seq_len", f"{t.seq_len} exceeds model.max_len={m.max_len}")
  fp8.validate(cfg, mesh)


def lm_loss_sums(logits, batch):
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  return jnp.sum(nll * batch["mask"]), jnp.sum(batch["mask"])


def make_task(cfg, model: gpt.GPT, tok, data: text.TextData) -> Task:
  t = cfg.train
  local_batch = t.batch_size // jax.process_count()
  common = dict(tokenizer=tok, seq_len=t.seq_len, batch_size=local_batch, seed=cfg.seed,
                process_index=jax.process_index(), process_count=jax.process_count())

  mode, depth = cfg.learngene.mode, cfg.model.num_layers
  stack = learngene.find_stack(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
  gene = (learngene.load_gene(cfg.learngene.gene_workdir, cfg.model,
                              ("d_model", "num_heads", "mlp_dim", "max_len", "tied_embeddings"))
          if mode == "descendant" else None)

  def init(rng):
    init_rng, gene_rng = jax.random.split(rng)
    variables = dict(model.init(init_rng, jnp.zeros((1, t.seq_len), jnp.int32)))
    variables["params"] = learngene.initial_params(mode, variables["params"], gene_rng, depth=depth,
                                                   b_std=cfg.learngene.b_std, gene=gene)
    return variables

  def model_variables(variables):
    return {**variables, "params": learngene.model_params(mode, variables["params"], depth, stack)}

  def loss(variables, batch, rng):
    logits, updates = model.apply(model_variables(variables), batch["inputs"], deterministic=cfg.model.dropout == 0.0,
                                  rngs={"dropout": rng}, mutable=[k for k in variables if k != "params"])
    nll, count = lm_loss_sums(logits, batch)
    return nll / jnp.maximum(count, 1.0), ({"tokens": count}, updates)

  def eval_sums(variables, batch):
    nll, count = lm_loss_sums(model.apply(model_variables(variables), batch["inputs"]), batch)
    return {"nll": nll, "tokens": count}

  def summarize(sums):
    mean = float(sums["nll"] / max(float(sums["tokens"]), 1.0))
    return {"loss": mean, "perplexity": float(jnp.exp(mean)), "tokens": float(sums["tokens"])}

  return Task(
      init=init, loss=loss, eval_sums=eval_sums, summarize=summarize,
      train_data=pipeline.lm_dataset(data.train, shuffle=True, num_epochs=None, **common),
      eval_data=lambda: pipeline.lm_dataset(data.validation, shuffle=False, num_epochs=1, **common),
      units_per_batch=("tokens", t.batch_size * t.seq_len), microbatches=t.grad_accum,
      **fp8.task_options(cfg.fp8))


def load_tokenizer(cfg, data: text.TextData, workdir: str):
  """A local tokenizer folder if configured, else a byte-level BPE trained on the
  training split (once; reused on resume)."""
  if cfg.tokenizer.path:
    return tokenizer_lib.load_tokenizer(cfg.tokenizer.path)
  if cfg.learngene.mode == "descendant":  # a descendant must read text as its learngene did
    return tokenizer_lib.load_tokenizer(os.path.join(cfg.learngene.gene_workdir, "tokenizer"))
  out_dir = os.path.join(workdir, "tokenizer")
  if os.path.exists(os.path.join(out_dir, "tokenizer.json")):
    return tokenizer_lib.load_tokenizer(out_dir)
  texts = (data.train[i]["text"] for i in range(len(data.train)))
  return tokenizer_lib.train_bpe(texts, vocab_size=cfg.tokenizer.vocab_size, out_dir=out_dir)


def export_hf(workdir: str, out_dir: str, step: int | None = None) -> str:
  """Write the run's latest (or given) checkpoint as a GPT-2 folder (config.json,
  model.safetensors, tokenizer) that transformers.GPT2LMHeadModel.from_pretrained reads."""
  from jaxlab import checkpoint
  from jaxlab.models import hf

  cfg = config_lib.read(workdir)
  tok = tokenizer_lib.load_tokenizer(cfg.tokenizer.path or os.path.join(workdir, "tokenizer"))
  _, params = checkpoint.restore_params(workdir, step)
  return hf.save_gpt2(out_dir, params, model_config(cfg, len(tok)), tok)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  mesh = sharding.make_mesh(cfg.mesh)
  validate(cfg, mesh)
  with distributed.main_process_first("lm: data and tokenizer"):  # others reuse process 0's files
    files = resolve_files(cfg.data.files, workdir)
    data = text.prepare_text(files, data_dir=cfg.data.data_dir or os.path.join(workdir, "data"),
                             text_field=cfg.data.text_field, validation_fraction=cfg.data.validation_fraction)
    if jax.process_index() == 0:
      rejected = sum(data.rejects.values())
      print(f"data: {data.num_records} records; {rejected} rejected {dict(data.rejects)}"
            + (f" -> {data.rejects_path}" if rejected else ""), flush=True)
    tok = load_tokenizer(cfg, data, workdir)
  model = gpt.GPT(model_config(cfg, len(tok)), dot_general_cls=fp8.dot_general_for(cfg.fp8))
  schedule = optim.schedule(cfg.optim, cfg.train.steps)
  summary = loop.run(cfg, workdir, make_task(cfg, model, tok, data), mesh, fp8.optimizer_for(cfg, schedule),
                     schedule)
  summary["rejects"] = dict(data.rejects)
  summary["tokenizer"] = tok
  summary["model"] = model
  return summary
