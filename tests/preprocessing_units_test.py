"""Unit tests of preprocessing/: tracks, crops, splits, partition, inputs, video.

No face detector runs here; see extract_faces_test.py for the end to end.
"""

import json
import pathlib

import numpy as np
import pytest
from preprocessing_clips import detections as _det
from preprocessing_clips import face_clip

from asrid_jax.data import records
from preprocessing import crop, detect, inputs, splits, tracks, video

# ----------------------------------------------------------------- tracks


def test_iou_matrix_values():
  a = [[0, 0, 10, 10]]
  b = [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]
  np.testing.assert_allclose(
    tracks.iou_matrix(a, b), [[1.0, 50 / 150, 0.0]], rtol=1e-6
  )


def test_link_two_faces_listed_in_changing_order():
  left, right = [10, 10, 40, 50], [100, 10, 130, 50]
  dets = []
  for t in range(6):
    shift = np.array([2 * t, 0, 2 * t, 0])
    pair = [np.add(left, shift), np.add(right, -shift)]
    dets.append(_det(pair if t % 2 else pair[::-1]))
  linked = tracks.link_tracks(dets)
  assert len(linked) == 2
  for track in linked:
    xs = [b[0] for b in track.boxes]
    # Each track stays on one side: its boxes never jump across.
    assert max(xs) - min(xs) <= 12
    assert track.positions == list(range(6))


def test_link_bridges_short_gaps_only():
  box = [10, 10, 40, 50]
  settings = tracks.TrackSettings(max_gap=1)
  dets = [_det([box]), _det([]), _det([box]), _det([]), _det([]), _det([box])]
  linked = tracks.link_tracks(dets, settings)
  assert [t.positions for t in linked] == [[0, 2], [5]]


def test_filter_drops_short_and_low_score_tracks_and_orders():
  big, small, ghost = [0, 0, 60, 60], [100, 0, 130, 30], [200, 0, 220, 20]
  dets = []
  for t in range(10):
    frame = [big, small]
    scores = [0.99, 0.98]
    if t < 2:  # a spurious box in two frames only
      frame.append(ghost)
      scores.append(0.99)
    dets.append(_det(frame, scores))
  dets.append(_det([[300, 0, 340, 40]] * 1, [0.5]))
  # A long but unconfident track is dropped too.
  low = tracks.link_tracks(
    [_det([[300, 100, 340, 140]], [0.72]) for _ in range(10)]
  )
  assert tracks.filter_tracks(low, 10) == []
  kept = tracks.build_tracks(dets, tracks.TrackSettings(min_fraction=0.5))
  assert len(kept) == 2
  # Equal length: the larger face is face 0.
  assert kept[0].boxes[0].tolist() == big
  assert kept[1].boxes[0].tolist() == small


# ------------------------------------------------------------------ crops


def test_crop_is_square_undistorted_with_landmarks_in_crop_pixels():
  frame = np.zeros((120, 200, 3), np.uint8)
  frame[40:44, 60:64] = (255, 0, 0)  # a red dot at (61.5, 41.5)
  frame[90:94, 100:104] = (0, 255, 0)  # a green dot at (101.5, 91.5)
  box = np.array([50, 20, 110, 110], np.float32)  # 60 wide, 90 tall
  points = np.array([[61.5, 41.5], [101.5, 91.5]] + [[80, 60]] * 3)
  image, mapped = crop.crop_face(frame, box, points, size=64, margin=0.25)
  assert image.shape == (64, 64, 3)
  # Square side = 90 * 1.5 = 135 px -> 64: isotropic scale 64/135.
  x0, y0, side = crop.square_region(box, 0.25)
  assert side == 135
  np.testing.assert_allclose(
    mapped[:2], (points[:2] - [x0, y0]) * 64 / 135, atol=1e-4
  )
  red = image[int(mapped[0, 1]), int(mapped[0, 0])]
  green = image[int(mapped[1, 1]), int(mapped[1, 0])]
  assert red[0] > 100 and red[1] < 60
  assert green[1] > 100 and green[0] < 60
  # The square reaches above the frame: those rows are black padding.
  assert y0 < 0 and image[0].max() == 0


def test_to_full_resolution_maps_boxes_and_landmarks():
  det = _det([[10, 20, 30, 40]])
  full = detect.to_full_resolution(det, 0.5, 0.25)
  np.testing.assert_allclose(full.boxes, [[20, 80, 60, 160]])
  np.testing.assert_allclose(full.landmarks[0, 0], [40, 120])


def test_jpeg_roundtrip_close():
  image = np.tile(np.arange(64, dtype=np.uint8)[:, None, None] * 3, (1, 64, 3))
  back = records.decode_jpeg(records.encode_jpeg(image, 95))
  assert back.shape == image.shape
  assert np.abs(back.astype(int) - image).mean() < 3


