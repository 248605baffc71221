"""The photo image source (jaxlab.align.photos): the bundled photos load offline, and each factor
degrades a render the way its name says, measured against references computed here (the photos
loaded straight from scikit-image / scikit-learn, numpy Laplacians, Pillow resizes)."""
import functools
import re
import socket

import numpy as np
import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from PIL import Image  # noqa: E402

from jaxlab.align import photos, testbed  # noqa: E402

SEEDS = (0, 1, 2)


@functools.lru_cache(maxsize=None)
def reference_photo(name: str) -> np.ndarray:
  """The photo as uint8 [H, W, 3], loaded without jaxlab."""
  if name in ("china", "flower"):
    from sklearn.datasets import load_sample_images
    sample = load_sample_images()
    return next(im for f, im in zip(sample.filenames, sample.images) if f.endswith(name + ".jpg"))
  import skimage.data
  image = getattr(skimage.data, name)()
  return image[0] if name == "stereo_motorcycle" else image


def render(content, factors, size=32, seed=0):
  return photos.render(content, factors, size, np.random.default_rng(seed))


def laplacian_energy(image: np.ndarray) -> float:
  """Mean |4-neighbour Laplacian| of the luma, in [0, 1] units."""
  g = image.astype(np.float64).mean(-1) / 255
  return float(np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]).mean())


def test_contents_are_distinct_natural_phrases():
  assert len(photos.CONTENTS) >= 8 and len(set(photos.CONTENTS)) == len(photos.CONTENTS)
  for content in photos.CONTENTS:
    assert re.fullmatch(r"[a-z]+( [a-z]+)*", content), content
  assert testbed.contents("photos") == photos.CONTENTS


def test_photos_load_offline(monkeypatch):
  def no_network(*args, **kwargs):
    raise AssertionError("the photos must load without the network")
  monkeypatch.setattr(socket.socket, "connect", no_network)
  monkeypatch.setattr(socket, "create_connection", no_network)
  photos._photo.cache_clear()
  assert photos.available()
  for content, (name, (x0, y0, x1, y1)) in photos.REGIONS.items():
    image = photos._photo(name)
    assert image.dtype == np.float32 and image.shape == reference_photo(name).shape
    assert x1 - x0 == y1 - y0 and 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0], content


def test_shape_dtype_determinism_and_jitter():
  for size in (16, 33):
    a = photos.render("cat", (0.3, 0.6, 0.9), size, np.random.default_rng(7))
    assert a.shape == (size, size, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, photos.render("cat", (0.3, 0.6, 0.9), size, np.random.default_rng(7)))
  # one rng, two renders of the same clean content: the crop's scale / position jitter differs
  rng = np.random.default_rng(0)
  first, second = (photos.render("pagoda", (1, 1, 1), 32, rng).astype(int) for _ in range(2))
  assert np.abs(first - second).mean() > 1


def test_unknown_content_raises_naming_it():
  with pytest.raises(ValueError, match="red circle"):
    render("red circle", (1, 1, 1))


def test_sharpness_removes_high_frequency_detail():
  for content in photos.CONTENTS:
    for seed in SEEDS:
      clean = laplacian_energy(render(content, (1, 1, 1), seed=seed))
      degraded = laplacian_energy(render(content, (1, 0, 1), seed=seed))
      assert clean > 1.2 * degraded, (content, seed, clean, degraded)


def test_harmony_shifts_the_mean_colour():
  for content in photos.CONTENTS:
    name, (x0, y0, x1, y1) = photos.REGIONS[content]
    truth = reference_photo(name)[y0:y1, x0:x1].reshape(-1, 3).mean(0)
    for seed in SEEDS:
      good = np.linalg.norm(render(content, (1, 1, 1), seed=seed).reshape(-1, 3).mean(0) - truth)
      bad = np.linalg.norm(render(content, (1, 1, 0), seed=seed).reshape(-1, 3).mean(0) - truth)
      assert good < 25 and bad > max(2 * good, 15), (content, seed, good, bad)


def test_composition_centres_the_content_region():
  size = 32
  for content in photos.CONTENTS:
    name, box = photos.REGIONS[content]
    centred = np.asarray(Image.fromarray(reference_photo(name)).crop(box).resize((size, size), Image.BICUBIC),
                         np.float64)
    for seed in SEEDS:
      mse = lambda comp: float(((render(content, (comp, 1, 1), size, seed).astype(np.float64) - centred) ** 2).mean())
      assert mse(1.0) < mse(0.0) / 1.5, (content, seed)


def test_generate_with_the_photo_source():
  data = testbed.generate(6, 16, 0, source="photos")
  assert data["image"].shape == (6, 16, 16, 3) and data["image"].dtype == np.uint8
  assert all(c in photos.CONTENTS for c in data["content"])
