"""jaxlab's own Flax models, all built on one transformer block (block.py: attention + MLP,
layers stacked with nn.scan, an injectable dot_general): GPT, ViT, a BERT sentence
embedder and a two-tower (CLIP-style) retriever, with safetensors import/export of the
Hugging Face formats (hf.py; bert.py and two_tower.py for their own)."""
from jaxlab.models.bert import Bert, BertConfig, Embedder, load_bert
from jaxlab.models.block import BlockConfig, Stack
from jaxlab.models.gpt import GPT, GPTConfig
from jaxlab.models.hf import load_gpt2, save_gpt2
from jaxlab.models.two_tower import TextConfig, TwoTower, TwoTowerConfig, load_clip
from jaxlab.models.vit import ViT, ViTConfig

__all__ = ["Bert", "BertConfig", "BlockConfig", "Embedder", "GPT", "GPTConfig", "Stack", "TextConfig", "TwoTower",
           "TwoTowerConfig", "ViT", "ViTConfig", "load_bert", "load_clip", "load_gpt2", "save_gpt2"]
