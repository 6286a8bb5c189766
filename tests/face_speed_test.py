"""Keyframe face detection (issue 13, speed): same faces, fewer whole frames.

Unit tests use a detector that finds white squares on black frames (it
works on whole frames and on regions alike and records what it was given);
the MTCNN tests compare the keyframe mode with the legacy pass on the
synthetic sample and, when $ASRID_REAL_SAMPLES is set, on a real 1080p clip.
"""

import contextlib

import cv2
import numpy as np
import pytest

from preprocessing import detect, faces, keyframes

SIZE = (240, 320)  # frame height, width


class _Squares:
  """Finds white squares; records (frames, whole?) per call."""

  def __init__(self):
    self.calls = []

  def detect(self, frames):
    self.calls.append([f.shape[:2] == SIZE for f in frames])
    out = []
    for frame in frames:
      mask = np.ascontiguousarray(frame[..., 0] > 127).astype(np.uint8)
      n, _, stats, _ = cv2.connectedComponentsWithStats(mask)
      boxes = [
        [x, y, x + w, y + h] for x, y, w, h, _ in stats[1:n] if w * h > 20
      ]
      if not boxes:
        out.append(detect.Detections.empty())
        continue
      boxes = np.asarray(boxes, np.float32)
      centres = (boxes[:, :2] + boxes[:, 2:]) / 2
      out.append(
        detect.Detections(
          boxes,
          np.full(len(boxes), 0.99, np.float32),
          np.repeat(centres[:, None], 5, axis=1),
        )
      )
    return out

  @property
  def whole_frames(self) -> int:
    return sum(sum(c) for c in self.calls)


class _RegionSquares(_Squares):
  """Like _Squares, and takes `regions`: keeps squares centred in them."""

  def detect(self, frames, *, regions=None):
    found = super().detect(frames)
    if regions is None:
      return found
    self.calls[-1] = [False] * len(frames)  # not searched whole
    out = []
    for det in found:
      cx = (det.boxes[:, 0] + det.boxes[:, 2]) / 2
      cy = (det.boxes[:, 1] + det.boxes[:, 3]) / 2
      keep = np.zeros(len(det), bool)
      for x0, y0, x1, y1 in regions:
        keep |= (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)
      out.append(
        detect.Detections(
          det.boxes[keep], det.scores[keep], det.landmarks[keep]
        )
      )
    return out


def _frames(num, squares):
  """squares(t) -> [(x, y, side), ...] for frame t."""
  frames = []
  for t in range(num):
    frame = np.zeros(SIZE + (3,), np.uint8)
    for x, y, side in squares(t):
      frame[y : y + side, x : x + side] = 255
    frames.append(frame)
  return frames


def _same(a, b):
  return len(a) == len(b) and all(
    np.array_equal(x.boxes, y.boxes) for x, y in zip(a, b, strict=True)
  )


def test_keyframe_positions():
  assert keyframes.keyframe_positions(11, 5) == [0, 5, 10]
  assert keyframes.keyframe_positions(12, 5) == [0, 5, 10]
  assert keyframes.keyframe_positions(3, 1) == [0, 1, 2]
  assert keyframes.keyframe_positions(0, 5) == []


def test_moving_face_found_in_regions_with_fewer_whole_frames():
  frames = _frames(12, lambda t: [(40 + 6 * t, 60 + 2 * t, 30)])
  legacy = _Squares().detect(frames)
  squares = _Squares()
  counts = {}
  found = faces.detect_faces(squares, frames, keyframe_step=5, counts=counts)
  assert _same(found, legacy)
  # Keyframes 0, 5, 10 whole; the 8 frames between in two region calls,
  # frame 11 (after the last keyframe) around frame 10's face in a third.
  assert squares.whole_frames == 3 == counts["whole_frames"]
  assert counts["region_calls"] == 3 and counts["redetected"] == 0
  # keyframe_step 1: the legacy call, every frame whole, once.
  squares = _Squares()
  assert _same(faces.detect_faces(squares, frames), legacy)
  assert squares.calls == [[True] * 12]


class _ListStream:
  """A decoded list behind video.FrameStream's interface."""

  def __init__(self, frames, expected=None):
    self.frames = frames
    # What the header promised.
    self.expected = len(frames) if expected is None else expected

  def wait(self, i):
    return i < len(self.frames)

  def __getitem__(self, i):
    return self.frames[i]


@pytest.mark.parametrize("num", [1, 2, 11, 12])
def test_streamed_keyframes_detect_as_the_list(num):
  # Frame 7 lacks the face (a region re-search); a second face from 8 on.
  def squares_at(t):
    out = [] if t == 7 else [(40 + 6 * t, 60 + 2 * t, 30)]
    return out + ([(250, 150, 40)] if t >= 8 else [])

  frames = _frames(num, squares_at)
  results = []
  for given in (frames, _ListStream(frames)):
    squares, counts = _RegionSquares(), {}
    found, counts = keyframes.detect_keyframes(squares, given, 5, 0.5)
    results.append((found, counts, squares.whole_frames))
  (listed, c_list, w_list), (streamed, c_stream, w_stream) = results
  assert len(streamed) == num and _same(streamed, listed)
  assert c_stream == c_list and w_stream == w_list
  assert _same(streamed, _Squares().detect(frames))


