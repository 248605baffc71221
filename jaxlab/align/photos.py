"""The testbed's "photos" image source: content crops of real photographs that ship inside pip
packages (scikit-image's `skimage.data` files bundled in its wheel, scikit-learn's
`load_sample_images`), so nothing is downloaded at run time. Each content is a named square
region (REGIONS: photo, box) of one photo; one photo can give several contents.

A render crops a window around the content's box (its side and position jittered from `rng`, so
two renders of the same content differ), resizes it to `size` and degrades it by the three
aesthetic factors in [0, 1] (1 = no degradation), with testbed.render's meanings:
  composition  the window moves off the box centre by (1 - c) / 2 of its side, towards a photo
               edge with room for the whole move: at 0 the subject sits on the frame edge, half cut
  sharpness    Gaussian blur (sigma up to 6% of `size`), sensor noise (shot noise, Gaussian with a
               variance proportional to the signal as Poisson's, plus Gaussian read noise) and
               JPEG artefacts (Pillow, quality falling from 95 to 10) as s drops
  harmony      exposure error (up to +-1.5 stops, under or over) and a colour cast (channel gains
               up to x1.6 in a random hue) as h drops, applied in linear light
The randoms a render draws do not depend on the factors: one seed gives the same crop, exposure
sign, cast hue and noise pattern at any factors. The degradations use numpy and Pillow only.
"""
from __future__ import annotations

import functools
import io

import numpy as np

# content -> (photo, (x0, y0, x1, y1) square box in the photo's pixels). Photos: skimage.data
# loaders ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
# "stereo_motorcycle": its left view), sklearn sample images ("china", "flower").
REGIONS = {
    "astronaut": ("astronaut", (90, 20, 350, 280)),
    "space shuttle": ("astronaut", (305, 20, 505, 220)),
    "helmet": ("astronaut", (290, 312, 490, 512)),
    "flag": ("astronaut", (0, 60, 100, 160)),
    "cat": ("chelsea", (130, 50, 350, 270)),
    "coffee cup": ("coffee", (165, 10, 425, 270)),
    "spoon": ("coffee", (300, 195, 430, 325)),
    "rocket": ("rocket", (222, 115, 422, 315)),
    "tissue sample": ("immunohistochemistry", (230, 300, 410, 480)),
    "galaxy": ("hubble_deep_field", (80, 357, 165, 442)),
    "motorcycle engine": ("stereo_motorcycle", (330, 225, 490, 385)),
    "headlight": ("stereo_motorcycle", (482, 100, 592, 210)),
    "wheel": ("stereo_motorcycle", (500, 255, 690, 445)),
    "pagoda": ("china", (45, 30, 365, 350)),
    "pine tree": ("china", (525, 150, 640, 265)),
    "flower": ("flower", (155, 70, 460, 375)),
}
CONTENTS = tuple(REGIONS)
PHOTOS = tuple(dict.fromkeys(photo for photo, _ in REGIONS.values()))

MAX_STOPS = 1.5       # exposure error at harmony 0, in stops
MAX_CAST = 0.8        # colour-cast strength at harmony 0: channel gains 2 ** (MAX_CAST * unit zero-sum vector)
MAX_BLUR = 0.06       # blur sigma at sharpness 0, as a fraction of the output size
SHOT, READ = 0.10, 0.02   # noise std at sharpness 0: SHOT * sqrt(signal) and READ, in [0, 1] units
GAMMA = 2.2           # sRGB <-> linear light, approximately
_ANGLES = 16          # candidate directions of the composition shift


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
  """One photo as float32 [H, W, 3] in [0, 1], loaded once."""
  if name in ("china", "flower"):
    from sklearn.datasets import load_sample_images
    sample = load_sample_images()
    image = sample.images[[f.replace("\\", "/").rsplit("/", 1)[-1] for f in sample.filenames].index(name + ".jpg")]
  else:
    import skimage.data
    image = getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
      image = image[0]   # (left, right, disparity): the left view
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(f"photo {name!r}: expected an RGB uint8 image, got {image.dtype} {image.shape}")
  image = image.astype(np.float32) / 255.0
  image.flags.writeable = False
  return image


def available() -> bool:
  """True when scikit-image and scikit-learn import and every photo loads from their installed files."""
  try:
    for name in PHOTOS:
      _photo(name)
  except Exception:  # ImportError, or a file missing from the wheel (skimage would try a download)
    return False
  return True


