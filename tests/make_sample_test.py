"""Tests for preprocessing.make_sample: the built-in DFDC-style sample."""

import json
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from preprocessing import make_sample as ms

# Small but not default: a non-default size proves the flag is honoured.
_SETTINGS = ms.SampleSettings(
  num_originals=3, fakes_per_original=2, frames=12, width=224, height=160
)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("sample")
  part = ms.make_sample(out, _SETTINGS, progress=False)
  assert part == out / ms.PART_DIR
  return out


def _read(path: pathlib.Path) -> np.ndarray:
  cap = cv2.VideoCapture(str(path))
  frames = []
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
  cap.release()
  assert frames, f"OpenCV decoded no frame from {path}"
  return np.stack(frames)


def test_tree_and_metadata(sample):
  part = sample / ms.PART_DIR
  meta = json.loads((part / "metadata.json").read_text())
  assert meta == ms.metadata(_SETTINGS)
  videos = sorted(p.name for p in part.glob("*.mp4"))
  assert videos == sorted(meta)
  labels = [v["label"] for v in meta.values()]
  assert labels.count("REAL") == 3 and labels.count("FAKE") == 6
  for entry in meta.values():
    assert set(entry) == {"label", "split", "original"}
    assert entry["split"] == "train"
    if entry["label"] == "FAKE":
      assert meta[entry["original"]]["label"] == "REAL"
    else:
      assert entry["original"] is None
  # Complete: the info file lists every file; no temporary leftovers.
  info = json.loads((sample / ms.INFO_FILE).read_text())
  assert set(info["files"]) == {
    f"{ms.PART_DIR}/{n}" for n in [*videos, "metadata.json"]
  }
  assert sorted(p.name for p in sample.iterdir()) == sorted(
    [ms.PART_DIR, ms.INFO_FILE]
  )


def test_clips_decode_and_fakes_share_the_geometry(sample):
  part = sample / ms.PART_DIR
  for real, fakes in ms.clip_names(_SETTINGS):
    real_frames = _read(part / real)
    assert real_frames.shape == (12, 160, 224, 3)
    for fake in fakes:
      assert _read(part / fake).shape == real_frames.shape
  # Clips differ from each other (each has its own camera path).
  a = _read(part / "real_000.mp4").astype(int)
  b = _read(part / "real_001.mp4").astype(int)
  assert np.abs(a - b).mean() > 10
  # ... and the camera moves within a clip.
  assert np.abs(a[0] - a[-1]).mean() > 5


def test_fakes_differ_only_around_the_face(sample):
  part = sample / ms.PART_DIR
  for index, (real, fakes) in enumerate(ms.clip_names(_SETTINGS)):
    boxes = ms.ground_truth(_SETTINGS, index)["boxes"]
    real_frames = _read(part / real).astype(np.int32)
    for fake in fakes:
      diff = np.abs(_read(part / fake).astype(np.int32) - real_frames).sum(-1)
      inside, outside = [], []
      for f, (x1, y1, x2, y2) in enumerate(boxes):
        w, h = x2 - x1, y2 - y1
        face = np.zeros(diff.shape[1:], bool)
        face[int(y1 + 0.2 * h) : int(y2 - 0.2 * h), int(x1) : int(x2)] = True
        # Mask reach (forehead, blur) plus codec blocks: well beyond the box.
        near = np.zeros_like(face)
        near[
          max(int(y1 - 0.8 * h), 0) : int(y2 + 0.6 * h),
          max(int(x1 - 0.6 * w), 0) : int(x2 + 0.6 * w),
        ] = True
        inside.append(diff[f][face].mean())
        outside.append(diff[f][~near].mean())
      assert np.mean(inside) > 8.0, (fake, inside)
      assert np.mean(outside) < 2.0, (fake, outside)
      assert np.mean(inside) > 8 * np.mean(outside)


