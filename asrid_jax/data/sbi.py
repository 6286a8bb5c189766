"""Self-blended images (SBI): pseudo-fakes made from a real face alone.

After Shiohara and Yamasaki, "Detecting Deepfakes with Self-Blended Images"
(CVPR 2022): a face is blended with a colour- and frequency-transformed,
slightly warped copy of itself through a soft mask over the face region. The
result carries the generic traces of face swapping (a blending boundary,
colour and sharpness mismatch, slight misalignment) with no identity change,
so a detector trained on it learns those traces rather than one generator.

The original uses 68/81 dlib landmarks for the mask hull. We have the 5 MTCNN
points (left eye, right eye, nose, mouth left, mouth right), so the hull is a
face-shaped ellipse placed in the face's own frame (eye line, eye-to-mouth
axis) reaching the forehead and the chin, deformed by a few random
harmonics, united with the landmark hull and Gaussian-blurred.

Every parameter is sampled once (`sample_params`) in face-relative units and
applied deterministically (`apply`), so one draw replayed on each frame of a
clip, with that frame's landmarks, gives the same alteration moving with the
face: what the built-in sample's FAKE clips and clip-level training
augmentation need. `self_blend` is the one-call form for single images.

Pixels farther from the mask polygon than three blur sigmas are returned
unchanged (the blur kernel is truncated there): the background is untouched.
numpy + OpenCV only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import cv2
import numpy as np

# MTCNN order of the 5 landmarks, (x, y) in pixels.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

# Polygon resolution of the face ellipse.
_HULL_POINTS = 48
# Context kept around the mask for the source warp, as a fraction of the face.
_WARP_CONTEXT = 0.25


class DegenerateLandmarksError(ValueError):
  """The landmarks span no face frame (eyes or mouth collapse to a line)."""


@dataclasses.dataclass(frozen=True)
class SBIRanges:
  """Ranges that `sample_params` draws from (defaults follow the paper).

  Lengths are in face units: `mask_*` extents in eye distances (x) or
  eye-to-mouth distances (y); blur sigmas and shifts as fractions of the face
  size (square root of the mask polygon's area).
  """

  mask_half_width: tuple[float, float] = (0.85, 1.15)
  mask_top: tuple[float, float] = (0.35, 0.9)  # above the eye line
  mask_bottom: tuple[float, float] = (0.45, 0.75)  # below the mouth line
  mask_deform: float = 0.06  # max |coefficient| of each radial harmonic
  mask_harmonics: int = 3  # harmonics 2..harmonics+1 deform the outline
  mask_blur: tuple[float, float] = (0.02, 0.08)
  blend_choices: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
  # Euclidean norm of the RGB shift, in 0..255 levels. A non-zero minimum
  # keeps every pseudo-fake actually different from its source.
  rgb_shift: tuple[float, float] = (8.0, 30.0)
  hue_shift: float = 10.0  # degrees, symmetric
  saturation: tuple[float, float] = (0.85, 1.15)
  brightness: float = 0.1  # fraction of 255, symmetric
  contrast: tuple[float, float] = (0.9, 1.1)
  sharpness: tuple[float, float] = (-1.0, 1.0)  # < 0 blur, > 0 sharpen
  freq_sigma: tuple[float, float] = (0.005, 0.02)
  downscale: tuple[float, float] = (0.5, 1.0)
  downscale_prob: float = 0.5
  scale: tuple[float, float] = (0.95, 1.05)
  rotation: float = 2.0  # degrees, symmetric
  shift: float = 0.03  # fraction of the face size, per axis, symmetric

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, tuple) and field.name != "blend_choices":
        if len(value) != 2 or value[0] > value[1]:
          raise ValueError(
            f"SBIRanges.{field.name} must be (low, high) with low <= high, "
            f"got {value!r}"
          )
    if not self.blend_choices or not all(
      0.0 < b <= 1.0 for b in self.blend_choices
    ):
      raise ValueError(
        f"SBIRanges.blend_choices must be values in (0, 1], got "
        f"{self.blend_choices!r}"
      )
    if not 0.0 < self.downscale[0] <= self.downscale[1] <= 1.0:
      raise ValueError(
        f"SBIRanges.downscale must lie in (0, 1]: {self.downscale}"
      )
    if self.mask_harmonics < 0:
      raise ValueError("SBIRanges.mask_harmonics must be >= 0")


@dataclasses.dataclass(frozen=True)
class SBIParams:
  """One sampled self-blend, in face-relative units (replayable per frame)."""

  mask_half_width: float
  mask_top: float
  mask_bottom: float
  mask_deform: tuple[float, ...]  # (cos, sin) coefficient pairs, k = 2, 3, ..
  mask_blur: float
  blend: float
  rgb_shift: tuple[float, float, float]
  hue_shift: float
  saturation: float
  brightness: float  # in 0..255 levels
  contrast: float
  sharpness: float
  freq_sigma: float
  downscale: float  # 1.0 = none
  scale: float
  rotation: float  # degrees
  shift: tuple[float, float]  # along the face's (eye line, eye-to-mouth) axes


def sample_params(
  rng: np.random.Generator, ranges: SBIRanges | None = None, **overrides
) -> SBIParams:
  """Draws one self-blend from `ranges` (or SBIRanges(**overrides))."""
  if ranges is None:
    ranges = SBIRanges(**overrides)
  elif overrides:
    ranges = dataclasses.replace(ranges, **overrides)
  r = ranges

  def uniform(bounds):
    return float(rng.uniform(bounds[0], bounds[1]))

  def symmetric(limit):
    return float(rng.uniform(-limit, limit))

  deform = tuple(
    float(v) for v in rng.uniform(-1, 1, 2 * r.mask_harmonics) * r.mask_deform
  )
  direction = rng.normal(size=3)
  direction /= max(np.linalg.norm(direction), 1e-12)
  rgb = direction * uniform(r.rgb_shift)
  downscale = uniform(r.downscale) if rng.uniform() < r.downscale_prob else 1.0
  return SBIParams(
    mask_half_width=uniform(r.mask_half_width),
    mask_top=uniform(r.mask_top),
    mask_bottom=uniform(r.mask_bottom),
    mask_deform=deform,
    mask_blur=uniform(r.mask_blur),
    blend=float(rng.choice(np.asarray(r.blend_choices, np.float64))),
    rgb_shift=(float(rgb[0]), float(rgb[1]), float(rgb[2])),
    hue_shift=symmetric(r.hue_shift),
    saturation=uniform(r.saturation),
    brightness=symmetric(r.brightness) * 255.0,
    contrast=uniform(r.contrast),
    sharpness=uniform(r.sharpness),
    freq_sigma=uniform(r.freq_sigma),
    downscale=downscale,
    scale=uniform(r.scale),
    rotation=symmetric(r.rotation),
    shift=(symmetric(r.shift), symmetric(r.shift)),
  )


# ------------------------------------------------------------------ Geometry


def _check_inputs(image: np.ndarray, landmarks) -> np.ndarray:
  if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
    raise ValueError(
      f"self-blend needs a uint8 RGB image, got "
      f"{getattr(image, 'dtype', type(image))}"
    )
  if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 2:
    raise ValueError(f"self-blend needs an (H, W, 3) image, got {image.shape}")
  lm = np.asarray(landmarks, np.float64)
  if lm.shape != (5, 2) or not np.all(np.isfinite(lm)):
    raise ValueError(
      f"self-blend needs 5 finite (x, y) landmarks, got shape {lm.shape}"
    )
  return lm


def face_frame(landmarks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(origin, x_axis, y_axis) of the face frame, in pixels.

  Origin: the point between the eyes. x axis: left eye -> right eye (length =
  eye distance). y axis: eye centre -> mouth centre (length = eye-to-mouth
  distance). A tilted or foreshortened face keeps its own frame.
  """
  lm = np.asarray(landmarks, np.float64)
  origin = 0.5 * (lm[0] + lm[1])
  x_axis = lm[1] - lm[0]
  y_axis = 0.5 * (lm[3] + lm[4]) - origin
  min_len = min(np.hypot(*x_axis), np.hypot(*y_axis))
  cross = abs(x_axis[0] * y_axis[1] - x_axis[1] * y_axis[0])
  if min_len < 1.0 or cross < 0.1 * min_len**2:
    raise DegenerateLandmarksError(
      f"degenerate landmarks (eyes or mouth collapse to a line): {lm.tolist()}"
    )
  return origin, x_axis, y_axis


def mask_polygon(landmarks, params: SBIParams) -> np.ndarray:
  """The unblurred mask outline in pixels, (N, 2) float64, not necessarily
  convex: a deformed face ellipse in the face frame."""
  origin, x_axis, y_axis = face_frame(landmarks)
  theta = np.linspace(0.0, 2.0 * np.pi, _HULL_POINTS, endpoint=False)
  radius = np.ones_like(theta)
  coeffs = np.asarray(params.mask_deform, np.float64).reshape(-1, 2)
  for k, (a, b) in enumerate(coeffs, start=2):
    radius += a * np.cos(k * theta) + b * np.sin(k * theta)
  radius = np.maximum(radius, 0.5)
  # y in eye-to-mouth units: 0 at the eyes, 1 at the mouth.
  top, bottom = params.mask_top, params.mask_bottom
  center_y = 0.5 * (1.0 + bottom - top)
  half_h = 0.5 * (1.0 + bottom + top)
  fx = params.mask_half_width * radius * np.cos(theta)
  fy = center_y + half_h * radius * np.sin(theta)
  return origin + fx[:, None] * x_axis + fy[:, None] * y_axis


def _fill(shape, polygon: np.ndarray, landmarks: np.ndarray, offset):
  """Polygon plus the landmark hull, rasterised at 1/16 px (anti-aliased)."""
  canvas = np.zeros(shape, np.uint8)
  shift = 4
  for pts, convex in ((polygon, False), (landmarks, True)):
    fixed = np.round((pts - offset) * (1 << shift)).astype(np.int32)
    if convex:
      fixed = cv2.convexHull(fixed)
      cv2.fillConvexPoly(canvas, fixed, 255, cv2.LINE_AA, shift)
    else:
      cv2.fillPoly(canvas, [fixed], 255, cv2.LINE_AA, shift)
  return canvas.astype(np.float32) / 255.0


# ---------------------------------------------------------------- Transforms


def _colour(x: np.ndarray, p: SBIParams) -> np.ndarray:
  """RGB shift, brightness/contrast (fixed pivot), hue and saturation."""
  # A fixed pivot (not the crop mean) keeps the transform identical on every
  # frame of a clip, whatever the crop holds. Shift, contrast and brightness
  # fold into one multiply-add.
  offset = (np.asarray(p.rgb_shift) - 127.5) * p.contrast + 127.5
  x = x * np.float32(p.contrast) + (offset + p.brightness).astype(np.float32)
  np.clip(x, 0.0, 255.0, out=x)
  if p.hue_shift or p.saturation != 1.0:
    x *= np.float32(1.0 / 255.0)
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)  # float: H in [0, 360)
    hue, sat = hsv[..., 0], hsv[..., 1]
    hue += np.float32(p.hue_shift % 360.0)
    hue[hue >= 360.0] -= 360.0
    sat *= np.float32(p.saturation)
    np.minimum(sat, 1.0, out=sat)
    x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    x *= np.float32(255.0)
  return x


