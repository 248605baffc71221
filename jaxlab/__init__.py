"""jaxlab: a small sharding-aware JAX/Flax training platform and the methods built on it.

Methods:
  fp8            FP8 mixed-precision training (FP8-LM scaling, DeepSeek-V3 block scaling)
  learngene      TLEG learngene: linear expansion of a gene into descendant models
  scalingfilter  ScalingFilter: perplexity-difference data filtering and semantic diversity
  align          aesthetic alignment of retrieval models (rephrasing, ranked DPO, evaluation)
Platform:
  config         config files (`get_config`) and command-line overrides, checked up front
  sharding       meshes, partition rules and sharded state creation
  checkpoint     Orbax checkpoints of the train state and the data iterator
  distributed    multi-process runs set up from the environment
  targets        compile a step for a GPU this host does not have; its memory traffic
  hlo_text       HLO module text parsed into computations and instructions
  data           built-in corpora, text/image datasets, grain pipelines and tokenizers
  models         Flax models: GPT, BERT, ViT, two-tower retrievers, Hugging Face interop
  train          the train state and the generic train/eval loop
Trainers:
  trainers       one module per experiment kind, each with train_and_evaluate(config, workdir)
Entry points:
  main/aot/export  `python -m jaxlab.main` trains, `.aot` compiles only, `.export` writes GPT-2

`import jaxlab` imports none of these (nor JAX); import the subpackage you need.
"""

from importlib import metadata as _metadata

try:
  __version__ = _metadata.version("jaxlab")
except _metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
  __version__ = "0.2.0+unknown"
