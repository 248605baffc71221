"""A controlled testbed for aesthetic alignment: rendered images with captions and a
known aesthetic ground truth, HPIR-format human-like labels drawn from it with noise,
and loaders for real preference folders (../shared/data/images/preference_example).

Each image shows one shape (circle, square, triangle, cross) in one colour (6 colours):
its content, e.g. "red circle" (24 contents). Three aesthetic factors, each uniform in
[0, 1], change how it is rendered, never what it shows:
  composition  1 = centred; the object moves off-centre (towards the edge) as it drops
  sharpness    1 = clean; blur and pixel noise grow as it drops
  harmony      1 = a soft neutral background; a random saturated (garish) one as it drops
The ground-truth aesthetic score is their mean. Captions are "a red circle" plus, like
web alt-text, some noisy aesthetic words: each factor is described with probability
`desc_prob`, by its good word (>= 0.6) or bad word (<= 0.4). A `rating` (ground truth
plus Gaussian noise, clipped to [0, 1]) plays the role of a human aesthetic rating.

Splits: train (pretraining, the aesthetic model, preference galleries), validation (for
choosing settings: its images enter no grid and no training) and test (reported).

HPIR labels (validation and test each have their own): for a content query, two disjoint
result sets of `set_size` images of that content; `annotators` simulated people each
prefer the set with the higher mean ground truth after adding N(0, noise) to the
difference; the choice is the majority, the confidence the majority's share.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxlab.align import hpir

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.85, 0.1), "magenta": (0.85, 0.15, 0.8), "cyan": (0.1, 0.8, 0.85)}
FACTORS = ("composition", "sharpness", "harmony")
DESCRIPTORS = {"composition": ("centred", "skewed"), "sharpness": ("sharp", "noisy"),
               "harmony": ("harmonious", "garish")}
CONTENTS = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)
NEUTRAL = np.array([0.92, 0.9, 0.85])

# Word-level vocabulary: the testbed's words, the offline rephraser's, and punctuation.
PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"
WORDS = (("a", "image", "of", "beautiful", "subject", "sharpness", "composition", "colour", "overall")
         + tuple(COLOURS) + SHAPES + tuple(w for pair in DESCRIPTORS.values() for w in pair)
         + tuple("0123456789") + tuple(",.:;{}\"'-()[]"))


def query_for(content: str) -> str:
  """The text query for a content: "red circle" -> "a red circle" (also how every caption starts)."""
  return f"a {content}"


# ---------------------------------------------------------------------------- rendering

def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> np.ndarray:
  yy, xx = np.mgrid[0:size, 0:size] + 0.5
  dx, dy = xx - cx, yy - cy
  if shape == "circle":
    return dx ** 2 + dy ** 2 <= r ** 2
  if shape == "square":
    return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8 * r
  if shape == "triangle":
    return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
  if shape == "cross":
    return ((np.abs(dx) <= 0.35 * r) & (np.abs(dy) <= r)) | ((np.abs(dy) <= 0.35 * r) & (np.abs(dx) <= r))
  raise ValueError(f"unknown shape {shape!r}")


def _box_blur(img: np.ndarray) -> np.ndarray:
  pad = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
  return sum(pad[i:i + img.shape[0], j:j + img.shape[1]] for i in range(3) for j in range(3)) / 9.0


def _saturated(rng: np.random.Generator) -> np.ndarray:
  h = rng.uniform(0, 6)
  x = 1 - abs(h % 2 - 1)
  rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h) % 6]
  return 0.15 + 0.8 * np.array(rgb)


def render(content: str, factors, size: int, rng: np.random.Generator) -> np.ndarray:
  """[size, size, 3] uint8 image of `content` ("red circle") with factors (c, s, h)."""
  colour, shape = content.split(" ")
  comp, sharp, harm = (float(f) for f in factors)
  bg = harm * NEUTRAL + (1 - harm) * _saturated(rng)
  img = np.broadcast_to(bg, (size, size, 3)).copy()
  r = 0.22 * size
  angle, dist = rng.uniform(0, 2 * np.pi), (1 - comp) * 0.42 * size
  cx, cy = size / 2 + dist * np.cos(angle), size / 2 + dist * np.sin(angle)
  img[_shape_mask(shape, size, cx, cy, r)] = COLOURS[colour]
  blur = 1 - sharp
  img = (1 - blur) * img + blur * _box_blur(_box_blur(img))
  img = img + rng.normal(0, 0.12 * blur, img.shape)
  return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


def caption_for(content: str, factors, rng: np.random.Generator, desc_prob: float) -> str:
  """A caption for an image of `content` with factors (composition, sharpness, harmony).

  The query, then, with probability desc_prob each, the word of every clearly good (>= 0.6) or bad (<= 0.4)
  factor, joined by " , " like noisy alt-text."""
  words = []
  for name, f in zip(FACTORS, factors):
    if rng.uniform() < desc_prob and (f >= 0.6 or f <= 0.4):
      words.append(DESCRIPTORS[name][0 if f >= 0.6 else 1])
  return " , ".join([query_for(content)] + words)


def generate(n: int, size: int, seed, desc_prob: float = 0.5, rating_noise: float = 0.08) -> dict:
  """n examples as arrays: image, caption, content, content_id, factors, aesthetic, rating."""
  rng = np.random.default_rng(seed)
  content_id = rng.integers(0, len(CONTENTS), n)
  factors = rng.uniform(0, 1, (n, 3))
  aesthetic = factors.mean(1)
  images = np.stack([render(CONTENTS[c], f, size, rng) for c, f in zip(content_id, factors)]) if n else \
      np.zeros((0, size, size, 3), np.uint8)
  captions = [caption_for(CONTENTS[c], f, rng, desc_prob) for c, f in zip(content_id, factors)]
  rating = np.clip(aesthetic + rng.normal(0, rating_noise, n), 0, 1)
  return {"image": images, "caption": captions, "content": [CONTENTS[c] for c in content_id],
          "content_id": content_id.astype(np.int32), "factors": factors.astype(np.float32),
          "aesthetic": aesthetic.astype(np.float32), "rating": rating.astype(np.float32)}


# ---------------------------------------------------------------------------- tfds builder

@dataclasses.dataclass
class TestbedConfig(tfds.core.BuilderConfig):
  """tfds builder config of AlignTestbed: the settings `generate` gets for each split.

    num_train, num_val, num_test  images per split
    image_size    side of the square RGB images, in pixels
    seed          base seed; each split draws from its own stream of it
    desc_prob     probability that a caption names each clearly good or bad aesthetic factor
    rating_noise  std of the Gaussian noise on the ground truth that gives `rating`
  """
  num_train: int = 4000
  num_val: int = 1000
  num_test: int = 1000
  image_size: int = 16
  seed: int = 0
  desc_prob: float = 0.5
  rating_noise: float = 0.08


def config_name(num_train, num_val, num_test, image_size, seed, desc_prob, rating_noise) -> str:
  """The builder config name for these settings, e.g. "s16_n4000_1000_1000_seed0_d0p5_r0p08".

  Distinct settings get distinct names, so each gets its own dataset on disk; "." is written as "p"."""
  return (f"s{image_size}_n{num_train}_{num_val}_{num_test}_seed{seed}_d{desc_prob:g}_r{rating_noise:g}"
          .replace(".", "p"))


class AlignTestbed(tfds.core.GeneratorBasedBuilder):
  """Rendered captioned images with a known aesthetic ground truth (see module doc)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description="Aesthetic-alignment testbed: rendered images, captions, aesthetic ground truth.",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(), "image": tfds.features.Tensor(shape=(s, s, 3), dtype=np.uint8),
            "caption": tfds.features.Text(), "content": tfds.features.Text(),
            "content_id": tfds.features.Scalar(dtype=np.int32),
            "factors": tfds.features.Tensor(shape=(3,), dtype=np.float32),
            "aesthetic": tfds.features.Scalar(dtype=np.float32), "rating": tfds.features.Scalar(dtype=np.float32),
        }),
        disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager  # generated locally
    c = self.builder_config
    # train and test keep their integer seeds; validation's [seed, 2] is a different stream
    seeds = {"train": c.seed * 2, "test": c.seed * 2 + 1, "validation": [c.seed, 2]}
    return {split: self._generate_examples(split, n, seeds[split])
            for split, n in (("train", c.num_train), ("validation", c.num_val), ("test", c.num_test))}

  def _generate_examples(self, split, n, seed):
    c = self.builder_config
    arrays = generate(n, c.image_size, seed, c.desc_prob, c.rating_noise)
    for i in range(n):
      yield i, {"id": f"{split}-{i:06d}", **{k: v[i] for k, v in arrays.items()}}