def _frequency(x: np.ndarray, p: SBIParams, face_size: float) -> np.ndarray:
  """Unsharp mask (sharpness > 0) or blur (< 0), then down-up resampling."""
  if p.sharpness:
    sigma = max(p.freq_sigma * face_size, 0.3)
    blurred = cv2.GaussianBlur(x, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    x = x + p.sharpness * (x - blurred)
  if p.downscale < 1.0:
    h, w = x.shape[:2]
    small = (max(1, round(w * p.downscale)), max(1, round(h * p.downscale)))
    x = cv2.resize(x, small, interpolation=cv2.INTER_AREA)
    x = cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)
  return np.clip(x, 0.0, 255.0)


def _warp(x, p: SBIParams, center, x_axis, y_axis, face_size) -> np.ndarray:
  """Small similarity warp about the face centre, shift along face axes."""
  ux = x_axis / np.hypot(*x_axis)
  uy = y_axis / np.hypot(*y_axis)
  shift = face_size * (p.shift[0] * ux + p.shift[1] * uy)
  m = cv2.getRotationMatrix2D(
    (float(center[0]), float(center[1])), p.rotation, p.scale
  )
  m[:, 2] += shift
  h, w = x.shape[:2]
  return cv2.warpAffine(
    x, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
  )


# --------------------------------------------------------------------- Apply