@pytest.mark.parametrize("num", [2, 11, 12])
@pytest.mark.parametrize("header", [0, -1, -3, 4])
def test_streams_the_header_miscounts_detect_as_the_list(num, header):
  # header: the promised count (0: unknown, else len + header): frames
  # searched early as the last ones are searched again at the next keyframe,
  # which finds the face that appears at frame 8 in them.
  def squares_at(t):
    out = [] if t == 7 else [(40 + 6 * t, 60 + 2 * t, 30)]
    return out + ([(250, 150, 40)] if t >= 8 else [])

  frames = _frames(num, squares_at)
  expected = max(0, num + header) if header else 0
  listed, _ = keyframes.detect_keyframes(_RegionSquares(), frames, 5, 0.5)
  streamed, _ = keyframes.detect_keyframes(
    _RegionSquares(), _ListStream(frames, expected), 5, 0.5
  )
  assert _same(streamed, listed) and _same(listed, _Squares().detect(frames))
  # Through detect_faces too (2 frames: a keyframe and a last frame).
  assert _same(
    faces.detect_faces(_RegionSquares(), frames, keyframe_step=5), listed
  )


def test_expected_samples_without_building_the_list():
  from preprocessing import video

  for count, step, most in [
    (300, 10, 30),
    (291, 10, 30),
    (95, 10, 30),
    (0, 10, 30),
    (7, 1, 30),
    (1, 5, 30),
  ]:
    want = len(video.sample_indices(step, most, count))
    assert video.expected_samples(count, step, most) == want
  assert video.expected_samples(-(2**63), 10, 30) == 0
  assert video.expected_samples(2**32, 10, 30) == 30


def test_face_missing_from_its_region_is_searched_whole():
  # Frame 2 lacks the face: its region comes back empty, so that frame is
  # searched whole. A second face appears at frame 3 and stays: found on
  # frames 3 and 4 through keyframe 5's region; that region is empty on
  # frames 1 and 2, so frame 1 is searched whole too (2 is already).
  def squares_at(t):
    out = [] if t == 2 else [(40, 60, 30)]
    return out + ([(250, 150, 40)] if t >= 3 else [])

  frames = _frames(11, squares_at)
  legacy = _Squares().detect(frames)
  squares = _Squares()
  counts = {}
  found = faces.detect_faces(squares, frames, keyframe_step=5, counts=counts)
  assert _same(found, legacy)
  assert counts["redetected"] == 2 and counts["whole_frames"] == 3 + 2


def test_a_face_that_jumps_out_of_its_region_is_found_in_a_wider_one():
  # Between keyframes 0 and 5 the face jumps 60 px right on frames 2-3,
  # out of its region: a region 3x as large is searched, not the frame.
  def squares_at(t):
    return [(100 + (60 if t in (2, 3) else 0), 100, 30)]

  frames = _frames(11, squares_at)
  squares = _RegionSquares()
  counts = {}
  found = faces.detect_faces(squares, frames, keyframe_step=5, counts=counts)
  assert _same(found, _Squares().detect(frames))
  assert counts["whole_frames"] == squares.whole_frames == 3
  assert counts["redetected"] == 2


def test_a_face_that_leaves_stops_the_whole_searches():
  frames = _frames(11, lambda t: [(40, 60, 30)] if t <= 1 else [])
  squares = _Squares()
  counts = {}
  found = faces.detect_faces(squares, frames, keyframe_step=5, counts=counts)
  assert [len(d) for d in found] == [1, 1] + [0] * 9
  # Frames 2 and 3 searched whole in vain, then the face counts as gone.
  assert counts["redetected"] == keyframes.MAX_MISSES == 2


@pytest.mark.parametrize("detector", [_Squares, _RegionSquares])
def test_a_face_that_leaves_after_the_last_keyframe_stops_the_searches(
  detector,
):
  # Keyframes 0 and 5; frames 6-10 come after the last one and are searched
  # one at a time; the face leaves at frame 6. Only frames 6 and 7 get a
  # wider (or whole) search, as in a gap: the misses carry from frame to
  # frame. Listed and streamed alike.
  frames = _frames(10, lambda t: [(40, 60, 30)] if t <= 5 else [])
  for given in (frames, _ListStream(frames)):
    counts = {}
    found = faces.detect_faces(
      detector(), given, keyframe_step=5, counts=counts
    )
    assert [len(d) for d in found] == [1] * 6 + [0] * 4
    assert counts["redetected"] == keyframes.MAX_MISSES == 2