# ----------------------------------------------------------------- splits


def _items(n_groups, fakes=2, split=None):
  out = []
  for g in range(n_groups):
    orig = f"o{g:03d}.mp4"
    out.append(inputs.VideoItem(orig, pathlib.Path(orig), 0, split=split))
    for k in range(fakes):
      out.append(
        inputs.VideoItem(f"f{g:03d}_{k}.mp4", pathlib.Path("x"), 1, orig)
      )
  return out


def test_splits_grouped_deterministic_and_proportional():
  items = _items(100)
  groups, notes = splits.group_videos(items)
  assert len(groups) == 100 and not notes
  assert all(g.videos[0].label == 0 and len(g) == 3 for g in groups)
  a, _ = splits.assign_splits(groups, seed=3)
  rev, _ = splits.assign_splits(splits.group_videos(items[::-1])[0], seed=3)
  other, _ = splits.assign_splits(groups, seed=4)
  assert a == rev
  assert a != other
  counts = {s: list(a.values()).count(s) for s in splits.SPLITS}
  assert counts == {"train": 70, "val": 20, "test": 10}


def test_tiny_dataset_still_has_every_split():
  groups, _ = splits.group_videos(_items(3))
  a, _ = splits.assign_splits(groups, seed=0)
  assert sorted(a.values()) == ["test", "train", "val"]


def test_honoured_splits_and_conflicts():
  items = _items(4, fakes=1)
  items[0] = inputs.VideoItem("o000.mp4", pathlib.Path("x"), 0, split="test")
  # A fake that disagrees with its original: the group stays together.
  items[1] = inputs.VideoItem(
    "f000_0.mp4", pathlib.Path("x"), 1, "o000.mp4", split="train"
  )
  items[2] = inputs.VideoItem("o001.mp4", pathlib.Path("x"), 0, split="val")
  groups, _ = splits.group_videos(items)
  a, notes = splits.assign_splits(groups, honour_given=True)
  assert a["o000.mp4"] == "test" and a["o001.mp4"] == "val"
  assert [n.name for n in notes] == ["f000_0.mp4"]
  ignored, _ = splits.assign_splits(groups, honour_given=False)
  assert set(ignored) == set(a)


def test_fake_with_missing_original_is_noted_and_grouped():
  items = [inputs.VideoItem("f.mp4", pathlib.Path("f.mp4"), 1, "gone.mp4")]
  groups, notes = splits.group_videos(items)
  assert groups[0].original is None and groups[0].key == "gone.mp4"
  assert notes[0].name == "f.mp4" and "gone.mp4 is missing" in notes[0].reason


@pytest.mark.parametrize("workers", [1, 2, 3, 7])
def test_partition_disjoint_complete_balanced(workers):
  # 12 groups of 4 videos and 20 single videos.
  items = _items(12, fakes=3) + [
    inputs.VideoItem(f"s{i:03d}.mp4", pathlib.Path("x"), 0) for i in range(20)
  ]
  groups, _ = splits.group_videos(items)
  parts = [splits.partition(groups, workers, i) for i in range(workers)]
  keys = [g.key for p in parts for g in p]
  assert sorted(keys) == sorted(g.key for g in groups)  # complete, disjoint
  sizes = [sum(len(g) for g in p) for p in parts]
  assert max(sizes) - min(sizes) <= 4  # one group of 4 videos at most
  again = [splits.partition(groups[::-1], workers, i) for i in range(workers)]
  assert [[g.key for g in p] for p in again] == [
    [g.key for g in p] for p in parts
  ]
  with pytest.raises(ValueError, match="worker_index"):
    splits.partition(groups, workers, workers)


# ----------------------------------------------------------------- inputs


def test_dfdc_tree_any_depth_with_problems(tmp_path):
  deep = tmp_path / "a" / "b c" / "dfdc_part_ü"
  deep.mkdir(parents=True)
  for name in ("r.mp4", "f.mp4", "unlisted.mp4"):
    (deep / name).write_bytes(b"x")
  (deep / "metadata.json").write_text(
    json.dumps(
      {
        "r.mp4": {"label": "REAL", "split": "train", "original": None},
        "f.mp4": {"label": "FAKE", "original": "r.mp4", "split": "test"},
        "gone.mp4": {"label": "REAL"},
        "bad.mp4": {"label": "MAYBE"},
      }
    )
  )
  broken = tmp_path / "z"
  broken.mkdir()
  (broken / "metadata.json").write_text("{not json")
  items, issues = inputs.discover(tmp_path)
  rel = "a/b c/dfdc_part_ü/"
  assert [i.video_id for i in items] == [rel + "f.mp4", rel + "r.mp4"]
  fake = items[0]
  assert fake.label == 1 and fake.original == rel + "r.mp4"
  assert fake.split == "test" and items[1].split == "train"
  reasons = {i.name: i.reason for i in issues}
  assert "file is missing" in reasons[rel + "gone.mp4"]
  assert "MAYBE" in reasons[rel + "bad.mp4"]
  assert "malformed metadata.json" in reasons["z/metadata.json"]
  assert "not listed" in reasons[rel + "unlisted.mp4"]


