"""Aesthetic alignment of retrieval models (Zhang et al., NeurIPS 2024): query rephrasing,
an aesthetic model, preference pairs from a relevance x aesthetics grid, ranked DPO,
HPIR-style and judge-based evaluation, on a rendered testbed with known aesthetics.

Submodules: testbed (data, content halves, HPIR labels on two aspects), photos (the real
photograph source), texts (the text towers' encodings: the frozen MiniLM, the word
vocabulary), rephrase (+ endpoint), aesthetic, preferences, mining (the preference
pipeline), dpo, finetune (the fine-tuning objective), retrieval (encoders, cascades and
evaluation), hpir, judge. Pure functions; jaxlab/trainers/align.py wires
them to the training loop. The names below are the ones a notebook needs.
"""
from jaxlab.align.aesthetic import AestheticMLP, mse_loss
from jaxlab.align.dpo import candidate_log_probs, dpo_loss, pair_margins
from jaxlab.align.finetune import finetune_loss
from jaxlab.align.hpir import HPIRRecord, evaluate_hpir, hpir_accuracy, load_hpir, recall_at_k, write_hpir
from jaxlab.align.judge import aesthetic_judge, compare, order_consistent, score_judge
from jaxlab.align.mining import mine_preferences
from jaxlab.align.preferences import build_grid, grid_pairs, write_preferences
from jaxlab.align.rephrase import (Backend, backend_from_config, expand, gpt_backend, offline_backend,
                                   openai_backend)
from jaxlab.align.retrieval import cascade_scores, embed_images, embed_texts, evaluate_scores, gallery_recall
from jaxlab.align.testbed import content_split, load_split, prepare_testbed, word_tokenizer
from jaxlab.align.texts import FrozenEncoder, WordEncoder

__all__ = ["AestheticMLP", "Backend", "FrozenEncoder", "HPIRRecord", "WordEncoder", "cascade_scores", "content_split",
           "evaluate_scores", "score_judge", "aesthetic_judge", "backend_from_config", "build_grid",
           "candidate_log_probs", "compare", "dpo_loss", "embed_images", "embed_texts", "evaluate_hpir", "expand",
           "finetune_loss", "gallery_recall", "gpt_backend", "grid_pairs", "hpir_accuracy", "load_hpir",
           "load_split", "mine_preferences", "mse_loss", "offline_backend", "openai_backend", "order_consistent",
           "pair_margins", "prepare_testbed", "recall_at_k", "word_tokenizer", "write_hpir", "write_preferences"]
