"""One video -> face tracks with crops: decode, sample, detect, track, crop.

This is the single code path shared by `extract_faces` (which encodes and
writes the crops to shards) and by prediction on raw videos (which feeds them
to the model directly). Nothing here writes files.
"""

import contextlib
import dataclasses
import inspect
import os
import pathlib
import time
from collections.abc import Iterator

import numpy as np

from preprocessing import crop as crop_lib
from preprocessing import keyframes as keyframes_lib
from preprocessing import shots as shots_lib
from preprocessing import tracks as tracks_lib
from preprocessing import video as video_lib
from preprocessing.detect import Detections, Detector


@dataclasses.dataclass(frozen=True)
class FaceSettings:
  """Everything that decides which crops a video yields.

  Attributes:
    frame_step: sample every Nth frame.
    max_frames: at most this many sampled frames per video.
    min_frames: a video with fewer sampled frames is skipped.
    margin: added to each side of a box, as a fraction of its size.
    image_size: side of the square crops.
    detect_relative_size: after the first sampled frame searched whole with
      a face (detected at the detector's own settings), search faces only
      down to this fraction of its largest face, on frames shrunk to match
      (`FaceSizeSearch`); 0 detects every frame at the detector's settings.
    tracks: linking and filtering of face tracks.
    decoder: "auto" (PyAV, dropping the unsampled frames nothing refers
      to, where the stream allows it) or "opencv" (every frame decoded);
      the sampled frames are the same either way (preprocessing/video.py),
      so it is not among the settings a resume must repeat.
  """

  frame_step: int = 10
  max_frames: int = 30
  min_frames: int = 8
  margin: float = 1 / 3
  image_size: int = 380
  detect_relative_size: float = 0.0
  keyframe_step: int = 5
  region_margin: float = 0.5
  tracks: tracks_lib.TrackSettings = tracks_lib.TrackSettings()
  decoder: str = "auto"

  def as_dict(self) -> dict:
    return dataclasses.asdict(self)


def legacy_settings(**overrides) -> FaceSettings:
  """The settings that reproduce extraction before issue 13 exactly."""
  tracks = dataclasses.replace(
    overrides.pop("tracks", tracks_lib.TrackSettings()), **tracks_lib.LEGACY
  )
  return FaceSettings(
    **{
      **overrides,
      "detect_relative_size": 0.0,
      "keyframe_step": 1,
      "decoder": "opencv",
    },
    tracks=tracks,
  )


def detect_faces(
  detector: Detector,
  frames: list[np.ndarray],
  relative_size: float = 0.0,
  keyframe_step: int = 1,
  region_margin: float = 0.5,
  counts: dict[str, int] | None = None,
) -> list[Detections]:
  """Detections per frame: every frame whole, or keyframes and regions.

  With `keyframe_step` above 1, every `keyframe_step`-th frame is searched
  whole and the frames between and after only around the faces found on
  those (preprocessing/keyframes.py). `counts`, when given, receives how
  many frames were searched whole and how many region calls were made.
  The whole-frame searches use `relative_size` as `FaceSizeSearch` says.
  """
  whole = FaceSizeSearch(detector, relative_size)

  if keyframe_step <= 1:
    found = whole(frames)
    stats = {"whole_frames": len(frames), "region_calls": 0, "redetected": 0}
  else:
    found, stats = keyframes_lib.detect_keyframes(
      detector, frames, keyframe_step, region_margin, whole
    )
  if counts is not None:
    counts.update(stats)
  return found


class FaceSizeSearch:
  """Whole-frame searches at a resolution set by the face size.

  MTCNN's cost is its image pyramid, which grows with the square of
  frame size / smallest face searched. A 1080p DFDC face is 130-400 px
  tall, far above the detector's 40 px floor, so searching down to 40 px
  on every frame is most of the cost. The first frame searched is detected
  at the detector's own settings; once one had a face, the frames after it
  (in this call and later ones: keyframes come one at a time) only down to
  `relative_size` times its largest face (on frames shrunk to match). The
  track rule drops faces below `TrackSettings.min_relative_size` of the main
  face anyway, so `relative_size` should stay below that, leaving room for
  the face to change size during the video. With `relative_size` 0, or a
  detector without `min_face_size`, every frame is detected at the
  detector's settings.
  """

  def __init__(self, detector: Detector, relative_size: float = 0.0):
    self.detector = detector
    supports = "min_face_size" in inspect.signature(detector.detect).parameters
    self.relative_size = relative_size if supports else 0.0
    self.min_face: float | None = None

  def __call__(self, frames: list[np.ndarray]) -> list[Detections]:
    if self.relative_size <= 0 or not len(frames):
      return self.detector.detect(frames)
    if self.min_face is not None:
      return self.detector.detect(frames, min_face_size=self.min_face)
    first = self.detector.detect(frames[:1])
    if len(first[0]):
      heights = first[0].boxes[:, 3] - first[0].boxes[:, 1]
      self.min_face = self.relative_size * float(np.max(heights))
      rest = {"min_face_size": self.min_face}
    else:  # the rest of this call at the detector's settings
      rest = {}
    if len(frames) == 1:
      return first
    return first + self.detector.detect(frames[1:], **rest)


