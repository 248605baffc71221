"""Aesthetic alignment of a two-tower retrieval model on the testbed (jaxlab/align/testbed.py).

The library (testbed, encoders and evaluation, preference mining, the fine-tuning loss)
lives in jaxlab.align; this module wires it to the shared loop.

Stages (each under the workdir; the training stages go through the shared loop, so they
checkpoint, resume and skip when finished):
  pretrain/     contrastive pretraining of the two-tower model on captioned images
  aesthetic/    the aesthetic MLP on the pretrained model's image embeddings, MSE to ratings
  preferences   plain queries -> rephrased (rephrase.backend / style, cached in rephrase_cache/)
                -> top-K from a random gallery per round -> re-rank by relevance (pretrained
                model, rephrased query: the query with its aesthetic expectations) and
                aesthetics (the MLP) -> u x v grid -> pairs on the ORIGINAL query;
                stored as a tfds dataset in preferences/
  finetune/     ranked DPO against the frozen pretrained model (+ lambda * contrastive on
                the candidates with their own captions and/or random pairs; the
                reference's log-probabilities over each record's fixed candidates are
                constant, so they are computed once with the preferences and stored), or
                dpo.objective=sft: contrastive fine-tuning on each query's top preferred image
  report.json   on the test split (and on validation, for choosing settings):
                HPIR accuracy (plain, confidence-weighted), recall@1/5, the mean true
                aesthetic of the top results, and the order-consistent aesthetic judge,
                before (pretrained) and after (fine-tuned)

pretrain.workdir / aesthetic.workdir reuse finished stages of another run (ablations).
"""
from __future__ import annotations

import dataclasses
import json
import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxlab import checkpoint, config as config_lib, distributed, fp8, sharding
from jaxlab.align import aesthetic as aesthetic_lib
from jaxlab.align import finetune as finetune_lib, hpir, judge as judge_lib, mining, preferences as pref_lib
from jaxlab.align import rephrase as rephrase_lib, retrieval, testbed
from jaxlab.data import arrays
from jaxlab.models import two_tower as tt
from jaxlab.models.vit import ViTConfig
from jaxlab.train import loop, optim
from jaxlab.train.state import Task
from jaxlab.trainers import methods

STAGES = ("pretrain", "aesthetic", "finetune")
GROUPS = {"pretrain": "pretrain", "aesthetic": "aesthetic", "finetune": "dpo"}  # stage -> config group


