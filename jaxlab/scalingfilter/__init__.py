"""ScalingFilter (Li et al., EMNLP 2024): data quality from the perplexity ratio of a small
and a large meta-model trained on the same data, selection with the paper's baselines, and
semantic diversity (Vendi score).

Submodules: score (meta-models, packed scoring of files or lists, resumable; `score_texts`
scores a list of strings in memory; `ScoreOptions` says how: context, EOS boundaries,
long-document rule, dtype), premise (the large model must have the lower held-out
perplexity; checked before scoring), select
(top-k by quality factor and the baselines: random, perplexity gate, DSIR, a quality
classifier), diversity (Vendi through the dual Gram matrix, the bundled MiniLM embedder),
validity (graded corruptions of clean text and ROC-AUC with bootstrap intervals: does a
quality score rank clean above corrupted?).
The datatrove steps (DocumentReader, ScoreDocuments, QualityHistogram, QualityFilter; module
datatrove_stage, needs the `datatrove` extra) are exported here too, imported on first use.
`python -m jaxlab.scalingfilter` is the command line; jaxlab/trainers/scalingfilter.py the
whole pipeline as one config.
"""
from jaxlab.scalingfilter.diversity import grouped_vendi, vendi_score
from jaxlab.scalingfilter.score import (MetaModel, ScoreOptions, TextScores, check_pair, load_meta_model,
                                        read_documents, score_documents, score_file, score_sharded, score_texts)
from jaxlab.scalingfilter.select import (METHODS, classifier_select, dsir, dsir_log_weights, perplexity_gate,
                                         random_select,
                                         select_file, select_scores, top_k)

__all__ = ["METHODS", "MetaModel", "ScoreOptions", "check_pair", "classifier_select", "dsir", "dsir_log_weights",
           "grouped_vendi", "load_meta_model",
           "perplexity_gate", "random_select", "read_documents", "score_documents", "score_file", "score_sharded",
           "score_texts", "TextScores", "select_file", "select_scores", "top_k", "vendi_score"]

# The datatrove steps: imported on first access, so the package works without the extra.
_DATATROVE = ("DocumentReader", "QualityFilter", "QualityHistogram", "ScoreDocuments", "read_histograms", "top_k_bin")
__all__ += list(_DATATROVE)


def __getattr__(name):
  if name in _DATATROVE:
    try:
      from jaxlab.scalingfilter import datatrove_stage
    except ImportError as e:
      raise ImportError(f"jaxlab.scalingfilter.{name} needs datatrove: pip install 'jaxlab[datatrove]' ({e})") from e
    return getattr(datatrove_stage, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
