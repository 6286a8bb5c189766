"""Keyframe face detection: whole frames every Nth sampled frame, regions between.

MTCNN's cost grows with the area it searches; on a 1080p clip the faces
cover a few percent of it. Every `step`-th sampled frame is searched whole;
each frame between two such keyframes only in regions around the faces found
on them: a face's boxes on both keyframes (linked by overlap), or its box on
one, grown by `margin` times its size on each side, so the motion between
the keyframes stays inside. The frames after the last keyframe (fewer than
`step`) are searched around its faces, each as soon as it is decoded, so
that when decoding ends only the last frame is left to search (a
`video.FrameStream` tells how many frames its header promises; a stream
that ends early, or runs longer, is handled as it comes). MTCNNDetector
searches the regions with the whole frame's pyramid
(preprocessing/mtcnn_regions.py), so a face inside gets the box and score
the whole-frame pass gives it; any other detector gets the regions cut out
(on a grid aligned with a 1/2 or 1/4 downscale), which moves boxes by a few
pixels. A region that comes back empty on a frame (the face moved out of
it, or left) has that frame searched in a wider region, or whole; after
MAX_MISSES such frames in a row the face counts as gone for the gap (and
for the frames after the last keyframe, though they are searched one at a
time). Faces
that appear and vanish between two keyframes, or appear after the last one,
are missed; with `step` (5) at most the track filter's minimum length (a
fifth of the sampled frames: 6 of 30) such a face would not form a kept
track anyway.
"""

import inspect
from collections.abc import Callable, Sequence

import numpy as np

from preprocessing import tracks as tracks_lib
from preprocessing.detect import Detections, Detector

# Region corners snap to multiples of this (full-resolution pixels): with a
# detector downscale of 1/2 or 1/4 the region's downscaled pixels are then
# exactly those of the downscaled whole frame.
ALIGN = 4
# Keyframe faces overlapping at least this much are one face across the gap.
LINK_IOU = 0.1
# A face missing from this many frames in a row (searched whole) has left;
# the track linking's default max_gap.
MAX_MISSES = 2
# Regions covering more than this fraction of the frame: search it whole.
MAX_REGION_FRACTION = 0.5


def keyframe_positions(num_frames: int, step: int) -> list[int]:
  """0, step, 2*step, ... below num_frames."""
  if num_frames <= 0:
    return []
  return list(range(0, num_frames, max(step, 1)))


def _grown(box: np.ndarray, margin: float) -> np.ndarray:
  side = max(float(box[2] - box[0]), float(box[3] - box[1]), 1.0)
  return np.asarray(box, np.float64) + margin * side * np.array([-1, -1, 1, 1])


def _overlaps(r: np.ndarray, q: np.ndarray) -> bool:
  return r[0] < q[2] and q[0] < r[2] and r[1] < q[3] and q[1] < r[3]


def gap_regions(
  first: Detections, last: Detections, margin: float, shape: tuple[int, int]
) -> list[tuple[int, int, int, int]]:
  """(x0, y0, x1, y1) regions to search between two keyframes.

  A face on both keyframes (linked by overlap) gets the union of its two
  boxes, one on a single keyframe its box; each grows by `margin` times its
  larger side on each side (a union's: faster motion gets more room). Overlapping regions are merged, so no face is
  found twice; corners snap outwards to the ALIGN grid, inside the frame.
  """
  height, width = shape
  regions: list[np.ndarray] = []
  linked_last: set[int] = set()
  overlap = tracks_lib.iou_matrix(first.boxes, last.boxes)
  for i, box in enumerate(first.boxes):
    j = int(np.argmax(overlap[i])) if overlap.shape[1] else -1
    if j >= 0 and overlap[i, j] >= LINK_IOU and j not in linked_last:
      linked_last.add(j)
      box = _union(box, last.boxes[j])
    regions.append(_grown(box, margin))
  for j, box in enumerate(last.boxes):
    if j not in linked_last:
      regions.append(_grown(box, margin))
  merged = True
  while merged:
    merged = False
    for i in range(len(regions)):
      for j in range(i + 1, len(regions)):
        if _overlaps(regions[i], regions[j]):
          regions[i] = _union(regions[i], regions.pop(j))
          merged = True
          break
      if merged:
        break
  out = []
  for r in regions:
    x0 = max(0, int(np.floor(r[0] / ALIGN)) * ALIGN)
    y0 = max(0, int(np.floor(r[1] / ALIGN)) * ALIGN)
    x1 = min(width, int(np.ceil(r[2] / ALIGN)) * ALIGN)
    y1 = min(height, int(np.ceil(r[3] / ALIGN)) * ALIGN)
    if x1 > x0 and y1 > y0:
      out.append((x0, y0, x1, y1))
  return out