def _train(batch_size, steps, lr):
  return dict(train=dict(batch_size=batch_size, steps=steps, log_every=50, eval_every=0, eval_batches=0,
                         checkpoint_every=max(steps, 1), keep_checkpoints=1, stop_after=0),
              optim=dict(learning_rate=lr, warmup_steps=min(50, steps // 10), min_lr_ratio=0.0, weight_decay=0.05,
                         b1=0.9, b2=0.98, eps=1e-8, grad_clip=1.0))


def default_config() -> ml_collections.ConfigDict:
  """Every key the alignment trainer reads: data, model, each stage's train/optim groups,
  rephrasing, preference mining, DPO and evaluation."""
  c = ml_collections.ConfigDict()
  c.trainer = "align"
  c.seed = 0
  c.mesh = (("data", -1), ("model", 1))
  c.sharding = dict(layout="dp", extra_rules=())
  c.data = dict(data_dir="", num_train=4000, num_val=3000, num_test=1000, image_size=16, desc_prob=0.5,
                rating_noise=0.08, hpir_queries=400, hpir_set_size=4, hpir_annotators=5, hpir_noise=0.1)
  c.model = dict(patch_size=4, image_layers=2, text_layers=2, d_model=64, num_heads=2, embed_dim=64, max_len=24)
  # a retriever that tells the contents apart needs ~1,500 steps of 128 pairs; label smoothing
  # only slows it (same-content captions are already soft negatives)
  c.pretrain = dict(loss="softmax", label_smoothing=0.0, workdir="", **_train(128, 1500, 2e-3))
  # the LAION-style linear head underfits these small embeddings (relu and 1,500 steps: test r 0.56 -> 0.77)
  c.aesthetic = dict(hidden=(64, 16), dropout=(0.1, 0.0), activation="relu", workdir="", **_train(128, 1500, 3e-3))
  c.rephrase = dict(backend="offline", style="details", k=3, model="", base_url_env="OPENAI_BASE_URL",
                    api_key_env="OPENAI_API_KEY", timeout=30.0, retries=3, max_concurrency=4, gpt_workdir="")
  c.preferences = dict(rounds=30, gallery=1000, top_k=40, u=3, v=3, stride=2)
  # the contrastive term pairs each query's candidates with their own captions: the retriever's
  # near-misses, the hard negatives recall@1 rests on (validation, seed 0, lambda 0.1: HPIR
  # +17 points, recall@1 -0.8; seed 1: +12.5 / +1.3). Random gallery pairs (contrastive_batch)
  # are easy negatives and tie the plain query to plainly captioned images of any aesthetics
  # (256 of them instead at lambda 0.1: +7.5 / -1.9; with random pairs every lambda that
  # reached +10 cost 5.3-8.8 points of recall@1)
  c.dpo = dict(objective="dpo", beta=0.5, label_smoothing=0.1, contrastive_weight=0.1, contrastive_batch=0,
               contrastive_candidates=True,
               **_train(16, 400, 4e-4))
  # recall@k falls as the gallery grows, and one 1,000-image gallery moved the same model's
  # recall@1 by 14 points between draws (0.40 vs 0.54): the mean over fixed-size galleries
  c.eval = dict(top_k=4, batch_size=256, recall_gallery=1000)
  c.fp8 = fp8.default_config()  # FP8-LM levels for the DPO fine-tuning stage (fp8.level=O2, ...)
  return c


# ---------------------------------------------------------------------------- config

def model_config(m: ml_collections.ConfigDict, image_size: int, vocab_size: int,
                 loss: str = "softmax") -> tt.TwoTowerConfig:
  """The two-tower model of a config's model group (SigLIP's initial temperature and bias
  for the sigmoid loss)."""
  vision = ViTConfig(num_classes=0, image_size=image_size, patch_size=m.patch_size, channels=3,
                     num_layers=m.image_layers, d_model=m.d_model, num_heads=m.num_heads)
  text = tt.TextConfig(vocab_size=vocab_size, max_len=m.max_len, num_layers=m.text_layers, d_model=m.d_model,
                       num_heads=m.num_heads)
  if loss == "sigmoid":  # SigLIP's initial temperature and bias
    return tt.TwoTowerConfig(vision=vision, text=text, embed_dim=m.embed_dim, logit_scale_init=float(np.log(10.0)),
                             logit_bias_init=-10.0)
  return tt.TwoTowerConfig(vision=vision, text=text, embed_dim=m.embed_dim)


def validate(cfg) -> None:
  """Every key, before any data or compile work (ConfigError naming the key)."""
  req = config_lib.require
  m, d, p, r = cfg.model, cfg.data, cfg.preferences, cfg.rephrase
  req(m.d_model % m.num_heads == 0, "model.num_heads", f"{m.num_heads} does not divide model.d_model={m.d_model}")
  req(d.image_size % m.patch_size == 0, "model.patch_size",
      f"{m.patch_size} does not divide data.image_size={d.image_size}")
  for key in ("num_train", "num_val", "num_test", "image_size", "hpir_queries", "hpir_set_size", "hpir_annotators"):
    req(d[key] > 0, f"data.{key}", "must be positive")
  req(cfg.pretrain.loss in ("softmax", "sigmoid"), "pretrain.loss", f"{cfg.pretrain.loss!r}: use softmax or sigmoid")
  req(0.0 <= cfg.pretrain.label_smoothing < 1.0, "pretrain.label_smoothing", "must be in [0, 1)")
  req(len(cfg.aesthetic.hidden) == len(cfg.aesthetic.dropout), "aesthetic.dropout",
      f"needs one rate per hidden layer ({len(cfg.aesthetic.hidden)})")
  req(cfg.aesthetic.activation in ("none", "relu", "gelu"), "aesthetic.activation", "use none, relu or gelu")
  req(r.backend in rephrase_lib.BACKENDS, "rephrase.backend", f"{r.backend!r} is not one of {rephrase_lib.BACKENDS}")
  req(r.style in rephrase_lib.STYLES, "rephrase.style", f"{r.style!r} is not one of {rephrase_lib.STYLES}")
  req(r.backend != "openai" or bool(r.model), "rephrase.model", "the openai backend needs a model name")
  req(r.backend != "gpt" or bool(r.gpt_workdir), "rephrase.gpt_workdir", "the gpt backend needs an lm run")
  for key in ("u", "v", "stride", "rounds"):
    req(p[key] >= 1, f"preferences.{key}", "must be >= 1")
  need = (p.u * p.v - 1) * p.stride + 1
  req(p.top_k >= need, "preferences.top_k", f"{p.top_k} < {need} needed for a {p.u} x {p.v} grid at stride {p.stride}")
  req(p.gallery >= p.top_k, "preferences.gallery", f"{p.gallery} is smaller than preferences.top_k={p.top_k}")
  req(p.gallery <= d.num_train, "preferences.gallery", f"{p.gallery} exceeds data.num_train={d.num_train}")
  req(cfg.dpo.objective in ("dpo", "sft"), "dpo.objective", f"{cfg.dpo.objective!r}: use dpo or sft")
  req(cfg.dpo.beta > 0, "dpo.beta", "must be positive")
  req(0.0 <= cfg.dpo.label_smoothing < 0.5, "dpo.label_smoothing", "must be in [0, 0.5)")
  req(cfg.dpo.contrastive_weight >= 0, "dpo.contrastive_weight", "must be >= 0")
  req(cfg.dpo.contrastive_batch % cfg.dpo.train.batch_size == 0, "dpo.contrastive_batch",
      f"{cfg.dpo.contrastive_batch} is not a multiple of dpo.train.batch_size={cfg.dpo.train.batch_size} "
      f"(each query brings contrastive_batch / batch_size random pairs)")
  req(cfg.dpo.contrastive_batch > 0 or cfg.dpo.contrastive_candidates, "dpo.contrastive_batch",
      "is 0 and dpo.contrastive_candidates is off: the contrastive term has no pairs")
  methods.configure(methods.stage_view(cfg, "dpo"))  # fp8.*: the DPO fine-tuning stage's FP8-LM level
  req(cfg.eval.top_k >= 1, "eval.top_k", "must be >= 1")
  req(cfg.eval.recall_gallery >= 2, "eval.recall_gallery", "must be >= 2 images")
  for stage in ("pretrain", "aesthetic"):
    path = cfg[stage].workdir
    req(not path or os.path.isdir(os.path.join(path, "checkpoints")), f"{stage}.workdir",
        f"{path!r} has no checkpoints/ (a finished {stage} run)")


@dataclasses.dataclass
class Result:
  """What `train_and_evaluate` returns: the report (plain numbers: HPIR, recall and top
  aesthetics before and after on test and validation, preference stats, judge), whether
  every stage finished (else `report["stopped"]` names the stage), and the workdir."""
  workdir: str
  finished: bool
  report: dict


def stage_options(cfg, stage: str) -> loop.Options:
  """The loop's options for a stage, from its group's `train` keys."""
  return loop.options(cfg, f"{GROUPS[stage]}.train")


def _tokenizer_and_model(cfg):
  tok = testbed.word_tokenizer()
  return tok, model_config(cfg.model, cfg.data.image_size, tok.get_vocab_size(), cfg.pretrain.loss)


# ---------------------------------------------------------------------------- tasks

def pretrain_task(cfg, mcfg, train: dict | None = None) -> Task:
  """Contrastive pretraining on captioned images (shapes only without `train`)."""
  pc, s, L = cfg.pretrain, mcfg.vision.image_size, mcfg.text.max_len

  def init(model, rng):
    return model.init(rng, jnp.zeros((1, s, s, 3)), jnp.zeros((1, L), jnp.int32), jnp.ones((1, L), jnp.int32))

  def loss(model, variables, batch, rng):
    del rng
    img, txt, scale, bias = model.apply(variables, batch["images"], batch["tokens"], batch["mask"])
    value = tt.contrastive_loss(pc.loss, img, txt, scale, bias, pc.label_smoothing,
                                finetune_lib.same_tokens(batch["tokens"]))
    acc = jnp.mean(jnp.argmax(img @ txt.T, 1) == jnp.arange(img.shape[0]))
    return value, ({"i2t_top1": acc, "scale": scale}, {})

  data = None
  if train is not None:
    rows = arrays.Rows(images=train["images"], tokens=train["tokens"], mask=train["mask"])
    data = arrays.repeat_shuffled(rows, cfg.seed, pc.train.batch_size)
  b = pc.train.batch_size
  spec = {"images": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32), "tokens": jax.ShapeDtypeStruct((b, L), jnp.int32),
          "mask": jax.ShapeDtypeStruct((b, L), jnp.int32)}
  return _task(cfg, "pretrain", tt.TwoTower(mcfg), init, loss, data, ("pairs", b)), spec


