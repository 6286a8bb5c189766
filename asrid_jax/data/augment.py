"""Training augmentation as one grain RandomMap with per-record seeded RNG.

Operates on an example dict from `source.LoadExample`: 'image' uint8
(T, H, W, 3), 'landmarks' float32 (T, 5, 2) in image pixels (MTCNN order:
left eye, right eye, nose, mouth left, mouth right), 'label'.

Order, each with its own probability (all in `AugmentConfig`):
  1. SBI pseudo-fake (Shiohara & Yamasaki 2022, asrid_jax/data/sbi.py) on
     REAL examples, label -> FAKE (probability `sbi_prob`, config.data);
  2. geometric: horizontal flip (landmarks flipped and left/right swapped),
     landmark part dropout (DFDC 1st place: blank the eyes, the nose or the
     mouth), random erasing;
  3. photometric (the ASRID paper's set): colour jitter (brightness,
     contrast, saturation, hue), downscale-upscale, Gaussian noise, and JPEG
     re-compression last, as a video platform would.
Every parameter is drawn once per example, so all frames of a clip get the
same flip, the same part, the same rectangle, the same colour change, etc.;
only the noise pattern differs frame to frame. Output stays uint8 in [0, 255].
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import cv2
import grain
import numpy as np

from asrid_jax.data import records, sbi

PARTS = ("eyes", "nose", "mouth")
# Landmark index permutation of a horizontal flip (left <-> right).
_FLIP_ORDER = np.asarray([1, 0, 2, 4, 3])


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """config.data.augment. Probabilities are per example; ranges are (lo, hi).

  Defaults follow the DFDC winners' recipe that the ASRID paper builds on.
  """

  flip_prob: float = 0.5
  part_drop_prob: float = 0.2
  parts: tuple[str, ...] = PARTS
  erase_prob: float = 0.2
  erase_area: tuple[float, float] = (0.02, 0.15)  # fraction of the image
  erase_aspect: tuple[float, float] = (0.3, 3.3)
  color_prob: float = 0.7
  brightness: float = 0.2  # factor in [1 - b, 1 + b]
  contrast: float = 0.2
  saturation: float = 0.2
  hue: float = 0.03  # fraction of the hue circle, symmetric
  downscale_prob: float = 0.2
  downscale: tuple[float, float] = (0.4, 0.9)  # scale before upscaling back
  noise_prob: float = 0.1
  noise_std: tuple[float, float] = (3.0, 12.0)  # in 0..255 levels
  jpeg_prob: float = 0.5
  jpeg_quality: tuple[float, float] = (60, 100)

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if f.name.endswith("_prob") and not 0.0 <= v <= 1.0:
        raise ValueError(f"augment.{f.name} must be in [0, 1], got {v}")
      if (
        isinstance(v, tuple)
        and f.name != "parts"
        and (len(v) != 2 or v[0] > v[1])
      ):
        raise ValueError(f"augment.{f.name} must be (low, high), got {v}")
    bad = sorted(set(self.parts) - set(PARTS))
    if bad or not self.parts:
      raise ValueError(
        f"augment.parts must be a subset of {PARTS}, got {self.parts}"
      )
    if not 0 < self.downscale[0] <= self.downscale[1] <= 1:
      raise ValueError(
        f"augment.downscale must lie in (0, 1]: {self.downscale}"
      )
    if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
      raise ValueError(
        f"augment.jpeg_quality must lie in [1, 100]: {self.jpeg_quality}"
      )

  @classmethod
  def off(cls, **overrides) -> AugmentConfig:
    """Every probability 0 (then `overrides`): the identity."""
    zero = {
      f.name: 0.0 for f in dataclasses.fields(cls) if f.name.endswith("_prob")
    }
    return cls(**{**zero, **overrides})

  @classmethod
  def create(cls, spec: Mapping[str, Any]) -> AugmentConfig:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(spec) - names)
    if unknown:
      raise ValueError(
        f"unknown augment keys {unknown}; known: {sorted(names)}"
      )
    # ml_collections and JSON give lists; the dataclass wants tuples.
    return cls(
      **{k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    )


class Augment(grain.transforms.RandomMap):
  """The training augmentation; `apply(example, rng)` is the pure form."""

  def __init__(self, config: AugmentConfig, sbi_prob: float = 0.0):
    self.config = config
    self.sbi_prob = float(sbi_prob)

  @classmethod
  def from_config(cls, augment, sbi_prob: float = 0.0) -> Augment | None:
    """config.data.augment (None/False: off, True: defaults, dict) -> op."""
    if augment is None or augment is False:
      config = AugmentConfig.off()
      if sbi_prob <= 0:
        return None
    elif augment is True:
      config = AugmentConfig()
    elif isinstance(augment, AugmentConfig):
      config = augment
    elif isinstance(augment, Mapping) or hasattr(augment, "items"):
      config = AugmentConfig.create(dict(augment.items()))
    else:
      raise ValueError(
        f"config.data.augment: None, bool or dict, not {augment!r}"
      )
    return cls(config, sbi_prob)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    return self.apply(element, rng)

  def apply(self, example: dict, rng: np.random.Generator) -> dict:
    c = self.config
    out = dict(example)
    image = np.array(example["image"], np.uint8, copy=True)
    marks = np.array(example["landmarks"], np.float32, copy=True)
    if image.ndim != 4 or marks.shape != (image.shape[0], 5, 2):
      raise ValueError(
        f"augment needs image (T, H, W, 3) and landmarks (T, 5, 2), got "
        f"{image.shape} and {marks.shape}"
      )
    label = int(example["label"])
    if label == records.LABEL_REAL and rng.random() < self.sbi_prob:
      try:
        blended, masks = sbi.apply_clip(image, marks, sbi.sample_params(rng))
      except sbi.DegenerateLandmarksError:
        blended = None  # no face frame to blend in: keep the REAL crop
      # A face wholly outside the crop leaves the image unchanged (all-zero
      # masks); labelling that FAKE would teach the model label noise.
      if blended is not None and masks.any():
        image, label = blended, records.LABEL_FAKE
    if rng.random() < c.flip_prob:
      image, marks = hflip(image, marks)
    if rng.random() < c.part_drop_prob:
      image = drop_part(image, marks, str(rng.choice(list(c.parts))))
    if rng.random() < c.erase_prob:
      image = erase(image, rng, c.erase_area, c.erase_aspect)
    if rng.random() < c.color_prob:
      image = color_jitter(
        image,
        brightness=rng.uniform(1 - c.brightness, 1 + c.brightness),
        contrast=rng.uniform(1 - c.contrast, 1 + c.contrast),
        saturation=rng.uniform(1 - c.saturation, 1 + c.saturation),
        hue=rng.uniform(-c.hue, c.hue),
      )
    if rng.random() < c.downscale_prob:
      image = down_up(image, rng.uniform(*c.downscale))
    if rng.random() < c.noise_prob:
      image = gaussian_noise(image, rng.uniform(*c.noise_std), rng)
    if rng.random() < c.jpeg_prob:
      image = jpeg(image, int(round(rng.uniform(*c.jpeg_quality))))
    out.update(image=image, landmarks=marks, label=np.int32(label))
    return out


# ----------------------------------------------------------------------------
# The operations, on (T, H, W, 3) uint8 clips with shared parameters.
# ----------------------------------------------------------------------------


def hflip(
  image: np.ndarray, marks: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """Mirror left-right; landmarks mirrored and their left/right names kept."""
  w = image.shape[2]
  flipped = marks[:, _FLIP_ORDER].copy()
  flipped[..., 0] = (w - 1) - flipped[..., 0]
  return np.ascontiguousarray(image[:, :, ::-1]), flipped


def drop_part(image: np.ndarray, marks: np.ndarray, part: str) -> np.ndarray:
  """Blacks out one face part on every frame, placed by that frame's points."""
  out = image.copy()
  for frame, lm in zip(out, marks, strict=True):
    eye_dist = max(float(np.hypot(*(lm[1] - lm[0]))), 2.0)
    thick = max(int(round(0.45 * eye_dist)), 1)

    def pt(p):
      return (int(round(p[0])), int(round(p[1])))

    if part == "eyes":
      cv2.line(frame, pt(lm[0]), pt(lm[1]), (0, 0, 0), thick)
    elif part == "mouth":
      cv2.line(frame, pt(lm[3]), pt(lm[4]), (0, 0, 0), thick)
    elif part == "nose":
      cv2.circle(frame, pt(lm[2]), max(thick // 2 + 1, 1), (0, 0, 0), -1)
    else:
      raise ValueError(f"unknown face part {part!r}; one of {PARTS}")
  return out


def erase(
  image: np.ndarray, rng: np.random.Generator, area, aspect
) -> np.ndarray:
  """Random erasing: one rectangle of random colour, same on every frame."""
  _, h, w, _ = image.shape
  frac = rng.uniform(*area)
  ratio = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
  eh = int(np.clip(round(np.sqrt(frac * h * w * ratio)), 1, h))
  ew = int(np.clip(round(np.sqrt(frac * h * w / ratio)), 1, w))
  y = int(rng.integers(0, h - eh + 1))
  x = int(rng.integers(0, w - ew + 1))
  out = image.copy()
  out[:, y : y + eh, x : x + ew] = rng.integers(0, 256, 3, dtype=np.uint8)
  return out


def color_jitter(
  image: np.ndarray,
  *,
  brightness: float,
  contrast: float,
  saturation: float,
  hue: float,
) -> np.ndarray:
  """Brightness/contrast as torchvision's factors (contrast pivots on the
  frame's mean grey), then saturation and hue in HSV (hue in fractions of the
  circle). Done with uint8 look-up tables: ~10x faster than float math."""
  levels = np.arange(256, dtype=np.float32)
  hue_lut = np.mod(np.arange(256) + round(180 * hue), 180).astype(np.uint8)
  sat_lut = _to_uint8(levels * saturation)
  out = np.empty_like(image)
  for t, frame in enumerate(image):
    mean = float(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).mean()) * brightness
    lut = _to_uint8((levels * brightness - mean) * contrast + mean)
    x = cv2.cvtColor(cv2.LUT(frame, lut), cv2.COLOR_RGB2HSV)  # H in [0, 180)
    h, s, v = cv2.split(x)
    x = cv2.merge([cv2.LUT(h, hue_lut), cv2.LUT(s, sat_lut), v])
    out[t] = cv2.cvtColor(x, cv2.COLOR_HSV2RGB)
  return out


def down_up(image: np.ndarray, scale: float) -> np.ndarray:
  """Downscale by `scale` (area) and back up (bilinear): loses detail."""
  _, h, w, _ = image.shape
  small = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.stack(
    [
      cv2.resize(
        cv2.resize(f, small, interpolation=cv2.INTER_AREA),
        (w, h),
        interpolation=cv2.INTER_LINEAR,
      )
      for f in image
    ]
  )


def gaussian_noise(
  image: np.ndarray, std: float, rng: np.random.Generator
) -> np.ndarray:
  noise = rng.standard_normal(image.shape, dtype=np.float32)
  return _to_uint8(image + noise * np.float32(std))


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  """Re-encodes every frame as JPEG at `quality` (1..100)."""
  out = np.empty_like(image)
  for t, frame in enumerate(image):
    out[t] = records.decode_jpeg(records.encode_jpeg(frame, quality))
  return out


def _to_uint8(x: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)