def _union(r: np.ndarray, q: np.ndarray) -> np.ndarray:
  return np.concatenate([np.minimum(r[:2], q[:2]), np.maximum(r[2:], q[2:])])


def _shifted(det: Detections, x0: int, y0: int) -> Detections:
  offset = np.array([x0, y0], np.float32)
  return Detections(
    boxes=(det.boxes.reshape(-1, 2, 2) + offset).reshape(-1, 4),
    scores=det.scores,
    landmarks=det.landmarks + offset,
  )


def _concat(parts: Sequence[Detections]) -> Detections:
  if not parts:
    return Detections.empty()
  return Detections(
    boxes=np.concatenate([p.boxes for p in parts]).astype(np.float32),
    scores=np.concatenate([p.scores for p in parts]).astype(np.float32),
    landmarks=np.concatenate([p.landmarks for p in parts]).astype(np.float32),
  )


def _inside(det: Detections, region: tuple[int, int, int, int]) -> bool:
  """Whether any box's centre lies in the region."""
  x0, y0, x1, y1 = region
  cx = (det.boxes[:, 0] + det.boxes[:, 2]) / 2
  cy = (det.boxes[:, 1] + det.boxes[:, 3]) / 2
  return bool(np.any((cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)))


def _takes_regions(detector: Detector) -> bool:
  return "regions" in inspect.signature(detector.detect).parameters


def _search_regions(
  detector: Detector,
  frames: list[np.ndarray],
  regions: list[tuple[int, int, int, int]],
) -> list[list[Detections]]:
  """found[r][i]: the faces in region r of frame i.

  A detector that takes `regions` (MTCNNDetector) searches them all in one
  call on the whole frames, with the whole frame's pyramid; any other is
  given the regions cut out, one call per region.
  """
  if not _takes_regions(detector):
    return [
      [
        _shifted(d, x0, y0)
        for d in detector.detect([f[y0:y1, x0:x1] for f in frames])
      ]
      for x0, y0, x1, y1 in regions
    ]
  found = [[] for _ in regions]
  for det in detector.detect(frames, regions=regions):
    centres = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2
    for r, (x0, y0, x1, y1) in enumerate(regions):
      keep = (
        (centres[:, 0] >= x0)
        & (centres[:, 0] < x1)
        & (centres[:, 1] >= y0)
        & (centres[:, 1] < y1)
      )
      found[r].append(
        Detections(det.boxes[keep], det.scores[keep], det.landmarks[keep])
      )
  return found


def detect_keyframes(
  detector: Detector,
  frames: Sequence[np.ndarray],
  step: int,
  margin: float,
  detect_whole: Callable[[list[np.ndarray]], list[Detections]] | None = None,
) -> tuple[list[Detections], dict[str, int]]:
  """Detections per frame, and how many frames and regions were searched.

  Args:
    detector: finds faces; called on whole frames and on regions of them.
    frames: the sampled RGB frames, all of one size; or a
      `video.FrameStream` still decoding them: each keyframe is then searched
      as soon as it is decoded, each gap as soon as its closing keyframe is,
      and each frame after the last keyframe as soon as it is decoded, so
      detection overlaps decoding and little is left when decoding ends.
    step: every `step`-th frame is searched whole; the frames after the
      last one only around its faces (one frame at a time).
    margin: regions grow the keyframe boxes by this times their size.
    detect_whole: how whole frames are searched (default detector.detect).

  Returns:
    (detections per frame, counts): `whole_frames` searched whole (keyframes
    included), `region_calls` (one per region and gap, all its frames in
    one call), `redetected` frames searched whole again because a region
    came back empty.
  """
  whole = detect_whole or detector.detect
  step = max(step, 1)
  out: dict[int, Detections] = {}
  counts = {"whole_frames": 0, "region_calls": 0, "redetected": 0}

  def gap(a, mids, closing, misses=None) -> None:
    _fill_gap(
      detector, frames, a, mids, closing, margin, whole, out, counts, misses
    )

  # The frames after a keyframe are searched one at a time: its regions'
  # misses carry from one to the next, so a face that left stops costing
  # wider searches as in a gap.
  trailing_misses: dict[int, dict] = {}

  def keyframe(k: int, previous: int | None) -> None:
    out[k] = whole([frames[k]])[0]
    counts["whole_frames"] += 1
    if previous is not None:
      # All of them: frames searched early as trailing ones (the header
      # promised fewer frames) are searched again with this keyframe's
      # faces, as the list path does.
      gap(previous, list(range(previous + 1, k)), out[k])

  def trailing(m: int, previous: int) -> None:
    misses = trailing_misses.setdefault(previous, {})
    gap(previous, [m], Detections.empty(), misses)

  if hasattr(frames, "wait"):  # a stream: frames one by one, as decoded
    i, previous = 0, None
    while frames.wait(i):
      if i % step == 0:
        keyframe(i, previous)
        previous = i
      elif 0 < frames.expected <= previous + step:
        trailing(i, previous)  # no keyframe is due after this one
      i += 1
    # A stream shorter than its header said: its last frames had waited for
    # a keyframe that never came.
    for m in range(previous + 1 if previous is not None else 0, i):
      if m not in out:
        trailing(m, previous)
    return [out[j] for j in range(i)], counts
  keys = keyframe_positions(len(frames), step)
  for k, det in zip(keys, whole([frames[k] for k in keys]), strict=True):
    out[k] = det
  counts["whole_frames"] = len(keys)
  for a, b in zip(keys[:-1], keys[1:], strict=True):
    gap(a, list(range(a + 1, b)), out[b])
  for m in range(keys[-1] + 1 if keys else 0, len(frames)):
    trailing(m, keys[-1])
  return [out[j] for j in range(len(frames))], counts


