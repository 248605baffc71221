"""Image classification with a ViT: plain training (teachers, scratch baselines), TLEG
auxiliary models trained by distillation, and descendants initialised from a learngene.

learngene.mode:
  none        a plain ViT of depth model.num_layers (a teacher or a scratch baseline)
  auxiliary   trainable params {"shared", "gene"}; the ViT's layers are expanded from the
              gene inside the forward pass (depth model.num_layers); distilled from
              distill.teacher_workdir when set, else trained on labels
  descendant  a plain ViT of depth model.num_layers initialised from the gene of
              learngene.gene_workdir (an auxiliary run), then trained normally
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxlab import checkpoint, config as config_lib, distributed, sharding
from jaxlab import fp8, learngene
from jaxlab.data import builtin, images
from jaxlab.models import vit
from jaxlab.train import loop, optim
from jaxlab.train.state import Task

def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.trainer = "classify"
  c.seed = 0
  c.mesh = (("data", -1), ("model", 1))
  c.sharding = dict(layout="dp", extra_rules=())
  c.data = dict(name="digits", source_dir="", data_dir="")
  c.model = dict(num_layers=4, d_model=64, num_heads=2, mlp_dim=0, patch_size=2, dropout=0.0)
  c.learngene = dict(mode="none", gene_workdir="", b_std=0.02, reinit_head=False)
  c.distill = dict(teacher_workdir="", alpha=1.0, tau=1.0)
  c.train = dict(batch_size=64, steps=1000, log_every=50, eval_every=250, eval_batches=0, checkpoint_every=500,
                 keep_checkpoints=2, stop_after=0, grad_accum=1)
  c.fp8 = fp8.default_config()  # FP8-LM levels for the ViT's GEMMs and optimizer
  c.optim = dict(learning_rate=1e-3, warmup_steps=50, min_lr_ratio=0.0, weight_decay=0.05, b1=0.9, b2=0.999,
                 eps=1e-8, grad_clip=1.0)
  return c


def vit_config(model: ml_collections.ConfigDict, image_shape, num_classes: int = 10) -> vit.ViTConfig:
  return vit.ViTConfig(num_classes=num_classes, image_size=image_shape[0], channels=image_shape[2],
                       patch_size=model.patch_size, num_layers=model.num_layers, d_model=model.d_model,
                       num_heads=model.num_heads, mlp_dim=model.mlp_dim, dropout=model.dropout)


def validate(cfg, mesh) -> None:
  req = config_lib.require
  loop.validate(cfg, mesh)
  learngene.validate(cfg)
  req(cfg.model.d_model % cfg.model.num_heads == 0, "model.num_heads",
      f"{cfg.model.num_heads} does not divide model.d_model={cfg.model.d_model}")
  req(0.0 <= cfg.distill.alpha <= 1.0, "distill.alpha", "must be in [0, 1]")
  req(cfg.distill.tau > 0, "distill.tau", "must be positive")
  fp8.validate(cfg, mesh)


def make_task(cfg, data: images.ImageData) -> Task:
  t, mode = cfg.train, cfg.learngene.mode
  model = vit.ViT(vit_config(cfg.model, data.image_shape, data.num_classes),
                  dot_general_cls=fp8.dot_general_for(cfg.fp8))
  depth = cfg.model.num_layers
  dummy = jnp.zeros((1,) + data.image_shape, jnp.float32)
  stack = learngene.find_stack(jax.eval_shape(model.init, jax.random.key(0), dummy)["params"])
  teacher = None
  if cfg.distill.teacher_workdir:
    teacher_cfg = config_lib.read(cfg.distill.teacher_workdir)
    teacher = vit.ViT(vit_config(teacher_cfg.model, data.image_shape, data.num_classes))
    teacher_params = checkpoint.restore_params(cfg.distill.teacher_workdir)[1]
  gene = (learngene.load_gene(cfg.learngene.gene_workdir, cfg.model, ("d_model", "num_heads", "mlp_dim", "patch_size"))
          if mode == "descendant" else None)

  def init(rng):
    init_rng, gene_rng = jax.random.split(rng)
    # reinit_head: transfer to a new task keeps the body, not the classifier
    variables = dict(model.init(init_rng, dummy))  # params, plus FP8 scale state if any
    variables["params"] = learngene.initial_params(mode, variables["params"], gene_rng, depth=depth,
                                                   b_std=cfg.learngene.b_std, gene=gene,
                                                   keep_fresh=("head",) if cfg.learngene.reinit_head else ())
    if teacher is not None:
      variables["teacher"] = jax.tree.map(jnp.asarray, teacher_params)  # frozen, kept in the train state
    return variables

  def forward(variables, images_, rng=None):
    model_vars = {k: v for k, v in variables.items() if k != "teacher"}
    model_vars["params"] = learngene.model_params(mode, variables["params"], depth, stack)
    deterministic = rng is None or cfg.model.dropout == 0.0
    return model.apply(model_vars, images_, deterministic=deterministic,
                       rngs=None if deterministic else {"dropout": rng})

  def loss(variables, batch, rng):
    logits = forward(variables, batch["images"], rng)
    metrics = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"])}
    if teacher is not None:
      teacher_logits = teacher.apply({"params": variables["teacher"]}, batch["images"])
      value, parts = learngene.soft_distillation_loss(logits, teacher_logits, batch["labels"],
                                                      alpha=cfg.distill.alpha, tau=cfg.distill.tau)
      metrics.update(parts)
    else:
      value = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return value, (metrics, {})

  def eval_sums(variables, batch):
    logits = forward(variables, batch["images"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
    return {"correct": jnp.sum(correct * batch["mask"]), "nll": jnp.sum(nll * batch["mask"]),
            "count": jnp.sum(batch["mask"])}

  def summarize(sums):
    count = max(float(sums["count"]), 1.0)
    return {"accuracy": float(sums["correct"]) / count, "loss": float(sums["nll"]) / count, "count": count}

  local_batch = t.batch_size // jax.process_count()
  shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
  return Task(
      init=init, loss=loss, eval_sums=eval_sums, summarize=summarize,
      train_data=images.image_dataset(data.train, batch_size=local_batch, seed=cfg.seed, **shard),
      eval_data=lambda: images.image_dataset(data.test, batch_size=local_batch, seed=0, shuffle=False,
                                             num_epochs=1, **shard),
      units_per_batch=("images", t.batch_size), microbatches=t.grad_accum, **fp8.task_options(cfg.fp8))


def parameters_stored(cfg, data: images.ImageData) -> int:
  """Parameters a user keeps to initialise this run's model: the whole model, or for an
  auxiliary run the learngene plus the shared parts (the descendants' only source)."""
  model = vit.ViT(vit_config(cfg.model, data.image_shape, data.num_classes))
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + data.image_shape))["params"]
  if cfg.learngene.mode == "auxiliary":
    params = jax.eval_shape(lambda p: learngene.auxiliary_params(jax.random.key(0), p), params)
  return learngene.count_params(params)


def report(summary: dict) -> str:
  extra = [f"parameters stored: {summary['parameters_stored']:,}"]
  if "accuracy" in summary:
    extra.insert(0, f"test accuracy {summary['accuracy']:.4f}  loss {summary['loss']:.4f} "
                    f"({summary['count']:.0f} images)")
  return loop.report_lines(summary, extra)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> dict:
  mesh = sharding.make_mesh(cfg.mesh)
  validate(cfg, mesh)
  with distributed.main_process_first("classify: data"):  # others reuse process 0's prepared files
    data = images.prepare_images(cfg.data.name, data_dir=cfg.data.data_dir or os.path.join(workdir, "data"),
                                 source_dir=builtin.resolve_shared(cfg.data.source_dir, "data.source_dir"))
  schedule = optim.schedule(cfg.optim, cfg.train.steps)
  summary = loop.run(cfg, workdir, make_task(cfg, data), mesh, fp8.optimizer_for(cfg, schedule), schedule)
  summary["parameters_stored"] = parameters_stored(cfg, data)
  return summary
