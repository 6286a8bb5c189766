"""Tiny synthetic face clips for the preprocessing tests.

A head cut from skimage's astronaut photo (a real face, so MTCNN really finds
it) is pasted on a grey background and drifts a little from frame to frame.
"""

import functools
import pathlib

import cv2
import numpy as np
import skimage.data

# The astronaut's head in the 512x512 photo (MTCNN box grown by ~80%).
_HEAD = (146, 39, 302, 195)  # x1, y1, x2, y2


@functools.cache
def head(size: int) -> np.ndarray:
  x1, y1, x2, y2 = _HEAD
  photo = skimage.data.astronaut()[y1:y2, x1:x2]
  return cv2.resize(photo, (size, size), interpolation=cv2.INTER_AREA)


def frames(
  num_frames: int = 40,
  width: int = 160,
  height: int = 120,
  faces: tuple[tuple[int, int], ...] = ((50, 25),),
  face_size: int = 64,
  drift: float = 0.3,
  background: int = 100,
) -> list[np.ndarray]:
  """RGB frames with a head at each (x, y) of `faces`, drifting right."""
  out = []
  for t in range(num_frames):
    frame = np.full((height, width, 3), background, np.uint8)
    for x, y in faces:
      x = int(round(x + drift * t))
      h = head(face_size)[: height - y, : width - x]
      frame[y : y + h.shape[0], x : x + h.shape[1]] = h
    out.append(frame)
  return out


def write_clip(path: pathlib.Path, rgb_frames, fps: float = 25.0):
  """Writes an mp4 (mp4v, the codec OpenCV's wheel can encode)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  h, w = rgb_frames[0].shape[:2]
  writer = cv2.VideoWriter(
    str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h)
  )
  assert writer.isOpened(), path
  for f in rgb_frames:
    writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
  writer.release()
  return path


def face_clip(path: pathlib.Path, **kwargs) -> pathlib.Path:
  return write_clip(path, frames(**kwargs))


def no_face_clip(path: pathlib.Path, num_frames: int = 40) -> pathlib.Path:
  rng = np.random.default_rng(0)
  smooth = [
    cv2.GaussianBlur(rng.integers(0, 255, (120, 160, 3), np.uint8), (9, 9), 3)
    for _ in range(num_frames)
  ]
  return write_clip(path, smooth)


def detections(boxes, scores=None):
  """Detections of these boxes (score 0.99 unless given, landmarks at the
  box centres)."""
  from preprocessing import detect  # pylint: disable=g-import-not-at-top

  boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
  n = len(boxes)
  scores = np.full(n, 0.99, np.float32) if scores is None else scores
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  landmarks = np.repeat(centres[:, None, :], 5, axis=1)
  return detect.Detections(boxes, np.asarray(scores, np.float32), landmarks)
