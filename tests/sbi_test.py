"""Tests for asrid_jax.data.sbi: self-blended pseudo-fakes."""

import dataclasses

import numpy as np
import pytest

from asrid_jax.data import sbi

# Landmarks of a frontal face in a crop, as fractions of the crop size (the
# layout of a 1/3-margin MTCNN crop).
_LM_FRAC = np.array(
  [[0.38, 0.42], [0.62, 0.42], [0.50, 0.53], [0.41, 0.64], [0.59, 0.64]]
)


def _image(size: int, seed: int = 0) -> np.ndarray:
  """A textured test image: smooth colour gradients plus fine noise."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  base = np.stack([80 + 100 * xx, 60 + 120 * yy, 150 - 60 * xx * yy], -1)
  return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _landmarks(size: int) -> np.ndarray:
  return _LM_FRAC * size


@pytest.mark.parametrize("size", [64, 380])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_blends_face_and_keeps_background(size, seed):
  image = _image(size)
  out, mask = sbi.self_blend(
    image, _landmarks(size), np.random.default_rng(seed)
  )
  assert out.shape == image.shape and out.dtype == np.uint8
  assert mask.shape == image.shape[:2] and mask.dtype == np.float32
  assert 0.0 <= mask.min() and mask.max() <= 1.0
  assert mask.max() >= 0.2  # blend ratios are 0.25 .. 1
  diff = np.abs(out.astype(np.int32) - image).sum(-1)
  # Inside the mask the face visibly changes ...
  core = mask >= 0.9 * mask.max()
  assert core.sum() > 0.05 * size * size
  assert diff[core].mean() > 2.0
  # ... where the mask is zero nothing changes, and the mask is zero far from
  # the face (corners and borders of the crop).
  np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
  border = max(2, size // 32)
  assert mask[:, :border].max() == 0 and mask[:, -border:].max() == 0
  assert mask[-border:].max() == 0
  # The mask covers every landmark.
  for x, y in _landmarks(size).astype(int):
    assert mask[y, x] > 0.5 * mask.max()


def test_deterministic_per_seed_and_different_across_seeds():
  image, lm = _image(128), _landmarks(128)
  a = sbi.self_blend(image, lm, np.random.default_rng(7))
  b = sbi.self_blend(image, lm, np.random.default_rng(7))
  c = sbi.self_blend(image, lm, np.random.default_rng(8))
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[0], c[0])
  assert not np.array_equal(a[1], c[1])
  assert sbi.sample_params(np.random.default_rng(7)) == sbi.sample_params(
    np.random.default_rng(7)
  )


def test_input_is_not_modified():
  image = _image(96)
  before = image.copy()
  sbi.self_blend(image, _landmarks(96), np.random.default_rng(0))
  np.testing.assert_array_equal(image, before)


def test_fixed_params_follow_the_face_across_frames():
  """One draw on a moving face gives the same alteration, moved with it."""
  params = sbi.sample_params(np.random.default_rng(3))
  canvas = _image(400, seed=5)
  lm = _landmarks(160) + 60  # face well inside the 400x400 frame
  shift = np.array([37, 21])  # x, y
  moved = np.roll(canvas, (shift[1], shift[0]), axis=(0, 1))
  outs, masks = sbi.apply_clip(
    np.stack([canvas, moved]), np.stack([lm, lm + shift]), params
  )
  # Compare the face region (away from np.roll's wrap-around). SIMD paths
  # differ with memory alignment, so floats match to rounding, pixels to 1.
  y0, y1, x0, x1 = 20, 260, 20, 260
  sy, sx = shift[1], shift[0]
  np.testing.assert_allclose(
    masks[1, y0 + sy : y1 + sy, x0 + sx : x1 + sx],
    masks[0, y0:y1, x0:x1],
    atol=1e-5,
  )
  moved_out = outs[1, y0 + sy : y1 + sy, x0 + sx : x1 + sx].astype(int)
  assert np.abs(moved_out - outs[0, y0:y1, x0:x1]).max() <= 1
  assert masks[0].max() > 0
  # The alteration itself is large compared with that rounding.
  assert np.abs(outs[0].astype(int) - canvas).max() > 10


def test_apply_clip_matches_apply_per_frame():
  params = sbi.sample_params(np.random.default_rng(1))
  frames = np.stack([_image(96, s) for s in range(3)])
  lms = np.stack([_landmarks(96) + d for d in (0, 2, -3)])
  outs, masks = sbi.apply_clip(frames, lms, params)
  assert outs.shape == frames.shape and masks.shape == frames.shape[:3]
  for i in range(3):
    out, mask = sbi.apply(frames[i], lms[i], params)
    np.testing.assert_array_equal(outs[i], out)
    np.testing.assert_array_equal(masks[i], mask)


def test_ranges_and_overrides():
  rng = np.random.default_rng(0)
  p = sbi.sample_params(rng, blend_choices=(1.0,), downscale_prob=0.0)
  assert p.blend == 1.0 and p.downscale == 1.0
  assert len(p.mask_deform) == 2 * sbi.SBIRanges().mask_harmonics
  ranges = sbi.SBIRanges(scale=(1.0, 1.0), rotation=0.0, shift=0.0)
  p = sbi.sample_params(rng, ranges)
  assert (p.scale, p.rotation, p.shift) == (1.0, 0.0, (0.0, 0.0))
  norm = np.linalg.norm(p.rgb_shift)
  lo, hi = sbi.SBIRanges().rgb_shift
  assert lo <= norm <= hi
  with pytest.raises(ValueError, match="scale"):
    sbi.SBIRanges(scale=(1.1, 0.9))
  with pytest.raises(ValueError, match="blend_choices"):
    sbi.SBIRanges(blend_choices=(0.0,))


def test_full_blend_with_identity_source_is_identity():
  """No colour/frequency/warp change: blending changes nothing at all."""
  params = dataclasses.replace(
    sbi.sample_params(np.random.default_rng(0)),
    rgb_shift=(0.0, 0.0, 0.0),
    hue_shift=0.0,
    saturation=1.0,
    brightness=0.0,
    contrast=1.0,
    sharpness=0.0,
    downscale=1.0,
    scale=1.0,
    rotation=0.0,
    shift=(0.0, 0.0),
  )
  image = _image(128)
  out, mask = sbi.apply(image, _landmarks(128), params)
  assert mask.max() > 0
  assert np.abs(out.astype(int) - image).max() <= 1


def test_face_outside_the_image_leaves_it_unchanged():
  image = _image(64)
  out, mask = sbi.self_blend(
    image, _landmarks(64) + 500, np.random.default_rng(0)
  )
  np.testing.assert_array_equal(out, image)
  assert mask.max() == 0


@pytest.mark.parametrize(
  "image, landmarks, match",
  [
    (np.zeros((64, 64, 3), np.float32), _landmarks(64), "uint8"),
    (np.zeros((64, 64), np.uint8), _landmarks(64), r"\(H, W, 3\)"),
    (np.zeros((64, 64, 3), np.uint8), np.zeros((4, 2)), "5 finite"),
    (np.zeros((64, 64, 3), np.uint8), np.full((5, 2), np.nan), "5 finite"),
    (np.zeros((64, 64, 3), np.uint8), np.full((5, 2), 30.0), "degenerate"),
  ],
)
def test_bad_input_is_rejected(image, landmarks, match):
  with pytest.raises(ValueError, match=match):
    sbi.self_blend(image, landmarks, np.random.default_rng(0))
