"""Track ranking and the size rule (issue 13), face-size-scaled detection.

The unit tests use hand-made detections; the real-footage test runs MTCNN on
the shared sample videos (skipped when $ASRID_REAL_SAMPLES is absent).
"""

import numpy as np
import pytest
from preprocessing_clips import detections as _det

from preprocessing import detect, faces, tracks


def _scene(num_frames=10):
  """A 120 px anchor, a 40 px face in a wall photo, a 90 px second person."""
  anchor, photo = [500, 100, 600, 220], [50, 50, 84, 90]
  second = [800, 120, 875, 210]
  return [_det([photo, anchor, second]) for _ in range(num_frames)]


def test_size_rule_drops_small_faces_keeps_comparable_ones():
  kept = tracks.build_tracks(_scene())
  heights = [t.median_height for t in kept]
  # The photo face (40 px, a third of the anchor) is dropped; the second
  # person (90 px, 0.75 of the anchor) stays; the anchor is face 0.
  assert heights == [120.0, 90.0]
  strict = tracks.TrackSettings(min_relative_size=0.8)
  assert [t.median_height for t in tracks.build_tracks(_scene(), strict)] == [
    120.0
  ]


def test_legacy_settings_keep_every_size_in_the_old_order():
  legacy = tracks.TrackSettings(**tracks.LEGACY)
  kept = tracks.build_tracks(_scene(), legacy)
  # Old order: equal lengths, then larger area first.
  assert [t.median_height for t in kept] == [120.0, 90.0, 40.0]


def test_weight_ranks_a_steady_main_face_above_a_longer_jittery_one():
  steady = [300, 100, 420, 240]
  dets = []
  for t in range(10):
    # Jitters by half its width: IoU 1/3 between frames (still linked).
    boxes = [[10 + 50 * (t % 2), 10, 110 + 50 * (t % 2), 130]]
    scores = [0.9]
    if t >= 2:  # the steady face is missing in two frames
      boxes.append(steady)
      scores.append(0.999)
    dets.append(_det(boxes, scores))
  by_weight = tracks.build_tracks(dets)
  by_length = tracks.build_tracks(dets, tracks.TrackSettings(**tracks.LEGACY))
  assert by_weight[0].boxes[0].tolist() == steady
  assert by_length[0].boxes[0].tolist() != steady
  assert by_weight[0].stability() == 1.0
  assert by_weight[1].stability() == pytest.approx((1 / 3) / 0.5)
  assert by_weight[1].stability(1.0) == pytest.approx(1 / 3)
  # Moving by a tenth of its width (IoU 0.82) is steady.
  moving = tracks.link_tracks(
    [_det([[10 + 10 * t, 10, 110 + 10 * t, 130]]) for t in range(5)]
  )
  assert moving[0].stability() == 1.0
  with pytest.raises(ValueError, match="steady_iou"):
    tracks.TrackSettings(steady_iou=0.0)
  with pytest.raises(ValueError, match="track rank"):
    tracks.TrackSettings(rank="size")


class _Recorder:
  """Returns one 200 px face per frame and records each call's minimum."""

  def __init__(self):
    self.calls = []

  def detect(self, frames, *, min_face_size=None):
    self.calls.append((len(frames), min_face_size))
    return [_det([[100, 100, 260, 300]]) for _ in frames]


class _Plain:
  def __init__(self):
    self.calls = []

  def detect(self, frames):
    self.calls.append(len(frames))
    return [_det([[100, 100, 260, 300]]) for _ in frames]


def test_detect_faces_scales_the_search_by_the_first_frames_face():
  frames = [np.zeros((8, 8, 3), np.uint8)] * 6
  rec = _Recorder()
  out = faces.detect_faces(rec, frames, 0.4)
  assert len(out) == 6 and rec.calls == [(1, None), (5, 80.0)]
  rec = _Recorder()
  faces.detect_faces(rec, frames, 0.0)
  assert rec.calls == [(6, None)]  # the legacy call, unchanged
  plain = _Plain()  # detectors without the keyword keep working
  assert len(faces.detect_faces(plain, frames, 0.4)) == 6
  assert plain.calls == [6]


def test_legacy_settings_are_the_pre_issue_13_values():
  s = faces.legacy_settings(max_frames=5)
  assert s.max_frames == 5 and s.detect_relative_size == 0.0
  assert s.tracks.min_relative_size == 0.0 and s.tracks.rank == "length"


