"""Aesthetic alignment of a two-tower retrieval model on the testbed (jaxlab/align/testbed.py).

The library (testbed, encoders and evaluation, preference mining, the fine-tuning loss)
lives in jaxlab.align; this module wires it to the shared loop.

Stages (each under the workdir; the training stages go through the shared loop, so they
checkpoint, resume and skip when finished):
  pretrain/     contrastive pretraining of the two-tower model on captioned images
  aesthetic/    the aesthetic MLP on the pretrained model's image embeddings, MSE to ratings
  preferences   plain queries about the fine-tuning half of the contents, worded by the
                training templates -> rephrased (rephrase.backend / style, cached in
                rephrase_cache/) -> top-K from a random gallery per round -> re-rank by
                relevance (preferences.relevance: caption similarity to the rephrased query
                under the frozen sentence encoder, or the retriever's score) and aesthetics
                (the MLP) -> u x v grid -> pairs on the ORIGINAL query; stored as a tfds
                dataset in preferences/
  finetune/     ranked DPO against the frozen pretrained model (+ lambda * contrastive on
                the candidates with their own captions and/or random pairs; the
                reference's log-probabilities over each record's fixed candidates are
                constant, so they are computed once with the preferences and stored), or
                dpo.objective=sft: contrastive fine-tuning on each query's top preferred image
  report.json   per split (test reported; validation for choosing settings) and per system
                (SYSTEMS: pretrained, pretrained + rephrase at inference, the cascade that
                re-ranks the pretrained top-K by the aesthetic model, the oracle re-rank by
                the true aesthetic, fine-tuned, fine-tuned + rephrase, and the fine-tuned
                weights averaged with the pretrained ones, WiSE-FT): HPIR accuracy (plain,
                confidence-weighted) on both aspects (aesthetic, relevance) for the held-out
                and the fine-tuning contents, always with query wordings never trained on;
                the true aesthetic and relevance of the held-out queries' top results; the
                order-consistent judge against the pretrained model (scores from the ground
                truth with its own noise, never the aesthetic model); recall@1/5

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
from jaxlab.align import aesthetic as aesthetic_lib, dpo as dpo_lib
from jaxlab.align import finetune as finetune_lib, hpir, judge as judge_lib, mining, preferences as pref_lib
from jaxlab.align import rephrase as rephrase_lib, retrieval, testbed, texts as texts_lib
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
  c.data = dict(data_dir="", source="rendered", num_train=4000, num_val=3000, num_test=1000, image_size=16,
                desc_prob=0.5, rating_noise=0.08, hpir_queries=400, hpir_set_size=4, hpir_annotators=5,
                hpir_noise=0.1)
  # text_tower: "minilm" (all-MiniLM-L6-v2 locked, as in LiT: free text, a trainable projection)
  # or "words" (a small causal tower over the testbed's closed word vocabulary; max_len, text_layers)
  c.model = dict(patch_size=4, image_layers=2, text_tower="minilm", text_layers=2, d_model=64, num_heads=2,
                 embed_dim=64, max_len=24)
  # a retriever that tells the contents apart needs ~1,500 steps of 128 pairs; label smoothing
  # only slows it (same-content captions are already soft negatives)
  c.pretrain = dict(loss="softmax", label_smoothing=0.0, workdir="", **_train(128, 1500, 2e-3))
  # the LAION-style linear head underfits these small embeddings (relu and 1,500 steps: test r 0.56 -> 0.77)
  c.aesthetic = dict(hidden=(64, 16), dropout=(0.1, 0.0), activation="relu", workdir="", **_train(128, 1500, 3e-3))
  c.rephrase = dict(backend="offline", style="details", k=3, model="", base_url_env="OPENAI_BASE_URL",
                    api_key_env="OPENAI_API_KEY", timeout=30.0, retries=3, max_concurrency=4, gpt_workdir="")
  # order: which grid pairs are preferences (preferences.grid_pairs: the paper's partial order, or
  # relevance_first, which also ranks a more relevant row's cells over a less relevant row's)
  c.preferences = dict(rounds=30, gallery=1000, top_k=40, u=3, v=3, stride=2, relevance="caption", order="partial")
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
  # cascade_k: the pretrained top-K the cascade and oracle baselines re-rank; judge_noise: the
  # std of the independent judge's noise on the true aesthetic
  # weight_average: WiSE-FT's alpha for the "fine-tuned, weight-averaged" system (pretrained +
  # alpha * (fine-tuned - pretrained)); 0.8 is the largest alpha in 0.5, 0.6, ..., 1.0 whose
  # mean validation relevance change over seeds 0-2 is within -0.5 HPIR points (README)
  c.eval = dict(top_k=4, batch_size=256, recall_gallery=1000, cascade_k=40, judge_noise=0.05, weight_average=0.8)
  # FP8-LM levels for the DPO fine-tuning stage (fp8.level=O2, ...). The towers' first and last
  # GEMMs (the patch embedding, the two projections into the shared space) stay BF16, as
  # Transformer Engine and DeepSeek-V3 keep a model's ends: with them in FP8 the DPO model is
  # 1.1% worse than BF16's, with them in BF16 0.19% (bench/results/fp8_dpo_width.txt, 5 seeds)
  c.fp8 = dict(fp8.default_config(), high_precision=("patch", "image_proj", "text_proj"))
  return c


# ---------------------------------------------------------------------------- config

def model_config(m: ml_collections.ConfigDict, image_size: int, encoder, loss: str = "softmax") -> tt.TwoTowerConfig:
  """The two-tower model of a config's model group for a text encoder (align.texts: the word
  tower's vocabulary, or the frozen encoder's width); SigLIP's initial temperature and bias for
  the sigmoid loss."""
  vision = ViTConfig(num_classes=0, image_size=image_size, patch_size=m.patch_size, channels=3,
                     num_layers=m.image_layers, d_model=m.d_model, num_heads=m.num_heads)
  if encoder.kind == "words":
    text = tt.TextConfig(vocab_size=encoder.vocab_size, max_len=m.max_len, num_layers=m.text_layers,
                         d_model=m.d_model, num_heads=m.num_heads)
  else:
    text = tt.TextConfig(vocab_size=0, frozen_dim=encoder.dim)
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
  req(d.source in testbed.SOURCES, "data.source", f"{d.source!r} is not one of {testbed.SOURCES}")
  req(m.text_tower in texts_lib.TOWERS, "model.text_tower", f"{m.text_tower!r} is not one of {texts_lib.TOWERS}")
  req(p.relevance in mining.RELEVANCE, "preferences.relevance", f"{p.relevance!r} is not one of {mining.RELEVANCE}")
  req(cfg.eval.cascade_k >= cfg.eval.top_k, "eval.cascade_k", f"must be >= eval.top_k={cfg.eval.top_k}")
  req(cfg.eval.judge_noise >= 0, "eval.judge_noise", "must be >= 0")
  req(0.0 <= cfg.eval.weight_average <= 1.0, "eval.weight_average", "must be in [0, 1]")
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
  req(p.order in pref_lib.ORDERS, "preferences.order", f"{p.order!r} is not one of {pref_lib.ORDERS}")
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


def data_dir(cfg, workdir: str) -> str:
  """Where the testbed (and the frozen text features' cache) lives: data.data_dir or workdir/data."""
  return cfg.data.data_dir or os.path.join(workdir, "data")


def _minilm_cache(cache_dir: str | None) -> str | None:
  return os.path.join(cache_dir, "text_features_minilm.npz") if cache_dir else None


def _encoder_and_model(cfg, cache_dir: str | None = None):
  enc = texts_lib.encoder_for(cfg.model.text_tower, cfg.model.max_len, _minilm_cache(cache_dir))
  return enc, model_config(cfg.model, cfg.data.image_size, enc, cfg.pretrain.loss)


# ---------------------------------------------------------------------------- tasks

def _text_zeros(enc):
  tokens, mask = enc.spec(1)
  return jnp.zeros(tokens.shape, tokens.dtype), jnp.ones(mask.shape, mask.dtype)


def pretrain_task(cfg, mcfg, enc, train: dict | None = None) -> Task:
  """Contrastive pretraining on captioned images (shapes only without `train`); `enc` is the
  text encoder (align.texts)."""
  pc, s = cfg.pretrain, mcfg.vision.image_size

  def init(model, rng):
    return model.init(rng, jnp.zeros((1, s, s, 3)), *_text_zeros(enc))

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
  tokens, mask = enc.spec(b)
  spec = {"images": jax.ShapeDtypeStruct((b, s, s, 3), jnp.float32), "tokens": tokens, "mask": mask}
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


def finetune_task(cfg, mcfg, enc, train: dict | None = None, prefs=None, init_params=None) -> Task:
  """finetune_loss over the stored preference records, from the pretrained parameters
  (shapes only, from the model's own init, without `train`)."""
  d, s = cfg.dpo, mcfg.vision.image_size
  b, n_pair = d.train.batch_size, d.contrastive_batch // d.train.batch_size
  n = cfg.preferences.u * cfg.preferences.v
  n_pairs = len(pref_lib.grid_pairs(cfg.preferences.u, cfg.preferences.v, cfg.preferences.order))

  def init(model, rng):
    # The model's own init gives the shapes and any other collection (e.g. fp8.level's scale
    # state); the pretrained parameters, when given, replace its params.
    variables = dict(model.init(rng, jnp.zeros((1, s, s, 3)), *_text_zeros(enc)))
    if init_params is not None:
      variables["params"] = jax.tree.map(jnp.asarray, init_params)
    return variables

  def loss(model, variables, batch, rng):
    del rng
    value, metrics = finetune_lib.finetune_loss(model, d, cfg.pretrain, variables, batch)
    return value, (metrics, {})

  f32, i32 = jnp.float32, jnp.int32
  sd = jax.ShapeDtypeStruct
  (qt, qm), (ct, cm), (pt, pm) = enc.spec(b), enc.spec(b, n), enc.spec(b, n_pair)
  spec = {"q_tokens": qt, "q_mask": qm, "cand_images": sd((b, n, s, s, 3), f32),
          "cand_tokens": ct, "cand_mask": cm, "ref_logp": sd((b, n), f32),
          "pairs": sd((b, n_pairs, 2), i32), "images": sd((b, n_pair, s, s, 3), f32),
          "tokens": pt, "mask": pm}
  # FP8-LM's levels (fp8.level) apply to this stage, as the paper applies them to fine-tuning
  task = methods.apply(methods.stage_view(cfg, "dpo"),
                       _task(cfg, "finetune", tt.TwoTower(mcfg), init, loss, None, ("queries", b)))
  if train is None:
    return task, spec
  q_tokens, q_mask = enc.encode([testbed.as_text(prefs[i]["query"]) for i in range(len(prefs))])
  candidates = np.stack([prefs[i]["candidates"] for i in range(len(prefs))])
  pairs, images = np.asarray(prefs[0]["pairs"]), train["images"]
  # DPO's reference is the initial policy: the same forward as the policy's (a method's
  # transformed model, e.g. FP8 GEMMs) on the pretrained parameters, so the preference loss
  # starts at log 2 at every level, up to per-tensor FP8 scales depending on the whole batch
  # (the plain model's log-probs, which mining stored before, were 7x further off at O2)
  ref_logp = reference_log_probs(task, jax.random.key(cfg.seed), q_tokens, q_mask, images[candidates],
                                 d.train.batch_size)

  def example(i, rec):
    j = np.random.default_rng([cfg.seed, i]).integers(0, len(images), n_pair)  # contrastive pairs, by index
    c = candidates[rec]
    return {"q_tokens": q_tokens[rec], "q_mask": q_mask[rec], "cand_images": images[c],
            "cand_tokens": train["tokens"][c], "cand_mask": train["mask"][c], "ref_logp": ref_logp[rec],
            "pairs": pairs, "images": images[j], "tokens": train["tokens"][j], "mask": train["mask"][j]}

  ds = arrays.process_slice(grain.MapDataset.range(len(prefs)))
  data = arrays.local_batches(ds.shuffle(seed=cfg.seed + 2).repeat(None).map_with_index(example), b)
  return task.replace(train_data=data), spec


def plain_finetune_loss(cfg, mcfg, enc, train, prefs, init_params, params) -> float:
  """The fine-tuning loss of `params` over one epoch of the preference records (the first
  len(records) / batch batches of the stage's own data order), with the plain FP32 model
  and its own reference at `init_params`. The stage's training loss goes through its own
  forward (e.g. FP8 GEMMs at fp8.level=O2), so levels compared by it differ in the forward
  as well as in the model; this one forward compares the fine-tuned models alone."""
  plain = ml_collections.ConfigDict(cfg.to_dict())
  plain.fp8.level = "fp32"
  task, _ = finetune_task(plain, mcfg, enc, train, prefs, init_params)
  d = cfg.dpo
  loss = jax.jit(lambda p, batch: finetune_lib.finetune_loss(task.model, d, cfg.pretrain, {"params": p}, batch)[0])
  batches = iter(task.train_data)
  n = max(1, len(prefs) // d.train.batch_size)
  return float(np.mean([loss(params, next(batches)) for _ in range(n)]))


def reference_log_probs(task: Task, rng, q_tokens, q_mask, cand_images, batch_size: int) -> np.ndarray:
  """[R, N] log pi_ref of each record's candidates: the task's model with its initial
  variables (task.init), in batches of records."""
  variables = task.init(task.model, rng)

  @jax.jit
  def logp(q_tok, q_msk, imgs):
    r, n = imgs.shape[:2]
    img, txt, scale, _ = task.model.apply(variables, imgs.reshape((r * n,) + imgs.shape[2:]), q_tok, q_msk)
    return dpo_lib.candidate_log_probs(txt, img.reshape(r, n, -1), scale)

  return np.concatenate([np.asarray(logp(q_tokens[i:i + batch_size], q_mask[i:i + batch_size],
                                         cand_images[i:i + batch_size]))
                         for i in range(0, len(q_tokens), batch_size)])


def _task(cfg, stage, model, init, loss, data, units) -> Task:
  o = cfg[GROUPS[stage]]
  return Task(model=model, init=init, loss=loss, optimizer=optim.adamw(o.optim, o.train.steps),
              schedule=optim.schedule(o.optim, o.train.steps), train_data=data, units_per_batch=units)


def stages(cfg: ml_collections.ConfigDict) -> list[loop.Stage]:
  """The three training stages from shapes alone: pretrain, aesthetic, finetune."""
  validate(cfg)
  enc, mcfg = _encoder_and_model(cfg)
  out = []
  for name, build in (("pretrain", lambda: pretrain_task(cfg, mcfg, enc)),
                      ("aesthetic", lambda: aesthetic_task(cfg, mcfg)),
                      ("finetune", lambda: finetune_task(cfg, mcfg, enc))):
    task, spec = build()
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


SYSTEMS = ("pretrained", "pretrained + rephrase", "cascade (aesthetic model)", "oracle (true aesthetic)",
           "fine-tuned", "fine-tuned + rephrase", "fine-tuned, weight-averaged")
# the systems recall@k is measured for
EMBEDDING_SYSTEMS = {"pretrained": "pre", "fine-tuned": "fine", "fine-tuned, weight-averaged": "averaged"}


def weight_average(pre, fine, alpha: float):
  """WiSE-FT (Wortsman et al. 2022): pre + alpha * (fine - pre), leaf by leaf. alpha 1 is the
  fine-tuned model, 0 the pretrained one; between them a trade of the new behaviour against
  what fine-tuning forgets, with no training."""
  return jax.tree.map(lambda p, f: (1.0 - alpha) * np.asarray(p, np.float32) + alpha * np.asarray(f, np.float32),
                      pre, fine)


def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str) -> Result:
  """Pretrain, fit the aesthetic model, mine preferences (fine-tuning contents only),
  fine-tune, and report every system on the test and validation splits (workdir/report.json).
  Each stage resumes or skips when finished; files are written by process 0 (the others
  wait and reuse them)."""
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
        data_dir(cfg, workdir), num_train=d.num_train, num_val=d.num_val, num_test=d.num_test,
        image_size=d.image_size, seed=cfg.seed, desc_prob=d.desc_prob, rating_noise=d.rating_noise,
        hpir_queries=d.hpir_queries, hpir_set_size=d.hpir_set_size, hpir_annotators=d.hpir_annotators,
        hpir_noise=d.hpir_noise, source=d.source)
    enc, mcfg = _encoder_and_model(cfg, data_dir(cfg, workdir))
    splits = {name: testbed.load_split(src, enc) for name, src in
              (("train", tb.train), ("validation", tb.validation), ("test", tb.test))}
  train = splits["train"]
  # the caption-relevance signal is the frozen sentence encoder (the text tower itself when it is MiniLM)
  cap_enc = None
  if cfg.preferences.relevance == "caption":
    cap_enc = enc if enc.kind == "minilm" else texts_lib.FrozenEncoder(_minilm_cache(data_dir(cfg, workdir)))

  def stage(name, task_fn):
    src = cfg[name].workdir if name in ("pretrain", "aesthetic") else ""
    if src:
      if not checkpoint.finished(src, cfg[name].train.steps):
        raise config_lib.ConfigError(f"{name}.workdir: {src!r} is not a finished {name} run of "
                                     f"{cfg[name].train.steps} steps")
      return {"finished": True, "params": checkpoint.restore_params(src)[1]}
    return run_stage(cfg, name, os.path.join(workdir, name), task_fn, mesh)

  pre = stage("pretrain", lambda: pretrain_task(cfg, mcfg, enc, train))
  if not pre["finished"]:
    return Result(workdir, False, {"stopped": "pretrain"})
  bs = cfg.eval.batch_size
  train_emb = retrieval.embed_images(mcfg, pre["params"], train["images"], bs)
  aes = stage("aesthetic", lambda: aesthetic_task(cfg, mcfg, train, train_emb))
  if not aes["finished"]:
    return Result(workdir, False, {"stopped": "aesthetic"})
  mlp = aesthetic_model(cfg)
  tune_ids, held_ids = testbed.content_split(tb.source)
  with distributed.main_process_first("align: preferences"):
    prefs, pref_stats = mining.mine_preferences(
        workdir, mcfg, pre["params"], mlp, aes["params"], train, train_emb, enc, rephrase=cfg.rephrase,
        preferences=cfg.preferences, seed=cfg.seed, batch_size=bs, caption_encoder=cap_enc,
        query_contents=testbed.queries(tb.source, tune_ids, testbed.TRAIN_TEMPLATES))
  fine = stage("finetune", lambda: finetune_task(cfg, mcfg, enc, train, prefs, pre["params"]))
  if not fine["finished"]:
    return Result(workdir, False, {"stopped": "finetune"})
  fine["params"] = fp8.formats.plain(fine["params"])  # evaluated as stored, in FP32 (FP8 levels store FP16/FP8)
  plain_loss = plain_finetune_loss(cfg, mcfg, enc, train, prefs, pre["params"], fine["params"])

  labels = {key: hpir.load_hpir(path) for key, path in tb.hpir.items()}
  ctx = dict(cfg=cfg, workdir=workdir, mcfg=mcfg, enc=enc, source=tb.source, held_ids=held_ids,
             params={"pre": pre["params"], "fine": fine["params"],
                     "averaged": weight_average(pre["params"], fine["params"], cfg.eval.weight_average)},
             mlp=mlp, mlp_params=aes["params"])
  report, corr = {}, {}
  for i, split in enumerate(("test", "validation")):
    mine = {k.split("/", 1)[1]: v for k, v in labels.items() if k.startswith(split + "/")}
    report[split], corr[split] = evaluate_systems(ctx, splits[split], mine, seed=cfg.seed + i)
  report["preferences"] = pref_stats
  report["finetune_loss_plain"] = plain_loss
  report["weight_average"] = cfg.eval.weight_average
  report["aesthetic_model_corr"] = corr["test"]
  report["contents"] = {"finetune": [testbed.contents(tb.source)[c] for c in tune_ids],
                        "heldout": [testbed.contents(tb.source)[c] for c in held_ids]}
  if is_main:
    with open(os.path.join(workdir, "report.json"), "w") as f:
      json.dump(report, f, indent=2)
  return Result(workdir, True, report)


