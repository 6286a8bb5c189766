"""Tests for asrid_jax.predict: raw videos in, submission CSV and heatmaps out."""

import csv
import os
import pathlib
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest
from eval_helpers import random_model, save_checkpoint, write_face_video

from asrid_jax import heatmaps, predict
from configs import dyn_mix

TILE = 96


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  config = dyn_mix.get_config("runlocal")
  config.data.image_size = 32
  config.data.clip_len = 3
  config.data.dir = str(tmp_path_factory.mktemp("no_shards"))
  path = tmp_path_factory.mktemp("run")
  save_checkpoint(path, config, random_model(config.model), step=3)
  return path, config


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
  folder = tmp_path_factory.mktemp("videos")
  write_face_video(folder / "face_a.mp4", frames=12)
  write_face_video(folder / "face_b.mp4", frames=8, size=(176, 144))
  write_face_video(folder / "wall.mp4", frames=12, with_face=False)
  (folder / "empty.mp4").write_bytes(b"")
  (folder / "notes.mp4").write_text("not a video\n")
  (folder / "readme.txt").write_text("ignored: not a video suffix\n")
  return folder


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _predict(workdir, inputs, out, *extra):
  argv = [
    *map(str, inputs),
    f"--workdir={workdir}",
    f"--out={out}",
    "--frame_step=2",
    "--max_frames=6",
    *extra,
  ]
  return predict.main(argv)


def test_predict_synthetic_videos(workdir, videos, tmp_path, capsys):
  out = tmp_path / "out"
  assert _predict(workdir[0], [videos], out, "--heatmaps") == 0
  printed = capsys.readouterr().out
  assert "face_a.mp4" in printed and "mean s/video" in printed

  submission = _read_csv(out / "predictions.csv")
  assert list(submission[0]) == ["filename", "label"]
  names = [r["filename"] for r in submission]
  assert sorted(names) == [
    "empty.mp4",
    "face_a.mp4",
    "face_b.mp4",
    "notes.mp4",
    "wall.mp4",
  ]
  scores = {r["filename"]: float(r["label"]) for r in submission}
  assert all(0.0 <= s <= 1.0 for s in scores.values())

  details = {
    r["filename"]: r for r in _read_csv(out / "predictions_details.csv")
  }
  for name in ("face_a.mp4", "face_b.mp4"):
    row = details[name]
    assert row["reason"] == "" and int(row["tracks"]) == 1, row
    assert int(row["faces"]) >= 3
    # The video score is the max over its track scores (one track here).
    assert float(row["label"]) == pytest.approx(
      float(row["track_scores"]), abs=1e-4
    )
    assert float(row["model_s"]) > 0 and float(row["detect_s"]) > 0
  for name, reason in (
    ("empty.mp4", "empty file"),
    ("notes.mp4", "cannot open"),
    ("wall.mp4", "no face"),
  ):
    assert scores[name] == 0.5, name
    assert reason in details[name]["reason"], details[name]

  # Heatmaps: 4 rows (of 4-6 sampled frames), crop + 2 attention maps.
  for name in ("face_a", "face_b"):
    image = cv2.imread(str(out / "heatmaps" / f"{name}.png"))
    assert image is not None
    assert image.shape == (4 * 192, 3 * 192, 3)
  assert not (out / "heatmaps" / "wall.png").exists()


def _fake_faces(track_values, skip_reason=None):
  """A VideoFaces stand-in: track t's crops all have pixel value v_t."""
  tracks = [
    types.SimpleNamespace(
      face_index=t,
      crops=np.full((n, 8, 8, 3), v, np.uint8),
      frame_indices=np.arange(n) * 10,
    )
    for t, (v, n) in enumerate(track_values)
  ]
  return types.SimpleNamespace(
    ok=skip_reason is None,
    skip_reason=skip_reason,
    tracks=tracks,
    timings={"decode": 0.1, "detect": 0.2, "crop": 0.0},
  )


def _fake_forward(images, frame_order=None):
  del frame_order
  frames = images[..., 0, 0, 0].astype(np.float64) / 255.0
  return {"frame_probs": frames, "clip_probs": frames.mean(axis=1)}


@pytest.mark.parametrize(
  "dynamic, track_reduce, want",
  [
    (True, "max", 204 / 255),
    (True, "mean", 153 / 255),
    (False, "max", 204 / 255),
  ],
)
def test_predict_video_scores_tracks(dynamic, track_reduce, want):
  faces = _fake_faces([(102, 5), (204, 3)])
  options = predict.PredictOptions(
    image_size=8,
    clip_len=2,
    dynamic=dynamic,
    batch_size=2,
    track_reduce=track_reduce,
    jpeg_quality=None,
  )
  result = predict.predict_video(
    "v.mp4",
    pathlib.Path("v.mp4"),
    extract=lambda _: faces,
    forward=_fake_forward,
    options=options,
  )
  assert result.reason == ""
  assert result.score == pytest.approx(want, abs=1e-6)
  np.testing.assert_allclose(result.track_scores, [0.4, 0.8], atol=1e-6)
  assert result.faces == 8
  assert result.units == (3 + 2 if dynamic else 8)
  assert {"decode", "detect", "model", "total"} <= set(result.timings)


