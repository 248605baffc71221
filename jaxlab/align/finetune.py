"""The fine-tuning objective of a two-tower retriever on preference records: ranked DPO
against a frozen reference (or SFT on the top preferred image), plus a weighted
contrastive term that keeps retrieval quality."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxlab.align import dpo as dpo_lib
from jaxlab.models import two_tower as tt


def same_tokens(tokens) -> jax.Array:
  """[n, n] True where two token rows are identical (same caption: a soft positive)."""
  return jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)


def finetune_loss(model: tt.TwoTower, d, pretrain, variables, batch) -> tuple[jax.Array, dict]:
  """The fine-tuning loss on a batch of B queries with N candidates each and R random pairs:
  ranked DPO (d.objective="dpo") or SFT on the top preferred image ("sft"), plus
  d.contrastive_weight times pretrain.loss (softmax or sigmoid) over the image-text pairs:
  the candidates with their own captions when d.contrastive_candidates (hard negatives:
  the retriever's near-misses for the query, the distinctions recall@1 rests on), then the
  R random pairs. One forward over all images and all texts. `variables` are the model's
  ({"params": ...} and any other collection, e.g. FP8 scale state); `d` and `pretrain` are
  the config's dpo and pretrain groups."""
  flat = lambda x: x.reshape((-1,) + x.shape[2:])
  b, n = batch["cand_images"].shape[:2]
  use_cands = bool(d.contrastive_candidates)
  pair_tokens = ([flat(batch["cand_tokens"])] if use_cands else []) + [flat(batch["tokens"])]
  pair_mask = ([flat(batch["cand_mask"])] if use_cands else []) + [flat(batch["mask"])]
  img, txt, scale, bias = model.apply(
      variables, jnp.concatenate([flat(batch["cand_images"]), flat(batch["images"])]),
      jnp.concatenate([batch["q_tokens"]] + pair_tokens), jnp.concatenate([batch["q_mask"]] + pair_mask))
  cands, q = img[:b * n].reshape(b, n, -1), txt[:b]
  logp = dpo_lib.candidate_log_probs(q, cands, scale)
  metrics = {}
  if d.objective == "dpo":
    value, acc = dpo_lib.dpo_loss(logp, batch["ref_logp"], batch["pairs"], d.beta, d.label_smoothing)
    metrics["pair_accuracy"] = acc
  else:  # sft: the top preferred image (grid cell 0) is the query's positive
    value = tt.softmax_contrastive_loss(cands[:, 0], q, scale, positives=same_tokens(batch["q_tokens"]))
  pair_img = img if use_cands else img[b * n:]
  contrastive = tt.contrastive_loss(pretrain.loss, pair_img, txt[b:], scale, bias, pretrain.label_smoothing,
                                    same_tokens(jnp.concatenate(pair_tokens)))
  metrics.update(preference_loss=value, contrastive=contrastive)
  return value + d.contrastive_weight * contrastive, metrics