def evaluate_systems(ctx: dict, split: dict, labels: dict, seed: int) -> tuple[dict, float]:
  """Every system of SYSTEMS on one split: ({system: metrics}, the aesthetic model's Pearson r with
  the true aesthetic on the split's images). Queries are every content worded by
  the held-out templates; HPIR per label set ("heldout/aesthetic", ...), the top-k stats and the
  judge (against the pretrained model) over the held-out contents' queries, recall@1/5 for the
  embedding models."""
  cfg, mcfg, enc, params, e = ctx["cfg"], ctx["mcfg"], ctx["enc"], ctx["params"], ctx["cfg"].eval
  names = testbed.contents(ctx["source"])
  qc = testbed.queries(ctx["source"], range(len(names)), testbed.HELDOUT_TEMPLATES)
  q_list = list(qc)
  q_index, q_content = {q: i for i, q in enumerate(q_list)}, np.array([qc[q] for q in q_list])
  backend = rephrase_lib.backend_from_config(cfg.rephrase)
  reph = q_list if backend is None else rephrase_lib.rephrase(
      q_list, cfg.rephrase.style, backend, os.path.join(ctx["workdir"], "rephrase_cache"), cfg.rephrase.k)
  img = {k: retrieval.embed_images(mcfg, p, split["images"], e.batch_size) for k, p in params.items()}
  sims = lambda k, texts: retrieval.embed_texts(mcfg, params[k], enc, texts, e.batch_size) @ img[k].T
  aes_model = np.asarray(aesthetic_lib.score(ctx["mlp"], ctx["mlp_params"], jnp.asarray(img["pre"])))
  plain = sims("pre", q_list)
  scores = {"pretrained": plain, "pretrained + rephrase": sims("pre", reph),
            "cascade (aesthetic model)": retrieval.cascade_scores(plain, aes_model, e.cascade_k),
            "oracle (true aesthetic)": retrieval.cascade_scores(plain, split["aesthetic"], e.cascade_k),
            "fine-tuned": sims("fine", q_list), "fine-tuned + rephrase": sims("fine", reph),
            "fine-tuned, weight-averaged": sims("averaged", q_list)}
  # the judge: the ground truth with its own noise (relevance first, then aesthetics)
  noisy = split["aesthetic"] + np.random.default_rng([seed, 7]).normal(0, e.judge_noise, len(split["aesthetic"]))
  judge = judge_lib.score_judge(lambda q, idx: 2.0 * testbed.relevance_grade(
      ctx["source"], qc[q], split["content_id"][np.asarray(idx)]) + noisy[np.asarray(idx)])
  held_rows = np.flatnonzero(np.isin(q_content, ctx["held_ids"]))
  held_q = [q_list[r] for r in held_rows]
  out, tops = {}, {}
  for name in SYSTEMS:
    metrics, _ = retrieval.evaluate_scores(scores[name], q_index, split, labels, top_k=e.top_k,
                                           query_content=q_content, source=ctx["source"])
    held, tops[name] = retrieval.evaluate_scores(scores[name][held_rows], {}, split, {}, top_k=e.top_k,
                                                 query_content=q_content[held_rows], source=ctx["source"])
    metrics.update({f"heldout_{k}": v for k, v in held.items()})
    if name in EMBEDDING_SYSTEMS:
      k = EMBEDDING_SYSTEMS[name]
      metrics.update(retrieval.caption_recall(mcfg, params[k], split, img[k], batch_size=e.batch_size,
                                              recall_gallery=e.recall_gallery))
    out[name] = metrics
  for name in SYSTEMS:
    out[name]["judge_vs_pretrained"] = judge_lib.compare(judge, held_q, list(tops[name]), list(tops["pretrained"]))
  return out, float(np.corrcoef(aes_model, split["aesthetic"])[0, 1])


def report(result: Result) -> str:
  """The table `jaxlab.main` prints: every system on the test split's held-out contents."""
  r = result.report
  if not result.finished:
    return f"stopped during {r['stopped']} (rerun to resume); workdir {result.workdir}"
  lines = ["test split, held-out contents, query wordings never trained on:",
           f"{'system':28s}{'aes HPIR':>9s}{'rel HPIR':>9s}{'top aes':>9s}{'top rel':>9s}{'R@1':>7s}"
           f"{'judge W/T/L':>16s}"]
  for name in SYSTEMS:
    m = r["test"][name]
    j = m["judge_vs_pretrained"]
    r1 = f"{m['r@1']:7.3f}" if "r@1" in m else f"{'':7s}"
    jt = f"{j['win']:.2f}/{j['tie']:.2f}/{j['loss']:.2f}"
    lines.append(f"{name:28s}{m['heldout/aesthetic']['accuracy']:9.3f}{m['heldout/relevance']['accuracy']:9.3f}"
                 f"{m['heldout_top_true_aesthetic']:9.3f}{m['heldout_top_relevance']:9.3f}{r1}{jt:>16s}")
  lines.append(f"report: {os.path.join(result.workdir, 'report.json')}")
  return "\n".join(lines)