def aesthetic_model(cfg) -> aesthetic_lib.AestheticMLP:
  """The aesthetic MLP of the config's aesthetic group."""
  a = cfg.aesthetic
  return aesthetic_lib.AestheticMLP(tuple(a.hidden), tuple(a.dropout), a.activation)


def aesthetic_task(cfg, mcfg, train: dict | None = None, embeddings=None) -> Task:
  """The MLP on the pretrained model's (fixed) image embeddings, MSE to the ratings."""
  b = cfg.aesthetic.train.batch_size

  def init(model, rng):
    return {"params": model.init(rng, jnp.zeros((1, mcfg.embed_dim)))["params"]}

  def loss(model, variables, batch, rng):
    return aesthetic_lib.mse_loss(model, variables["params"], batch["embeddings"], batch["rating"], rng), ({}, {})

  data = None
  if train is not None:
    data = arrays.repeat_shuffled(arrays.Rows(embeddings=embeddings, rating=train["rating"]), cfg.seed + 1, b)
  spec = {"embeddings": jax.ShapeDtypeStruct((b, mcfg.embed_dim), jnp.float32),
          "rating": jax.ShapeDtypeStruct((b,), jnp.float32)}
  return _task(cfg, "aesthetic", aesthetic_model(cfg), init, loss, data, ("images", b)), spec


