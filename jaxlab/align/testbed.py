"""A controlled testbed for aesthetic alignment: images with free-text captions and a known
aesthetic ground truth, HPIR-format human-like labels drawn from it with noise (two
aspects), a held-out half of the contents, and loaders for real preference folders
(../shared/data/images/preference_example).

Two image sources behind the same builder and loaders (`data.source`):
  rendered  one shape (circle, square, triangle, cross) in one colour (6 colours): its
            content, e.g. "red circle" (24 contents)
  photos    content crops of real photographs shipped with scikit-image / scikit-learn
            (jaxlab/align/photos.py), degraded photographically
Three aesthetic factors, each uniform in [0, 1], change how an image looks, never what it
shows:
  composition  1 = centred; off-centre (rendered: the object moves; photos: the crop) as it drops
  sharpness    1 = clean; blur and noise (photos: + JPEG artefacts) grow as it drops
  harmony      1 = soft neutral background / true exposure; garish background / exposure
               error and colour cast as it drops
The ground-truth aesthetic score is their mean. Captions are "a red circle" plus, like web
alt-text, some noisy aesthetic phrases: each clearly good (>= 0.6) or bad (<= 0.4) factor is
described with probability `desc_prob` by a phrase drawn from its synonym set (CAPTION_PHRASES,
whose words the offline rephraser never uses: the two meet only through a text encoder that
knows English). A `rating` (truth plus Gaussian noise, clipped to [0, 1]) plays the role of a
human aesthetic rating.

Contents are split in two (`content_split`): the fine-tuning half (preference mining and DPO
see only its queries) and the held-out half (reported). Queries are worded by templates:
TRAIN_TEMPLATES for mining, HELDOUT_TEMPLATES (never in training) for evaluation.

Splits: train (pretraining, the aesthetic model, preference galleries), validation (for
choosing settings: its images enter no grid and no training) and test (reported).

HPIR labels, per split (validation, test), content half (heldout, finetune) and aspect:
  aesthetic  two disjoint sets of `set_size` images of the query's content; each of
             `annotators` simulated people prefers the set with the higher mean true
             aesthetic after adding N(0, noise) to the difference
  relevance  two sets with different mixes of images of the query's content, of related
             contents (rendered: same colour or same shape, grade 0.5) and of others
             (grade 0); the annotators compare the mean relevance grade, with noise
The choice is the majority, the confidence the majority's share.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from jaxlab.align import hpir

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.7, 0.2), "blue": (0.15, 0.3, 0.95),
           "yellow": (0.95, 0.85, 0.1), "magenta": (0.85, 0.15, 0.8), "cyan": (0.1, 0.8, 0.85)}
FACTORS = ("composition", "sharpness", "harmony")
CONTENTS = tuple(f"{c} {s}" for s in SHAPES for c in COLOURS)
NEUTRAL = np.array([0.92, 0.9, 0.85])
SOURCES = ("rendered", "photos")

# Caption phrases per factor: (good synonyms, bad synonyms). Their words are disjoint from the
# offline rephraser's (rephrase.AESTHETIC_PHRASES; a test checks it).
CAPTION_PHRASES = {
    "composition": (("well framed", "balanced layout", "centered"), ("off-center", "lopsided layout", "cropped badly")),
    "sharpness": (("crisp", "in focus", "fine detail"), ("blurry", "grainy", "out of focus")),
    "harmony": (("soft pastel backdrop", "calm tones", "muted background"),
                ("loud backdrop", "clashing hues", "gaudy background")),
}
# Query wordings: mining and DPO see the first; evaluation uses only the second.
TRAIN_TEMPLATES = ("a {}", "a photo of a {}", "an image of a {}")
HELDOUT_TEMPLATES = ("a picture showing a {}", "looking for a {}", "{} shown in a photograph")

# Word-level vocabulary of the small trainable text tower (model.text_tower=words): the
# captions' and templates' words and punctuation. Anything else (a rephrasing) is [UNK]:
# the closed vocabulary the frozen MiniLM tower (model.text_tower=minilm) does not have.
PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"


def _words(texts) -> tuple[str, ...]:
  out = []
  for t in texts:
    for w in t.replace("{}", " ").replace("-", " - ").split():
      if w not in out:
        out.append(w)
  return tuple(out)


def contents(source: str = "rendered") -> tuple[str, ...]:
  """The content phrases of an image source ("rendered" or "photos")."""
  if source == "rendered":
    return CONTENTS
  if source == "photos":
    from jaxlab.align import photos
    return photos.CONTENTS
  raise ValueError(f"unknown testbed source {source!r}; use one of {SOURCES}")


def content_split(source: str = "rendered") -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(fine-tuning content ids, held-out content ids). Rendered: colour index + shape index
  even -> fine-tuning, so every colour and every shape is in both halves; photos: even / odd ids."""
  n = len(contents(source))
  if source == "rendered":
    ncol = len(COLOURS)
    tune = tuple(k for k in range(n) if (k // ncol + k % ncol) % 2 == 0)
  else:
    tune = tuple(range(0, n, 2))
  return tune, tuple(k for k in range(n) if k not in tune)


def relevance_grade(source: str, query_content: int, image_content) -> np.ndarray:
  """Relevance of images (content ids) to a query for a content: 1 for the same content;
  rendered only, 0.5 for the same colour or the same shape; else 0."""
  image_content = np.asarray(image_content)
  same = (image_content == query_content).astype(np.float64)
  if source != "rendered":
    return same
  ncol = len(COLOURS)
  related = (image_content // ncol == query_content // ncol) | (image_content % ncol == query_content % ncol)
  return np.where(same > 0, 1.0, np.where(related, 0.5, 0.0))


def query_for(content: str, template: str = "a {}") -> str:
  """A text query for a content: "red circle" -> "a red circle" (also how every caption starts)."""
  return template.format(content)


def queries(source: str, content_ids, templates) -> dict[str, int]:
  """{query text: content id} for every template x content."""
  names = contents(source)
  return {query_for(names[c], t): int(c) for c in content_ids for t in templates}


def _photo_contents() -> tuple[str, ...]:
  from jaxlab.align import photos   # numpy only at import: the photographs load on first render
  return photos.CONTENTS


WORDS = tuple(dict.fromkeys(   # each word once, in this order
    ("a", "an", "of", "image", "photo", "picture", "showing", "looking", "for", "shown", "in", "photograph")
    + tuple(COLOURS) + SHAPES + _words(_photo_contents())
    + _words(p for pair in CAPTION_PHRASES.values() for side in pair for p in side)
    + tuple("0123456789") + tuple(",.:;{}\"'-()[]")))


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

  The content as "a red circle", then, with probability desc_prob each, a phrase for every clearly good (>= 0.6)
  or bad (<= 0.4) factor, drawn from its synonym set in CAPTION_PHRASES, joined by ", " like noisy alt-text."""
  words = []
  for name, f in zip(FACTORS, factors):
    if rng.uniform() < desc_prob and (f >= 0.6 or f <= 0.4):
      synonyms = CAPTION_PHRASES[name][0 if f >= 0.6 else 1]
      words.append(synonyms[rng.integers(len(synonyms))])
  return ", ".join([query_for(content)] + words)


def generate(n: int, size: int, seed, desc_prob: float = 0.5, rating_noise: float = 0.08,
             source: str = "rendered") -> dict:
  """n examples as arrays: image, caption, content, content_id, factors, aesthetic, rating."""
  names = contents(source)
  if source == "photos":
    from jaxlab.align import photos
    draw = photos.render
  else:
    draw = render
  rng = np.random.default_rng(seed)
  content_id = rng.integers(0, len(names), n)
  factors = rng.uniform(0, 1, (n, 3))
  aesthetic = factors.mean(1)
  images = np.stack([draw(names[c], f, size, rng) for c, f in zip(content_id, factors)]) if n else \
      np.zeros((0, size, size, 3), np.uint8)
  captions = [caption_for(names[c], f, rng, desc_prob) for c, f in zip(content_id, factors)]
  rating = np.clip(aesthetic + rng.normal(0, rating_noise, n), 0, 1)
  return {"image": images, "caption": captions, "content": [names[c] for c in content_id],
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
    source        "rendered" shapes or "photos" (crops of real photographs)
  """
  num_train: int = 4000
  num_val: int = 1000
  num_test: int = 1000
  image_size: int = 16
  seed: int = 0
  desc_prob: float = 0.5
  rating_noise: float = 0.08
  source: str = "rendered"


def config_name(num_train, num_val, num_test, image_size, seed, desc_prob, rating_noise,
                source: str = "rendered") -> str:
  """The builder config name for these settings, e.g. "rendered_s16_n4000_1000_1000_seed0_d0p5_r0p08".

  Distinct settings get distinct names, so each gets its own dataset on disk; "." is written as "p"."""
  return (f"{source}_s{image_size}_n{num_train}_{num_val}_{num_test}_seed{seed}_d{desc_prob:g}_r{rating_noise:g}"
          .replace(".", "p"))


class AlignTestbed(tfds.core.GeneratorBasedBuilder):
  """Captioned images with a known aesthetic ground truth (see module doc)."""

  VERSION = tfds.core.Version("2.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "2.0.0": "Caption synonym sets; photo source."}

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.image_size
    return self.dataset_info_from_configs(
        description="Aesthetic-alignment testbed: images, captions, aesthetic ground truth.",
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
    arrays = generate(n, c.image_size, seed, c.desc_prob, c.rating_noise, c.source)
    for i in range(n):
      yield i, {"id": f"{split}-{i:06d}", **{k: v[i] for k, v in arrays.items()}}


HPIR_ASPECTS = ("aesthetic", "relevance")
HPIR_GROUPS = ("heldout", "finetune")


@dataclasses.dataclass(frozen=True)
class Testbed:
  """A prepared testbed, as prepare_testbed returns it.

    train, validation, test  the splits as random-access tfds data sources (features as in AlignTestbed)
    image_size     side of the images, in pixels
    source         "rendered" or "photos"
    hpir           HPIR-format label files: {"test/heldout/aesthetic": path, ...} for split in (validation,
                   test), content half in HPIR_GROUPS and aspect in HPIR_ASPECTS; queries worded by
                   HELDOUT_TEMPLATES
  """
  train: object           # tfds data sources (random access)
  validation: object
  test: object
  image_size: int
  source: str
  hpir: dict


def prepare_testbed(data_dir: str, *, num_train: int = 4000, num_val: int = 1000, num_test: int = 1000,
                    image_size: int = 16, seed: int = 0, desc_prob: float = 0.5, rating_noise: float = 0.08,
                    hpir_queries: int = 400, hpir_set_size: int = 4, hpir_annotators: int = 5,
                    hpir_noise: float = 0.1, source: str = "rendered") -> Testbed:
  """Build (once) the array_record dataset and its HPIR labels; open them."""
  for key, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test),
                     ("image_size", image_size)):
    if value <= 0:
      raise ValueError(f"testbed {key} must be positive, got {value}")
  contents(source)  # a clear error for an unknown source
  tfds.disable_progress_bar()
  name = config_name(num_train, num_val, num_test, image_size, seed, desc_prob, rating_noise, source)
  cfg = TestbedConfig(name=name, num_train=num_train, num_val=num_val, num_test=num_test, image_size=image_size,
                      seed=seed, desc_prob=desc_prob, rating_noise=rating_noise, source=source)
  builder = AlignTestbed(config=cfg, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  splits = {split: builder.as_data_source(split=split) for split in ("train", "validation", "test")}
  halves = dict(zip(("finetune", "heldout"), content_split(source)))
  label_columns = functools.cache(lambda split: columns(splits[split], HPIR_COLUMNS))  # read once per split
  paths = {}
  for split, split_seed in (("test", 1), ("validation", 3)):
    for g, group in enumerate(HPIR_GROUPS):
      for a, aspect in enumerate(HPIR_ASPECTS):
        key = f"{split}/{group}/{aspect}"
        path = os.path.join(data_dir, f"hpir_{name}_{split}_{group}_{aspect}_q{hpir_queries}_k{hpir_set_size}"
                                      f"_a{hpir_annotators}_n{hpir_noise:g}.jsonl".replace("0.", "0p"))
        if not os.path.exists(path):
          records = hpir_labels(label_columns(split), hpir_queries, hpir_set_size, hpir_annotators, hpir_noise,
                                [seed, split_seed, g, a], aspect=aspect, content_ids=halves[group], source=source)
          hpir.write_hpir(path + ".tmp", records)
          os.replace(path + ".tmp", path)
        paths[key] = path
  return Testbed(train=splits["train"], validation=splits["validation"], test=splits["test"], image_size=image_size,
                 source=source, hpir=paths)


def columns(source, keys) -> dict:
  """Features `keys` of every record of a (non-empty) data source, in order, each record read
  and decoded once (a record decodes all its features, the image included, on every access).

  Text features (str / bytes) come back as lists; anything else stacked into an array [len(source), ...]."""
  records = source.__getitems__(range(len(source)))
  out = {}
  for key in keys:
    values = [record[key] for record in records]
    out[key] = values if isinstance(values[0], (str, bytes)) else np.stack(values)
  return out


def _vote(diff: float, annotators: int, noise: float, rng) -> tuple[str, float]:
  votes = int(np.sum(diff + rng.normal(0, noise, annotators) > 0))
  return ("a" if 2 * votes > annotators else "b"), max(votes, annotators - votes) / annotators


HPIR_COLUMNS = ("id", "content_id", "aesthetic")   # what hpir_labels reads of a split


def hpir_labels(split: dict, n: int, set_size: int, annotators: int, noise: float, seed, *, aspect: str = "aesthetic",
                content_ids=None, source: str = "rendered", templates=HELDOUT_TEMPLATES) -> list:
  """HPIR records over `split` (a validation or test split's HPIR_COLUMNS, read by `columns`) for
  queries about `content_ids` (default: all), worded by `templates`, labelled by simulated annotators on one aspect:
  "aesthetic" (two same-content sets, the true aesthetic) or "relevance" (two sets of different
  mixes, the mean relevance grade; see the module doc)."""
  if aspect not in HPIR_ASPECTS:
    raise ValueError(f"unknown HPIR aspect {aspect!r}; use one of {HPIR_ASPECTS}")
  rng = np.random.default_rng(seed)
  names = contents(source)
  ids = [as_text(x) for x in split["id"]]
  content, truth = np.asarray(split["content_id"]), np.asarray(split["aesthetic"])
  content_ids = range(len(names)) if content_ids is None else content_ids
  usable = [c for c in content_ids if np.sum(content == c) >= 2 * set_size]
  if not usable:
    raise ValueError(f"no content has {2 * set_size} images in the split: raise num_val / num_test or lower "
                     f"hpir_set_size")
  out = []
  while len(out) < n:
    c = usable[rng.integers(len(usable))]
    query = query_for(names[c], templates[rng.integers(len(templates))])
    mine = np.flatnonzero(content == c)
    if aspect == "aesthetic":
      pick = rng.choice(mine, 2 * set_size, replace=False)
      a, b = pick[:set_size], pick[set_size:]
      diff = truth[a].mean() - truth[b].mean()
    else:
      others = np.flatnonzero(content != c)
      n_mine = rng.integers(0, set_size + 1, 2)
      own = rng.choice(mine, int(n_mine.sum()), replace=False)
      rest = rng.choice(others, 2 * set_size - int(n_mine.sum()), replace=False)
      a = np.concatenate([own[:n_mine[0]], rest[:set_size - n_mine[0]]])
      b = np.concatenate([own[n_mine[0]:], rest[set_size - n_mine[0]:]])
      grade = lambda s: relevance_grade(source, c, content[s]).mean()
      diff = grade(a) - grade(b)
      if diff == 0:
        continue   # equal grades: nothing for an annotator to prefer
    choice, confidence = _vote(float(diff), annotators, noise, rng)
    out.append(hpir.HPIRRecord(query, tuple(ids[i] for i in a), tuple(ids[i] for i in b), choice, confidence))
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


def load_split(source, encoder) -> dict:
  """A testbed split as host arrays: images in [0, 1], captions and their encoding by `encoder`
  (align.texts: tokens and mask, or frozen features), ids, truth."""
  cols = columns(source, ("id", "image", "caption", "content_id", "aesthetic", "rating"))
  captions = [as_text(x) for x in cols["caption"]]
  tokens, mask = encoder.encode(captions)
  return {"ids": [as_text(x) for x in cols["id"]], "images": cols["image"].astype(np.float32) / 255.0,
          "captions": captions, "tokens": tokens, "mask": mask, "content_id": np.asarray(cols["content_id"]),
          "aesthetic": np.asarray(cols["aesthetic"]), "rating": np.asarray(cols["rating"], np.float32)}