def test_predict_video_fallbacks():
  options = predict.PredictOptions(
    image_size=8, clip_len=2, dynamic=True, fallback=0.37, jpeg_quality=None
  )

  def broken(_):
    raise RuntimeError("decoder exploded")

  skipped = predict.predict_video(
    "a.mp4",
    pathlib.Path("a.mp4"),
    extract=lambda _: _fake_faces([], skip_reason="no face: 0 detection(s)"),
    forward=_fake_forward,
    options=options,
  )
  assert skipped.score == 0.37 and skipped.reason.startswith("no face")
  failed = predict.predict_video(
    "b.mp4",
    pathlib.Path("b.mp4"),
    extract=broken,
    forward=_fake_forward,
    options=options,
  )
  assert failed.score == 0.37
  assert failed.reason == "error: RuntimeError: decoder exploded"


def test_predict_bad_arguments(workdir, tmp_path, capsys):
  assert predict.main([str(tmp_path), f"--workdir={workdir[0]}"]) == 1
  assert "no video found" in capsys.readouterr().err
  video = write_face_video(tmp_path / "v.mp4", frames=2)
  assert predict.main([str(video), f"--workdir={tmp_path}"]) == 1
  assert "no checkpoints" in capsys.readouterr().err


def test_model_inputs_cut_clips_like_evaluation():
  crops = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(5)])
  clips, orders = predict.model_inputs(
    crops, image_size=8, clip_len=2, jpeg_quality=None
  )
  assert clips.shape == (3, 2, 8, 8, 3)
  # The tail clip is the last T real frames (overlapping), never padded.
  np.testing.assert_array_equal(orders, [[0, 1], [2, 3], [3, 4]])
  np.testing.assert_array_equal(clips[2, :, 0, 0, 0], [30, 40])
  assert clips[1, 0, 0, 0, 0] == 20


def test_render_heatmap_size_and_overlay():
  crops = np.zeros((2, 32, 32, 3), np.uint8)
  maps = np.zeros((2, 4, 4, 3), np.float32)
  maps[:, 0, 0, :] = 1.0  # attention in the top-left corner
  grid = heatmaps.render_heatmap(crops, maps, ["a", "b"], tile=TILE)
  assert grid.shape == (2 * TILE, 4 * TILE, 3) and grid.dtype == np.uint8
  cell = grid[TILE : 2 * TILE, TILE : 2 * TILE].astype(int)
  # Hot (red) where the map is high, cold (blue) elsewhere.
  assert cell[-5, 5, 2] > cell[-5, 5, 0]
  assert cell[TILE // 6 + 2, 2, 0] > cell[TILE // 6 + 2, 2, 2]
  no_maps = heatmaps.render_heatmap(crops, None, ["a", "b"], tile=TILE)
  assert no_maps.shape == (2 * TILE, TILE, 3)


def test_import_does_not_load_torch():
  code = (
    "import sys, asrid_jax.predict, asrid_jax.evaluate; "
    "sys.exit('torch' in sys.modules)"
  )
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = pathlib.Path(__file__).resolve().parents[1]
  done = subprocess.run(
    [sys.executable, "-c", code], cwd=root, env=env, capture_output=True
  )
  assert done.returncode == 0, done.stderr.decode()[-2000:]


@pytest.mark.real_samples
def test_predict_real_videos(workdir, real_samples, tmp_path):
  folder = real_samples / "videos"
  expected = sorted(p.name for p in folder.glob("*.mp4"))
  out = tmp_path / "out"
  argv = [
    str(folder),
    f"--workdir={workdir[0]}",
    f"--out={out}",
    "--frame_step=10",
    "--max_frames=4",
    "--heatmaps",
    "--heatmap_frames=2",
  ]
  assert predict.main(argv) == 0
  rows = _read_csv(out / "predictions.csv")
  assert sorted(r["filename"] for r in rows) == expected
  assert all(0.0 <= float(r["label"]) <= 1.0 for r in rows)
  details = {
    r["filename"]: r for r in _read_csv(out / "predictions_details.csv")
  }
  for name in expected:
    assert details[name]["reason"] == "", details[name]
    tracks = int(details[name]["tracks"])
    image = cv2.imread(str(out / "heatmaps" / name.replace(".mp4", ".png")))
    assert image is not None
    assert image.shape[1] == 3 * 192
    assert image.shape[0] == 192 * 2 * min(tracks, 3)
  assert int(details["short_hamilton_clip.mp4"]["tracks"]) == 2