def apply(
  image: np.ndarray, landmarks, params: SBIParams
) -> tuple[np.ndarray, np.ndarray]:
  """Self-blends `image` with fixed `params`; deterministic.

  Args:
    image: (H, W, 3) uint8 RGB, a face crop or a whole frame.
    landmarks: (5, 2) x, y pixels in MTCNN order (LANDMARK_NAMES).
    params: from `sample_params`.

  Returns:
    (blended (H, W, 3) uint8, mask (H, W) float32 in [0, 1]): the mask is the
    per-pixel weight of the transformed source (blend ratio included); where
    it is 0 the output equals the input exactly.
  """
  lm = _check_inputs(image, landmarks)
  h, w = image.shape[:2]
  origin, x_axis, y_axis = face_frame(lm)
  polygon = mask_polygon(lm, params)
  face_size = math.sqrt(max(cv2.contourArea(polygon.astype(np.float32)), 1.0))
  sigma = max(params.mask_blur * face_size, 0.5)
  radius = math.ceil(3.0 * sigma)

  # Work on the mask's bounding box only: a face in a whole frame is a small
  # part of it. Outside the box (polygon + blur radius) the mask is 0.
  pts = np.concatenate([polygon, lm])
  x0 = max(math.floor(pts[:, 0].min()) - radius - 1, 0)
  y0 = max(math.floor(pts[:, 1].min()) - radius - 1, 0)
  x1 = min(math.ceil(pts[:, 0].max()) + radius + 2, w)
  y1 = min(math.ceil(pts[:, 1].max()) + radius + 2, h)
  mask = np.zeros((h, w), np.float32)
  if x1 <= x0 or y1 <= y0:
    return image.copy(), mask  # the face lies entirely outside the image
  # The source is built on a larger context so the warp pulls in real
  # pixels, not reflections of the box edge.
  pad = math.ceil(_WARP_CONTEXT * face_size)
  cx0, cy0 = max(x0 - pad, 0), max(y0 - pad, 0)
  cx1, cy1 = min(x1 + pad, w), min(y1 + pad, h)
  context = image[cy0:cy1, cx0:cx1].astype(np.float32)

  source = _colour(context, params)
  source = _frequency(source, params, face_size)
  center = origin + 0.5 * y_axis - (cx0, cy0)
  source = _warp(source, params, center, x_axis, y_axis, face_size)
  source = source[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]

  # The mask stays on the target's landmarks while the warped source moves
  # under it: the slight misalignment at the blend boundary is one of the
  # traces SBI teaches.
  roi_mask = _fill((y1 - y0, x1 - x0), polygon, lm, (x0, y0))
  ksize = 2 * radius + 1
  roi_mask = cv2.GaussianBlur(
    roi_mask, (ksize, ksize), sigma, borderType=cv2.BORDER_REPLICATE
  )
  roi_mask = np.clip(roi_mask * params.blend, 0.0, 1.0)
  mask[y0:y1, x0:x1] = roi_mask

  target = image[y0:y1, x0:x1].astype(np.float32)
  alpha = roi_mask[..., None]
  mixed = target + alpha * (source - target)
  out = image.copy()
  out[y0:y1, x0:x1] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
  return out, mask