@dataclasses.dataclass
class Reference:
  """An original's face tracks, reusable on fakes of the same geometry."""

  video_id: str
  geometry: video_lib.Geometry
  frame_indices: list[int]
  tracks: list[tracks_lib.Track]

  def fits(self, frames: video_lib.SampledFrames) -> bool:
    return (
      frames.geometry == self.geometry
      and frames.frame_indices == self.frame_indices
    )


@dataclasses.dataclass
class FaceTrack:
  """The crops of one face track; arrays are indexed like `frame_orders`."""

  face_index: int
  frame_orders: np.ndarray  # int (n,) position among the sampled frames
  frame_indices: np.ndarray  # int (n,) frame number in the video
  boxes: np.ndarray  # float32 (n, 4) source-video pixels
  scores: np.ndarray  # float32 (n,)
  landmarks: np.ndarray  # float32 (n, 5, 2) crop pixels
  crops: np.ndarray  # uint8 (n, S, S, 3) RGB


@dataclasses.dataclass
class VideoFaces:
  """What one video yields, or why it yields nothing (`skip_reason`)."""

  path: pathlib.Path
  skip_reason: str | None = None
  geometry: video_lib.Geometry | None = None
  fps: float = 0.0
  frame_indices: list[int] = dataclasses.field(default_factory=list)
  tracks: list[FaceTrack] = dataclasses.field(default_factory=list)
  # 'self' when faces were detected on this video, else the original's id.
  boxes_from: str = "self"
  raw_tracks: list[tracks_lib.Track] = dataclasses.field(default_factory=list)
  timings: dict[str, float] = dataclasses.field(default_factory=dict)
  # Frames searched whole, region calls, frames searched whole again.
  detect_counts: dict[str, int] = dataclasses.field(default_factory=dict)
  # Every sampled frame's detections, before tracking (empty when reused).
  detections: list[Detections] = dataclasses.field(default_factory=list)
  # Sampled-frame positions where a new shot starts (no track spans a cut).
  shot_starts: list[int] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return self.skip_reason is None

  @property
  def num_faces(self) -> int:
    return sum(len(t.frame_orders) for t in self.tracks)

  def reference(self, video_id: str) -> Reference | None:
    """Its tracks as a Reference for fakes, None when it has none."""
    if not self.ok or self.boxes_from != "self" or not self.raw_tracks:
      return None
    return Reference(
      video_id, self.geometry, list(self.frame_indices), self.raw_tracks
    )

  def iter_faces(self) -> Iterator[tuple[FaceTrack, int]]:
    """(track, i) in frame order, then face order within a frame."""
    entries = [
      (int(t.frame_orders[i]), t.face_index, t, i)
      for t in self.tracks
      for i in range(len(t.frame_orders))
    ]
    for _, _, track, i in sorted(entries, key=lambda e: (e[0], e[1])):
      yield track, i


