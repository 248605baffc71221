"""Image classification with a ViT (or, for a teacher, a small CNN: `model.kind=cnn`):
plain training (teachers, scratch baselines), TLEG auxiliary models trained by
distillation, and descendants initialised from a learngene.

The methods of jaxlab/trainers/methods.py apply as in every trainer; `learngene.mode`:
  none        a plain ViT of depth model.num_layers (a teacher or a scratch baseline)
  auxiliary   trainable params {"shared", "gene"}; the ViT's layers are expanded from the
              gene inside the forward pass (depth model.num_layers); distilled from
              distill.teacher_workdir when set, else trained on labels
  descendant  a plain ViT of depth model.num_layers initialised from the gene of
              learngene.gene_workdir (an auxiliary run), then trained normally
  interpolated  the control: a plain run's layers (learngene.gene_workdir) resampled to
              depth model.num_layers, then trained normally
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
from jaxlab.data import builtin, images
from jaxlab.models import cnn, vit
from jaxlab.train import loop, optim
from jaxlab.train.state import Task
from jaxlab.trainers import methods


def default_config() -> ml_collections.ConfigDict:
  """Every key the classification trainer reads."""
  c = ml_collections.ConfigDict()
  c.trainer = "classify"
  c.seed = 0
  c.mesh = (("data", -1), ("model", 1))
  c.sharding = dict(layout="dp", extra_rules=())
  c.data = dict(name="digits", source_dir="", data_dir="")
  c.model = dict(kind="vit", num_layers=4, d_model=64, num_heads=2, mlp_dim=0, patch_size=2, dropout=0.0,
                 cnn_features=(16, 32), cnn_hidden=64)  # cnn_*: read only when kind is "cnn"
  c.learngene = learngene.default_config()
  # normalize: "batch_classes" (DeiT's soft loss, TLEG's reference) or "batch" (KL per example)
  c.distill = dict(teacher_workdir="", alpha=1.0, tau=1.0, normalize="batch_classes")
  c.train = dict(batch_size=64, steps=1000, log_every=50, eval_every=250, eval_batches=0, checkpoint_every=500,
                 keep_checkpoints=2, stop_after=0, grad_accum=1)
  # FP8-LM levels for the ViT's GEMMs and optimizer. The patch embedding (a GEMM over
  # patch_size**2 * channels inputs, 4 on the digits) and the head stay out of FP8, as Transformer
  # Engine and DeepSeek-V3 keep a model's ends: with them in FP8 the ViT ends 1.7-2.2% above
  # BF16's held-out loss, with them out of it 0.6-1.0% (bench/results/fp8_parity_trainers.txt)
  c.fp8 = dict(fp8.default_config(), high_precision=("patch", "head"))
  c.optim = dict(learning_rate=1e-3, warmup_steps=50, min_lr_ratio=0.0, weight_decay=0.05, b1=0.9, b2=0.999,
                 eps=1e-8, grad_clip=1.0)
  return c


@dataclasses.dataclass
class Result:
  """What `train_and_evaluate` returns: test metrics as plain numbers (accuracy, loss,
  count), where the run's files are, the parameters a user keeps to initialise this run's
  model (the learngene and shared parts for an auxiliary run), and the trained state."""
  workdir: str
  step: int
  finished: bool
  metrics: dict
  checkpoint_dir: str
  metrics_path: str
  plot_path: str | None
  parameters_stored: int
  state: Any
  model: Any  # vit.ViT, or cnn.CNN for model.kind=cnn

  @property
  def params(self):
    """The trained parameters as stored (device arrays)."""
    return self.state.params


def vit_config(model: ml_collections.ConfigDict, image_shape, num_classes: int = 10) -> vit.ViTConfig:
  """The ViT of a config's model group for images of `image_shape` (H, W, C)."""
  return vit.ViTConfig(num_classes=num_classes, image_size=image_shape[0], channels=image_shape[2],
                       patch_size=model.patch_size, num_layers=model.num_layers, d_model=model.d_model,
                       num_heads=model.num_heads, mlp_dim=model.mlp_dim, dropout=model.dropout)