@pytest.mark.slow
@pytest.mark.real_samples
def test_real_footage_one_track_per_person(real_samples):
  detector = detect.MTCNNDetector()
  videos = real_samples / "videos"
  settings = faces.FaceSettings(
    frame_step=10, max_frames=6, min_frames=3, image_size=32
  )
  single = ["abofeumbvv.mp4", "abqwwspghj.mp4", "cyshih704_real.mp4",
            "cyshih704_fake.mp4"]  # fmt: skip
  for name in single:
    result = faces.extract_video_faces(videos / name, detector, settings)
    assert result.ok and len(result.tracks) == 1, name
  # The opening wide shot of the Hamilton clip (frames 0-15): the singer and
  # a smaller second person (about 0.65 of his face height) both stay.
  two = faces.extract_video_faces(
    videos / "short_hamilton_clip.mp4",
    detector,
    faces.FaceSettings(frame_step=5, max_frames=4, min_frames=3, image_size=32),
  )
  assert two.ok and len(two.tracks) == 2
  main, other = two.tracks
  assert np.median(main.boxes[:, 3] - main.boxes[:, 1]) > np.median(
    other.boxes[:, 3] - other.boxes[:, 1]
  )


class _Stream:
  """Decoded frames behind video.FrameStream's interface."""

  def __init__(self, frames):
    self.frames, self.expected = frames, len(frames)

  def wait(self, i):
    return i < len(self.frames)

  def __getitem__(self, i):
    return self.frames[i]


def test_streamed_keyframes_keep_the_first_faces_size():
  # Keyframes come one at a time: the first sets the size for the others.
  frames = [np.zeros((400, 400, 3), np.uint8)] * 11
  rec = _Recorder()
  calls = []
  original = rec.detect

  def detect(chosen, *, min_face_size=None):
    calls.append((chosen[0].shape[:2], min_face_size))
    return original(chosen, min_face_size=min_face_size)

  rec.detect = detect
  found = faces.detect_faces(rec, _Stream(frames), 0.4, keyframe_step=5)
  assert len(found) == 11
  whole = [size for shape, size in calls if shape == (400, 400)]
  # Keyframes 0, 5, 10 and (the face's regions cover most of the frame)
  # the gaps between them, in that order.
  assert whole == [None, 80.0, 80.0, 80.0, 80.0]


def test_face_size_search_batches_faceless_frames():
  class _None(_Recorder):
    def detect(self, frames, *, min_face_size=None):
      self.calls.append((len(frames), min_face_size))
      return [_det([]) for _ in frames]

  rec = _None()
  search = faces.FaceSizeSearch(rec, 0.4)
  assert len(search([np.zeros((8, 8, 3), np.uint8)] * 40)) == 40
  assert rec.calls == [(1, None), (39, None)] and search.min_face is None


def test_predict_reads_the_track_rule_its_data_was_made_with():
  from asrid_jax import predict_inputs

  # Data made before cut detection and the steady IoU: made without them.
  old = {"settings": {"tracks": {"min_relative_size": 0.5, "rank": "weight"}}}
  settings, _ = predict_inputs.face_settings_from_info(old)
  assert settings.tracks.cut_threshold == 0.0
  assert settings.tracks.steady_iou == 1.0
  # Newer data: what it recorded; no data: today's defaults; flags win.
  new = {"settings": {"tracks": {"cut_threshold": 0.4, "steady_iou": 0.6}}}
  settings, _ = predict_inputs.face_settings_from_info(new)
  assert (settings.tracks.cut_threshold, settings.tracks.steady_iou) == (
    0.4,
    0.6,
  )
  settings, _ = predict_inputs.face_settings_from_info(None)
  assert settings.tracks == tracks.TrackSettings()
  settings, _ = predict_inputs.face_settings_from_info(old, cut_threshold=0.3)
  assert settings.tracks.cut_threshold == 0.3
  # The decoder is predict's own choice (`--decoder`), not the data's.
  assert settings.decoder == "auto"
  settings, _ = predict_inputs.face_settings_from_info(new, decoder="opencv")
  assert settings.decoder == "opencv"


def test_rule_is_recorded_and_legacy_flag_sets_the_old_values():
  from preprocessing import extract_faces

  base = ["--input", "x", "--output", "y"]
  parse = extract_faces.build_parser().parse_args
  stored = extract_faces.stored_settings(parse(base))
  assert stored["tracks"]["min_relative_size"] == 0.5
  assert stored["tracks"]["rank"] == "weight"
  assert stored["tracks"]["cut_threshold"] == 0.33
  assert stored["detect_relative_size"] == 0.0
  legacy = extract_faces.stored_settings(
    parse([*base, "--legacy_faces", "--detect_relative_size", "0.4"])
  )
  assert legacy["tracks"]["min_relative_size"] == 0.0
  assert legacy["tracks"]["rank"] == "length"
  assert legacy["tracks"]["cut_threshold"] == 0.0
  assert legacy["detect_relative_size"] == 0.0
