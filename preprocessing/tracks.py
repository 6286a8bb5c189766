"""Linking per-frame face boxes into face tracks, and dropping spurious ones.

MTCNN at its default thresholds often adds a second or third box on a
single-person clip (ENVIRONMENT.md): a patch of background that looks like a
face in a few frames. Such boxes form short or low-score tracks, which are
dropped instead of becoming training data labelled with the video's label.

Faces in photos on a wall or a picture inset behind a news anchor are real
faces, so they survive those filters; what gives them away is their size. A
video's score is the max over its tracks, so such a face could decide the
verdict. The size rule: the main face is the largest (median box height)
among the tracks long and confident enough; a track whose median height is
below `min_relative_size` times the main face's is dropped. The kept tracks
are ranked by weight = relative size * fraction of frames present * mean
score * stability (median over consecutive boxes of IoU / steady_iou, at
most 1: a face that moves a third of its width between sampled frames, as a
speaker's head does at every 10th frame, is not penalised; a box that jumps
around is), main face first. The
same code runs in extract_faces and predict (preprocessing/faces.py), and the
settings are recorded in dataset_info.json, so both cut the same tracks.
No track spans a shot cut (preprocessing/shots.py): a box after a cut
starts a new track. `min_relative_size=0, rank="length", cut_threshold=0`
reproduces the earlier behaviour.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from preprocessing import shots
from preprocessing.detect import Detections

# Consecutive boxes overlapping this much count as steady (TrackSettings).
STEADY_IOU = 0.5


@dataclasses.dataclass
class Track:
  """One face followed across the sampled frames of a video."""

  positions: list[int]  # indices into the sampled-frame list (frame order)
  boxes: list[np.ndarray]  # (4,) full-resolution x1, y1, x2, y2
  scores: list[float]
  landmarks: list[np.ndarray]  # (5, 2) full-resolution

  def __len__(self) -> int:
    return len(self.positions)

  @property
  def mean_score(self) -> float:
    return float(np.mean(self.scores))

  @property
  def median_height(self) -> float:
    b = np.stack(self.boxes)
    return float(np.median(b[:, 3] - b[:, 1]))

  def stability(self, steady_iou: float = STEADY_IOU) -> float:
    """Median of min(1, IoU / steady_iou) of consecutive boxes; 1.0 for a
    one-box track (steady_iou 1: the plain median IoU)."""
    if len(self.boxes) < 2:
      return 1.0
    b = np.stack(self.boxes)
    ious = [iou_matrix(b[i], b[i + 1])[0, 0] for i in range(len(b) - 1)]
    return float(np.median(np.minimum(1.0, np.asarray(ious) / steady_iou)))

  @property
  def mean_area(self) -> float:
    b = np.stack(self.boxes)
    return float(np.mean((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))


@dataclasses.dataclass(frozen=True)
class TrackSettings:
  """How boxes are linked and which tracks are kept.

  Attributes:
    iou_threshold: a box joins the track whose last box overlaps it most if
      that IoU is at least this.
    max_gap: a track may miss this many sampled frames and still be extended.
    min_fraction: keep tracks present in at least this fraction of the
      sampled frames ...
    min_length: ... and in at least this many frames.
    min_score: keep tracks whose mean detector score is at least this.
    min_relative_size: drop tracks whose median box height is below this
      fraction of the main (largest) face's; 0 keeps every size.
    rank: 'weight' (relative size * presence * score * stability) or
      'length' (the earlier order: longest, then largest, then leftmost).
    cut_threshold: a shot cut between two sampled frames ends every track
      (preprocessing/shots.py: histogram distance above this); 0: no cut
      detection.
    steady_iou: consecutive boxes overlapping this much count as steady in
      the 'weight' rank's stability (the Hamilton clip's singer, its main
      face, moves at a median IoU of 0.38 between sampled frames; the
      audience faces sit at 0.7-0.9); 1.0: the plain median IoU.
  """

  iou_threshold: float = 0.2
  max_gap: int = 2
  min_fraction: float = 0.2
  min_length: int = 2
  min_score: float = 0.75
  min_relative_size: float = 0.5
  rank: str = "weight"
  cut_threshold: float = shots.DEFAULT_THRESHOLD
  steady_iou: float = STEADY_IOU

  def __post_init__(self):
    if self.rank not in RANKS:
      raise ValueError(f"track rank must be one of {RANKS}, got {self.rank!r}")
    if not 0.0 < self.steady_iou <= 1.0:
      raise ValueError(f"steady_iou must be in (0, 1], got {self.steady_iou}")
    if not 0.0 <= self.cut_threshold <= 1.0:
      raise ValueError(
        f"cut_threshold must be in [0, 1], got {self.cut_threshold}"
      )
    if not 0.0 <= self.min_relative_size <= 1.0:
      raise ValueError(
        f"min_relative_size must be in [0, 1], got {self.min_relative_size}"
      )


RANKS = ("weight", "length")
# The settings of the track rule before sizes counted (issue 13).
LEGACY = dict(min_relative_size=0.0, rank="length", cut_threshold=0.0)
# Settings added after some datasets were made, and the values those were
# made with: predict applies them when a dataset_info.json lacks the key.
PREDATING = dict(cut_threshold=0.0, steady_iou=1.0)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Pairwise IoU of boxes a (n, 4) and b (m, 4) -> (n, m)."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  x1 = np.maximum(a[:, None, 0], b[None, :, 0])
  y1 = np.maximum(a[:, None, 1], b[None, :, 1])
  x2 = np.minimum(a[:, None, 2], b[None, :, 2])
  y2 = np.minimum(a[:, None, 3], b[None, :, 3])
  inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
  area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
  area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def link_tracks(
  detections: Sequence[Detections],
  settings: TrackSettings = TrackSettings(),
  cuts: Sequence[int] = (),
) -> list[Track]:
  """Greedy IoU linking, frame by frame, best-overlapping pairs first.

  cuts: positions where a new shot starts; no track continues across one.
  """
  tracks: list[Track] = []
  shot_start = 0
  for pos, det in enumerate(detections):
    if pos in cuts:
      shot_start = pos
    active = [
      t
      for t in tracks
      if pos - t.positions[-1] - 1 <= settings.max_gap
      and t.positions[-1] >= shot_start
    ]
    unmatched = set(range(len(det)))
    if active and len(det):
      last = np.stack([t.boxes[-1] for t in active])
      overlap = iou_matrix(det.boxes, last)
      used_tracks = set()
      # Highest IoU first, so two nearby faces do not swap tracks because of
      # the order MTCNN listed them in.
      for flat in np.argsort(-overlap, axis=None, kind="stable"):
        i, j = np.unravel_index(flat, overlap.shape)
        if overlap[i, j] < settings.iou_threshold:
          break
        if i not in unmatched or j in used_tracks:
          continue
        _extend(active[j], pos, det, i)
        unmatched.discard(i)
        used_tracks.add(j)
    for i in sorted(unmatched):
      track = Track([], [], [], [])
      _extend(track, pos, det, i)
      tracks.append(track)
  return tracks


def _extend(track: Track, pos: int, det: Detections, i: int) -> None:
  track.positions.append(pos)
  track.boxes.append(det.boxes[i])
  track.scores.append(float(det.scores[i]))
  track.landmarks.append(det.landmarks[i])


def track_weight(
  track: Track,
  main_height: float,
  num_frames: int,
  steady_iou: float = STEADY_IOU,
) -> float:
  """How much a track matters for a verdict (see the module docstring)."""
  relative = track.median_height / max(main_height, 1e-6)
  presence = len(track) / max(num_frames, 1)
  stability = track.stability(steady_iou)
  return relative * presence * track.mean_score * stability


def filter_tracks(
  tracks: Sequence[Track],
  num_frames: int,
  settings: TrackSettings = TrackSettings(),
) -> list[Track]:
  """Drops short, low-score and small tracks; orders the rest (main first).

  The position in the returned list is the track's `face/index`.
  """
  need = max(settings.min_length, settings.min_fraction * num_frames)
  kept = [
    t for t in tracks if len(t) >= need and t.mean_score >= settings.min_score
  ]
  if settings.rank == "length":
    order = sorted(
      kept,
      key=lambda t: (-len(t), -round(t.mean_area, 3), float(t.boxes[0][0])),
    )
  else:
    main = max((t.median_height for t in kept), default=0.0)
    order = sorted(
      kept,
      key=lambda t: (
        -round(track_weight(t, main, num_frames, settings.steady_iou), 6),
        float(t.boxes[0][0]),
      ),
    )
  if settings.min_relative_size > 0 and order:
    main = max(t.median_height for t in order)
    order = [
      t for t in order if t.median_height >= settings.min_relative_size * main
    ]
  return order


def build_tracks(
  detections: Sequence[Detections],
  settings: TrackSettings = TrackSettings(),
  cuts: Sequence[int] = (),
) -> list[Track]:
  """link_tracks then filter_tracks."""
  return filter_tracks(
    link_tracks(detections, settings, cuts), len(detections), settings
  )