def finetune_task(cfg, mcfg, train: dict | None = None, prefs=None, init_params=None, tok=None) -> Task:
  """finetune_loss over the stored preference records, from the pretrained parameters
  (shapes only, from the model's own init, without `train`)."""
  d, s, L = cfg.dpo, mcfg.vision.image_size, mcfg.text.max_len
  b, n_pair = d.train.batch_size, d.contrastive_batch // d.train.batch_size
  n = cfg.preferences.u * cfg.preferences.v
  n_pairs = len(pref_lib.grid_pairs(cfg.preferences.u, cfg.preferences.v))

  def init(model, rng):
    # The model's own init gives the shapes and any other collection (e.g. fp8.level's scale
    # state); the pretrained parameters, when given, replace its params.
    variables = dict(model.init(rng, jnp.zeros((1, s, s, 3)), jnp.zeros((1, L), jnp.int32),
                                jnp.ones((1, L), jnp.int32)))
    if init_params is not None:
      variables["params"] = jax.tree.map(jnp.asarray, init_params)
    return variables

  def loss(model, variables, batch, rng):
    del rng
    value, metrics = finetune_lib.finetune_loss(model, d, cfg.pretrain, variables, batch)
    return value, (metrics, {})

  data = None
  if train is not None:
    q_tokens, q_mask = testbed.encode(tok, [testbed.as_text(prefs[i]["query"]) for i in range(len(prefs))], L)
    candidates = np.stack([prefs[i]["candidates"] for i in range(len(prefs))])
    ref_logp = np.stack([prefs[i]["ref_logp"] for i in range(len(prefs))])
    pairs, images = np.asarray(prefs[0]["pairs"]), train["images"]

    def example(i, rec):
      j = np.random.default_rng([cfg.seed, i]).integers(0, len(images), n_pair)  # contrastive pairs, by index
      c = candidates[rec]
      return {"q_tokens": q_tokens[rec], "q_mask": q_mask[rec], "cand_images": images[c],
              "cand_tokens": train["tokens"][c], "cand_mask": train["mask"][c], "ref_logp": ref_logp[rec],
              "pairs": pairs, "images": images[j], "tokens": train["tokens"][j], "mask": train["mask"][j]}

    ds = arrays.process_slice(grain.MapDataset.range(len(prefs)))
    data = arrays.local_batches(ds.shuffle(seed=cfg.seed + 2).repeat(None).map_with_index(example), b)
  f32, i32 = jnp.float32, jnp.int32
  sd = jax.ShapeDtypeStruct
  spec = {"q_tokens": sd((b, L), i32), "q_mask": sd((b, L), i32), "cand_images": sd((b, n, s, s, 3), f32),
          "cand_tokens": sd((b, n, L), i32), "cand_mask": sd((b, n, L), i32), "ref_logp": sd((b, n), f32),
          "pairs": sd((b, n_pairs, 2), i32), "images": sd((b, n_pair, s, s, 3), f32),
          "tokens": sd((b, n_pair, L), i32), "mask": sd((b, n_pair, L), i32)}
  # FP8-LM's levels (fp8.level) apply to this stage, as the paper applies them to fine-tuning
  return methods.apply(methods.stage_view(cfg, "dpo"),
                       _task(cfg, "finetune", tt.TwoTower(mcfg), init, loss, data, ("queries", b))), spec