def test_csv_with_and_without_header(tmp_path):
  (tmp_path / "v").mkdir()
  for name in ("a.mp4", "b.mp4"):
    (tmp_path / "v" / name).write_bytes(b"x")
  outside = tmp_path / "abs.mp4"
  outside.write_bytes(b"x")
  sub = tmp_path / "lists"
  sub.mkdir()
  with_header = sub / "with.csv"
  with_header.write_text(
    "file,label,original,split,source\n"
    "../v/a.mp4,REAL,,val,x\n"
    "../v/b.mp4,FAKE,../v/a.mp4,,y\n"
    f"{outside},1,,,\n"
    "../v/none.mp4,0,,,\n"
    "../v/a.mp4,maybe,,,\n"
  )
  items, issues = inputs.discover(with_header)
  by_id = {i.video_id: i for i in items}
  # Outside the CSV's folder: ids are normalised absolute paths (one per file).
  a, b = (tmp_path / "v" / "a.mp4").as_posix(), (tmp_path / "v" / "b.mp4")
  assert by_id[a].split == "val"
  assert by_id[b.as_posix()].original == a
  assert by_id[outside.as_posix()].label == records.LABEL_FAKE
  assert {i.name for i in issues} == {(tmp_path / "v/none.mp4").as_posix(), a}
  plain = tmp_path / "plain.csv"
  plain.write_text("v/a.mp4,0\nv/b.mp4,1,v/a.mp4\n")
  items, issues = inputs.discover(plain)
  assert [(i.video_id, i.label, i.original) for i in items] == [
    ("v/a.mp4", 0, ""),
    ("v/b.mp4", 1, "v/a.mp4"),
  ]
  assert not issues
  with pytest.raises(FileNotFoundError, match="nowhere"):
    inputs.discover(tmp_path / "nowhere")


# ------------------------------------------------------------------ video


def test_sample_indices():
  assert video.sample_indices(10, 3, 100) == [0, 10, 20]
  assert video.sample_indices(10, 30, 25) == [0, 10, 20]


def test_read_frames_and_bad_files(tmp_path):
  clip = face_clip(tmp_path / "ok.mp4", num_frames=25)
  got = video.read_frames(clip, frame_step=10, max_frames=30, min_frames=3)
  assert got.frame_indices == [0, 10, 20]
  assert got.geometry == video.Geometry(160, 120, 25)
  assert got.frames[0].shape == (120, 160, 3)
  with pytest.raises(video.VideoError, match="too short: 3 sampled"):
    video.read_frames(clip, 10, 30, min_frames=4)
  (tmp_path / "empty.mp4").write_bytes(b"")
  with pytest.raises(video.VideoError, match="empty file"):
    video.read_frames(tmp_path / "empty.mp4")
  (tmp_path / "text.mp4").write_text("hello, I am not a video\n" * 50)
  with pytest.raises(video.VideoError, match="cannot open"):
    video.read_frames(tmp_path / "text.mp4")
  cut = tmp_path / "cut.mp4"
  cut.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])
  with pytest.raises(video.VideoError):
    video.read_frames(cut)


def test_frame_stream_gives_read_frames_and_its_errors(tmp_path):
  clip = face_clip(tmp_path / "ok.mp4", num_frames=25)
  want = video.read_frames(clip, frame_step=5, max_frames=30, min_frames=3)
  stream = video.FrameStream(clip, frame_step=5, max_frames=30, min_frames=3)
  seen = []
  while stream.wait(len(seen)):
    seen.append(stream[len(seen)])
  got = stream.result()
  assert len(seen) == 5 and got.frame_indices == want.frame_indices
  assert got.geometry == want.geometry and got.fps == want.fps
  for a, b, c in zip(seen, got.frames, want.frames, strict=True):
    assert np.array_equal(a, b) and np.array_equal(b, c)
  assert stream.busy > 0 and stream.waited >= 0 and not stream.decoding
  # The same errors as read_frames, raised by result(); wait() says done.
  for path, args, message in (
    (clip, (5, 30, 6), r"too short: 5 sampled frame\(s\) \(every 5th of 25"),
    (tmp_path / "missing.mp4", (5, 30, 1), "file not found"),
  ):
    with pytest.raises(video.VideoError, match=message):
      video.read_frames(path, *args)
    stream = video.FrameStream(path, *args)
    while stream.wait(0) and stream.wait(10**6):
      pass
    with pytest.raises(video.VideoError, match=message):
      stream.result()