def _window(photo_shape, box, comp: float, rng: np.random.Generator) -> tuple[float, float, float]:
  """(centre x, centre y, side) of the crop window: the box jittered, then moved off-centre."""
  h, w = photo_shape[:2]
  x0, y0, x1, y1 = box
  side = min((x1 - x0) * rng.uniform(0.92, 1.08), h, w)
  cx = (x0 + x1) / 2 + rng.uniform(-0.04, 0.04) * side
  cy = (y0 + y1) / 2 + rng.uniform(-0.04, 0.04) * side
  lo_x, hi_x, lo_y, hi_y = side / 2, w - side / 2, side / 2, h - side / 2
  cx, cy = float(np.clip(cx, lo_x, hi_x)), float(np.clip(cy, lo_y, hi_y))
  # the shift: along one of _ANGLES directions (randomly rotated) that has room for all of it, else the
  # direction with the most room
  angles = rng.uniform(0, 2 * np.pi / _ANGLES) + np.arange(_ANGLES) * 2 * np.pi / _ANGLES
  pick = rng.uniform()
  dist = (1 - comp) * 0.5 * side
  ux, uy = np.cos(angles), np.sin(angles)
  with np.errstate(divide="ignore", invalid="ignore"):
    room_x = np.where(ux > 1e-9, (hi_x - cx) / ux, np.where(ux < -1e-9, (lo_x - cx) / ux, np.inf))
    room_y = np.where(uy > 1e-9, (hi_y - cy) / uy, np.where(uy < -1e-9, (lo_y - cy) / uy, np.inf))
  room = np.minimum(room_x, room_y)
  fits = np.flatnonzero(room >= dist)
  k = int(fits[min(int(pick * len(fits)), len(fits) - 1)]) if len(fits) else int(np.argmax(room))
  t = min(dist, float(room[k]))
  return float(np.clip(cx + t * ux[k], lo_x, hi_x)), float(np.clip(cy + t * uy[k], lo_y, hi_y)), side


def _resize(image: np.ndarray, box, size: int) -> np.ndarray:
  """The (x0, y0, x1, y1) box of a float [H, W, 3] image resized to [size, size, 3] (antialiased)."""
  from PIL import Image
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., ch]))
                              .resize((size, size), Image.Resampling.LANCZOS, box=box), np.float32)
                   for ch in range(3)], -1)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of [S, S, C] over both spatial axes, edges reflected."""
  if sigma <= 1e-3:
    return image
  r = max(1, int(np.ceil(3 * sigma)))
  k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  k /= k.sum()
  for axis in (0, 1):
    pad = [(0, 0)] * image.ndim
    pad[axis] = (r, r)
    padded = np.pad(image, pad, mode="symmetric")
    n = image.shape[axis]
    image = sum(k[i] * np.take(padded, np.arange(i, i + n), axis=axis) for i in range(2 * r + 1))
  return image


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  """A uint8 image through a JPEG encode/decode at `quality`."""
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=int(quality))
  buf.seek(0)
  with Image.open(buf) as im:
    return np.asarray(im.convert("RGB"), np.uint8)


def render(content: str, factors, size: int, rng: np.random.Generator) -> np.ndarray:
  """[size, size, 3] uint8 photo crop of `content` (one of CONTENTS) with factors (composition,
  sharpness, harmony) in [0, 1]; see the module doc for what each does."""
  if content not in REGIONS:
    raise ValueError(f"unknown photo content {content!r}; use one of {CONTENTS}")
  if size <= 0:
    raise ValueError(f"image size must be positive, got {size}")
  comp, sharp, harm = (float(np.clip(f, 0.0, 1.0)) for f in factors)
  name, box = REGIONS[content]
  photo = _photo(name)
  cx, cy, side = _window(photo.shape, box, comp, rng)
  # every random is drawn whatever the factors, so one seed gives the same crop at any factors
  stops = MAX_STOPS * (1 - harm) * (1.0 if rng.uniform() < 0.5 else -1.0)
  hue = rng.uniform(0, 2 * np.pi)
  z_shot, z_read = rng.standard_normal((2, size, size, 3))

  img = _resize(photo, (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), size)
  img = np.clip(img, 0.0, 1.0)
  # harmony, in linear light: exposure error and a colour cast
  cast = np.sqrt(2 / 3) * np.cos(hue - np.arange(3) * 2 * np.pi / 3)   # unit vector, channels sum to 0
  linear = img ** GAMMA * 2.0 ** (stops + MAX_CAST * (1 - harm) * cast)
  img = np.clip(linear, 0.0, 1.0) ** (1 / GAMMA)
  # sharpness: optics (blur), then the sensor (shot + read noise), then compression (JPEG)
  loss = 1 - sharp
  img = _gaussian_blur(img, MAX_BLUR * size * loss)
  img = img + loss * (SHOT * np.sqrt(np.clip(img, 0.0, 1.0)) * z_shot + READ * z_read)
  out = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
  quality = int(round(95 - 85 * loss))
  return _jpeg(out, quality) if quality < 95 else out