def _task(cfg, stage, model, init, loss, data, units) -> Task:
  o = cfg[GROUPS[stage]]
  return Task(model=model, init=init, loss=loss, optimizer=optim.adamw(o.optim, o.train.steps),
              schedule=optim.schedule(o.optim, o.train.steps), train_data=data, units_per_batch=units)


def stages(cfg: ml_collections.ConfigDict) -> list[loop.Stage]:
  """The three training stages from shapes alone: pretrain, aesthetic, finetune."""
  validate(cfg)
  _, mcfg = _tokenizer_and_model(cfg)
  out = []
  for name, build in (("pretrain", pretrain_task), ("aesthetic", aesthetic_task), ("finetune", finetune_task)):
    task, spec = build(cfg, mcfg)
    out.append(loop.Stage(name, task, stage_options(cfg, name), spec))
  return out


# ---------------------------------------------------------------------------- stages

def run_stage(cfg, stage: str, workdir: str, task_and_spec, mesh) -> dict:
  """Train one stage into workdir (skipped when finished); {"finished", "params"}."""
  opts = stage_options(cfg, stage)
  if checkpoint.finished(workdir, opts.steps):
    print(f"[{stage}] finished already ({workdir})", flush=True)
    return {"finished": True, "params": checkpoint.restore_params(workdir)[1]}
  print(f"[{stage}] training {opts.steps} steps in {workdir}", flush=True)
  task, spec = task_and_spec()
  result = loop.run(task, opts, workdir, mesh, batch_spec=spec)
  return {"finished": result.finished, "params": jax.device_get(result.params)}


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> Result:
  """Pretrain, fit the aesthetic model, mine preferences, fine-tune, and report before and
  after on the test and validation splits (workdir/report.json). Each stage resumes or
  skips when finished; files are written by process 0 (the others wait and reuse them)."""
  mesh = sharding.make_mesh(cfg.mesh)
  for stage_name in STAGES:  # the stages' batch sizes first: the other checks divide by them
    loop.check_mesh(stage_options(cfg, stage_name), mesh)
  validate(cfg)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    config_lib.write(cfg, workdir)
  d = cfg.data
  with distributed.main_process_first("align: testbed"):
    tb = testbed.prepare_testbed(
        d.data_dir or os.path.join(workdir, "data"), num_train=d.num_train, num_val=d.num_val, num_test=d.num_test,
        image_size=d.image_size, seed=cfg.seed, desc_prob=d.desc_prob, rating_noise=d.rating_noise,
        hpir_queries=d.hpir_queries, hpir_set_size=d.hpir_set_size, hpir_annotators=d.hpir_annotators,
        hpir_noise=d.hpir_noise)
  tok, mcfg = _tokenizer_and_model(cfg)
  train, val, test = (testbed.load_split(s, tok, cfg.model.max_len) for s in (tb.train, tb.validation, tb.test))
  records, val_records = hpir.load_hpir(tb.hpir_path), hpir.load_hpir(tb.hpir_val_path)

  def stage(name, task_fn):
    src = cfg[name].workdir if name in ("pretrain", "aesthetic") else ""
    if src:
      if not checkpoint.finished(src, cfg[name].train.steps):
        raise config_lib.ConfigError(f"{name}.workdir: {src!r} is not a finished {name} run of "
                                     f"{cfg[name].train.steps} steps")
      return {"finished": True, "params": checkpoint.restore_params(src)[1]}
    return run_stage(cfg, name, os.path.join(workdir, name), task_fn, mesh)

  pre = stage("pretrain", lambda: pretrain_task(cfg, mcfg, train))
  if not pre["finished"]:
    return Result(workdir, False, {"stopped": "pretrain"})
  bs = cfg.eval.batch_size
  train_emb = retrieval.embed_images(mcfg, pre["params"], train["images"], bs)
  aes = stage("aesthetic", lambda: aesthetic_task(cfg, mcfg, train, train_emb))
  if not aes["finished"]:
    return Result(workdir, False, {"stopped": "aesthetic"})
  mlp = aesthetic_model(cfg)
  with distributed.main_process_first("align: preferences"):
    prefs, pref_stats = mining.mine_preferences(workdir, mcfg, pre["params"], mlp, aes["params"], train, train_emb,
                                                tok, rephrase=cfg.rephrase, preferences=cfg.preferences,
                                                seed=cfg.seed, batch_size=bs)
  fine = stage("finetune", lambda: finetune_task(cfg, mcfg, train, prefs, pre["params"], tok))
  if not fine["finished"]:
    return Result(workdir, False, {"stopped": "finetune"})
  fine["params"] = fp8.formats.plain(fine["params"])  # evaluated as stored, in FP32 (FP8 levels store FP16/FP8)

  aes_scores = np.asarray(aesthetic_lib.score(mlp, aes["params"], jnp.asarray(
      retrieval.embed_images(mcfg, pre["params"], test["images"], bs))))
  ev = dict(top_k=cfg.eval.top_k, batch_size=bs, recall_gallery=cfg.eval.recall_gallery)
  before, top_before = retrieval.evaluate(mcfg, pre["params"], test, records, tok, **ev)
  after, top_after = retrieval.evaluate(mcfg, fine["params"], test, records, tok, **ev)
  # settings are chosen on the validation split (its images are in no grid), reported on test
  val_before, _ = retrieval.evaluate(mcfg, pre["params"], val, val_records, tok, **ev)
  val_after, _ = retrieval.evaluate(mcfg, fine["params"], val, val_records, tok, **ev)
  judge = judge_lib.aesthetic_judge(lambda idx: aes_scores[np.asarray(idx)])
  content_q = [testbed.query_for(c) for c in testbed.CONTENTS]
  report = {"before": before, "after": after, "val_before": val_before, "val_after": val_after,
            "preferences": pref_stats,
            "judge_after_vs_before": judge_lib.compare(judge, content_q, list(top_after), list(top_before)),
            "aesthetic_model_corr": float(np.corrcoef(aes_scores, test["aesthetic"])[0, 1])}
  if is_main:
    with open(os.path.join(workdir, "report.json"), "w") as f:
      json.dump(report, f, indent=2)
  return Result(workdir, True, report)


def report(result: Result) -> str:
  """The before/after table `jaxlab.main` prints."""
  r = result.report
  if not result.finished:
    return f"stopped during {r['stopped']} (rerun to resume); workdir {result.workdir}"
  b, a = r["before"], r["after"]
  lines = [f"{'':22s}{'before':>10s}{'after':>10s}"]
  for key in ("accuracy", "weighted_accuracy", "r@1", "r@5", "top_true_aesthetic", "top_relevant"):
    name = {"accuracy": "HPIR accuracy", "weighted_accuracy": "HPIR weighted"}.get(key, key)
    lines.append(f"{name:22s}{b[key]:10.4f}{a[key]:10.4f}")
  vb, va = r["val_before"], r["val_after"]
  lines.append(f"{'validation HPIR / R@1':22s}{vb['accuracy']:10.4f}{va['accuracy']:10.4f}"
               f"  /{vb['r@1']:8.4f}{va['r@1']:10.4f}")
  j = r["judge_after_vs_before"]
  lines.append(f"aesthetic judge, after vs before: win {j['win']:.3f} tie {j['tie']:.3f} loss {j['loss']:.3f}")
  lines.append(f"report: {os.path.join(result.workdir, 'report.json')}")
  return "\n".join(lines)
