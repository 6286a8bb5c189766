"""Shared by the import_faces tests: images with a bright square for a
face, a detector that finds it, and readers of what was written."""

import collections
import pathlib

import cv2
import numpy as np

from asrid_jax.data import records
from preprocessing import import_faces
from preprocessing.detect import Detections

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32  # --image_size of most runs
# Landmarks as fractions of the blob box (eyes, nose, mouth corners).
MARKS = np.array(
  [[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]],
  np.float32,
)


class BlobDetector:
  """Finds the bright square of a test image; notes every call and box."""

  def __init__(self):
    self.calls = []  # image shapes per detect() call
    self.boxes = []  # every box returned

  def detect(self, frames):
    self.calls.append([f.shape for f in frames])
    result = []
    for f in frames:
      ys, xs = np.nonzero(f.mean(axis=2) > 128)
      if not len(xs):
        result.append(Detections.empty())
        continue
      box = np.array(
        [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32
      )
      self.boxes.append(box)
      wh = box[2:] - box[:2]
      result.append(
        Detections(
          box[None], np.array([0.99], np.float32), (box[:2] + MARKS * wh)[None]
        )
      )
    return result


def write_image(path, w=SIZE, h=SIZE, blob=(8, 8, 24, 24), mode="bgr"):
  """A dark w x h image with a white square `blob` (x1, y1, x2, y2)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img = np.full((h, w, 3), 30, np.uint8)
  if blob is not None:
    x1, y1, x2, y2 = blob
    img[y1:y2, x1:x2] = 255
  if mode == "gray":
    img = img[:, :, 0]
  elif mode == "alpha":
    img = np.dstack([img, np.full((h, w), 128, np.uint8)])
  assert cv2.imwrite(str(path), img), path
  return path


def expected_box(w, h, blob, size=SIZE):
  """Where `blob` lands after centring on a black square and resizing."""
  side = max(w, h)
  x0, y0 = round(w / 2 - side / 2), round(h / 2 - side / 2)
  x1, y1, x2, y2 = blob
  s = size / side
  return np.array([(x1 - x0) * s, (y1 - y0) * s, (x2 - x0) * s, (y2 - y0) * s])


def args_for(src, out, *extra):
  return import_faces.build_parser().parse_args(
    ["--input", str(src), "--output", str(out), "--image_size", str(SIZE),
     *extra]
  )  # fmt: skip


def read_all(out):
  """(split, record) of every complete shard, in shard order."""
  result = []
  for split in records.SPLITS:
    for shard in records.list_shards(out, split):
      result += [
        (split, records.FaceRecord.from_bytes(d))
        for d in records.iter_records(shard)
      ]
  return result


def keys(recs):
  return collections.Counter((r.video_id, r.frame_order) for _, r in recs)


# ----------------------------------------------------------------------------
# A CSV with every kind of entry, good and bad.
# ----------------------------------------------------------------------------
