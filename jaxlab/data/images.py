"""Image classification data: a tfds builder (array_record) over local digit images, and
a grain pipeline to batches.

Sources (BuilderConfig names):
  mnist   the MNIST test set in IDX format (../shared/data/images/mnist, 10,000 28x28
          digits). Split by position: the first 8,000 images are `train`, the last
          2,000 `test` (the file is in the original order; classes are balanced in both).
  digits  scikit-learn's `load_digits()` (1,797 8x8 digits, values 0..16 rescaled to
          0..255), the embedded default for a fresh machine. First 1,437 (80%) `train`,
          last 360 `test`.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import os

import grain
import numpy as np
import tensorflow_datasets as tfds

MNIST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
MNIST_TRAIN = 8000
DIGITS_TRAIN = 1437
IMAGE_SHAPES = {"mnist": (28, 28, 1), "digits": (8, 8, 1)}


def read_idx(path: str) -> np.ndarray:
  """An IDX file (optionally gzipped): magic 0x0000 <dtype 0x08=uint8> <ndim>, then big-endian
  uint32 sizes, then the data."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
    raise ValueError(f"{path}: not an unsigned-byte IDX file (header {raw[:4].hex()})")
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} values) but holds {data.size}")
  return data.reshape(shape)


def load_arrays(name: str, source_dir: str = "") -> tuple[np.ndarray, np.ndarray, int]:
  """(images uint8 [N, H, W, 1], labels int64 [N], number of training examples)."""
  if name == "mnist":
    paths = [os.path.join(source_dir, f) for f in MNIST_FILES]
    for path in paths:
      if not os.path.exists(path):
        raise FileNotFoundError(f"MNIST file {path} not found (data.source_dir={source_dir!r})")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if len(images) != len(labels):
      raise ValueError(f"MNIST: {len(images)} images but {len(labels)} labels")
    return images[..., None], labels.astype(np.int64), MNIST_TRAIN
  if name == "digits":
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return images[..., None], digits.target.astype(np.int64), DIGITS_TRAIN
  raise ValueError(f"unknown image dataset {name!r}; use 'mnist' or 'digits'")


@dataclasses.dataclass
class DigitsConfig(tfds.core.BuilderConfig):
  """Builder config: `name` is the source (`mnist` or `digits`); `source_dir` holds the MNIST
  IDX files (unused for `digits`)."""

  source_dir: str = ""


class LocalDigits(tfds.core.GeneratorBasedBuilder):
  """Digit images from local files (`mnist`) or scikit-learn (`digits`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    # Known per source: _info runs on every open, and must not read the whole dataset.
    return self.dataset_info_from_configs(
        description="Digit classification from local data.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=IMAGE_SHAPES[self.builder_config.name], dtype=np.uint8),
            "label": tfds.features.ClassLabel(num_classes=10),
        }),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # local data only
    images, labels, n_train = load_arrays(self.builder_config.name, self.builder_config.source_dir)
    if images.shape[1:] != IMAGE_SHAPES[self.builder_config.name]:
      raise ValueError(f"{self.builder_config.name}: images are {images.shape[1:]}, "
                       f"expected {IMAGE_SHAPES[self.builder_config.name]}")
    return {"train": self._generate_examples(images[:n_train], labels[:n_train], 0),
            "test": self._generate_examples(images[n_train:], labels[n_train:], n_train)}

  def _generate_examples(self, images, labels, offset):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield offset + i, {"image": image, "label": int(label)}


@dataclasses.dataclass(frozen=True)
class ImageData:
  """A prepared image dataset: `train`/`test` random-access tfds data sources of
  {"image" uint8 [H, W, C], "label"}, the (H, W, C) image shape and the number of classes."""

  train: object
  test: object
  image_shape: tuple[int, int, int]
  num_classes: int


def prepare_images(name: str, *, data_dir: str, source_dir: str = "") -> ImageData:
  """Prepare (once) and open the array_record dataset."""
  if name not in IMAGE_SHAPES:
    raise ValueError(f"unknown image dataset {name!r}; use one of {sorted(IMAGE_SHAPES)}")
  tfds.disable_progress_bar()
  config = DigitsConfig(name=name, source_dir=os.path.abspath(source_dir) if source_dir else "")
  builder = LocalDigits(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return ImageData(train=builder.as_data_source(split="train"), test=builder.as_data_source(split="test"),
                   image_shape=tuple(builder.info.features["image"].shape), num_classes=10)


def to_example(record) -> dict:
  """One record -> {"images" float32 [H, W, C] in [0, 1], "labels" int32, "mask" float32 1.0}.
  The mask is 1 for a real example; padding added by `image_dataset` has 0."""
  return {"images": np.asarray(record["image"], np.float32) / 255.0, "labels": np.int32(record["label"]),
          "mask": np.float32(1.0)}


def image_dataset(source, *, batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
                  process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """Batches {'images' [B,H,W,C] in [0,1], 'labels' [B], 'mask' [B]}. Training (repeated)
  batches are full; a finite pass pads its last batch with mask 0, so every example is
  evaluated exactly once."""
  ds = grain.MapDataset.source(source)[process_index::process_count]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs).map(to_example)
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=64))
  if num_epochs is None:
    return ds.batch(batch_size, drop_remainder=True)
  return ds.batch(batch_size, drop_remainder=False,
                  batch_fn=functools.partial(grain.experimental.batch_and_pad, batch_size=batch_size))