@dataclasses.dataclass(frozen=True)
class Testbed:
  """A prepared testbed, as prepare_testbed returns it.

    train, validation, test  the splits as random-access tfds data sources (features as in AlignTestbed)
    image_size     side of the images, in pixels
    hpir_path      HPIR-format labels over the test split
    hpir_val_path  HPIR-format labels over the validation split
  """
  train: object           # tfds data sources (random access)
  validation: object
  test: object
  image_size: int
  hpir_path: str          # HPIR-format labels over the test split
  hpir_val_path: str      # ... and over the validation split


def prepare_testbed(data_dir: str, *, num_train: int = 4000, num_val: int = 1000, num_test: int = 1000,
                    image_size: int = 16, seed: int = 0, desc_prob: float = 0.5, rating_noise: float = 0.08,
                    hpir_queries: int = 400, hpir_set_size: int = 4, hpir_annotators: int = 5,
                    hpir_noise: float = 0.1) -> Testbed:
  """Build (once) the array_record dataset and its HPIR labels; open them."""
  for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test),
                     ("image_size", image_size)):
    if value <= 0:
      raise ValueError(f"testbed {key} must be positive, got {value}")
  tfds.disable_progress_bar()
  name = config_name(num_train, num_val, num_test, image_size, seed, desc_prob, rating_noise)
  cfg = TestbedConfig(name=name, num_train=num_train, num_val=num_val, num_test=num_test, image_size=image_size,
                      seed=seed, desc_prob=desc_prob, rating_noise=rating_noise)
  builder = AlignTestbed(config=cfg, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  splits = {split: builder.as_data_source(split=split) for split in ("train", "validation", "test")}
  paths = {}
  for split, label_seed in (("test", seed + 1), ("validation", [seed, 3])):
    paths[split] = os.path.join(data_dir, f"hpir_{name}_{split}_q{hpir_queries}_k{hpir_set_size}_a{hpir_annotators}"
                                          f"_n{hpir_noise:g}.jsonl".replace("0.", "0p"))
    if not os.path.exists(paths[split]):
      records = hpir_labels(splits[split], hpir_queries, hpir_set_size, hpir_annotators, hpir_noise, label_seed)
      hpir.write_hpir(paths[split] + ".tmp", records)
      os.replace(paths[split] + ".tmp", paths[split])
  return Testbed(train=splits["train"], validation=splits["validation"], test=splits["test"], image_size=image_size,
                 hpir_path=paths["test"], hpir_val_path=paths["validation"])


def column(source, key: str) -> np.ndarray | list:
  """One feature of every record of a (non-empty) data source, in order.

  Text features (str / bytes) come back as a list; anything else stacked into an array [len(source), ...]."""
  values = [source[i][key] for i in range(len(source))]
  return values if isinstance(values[0], (str, bytes)) else np.stack(values)


def hpir_labels(source, n: int, set_size: int, annotators: int, noise: float, seed) -> list:
  """HPIR records over `source` (a validation or test split) drawn from its aesthetic ground truth."""
  rng = np.random.default_rng(seed)
  ids = [as_text(x) for x in column(source, "id")]
  content = np.asarray(column(source, "content_id"))
  truth = np.asarray(column(source, "aesthetic"))
  usable = [c for c in range(len(CONTENTS)) if np.sum(content == c) >= 2 * set_size]
  if not usable:
    raise ValueError(f"no content has {2 * set_size} images in the split: raise num_val / num_test or lower "
                     f"hpir_set_size")
  out = []
  for _ in range(n):
    c = usable[rng.integers(len(usable))]
    pick = rng.choice(np.flatnonzero(content == c), 2 * set_size, replace=False)
    a, b = pick[:set_size], pick[set_size:]
    diff = truth[a].mean() - truth[b].mean()
    votes = int(np.sum(diff + rng.normal(0, noise, annotators) > 0))
    choice = "a" if 2 * votes > annotators else "b"
    confidence = max(votes, annotators - votes) / annotators
    out.append(hpir.HPIRRecord(query_for(CONTENTS[c]), tuple(ids[i] for i in a), tuple(ids[i] for i in b),
                               choice, confidence))
  return out


def as_text(x) -> str:
  """A text feature as str: bytes (as tfds returns Text features) decoded as UTF-8, anything else via str()."""
  return x.decode() if isinstance(x, bytes) else str(x)


# ---------------------------------------------------------------------------- tokenizer

def word_tokenizer():
  """A word-level `tokenizers.Tokenizer` over WORDS: lower-cased, split on whitespace
  and single punctuation characters; unknown words map to [UNK]."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
  vocab = {w: i for i, w in enumerate((PAD, UNK, EOS) + WORDS)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
  tok.normalizer = normalizers.Lowercase()
  tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                               pre_tokenizers.Punctuation("isolated")])
  return tok


def encode(tok, texts, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Texts -> (tokens, mask) [n, max_len] int32: ids, [EOS], padding ([PAD] = 0); texts
  longer than max_len - 1 tokens are truncated before the [EOS]."""
  eos = tok.token_to_id(EOS)
  tokens = np.zeros((len(texts), max_len), np.int32)
  mask = np.zeros((len(texts), max_len), np.int32)
  for i, enc in enumerate(tok.encode_batch(list(texts))):
    ids = enc.ids[:max_len - 1] + [eos]
    tokens[i, :len(ids)], mask[i, :len(ids)] = ids, 1
  return tokens, mask


# ---------------------------------------------------------------------------- real folders

def load_images(paths, image_size: int) -> np.ndarray:
  """Image files (any format Pillow reads: png, jpeg, webp) -> [n, S, S, 3] uint8, centre
  cropped to a square and resized."""
  from PIL import Image
  out = []
  for path in paths:
    if not os.path.exists(path):
      raise FileNotFoundError(f"image {path} not found")
    with Image.open(path) as im:
      im = im.convert("RGB")
      side = min(im.size)
      left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
      im = im.crop((left, top, left + side, top + side)).resize((image_size, image_size), Image.BICUBIC)
      out.append(np.asarray(im, np.uint8))
  return np.stack(out)


def load_ranking_folder(folder: str, image_size: int) -> tuple[dict[str, np.ndarray], list]:
  """A folder with images and ranking.json {"prompt", "images", "human_preference_order"}
  (as ../shared/data/images/preference_example) -> ({image id: image}, HPIR records): one
  record per pair of images, single-image result sets, the better-ranked one chosen with
  confidence 1."""
  path = os.path.join(folder, "ranking.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: a ranking folder needs ranking.json")
  with open(path) as f:
    meta = json.load(f)
  for key in ("prompt", "images", "human_preference_order"):
    if key not in meta:
      raise ValueError(f"{path}: missing {key!r}")
  order = meta["human_preference_order"]
  if sorted(order) != sorted(meta["images"]):
    raise ValueError(f"{path}: human_preference_order must rank exactly the listed images")
  images = dict(zip(meta["images"], load_images([os.path.join(folder, n) for n in meta["images"]], image_size)))
  records = []
  for i in range(len(order)):
    for j in range(i + 1, len(order)):
      a_first = (i + j) % 2 == 0   # alternate sides so that a position bias cannot score
      a, b = (order[i], order[j]) if a_first else (order[j], order[i])
      records.append(hpir.parse_record({"query": meta["prompt"], "results_a": [a], "results_b": [b],
                                        "choice": "a" if a_first else "b", "confidence": 1.0}))
  return images, records


def load_split(source, tok, max_len: int) -> dict:
  """A testbed split as host arrays: images in [0, 1], caption tokens, ids, truth."""
  cols = {k: column(source, k) for k in ("id", "image", "caption", "content_id", "aesthetic", "rating")}
  captions = [as_text(x) for x in cols["caption"]]
  tokens, mask = encode(tok, captions, max_len)
  return {"ids": [as_text(x) for x in cols["id"]], "images": cols["image"].astype(np.float32) / 255.0,
          "captions": captions, "tokens": tokens, "mask": mask, "content_id": np.asarray(cols["content_id"]),
          "aesthetic": np.asarray(cols["aesthetic"]), "rating": np.asarray(cols["rating"], np.float32)}
