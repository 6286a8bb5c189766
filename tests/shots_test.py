"""Shot cuts (preprocessing/shots.py): found where the picture changes, and
no face track spans one.

Synthetic frames for the unit tests; the real-footage tests read the shared
sample videos ($ASRID_REAL_SAMPLES) and skip without them.
"""

import numpy as np
import pytest
from preprocessing_clips import detections as _det

from preprocessing import detect, faces, shots, tracks, video


def _scene(colour, num, shift=0):
  """num frames of a textured scene of one colour with a moving square."""
  rng = np.random.default_rng(colour[0])
  base = np.clip(
    np.asarray(colour, np.float32) + rng.normal(0, 12, (120, 160, 3)), 0, 255
  ).astype(np.uint8)
  frames = []
  for t in range(num):
    frame = base.copy()
    x = 20 + shift + 6 * t
    frame[40:80, x : x + 40] = (230, 190, 160)  # a skin-toned square
    frames.append(frame)
  return frames


def test_a_cut_is_found_where_the_scene_changes_and_only_there():
  frames = _scene((40, 60, 150), 5) + _scene((160, 120, 40), 4)
  assert shots.shot_starts(frames) == [5]
  # Motion within one shot is not a cut; threshold 0 turns detection off.
  assert shots.shot_starts(_scene((40, 60, 150), 9)) == []
  assert shots.shot_starts(frames, threshold=0.0) == []
  same = shots.signature(frames[0])
  assert same.shape == (128,) and abs(float(same.sum()) - 1.0) < 1e-5
  assert shots.distance(same, same) < 1e-6
  assert shots.distance(same, shots.signature(frames[-1])) > 0.5


def test_no_track_continues_across_a_cut():
  box = [10, 10, 50, 60]
  dets = [_det([box]) for _ in range(8)]
  assert [t.positions for t in tracks.link_tracks(dets)] == [list(range(8))]
  split = tracks.link_tracks(dets, cuts=[3])
  assert [t.positions for t in split] == [[0, 1, 2], [3, 4, 5, 6, 7]]
  # build_tracks passes the cuts on; the filter then sees two tracks.
  kept = tracks.build_tracks(dets, tracks.TrackSettings(), cuts=[3])
  assert sorted(len(t) for t in kept) == [3, 5]


def test_cut_threshold_is_validated_and_off_in_the_legacy_rule():
  assert tracks.TrackSettings().cut_threshold == shots.DEFAULT_THRESHOLD
  assert tracks.TrackSettings(**tracks.LEGACY).cut_threshold == 0.0
  assert faces.legacy_settings().tracks.cut_threshold == 0.0
  with pytest.raises(ValueError, match="cut_threshold"):
    tracks.TrackSettings(cut_threshold=1.5)


@pytest.mark.real_samples
def test_real_clips_cuts(real_samples):
  videos = real_samples / "videos"
  found = {
    p.name: shots.shot_starts(video.read_frames(p, 10, 30).frames)
    for p in sorted(videos.glob("*.mp4"))
  }
  # The Hamilton clip: wide shot, close-up, medium shot, the audience.
  assert found.pop("short_hamilton_clip.mp4") == [2, 9, 22]
  assert found and all(v == [] for v in found.values()), found


@pytest.mark.slow
@pytest.mark.real_samples
def test_hamilton_tracks_stay_within_their_shots(real_samples):
  path = real_samples / "videos" / "short_hamilton_clip.mp4"
  detector = detect.MTCNNDetector()
  result = faces.extract_video_faces(path, detector, faces.FaceSettings())
  assert result.ok and result.shot_starts == [2, 9, 22]
  bounds = [0, *result.shot_starts, len(result.frame_indices)]
  for track in result.tracks:
    shot = np.searchsorted(bounds, track.frame_orders, side="right")
    assert len(set(shot.tolist())) == 1, track.frame_orders
  # The singer's medium shot and the four faces in the audience; the singer,
  # there for 13 sampled frames (the audience for 6), is face 0.
  assert len(result.tracks) == 5
  assert result.tracks[0].frame_orders.tolist() == list(range(9, 22))
  # Without cut detection a track runs from the singer into the audience.
  legacy_cuts = faces.FaceSettings(
    tracks=tracks.TrackSettings(cut_threshold=0.0)
  )
  merged = faces.extract_video_faces(path, detector, legacy_cuts)
  spans = [
    len(set(np.searchsorted(bounds, t.frame_orders, side="right").tolist()))
    for t in merged.tracks
  ]
  assert max(spans) > 1
