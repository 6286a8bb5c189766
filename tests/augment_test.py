"""Tests for the training augmentations (asrid_jax/data/augment.py)."""

import numpy as np
import pytest

from asrid_jax.data import augment, synthetic

OPS = (
  "flip_prob",
  "part_drop_prob",
  "erase_prob",
  "color_prob",
  "downscale_prob",
  "noise_prob",
  "jpeg_prob",
)


def clip(t=3, size=48, label=0, same=False):
  rng = np.random.default_rng(0)
  frames, marks = zip(
    *[synthetic.draw_face(size, rng) for _ in range(t)], strict=True
  )
  if same:
    frames, marks = [frames[0]] * t, [marks[0]] * t
  return {
    "image": np.stack(frames),
    "landmarks": np.stack(marks),
    "label": np.int32(label),
    "frame_order": np.arange(t, dtype=np.int32),
  }


def run(config, example, seed=0, sbi_prob=0.0):
  op = augment.Augment(config, sbi_prob=sbi_prob)
  return op.random_map(example, np.random.default_rng(seed))


def test_off_is_the_identity():
  ex = clip()
  out = run(augment.AugmentConfig.off(), ex)
  np.testing.assert_array_equal(out["image"], ex["image"])
  np.testing.assert_array_equal(out["landmarks"], ex["landmarks"])
  assert out["label"] == ex["label"]


@pytest.mark.parametrize("prob", OPS)
def test_each_op_changes_the_image_when_forced_and_keeps_format(prob):
  ex = clip()
  out = run(augment.AugmentConfig.off(**{prob: 1.0}), ex)
  assert out["image"].shape == ex["image"].shape
  assert out["image"].dtype == np.uint8
  assert not np.array_equal(out["image"], ex["image"])
  assert np.all(np.isfinite(out["landmarks"]))
  assert out["label"] == ex["label"]
  # Shared parameters: identical frames stay identical (noise excepted).
  same = clip(same=True)
  out = run(augment.AugmentConfig.off(**{prob: 1.0}), same, seed=3)["image"]
  if prob != "noise_prob":
    assert all(np.array_equal(out[0], f) for f in out[1:])
  else:
    assert not np.array_equal(out[0], out[1])


def test_defaults_are_deterministic_per_rng():
  ex = clip()
  a = run(augment.AugmentConfig(), ex, seed=5)
  b = run(augment.AugmentConfig(), ex, seed=5)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert ex["image"].flags.writeable  # input untouched
  np.testing.assert_array_equal(ex["image"], clip()["image"])


def test_flip_moves_the_landmarks_with_the_face():
  ex = clip()
  img, marks = augment.hflip(ex["image"], ex["landmarks"])
  w = ex["image"].shape[2]
  np.testing.assert_allclose(marks[:, 0, 0], w - 1 - ex["landmarks"][:, 1, 0])
  np.testing.assert_allclose(marks[:, 3, 1], ex["landmarks"][:, 4, 1])
  back_img, back_marks = augment.hflip(img, marks)
  np.testing.assert_array_equal(back_img, ex["image"])
  np.testing.assert_allclose(back_marks, ex["landmarks"])
  # The flipped image's left eye point sits on a dark eye pixel.
  x, y = np.round(marks[0, 0]).astype(int)
  assert img[0, y, x].mean() < 80


@pytest.mark.parametrize(
  "part,points", [("eyes", [0, 1]), ("nose", [2]), ("mouth", [3, 4])]
)
def test_part_dropout_blanks_that_part(part, points):
  ex = clip()
  out = augment.drop_part(ex["image"], ex["landmarks"], part)
  for t in range(len(out)):
    for p in points:
      x, y = np.round(ex["landmarks"][t, p]).astype(int)
      assert not out[t, y, x].any()
  changed = np.any(out != ex["image"], axis=-1)
  assert 0 < changed.mean() < 0.25  # a part, not the face
  with pytest.raises(ValueError, match="face part"):
    augment.drop_part(ex["image"], ex["landmarks"], "ears")


def test_sbi_blends_the_face_not_the_background():
  ex = clip(label=0)
  out = run(augment.AugmentConfig.off(), ex, sbi_prob=1.0)
  assert out["label"] == 1
  diff = np.any(out["image"] != ex["image"], axis=-1)  # (T, H, W)
  assert diff.mean() > 0.05
  lm = ex["landmarks"]
  for t in range(len(diff)):
    # Corners lie far outside the face: untouched. The face centre changed.
    assert not diff[t, :4, :4].any() and not diff[t, -4:, -4:].any()
    cx, cy = np.round(lm[t, 2]).astype(int)
    assert diff[t, cy - 3 : cy + 4, cx - 3 : cx + 4].any()
  fake = clip(label=1)
  out = run(augment.AugmentConfig.off(), fake, sbi_prob=1.0)
  np.testing.assert_array_equal(out["image"], fake["image"])
  assert out["label"] == 1


def test_from_config():
  assert augment.Augment.from_config(None) is None
  assert (
    augment.Augment.from_config(False, sbi_prob=0.2).config
    == augment.AugmentConfig.off()
  )
  assert augment.Augment.from_config(True).config == augment.AugmentConfig()
  op = augment.Augment.from_config({"jpeg_quality": [30, 50], "flip_prob": 0.0})
  assert op.config.jpeg_quality == (30, 50) and op.config.flip_prob == 0.0
  with pytest.raises(ValueError, match="unknown augment keys"):
    augment.Augment.from_config({"blur": 1})
  with pytest.raises(ValueError, match="jpeg_quality"):
    augment.AugmentConfig(jpeg_quality=(90, 50))


def test_sbi_keeps_real_when_there_is_nothing_to_blend():
  ex = clip()
  # Degenerate landmarks (all at one point) and a face wholly outside the
  # crop: the image is not altered, so the label must stay REAL.
  for marks in (
    np.full_like(ex["landmarks"], 20.0),
    ex["landmarks"] + 1000.0,
  ):
    out = run(augment.AugmentConfig.off(), dict(ex, landmarks=marks), 0, 1.0)
    np.testing.assert_array_equal(out["image"], ex["image"])
    assert out["label"] == 0
  # Bad input is not swallowed: a malformed landmark array still raises.
  bad = dict(ex, landmarks=np.full_like(ex["landmarks"], np.nan))
  with pytest.raises(ValueError, match="finite"):
    run(augment.AugmentConfig.off(), bad, 0, 1.0)