def _fill_gap(
  detector, frames, a, mids, closing, margin, whole, out, counts, misses=None
) -> None:
  """Detections of frames `mids`, between keyframe a and `closing`.

  closing: the faces on the keyframe after mids (empty after the last one).
  misses: region -> frames missed in a row before mids (updated); None:
    none.
  """
  if not mids:
    return
  height, width = frames[a].shape[:2]
  regions = gap_regions(out[a], closing, margin, (height, width))
  if not regions:  # no face on either keyframe: nothing to search
    for m in mids:
      out[m] = Detections.empty()
    return
  area = sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in regions)
  if area > MAX_REGION_FRACTION * height * width:
    counts["whole_frames"] += len(mids)
    for m, det in zip(mids, whole([frames[m] for m in mids]), strict=True):
      out[m] = det
    return
  found = _search_regions(detector, [frames[m] for m in mids], regions)
  counts["region_calls"] += 1 if _takes_regions(detector) else len(regions)
  for i, m in enumerate(mids):
    out[m] = _concat([per_region[i] for per_region in found])
  # A region that comes back empty on a frame: the face moved out of it,
  # or is not there. MTCNNDetector's regions give what the whole frame
  # gives inside them, so only a wider region (3x its size) is searched,
  # unless that covers most of the frame; other detectors search the
  # frame whole. When the face is not found there either in MAX_MISSES
  # frames in a row it has left (or was a false box): stop expecting it
  # for the rest of the gap.
  searched: dict[int, Detections] = {}
  carried = {} if misses is None else misses
  for r, region in enumerate(regions):
    missed = carried.get(region, 0)
    wide = _wider(region, 1.0, (height, width))
    narrow = (wide[2] - wide[0]) * (wide[3] - wide[1]) <= (
      MAX_REGION_FRACTION * height * width
    )
    for i, m in enumerate(mids):
      if missed >= MAX_MISSES:
        break
      if len(found[r][i]):
        missed = 0
        continue
      if m in searched:
        again = searched[m]
      elif narrow and _takes_regions(detector):
        again = _search_regions(detector, [frames[m]], [wide])[0][0]
        out[m] = _merged(out[m], again)
        counts["region_calls"] += 1
        counts["redetected"] += 1
      else:
        again = searched[m] = whole([frames[m]])[0]
        out[m] = again
        counts["whole_frames"] += 1
        counts["redetected"] += 1
      missed = 0 if _inside(again, wide) else missed + 1
    carried[region] = missed


def _wider(region, grow: float, shape: tuple[int, int]):
  """The region grown by `grow` times its size on each side, in the frame."""
  x0, y0, x1, y1 = region
  dx, dy = round(grow * (x1 - x0)), round(grow * (y1 - y0))
  height, width = shape
  return (
    max(0, (x0 - dx) // ALIGN * ALIGN),
    max(0, (y0 - dy) // ALIGN * ALIGN),
    min(width, x1 + dx),
    min(height, y1 + dy),
  )


def _merged(found: Detections, extra: Detections) -> Detections:
  """found plus the faces of extra that found does not hold already."""
  if not len(found) or not len(extra):
    return extra if not len(found) else found
  overlap = tracks_lib.iou_matrix(extra.boxes, found.boxes).max(axis=1)
  new = overlap < 0.5
  return _concat(
    [
      found,
      Detections(extra.boxes[new], extra.scores[new], extra.landmarks[new]),
    ]
  )