def test_mtcnn_finds_the_face_in_real_and_fake_frames(sample):
  import torch
  from facenet_pytorch import MTCNN

  detector = MTCNN(keep_all=True, device="cpu")
  part = sample / ms.PART_DIR
  truth = ms.ground_truth(_SETTINGS, 1)["boxes"]
  for name in ["real_001.mp4", "fake_001_0.mp4"]:
    frame = _read(part / name)[6]
    with torch.inference_mode():
      boxes, probs = detector.detect(frame)
    assert boxes is not None and len(boxes) == 1, name
    assert probs[0] > 0.95
    box = np.asarray(boxes[0], float)
    gt = truth[6]
    inter = np.prod(
      np.clip(
        np.minimum(box[2:], gt[2:]) - np.maximum(box[:2], gt[:2]), 0, None
      )
    )
    union = np.prod(box[2:] - box[:2]) + np.prod(gt[2:] - gt[:2]) - inter
    assert inter / union > 0.6, (name, box, gt)


def test_deterministic_for_a_seed(sample, tmp_path):
  ms.make_sample(tmp_path / "again", _SETTINGS, progress=False)
  first = json.loads((sample / ms.INFO_FILE).read_text())
  again = json.loads((tmp_path / "again" / ms.INFO_FILE).read_text())
  assert again == first  # same settings and the same sha256 of every file
  other = ms.SampleSettings(
    num_originals=1,
    fakes_per_original=1,
    frames=4,
    width=224,
    height=160,
    seed=1,
  )
  ms.make_sample(tmp_path / "other", other, progress=False)
  a = _read(sample / ms.PART_DIR / "real_000.mp4")[:4]
  b = _read(tmp_path / "other" / ms.PART_DIR / "real_000.mp4")
  assert not np.array_equal(a, b)


def test_rerun_skips_and_refuses_to_mix(sample, tmp_path):
  part = sample / ms.PART_DIR
  mtimes = {p.name: p.stat().st_mtime_ns for p in part.iterdir()}
  ms.make_sample(sample, _SETTINGS, progress=False)  # same: nothing rewritten
  assert {p.name: p.stat().st_mtime_ns for p in part.iterdir()} == mtimes

  out = tmp_path / "s"
  small = ms.SampleSettings(num_originals=1, fakes_per_original=1, frames=3)
  ms.make_sample(out, small, progress=False)
  bigger = ms.SampleSettings(num_originals=2, fakes_per_original=1, frames=3)
  with pytest.raises(FileExistsError, match="--overwrite"):
    ms.make_sample(out, bigger, progress=False)
  ms.make_sample(out, bigger, overwrite=True, progress=False)
  meta = json.loads((out / ms.PART_DIR / "metadata.json").read_text())
  assert sorted(meta) == [
    "fake_000_0.mp4",
    "fake_001_0.mp4",
    "real_000.mp4",
    "real_001.mp4",
  ]
  # A clip that was tampered with makes the sample "different".
  (out / ms.PART_DIR / "real_001.mp4").write_bytes(b"broken")
  with pytest.raises(FileExistsError, match="different or incomplete"):
    ms.make_sample(out, bigger, progress=False)

  foreign = tmp_path / "foreign"
  foreign.mkdir()
  (foreign / "holiday.mp4").write_bytes(b"x")
  with pytest.raises(FileExistsError, match="holiday.mp4"):
    ms.make_sample(foreign, small, overwrite=True, progress=False)


def test_cli(sample):
  """The CLI on a complete sample reports it (no regeneration, no torch)."""
  args = [
    sys.executable,
    "-m",
    "preprocessing.make_sample",
    str(sample),
    "--num_originals=3",
    "--fakes_per_original=2",
    "--frames=12",
    "--size=224x160",
  ]
  done = subprocess.run(args, capture_output=True, text=True, check=True)
  assert "already present" in done.stdout
  assert str(sample / ms.PART_DIR) in done.stdout
  bad = subprocess.run(
    [*args[:4], "--size=big"], capture_output=True, text=True
  )
  assert bad.returncode != 0 and "WIDTHxHEIGHT" in bad.stderr


def test_bad_settings_are_rejected():
  with pytest.raises(ValueError, match="even"):
    ms.SampleSettings(width=321)
  with pytest.raises(ValueError, match="frames"):
    ms.SampleSettings(frames=0)