def test_regions_link_merge_and_snap_to_the_grid():
  def det(*boxes):
    return _Squares().detect(_frames(1, lambda t: boxes))[0]

  first, last = det((40, 60, 30), (200, 20, 20)), det((50, 62, 30))
  regions = sorted(keyframes.gap_regions(first, last, 0.5, SIZE))
  # The linked face: the union of both boxes (40 x 32) grown by half its
  # larger side; the face seen once: its own box grown by half its side;
  # corners snapped outwards to the 4-pixel grid.
  assert regions == [(20, 40, 100, 112), (188, 8, 232, 52)]
  # Overlapping regions merge into one, clipped to the frame.
  merged = keyframes.gap_regions(first, det((55, 60, 30)), 3.0, SIZE)
  assert merged == [(0, 0, 280, 228)]


def test_legacy_settings_search_every_frame_whole():
  assert faces.legacy_settings(keyframe_step=5).keyframe_step == 1
  assert faces.FaceSettings().keyframe_step > 1
  from preprocessing import extract_faces

  parse = extract_faces.build_parser().parse_args
  base = ["--input", "x", "--output", "y"]
  stored = extract_faces.stored_settings(parse([*base, "--keyframe_step", "3"]))
  assert stored["keyframe_step"] == 3 and "region_margin" in stored
  legacy = parse([*base, "--legacy_faces", "--keyframe_step", "3"])
  assert extract_faces.stored_settings(legacy)["keyframe_step"] == 1


def _agreement(old, new):
  """(recall, median IoU) of old's kept-track boxes among new's detections."""
  from preprocessing import tracks

  ious, total = [], 0
  for track in old.raw_tracks:
    for pos, box in zip(track.positions, track.boxes, strict=True):
      total += 1
      cand = new.detections[pos].boxes
      best = tracks.iou_matrix(box, cand).max() if len(cand) else 0.0
      if best >= 0.5:
        ious.append(best)
  return len(ious) / max(total, 1), float(np.median(ious)), total


class _Counting:
  """Counts the frames the wrapped MTCNNDetector searches whole."""

  def __init__(self, inner):
    self.inner, self.whole = inner, 0

  def detect(self, frames, *, min_face_size=None, regions=None):
    if regions is None:
      self.whole += len(frames)
    return self.inner.detect(
      frames, min_face_size=min_face_size, regions=regions
    )


def _compare(path, detector, margin=0.5, **common):
  legacy = faces.legacy_settings(**common)
  new = faces.FaceSettings(**common, keyframe_step=5, region_margin=margin)
  old = faces.extract_video_faces(path, detector, legacy)
  counting = _Counting(detector)
  fast = faces.extract_video_faces(path, counting, new)
  assert old.ok and fast.ok
  return old, fast, counting.whole


def test_keyframe_mode_matches_legacy_on_the_synthetic_sample(tmp_path):
  from preprocessing import make_sample

  part = make_sample.make_sample(
    tmp_path,
    make_sample.SampleSettings(
      num_originals=1, fakes_per_original=0, frames=60
    ),
    progress=False,
  )
  detector = detect.MTCNNDetector()
  (path,) = sorted(part.glob("*.mp4"))
  # The sample's face is 38-55% of the frame height: with the default
  # margin its regions would cover most of the frame, which is then
  # searched whole; a quarter of the face size keeps them smaller.
  old, fast, whole = _compare(
    path, detector, margin=0.25, frame_step=5, max_frames=12, min_frames=3
  )
  recall, iou, total = _agreement(old, fast)
  # The regions are searched with the whole frame's pyramid: same boxes.
  assert total >= 10 and recall >= 0.95 and iou >= 0.98
  assert len(fast.tracks) == len(old.tracks) == 1
  assert whole == fast.detect_counts["whole_frames"] < len(old.frame_indices)


@pytest.mark.real_samples
def test_keyframe_mode_matches_legacy_on_a_real_1080p_clip(real_samples):
  detector = detect.MTCNNDetector()
  old, fast, whole = _compare(
    real_samples / "videos" / "abqwwspghj.mp4",
    detector,
    frame_step=10,
    max_frames=11,
    min_frames=3,
  )
  recall, iou, total = _agreement(old, fast)
  assert total >= 10 and recall >= 0.95 and iou >= 0.98
  assert len(fast.tracks) == len(old.tracks) == 1
  # Keyframes 0, 5, 10 whole; the other 8 frames only in regions.
  assert whole == fast.detect_counts["whole_frames"] <= 5


def test_face_extraction_shares_the_cpu_while_decoding(tmp_path):
  from preprocessing import make_sample

  part = make_sample.make_sample(
    tmp_path,
    make_sample.SampleSettings(num_originals=1, fakes_per_original=0),
    progress=False,
  )
  (path,) = sorted(part.glob("*.mp4"))[:1]

  class Sharing(_RegionSquares):
    entered = []

    @contextlib.contextmanager
    def sharing_cpu(self, busy):
      self.entered.append(busy)
      yield

  detector = Sharing()
  faces.extract_video_faces(path, detector, faces.FaceSettings())
  assert len(detector.entered) == 1
  assert detector.entered[0]() is False  # the stream has ended
  # Without keyframes (frames decoded first) nothing runs beside detection.
  faces.extract_video_faces(path, detector, faces.legacy_settings(min_frames=1))
  assert len(detector.entered) == 1