MODEL_KINDS = ("vit", "cnn")


def build_model(model: ml_collections.ConfigDict, image_shape, num_classes: int = 10):
  """The Flax module of a config's model group: a ViT, or a CNN for `kind="cnn"` (configs
  written before `kind` existed are ViTs)."""
  if model.get("kind", "vit") == "cnn":
    return cnn.CNN(cnn.CNNConfig(num_classes=num_classes, features=tuple(model.cnn_features),
                                 hidden=model.cnn_hidden))
  return vit.ViT(vit_config(model, image_shape, num_classes))


def validate(cfg) -> None:
  """The model and distillation keys, before any work."""
  req = config_lib.require
  req(cfg.model.kind in MODEL_KINDS, "model.kind", f"{cfg.model.kind!r} is not one of {MODEL_KINDS}")
  req(cfg.model.kind == "vit" or cfg.learngene.mode == "none", "model.kind",
      f"learngene.mode={cfg.learngene.mode!r} needs a transformer (kind 'vit'), not {cfg.model.kind!r}")
  req(cfg.distill.normalize in learngene.NORMALIZATIONS, "distill.normalize",
      f"{cfg.distill.normalize!r} is not one of {learngene.NORMALIZATIONS}")
  req(cfg.data.name in images.IMAGE_SHAPES, "data.name",
      f"{cfg.data.name!r} is not one of {sorted(images.IMAGE_SHAPES)}")
  req(cfg.model.d_model % cfg.model.num_heads == 0, "model.num_heads",
      f"{cfg.model.num_heads} does not divide model.d_model={cfg.model.d_model}")
  req(0.0 <= cfg.distill.alpha <= 1.0, "distill.alpha", "must be in [0, 1]")
  req(cfg.distill.tau > 0, "distill.tau", "must be positive")


def batch_spec(cfg) -> dict:
  """The global batch's shapes and dtypes (what data/images.image_dataset yields)."""
  b, shape = cfg.train.batch_size, images.IMAGE_SHAPES[cfg.data.name]
  return {"images": jax.ShapeDtypeStruct((b,) + tuple(shape), jnp.float32),
          "labels": jax.ShapeDtypeStruct((b,), jnp.int32), "mask": jax.ShapeDtypeStruct((b,), jnp.float32)}


def _teacher(cfg, image_shape, num_classes):
  """(teacher module, params) of distill.teacher_workdir, or (None, None)."""
  if not cfg.distill.teacher_workdir:
    return None, None
  teacher_cfg = config_lib.read(cfg.distill.teacher_workdir)
  teacher = build_model(teacher_cfg.model, image_shape, num_classes)
  return teacher, checkpoint.restore_params(cfg.distill.teacher_workdir)[1]