def extract_video_faces(
  path: str | os.PathLike,
  detector: Detector | None,
  settings: FaceSettings = FaceSettings(),
  reference: Reference | None = None,
) -> VideoFaces:
  """Decodes, samples, detects (or reuses `reference`), tracks and crops.

  Args:
    path: the video file.
    detector: finds faces; may be None only when `reference` fits.
    settings: sampling, tracking and crop settings.
    reference: an original's tracks; used instead of detection when the
      video has the same frame size, frame count and sampled frames.

  Returns:
    A VideoFaces; `skip_reason` says why a video yields no crops (cannot be
    decoded, too short, no face), so one bad video never stops a run.
  """
  path = pathlib.Path(path)
  timings = {"decode": 0.0, "detect": 0.0, "crop": 0.0}
  detections, counts = None, {}
  t0 = time.perf_counter()
  try:
    if (
      reference is None and detector is not None and settings.keyframe_step > 1
    ):
      # Keyframe detection consumes the frames in order: it runs while the
      # later ones are still being decoded (video.FrameStream).
      frames, detections, counts = _decode_and_detect(
        path, detector, settings, timings
      )
    else:
      frames = video_lib.read_frames(
        path,
        settings.frame_step,
        settings.max_frames,
        settings.min_frames,
        settings.decoder,
      )
      timings["decode"] = time.perf_counter() - t0
  except video_lib.VideoError as e:
    timings["decode"] = time.perf_counter() - t0 - timings["detect"]
    return VideoFaces(path, skip_reason=str(e), timings=timings)
  result = VideoFaces(
    path,
    geometry=frames.geometry,
    fps=frames.fps,
    frame_indices=frames.frame_indices,
    timings=timings,
  )

  t0 = time.perf_counter()
  if detections is None and reference is not None and reference.fits(frames):
    result.boxes_from = reference.video_id
    kept = reference.tracks
  else:
    if detector is None:
      raise ValueError(f"{path}: no detector and no fitting reference")
    if detections is None:
      detections = detect_faces(
        detector,
        frames.frames,
        settings.detect_relative_size,
        settings.keyframe_step,
        settings.region_margin,
        counts=result.detect_counts,
      )
    else:
      result.detect_counts.update(counts)
    result.detections = detections
    result.shot_starts = shots_lib.shot_starts(
      frames.frames, settings.tracks.cut_threshold
    )
    kept = tracks_lib.build_tracks(
      detections, settings.tracks, result.shot_starts
    )
    if not kept:
      raw = sum(len(d) for d in detections)
      result.skip_reason = (
        f"no face: {raw} detection(s) in {len(detections)} sampled frames, "
        "none in a track long and confident enough"
      )
  timings["detect"] += time.perf_counter() - t0
  result.raw_tracks = list(kept)

  t0 = time.perf_counter()
  for face_index, track in enumerate(kept):
    result.tracks.append(_crop_track(face_index, track, frames, settings))
  timings["crop"] = time.perf_counter() - t0
  return result


def _decode_and_detect(path, detector, settings, timings):
  """Keyframe detection on frames as a background thread decodes them.

  timings: 'decode' is the time spent waiting for frames (the decode cost
  detection could not hide), 'detect' the rest, so their sum is the wall
  time of both; 'decode_busy' is the decoding thread's own time.
  """
  t0 = time.perf_counter()
  stream = video_lib.FrameStream(
    path,
    settings.frame_step,
    settings.max_frames,
    settings.min_frames,
    settings.decoder,
  )
  counts: dict[str, int] = {}
  # A CPU detector leaves a core to the decoder while it decodes.
  share = getattr(detector, "sharing_cpu", None)
  sharing = (
    share(lambda: stream.decoding) if share else contextlib.nullcontext()
  )
  try:
    with sharing:
      detections = detect_faces(
        detector,
        stream,
        settings.detect_relative_size,
        settings.keyframe_step,
        settings.region_margin,
        counts=counts,
      )
  finally:
    try:
      frames = stream.result()
    finally:
      wall = time.perf_counter() - t0
      timings["decode"] = stream.waited
      timings["detect"] = wall - stream.waited
      timings["decode_busy"] = stream.busy
  return frames, detections, counts


def _crop_track(
  face_index: int,
  track: tracks_lib.Track,
  frames: video_lib.SampledFrames,
  settings: FaceSettings,
) -> FaceTrack:
  crops, landmarks = [], []
  for pos, box, points in zip(
    track.positions, track.boxes, track.landmarks, strict=True
  ):
    image, points_crop = crop_lib.crop_face(
      frames.frames[pos], box, points, settings.image_size, settings.margin
    )
    crops.append(image)
    landmarks.append(points_crop)
  positions = np.asarray(track.positions, np.int64)
  return FaceTrack(
    face_index=face_index,
    frame_orders=positions,
    frame_indices=np.asarray(frames.frame_indices, np.int64)[positions],
    boxes=np.asarray(np.stack(track.boxes), np.float32),
    scores=np.asarray(track.scores, np.float32),
    landmarks=np.stack(landmarks).astype(np.float32),
    crops=np.stack(crops),
  )