def apply_clip(
  frames: Sequence[np.ndarray] | np.ndarray, landmarks, params: SBIParams
) -> tuple[np.ndarray, np.ndarray]:
  """`apply` with one parameter draw on every frame of a clip.

  Args:
    frames: (T, H, W, 3) uint8, or a sequence of T such images.
    landmarks: (T, 5, 2), the landmarks of each frame.
    params: from `sample_params`, shared by all frames.

  Returns:
    (blended (T, H, W, 3) uint8, masks (T, H, W) float32).
  """
  lms = np.asarray(landmarks, np.float64)
  if len(frames) == 0 or lms.shape != (len(frames), 5, 2):
    raise ValueError(
      f"apply_clip needs T >= 1 frames and (T, 5, 2) landmarks, got "
      f"{len(frames)} frames and landmarks of shape {lms.shape}"
    )
  results = [apply(f, lm, params) for f, lm in zip(frames, lms, strict=True)]
  return (
    np.stack([r[0] for r in results]),
    np.stack([r[1] for r in results]),
  )


def self_blend(
  image: np.ndarray,
  landmarks,
  rng: np.random.Generator,
  ranges: SBIRanges | None = None,
  **overrides,
) -> tuple[np.ndarray, np.ndarray]:
  """Samples parameters from `rng` and applies them: one SBI pseudo-fake.

  Returns (blended uint8 image, mask float32 in [0, 1]); see `apply`.
  """
  _check_inputs(image, landmarks)
  return apply(image, landmarks, sample_params(rng, ranges, **overrides))