def make_task(cfg, data: images.ImageData | None = None) -> Task:
  """The plain classification Task (before methods); without `data` a shapes-only task."""
  t = cfg.train
  image_shape = data.image_shape if data is not None else tuple(images.IMAGE_SHAPES[cfg.data.name])
  num_classes = data.num_classes if data is not None else 10
  model = build_model(cfg.model, image_shape, num_classes)
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  teacher, teacher_params = _teacher(cfg, image_shape, num_classes)

  def init(model, rng):
    variables = dict(model.init(rng, dummy))  # params, plus FP8 scale state if any
    if teacher is not None:
      variables["teacher"] = jax.tree.map(jnp.asarray, teacher_params)  # frozen, kept in the train state
    return variables

  def forward(model, variables, images_, rng=None):
    model_vars = {k: v for k, v in variables.items() if k != "teacher"}
    deterministic = rng is None or cfg.model.dropout == 0.0
    return model.apply(model_vars, images_, deterministic=deterministic,
                       rngs=None if deterministic else {"dropout": rng})

  def loss(model, variables, batch, rng):
    logits = forward(model, variables, batch["images"], rng)
    metrics = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"])}
    if teacher is not None:
      teacher_logits = teacher.apply({"params": variables["teacher"]}, batch["images"])
      value, parts = learngene.soft_distillation_loss(logits, teacher_logits, batch["labels"],
                                                      alpha=cfg.distill.alpha, tau=cfg.distill.tau,
                                                      normalize=cfg.distill.normalize)
      metrics.update(parts)
    else:
      value = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
    return value, (metrics, {})

  def eval_sums(model, variables, batch):
    logits = forward(model, variables, batch["images"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
    return {"correct": jnp.sum(correct * batch["mask"]), "nll": jnp.sum(nll * batch["mask"]),
            "count": jnp.sum(batch["mask"])}

  def summarize(sums):
    count = max(float(sums["count"]), 1.0)
    return {"accuracy": float(sums["correct"]) / count, "loss": float(sums["nll"]) / count, "count": count}

  train_data = eval_data = None
  if data is not None:
    local_batch = t.batch_size // jax.process_count()
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_data = images.image_dataset(data.train, batch_size=local_batch, seed=cfg.seed, **shard)
    eval_data = lambda: images.image_dataset(data.test, batch_size=local_batch, seed=0, shuffle=False,
                                             num_epochs=1, **shard)
  return Task(model=model, init=init, loss=loss, optimizer=optim.adamw(cfg.optim, t.steps),
              schedule=optim.schedule(cfg.optim, t.steps), train_data=train_data, eval_sums=eval_sums,
              summarize=summarize, eval_data=eval_data, units_per_batch=("images", t.batch_size))


def parameters_stored(cfg, image_shape, num_classes: int = 10) -> int:
  """Parameters a user keeps to initialise this run's model: the whole model, or for an
  auxiliary run the learngene plus the shared parts (the descendants' only source)."""
  model = build_model(cfg.model, image_shape, num_classes)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1,) + tuple(image_shape)))["params"]
  if cfg.learngene.mode == "auxiliary":
    params = jax.eval_shape(lambda p: learngene.auxiliary_params(jax.random.key(0), p), params)
  return learngene.count_params(params)


def report(result: Result) -> str:
  """The end-of-run text `jaxlab.main` prints."""
  m, extra = result.metrics, [f"parameters stored: {result.parameters_stored:,}"]
  if "accuracy" in m:
    extra.insert(0, f"test accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f} ({m['count']:.0f} images)")
  return loop.report_lines(result, extra)


def _configured(cfg):
  cfg = methods.configure(cfg)
  validate(cfg)
  return cfg, loop.options(cfg)


def stages(cfg: ml_collections.ConfigDict) -> list[loop.Stage]:
  """The one stage, from shapes alone (a teacher's or learngene's run is read for its params)."""
  cfg, opts = _configured(cfg)
  return [loop.Stage("classify", methods.apply(cfg, make_task(cfg)), opts, batch_spec(cfg))]


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> Result:
  """Train a ViT (or CNN) on `cfg.data.name` into `workdir` (resuming) and evaluate on its test split."""
  cfg, opts = _configured(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  loop.check_mesh(opts, mesh)
  with distributed.main_process_first("classify: data"):  # others reuse process 0's prepared files
    data = images.prepare_images(cfg.data.name, data_dir=cfg.data.data_dir or os.path.join(workdir, "data"),
                                 source_dir=builtin.resolve_shared(cfg.data.source_dir, "data.source_dir"))
  task = methods.apply(cfg, make_task(cfg, data))
  run = loop.run(task, opts, workdir, mesh, config=cfg, batch_spec=batch_spec(cfg))
  return Result(**vars(run), parameters_stored=parameters_stored(cfg, data.image_shape, data.num_classes),
                model=task.model)
