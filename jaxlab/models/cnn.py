"""A small convolutional classifier: the strong, cheap teacher TLEG distils from (the paper
uses pretrained CNNs such as RegNet). Two 3x3 conv + ReLU + 2x2 max-pool stages, then one
hidden dense layer and a linear head; on 8,000 MNIST images it reaches about 99%."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class CNNConfig:
  """features: channels of each conv stage; hidden: width of the dense layer before the head."""
  num_classes: int
  features: tuple[int, ...] = (16, 32)
  hidden: int = 64


class CNN(nn.Module):
  """Images [B, H, W, C] -> logits [B, num_classes] float32. `deterministic` is accepted
  (and unused) so the classify trainer calls it as it calls a ViT."""
  cfg: CNNConfig

  @nn.compact
  def __call__(self, images, deterministic: bool = True):
    del deterministic  # no dropout
    x = images
    for i, width in enumerate(self.cfg.features):
      x = nn.relu(nn.Conv(width, (3, 3), padding="SAME", name=f"conv{i}")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = nn.relu(nn.Dense(self.cfg.hidden, name="hidden")(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.cfg.num_classes, name="head")(x).astype(jnp.float32)
