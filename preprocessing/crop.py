"""Square face crops with a margin and an isotropic resize.

The box is widened by `margin` times its width (height) on each side, then
extended to a square around its centre, so the resize never distorts the
face. Parts of the square outside the frame are filled with black, which
keeps the face centred and the scale identical for every frame of a track.
"""

import cv2
import numpy as np


def square_region(
  box: np.ndarray, margin: float = 1 / 3
) -> tuple[int, int, int]:
  """The square (x0, y0, side) in integer pixels around a margin-grown box."""
  x1, y1, x2, y2 = (float(v) for v in box)
  w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
  side = max(w * (1 + 2 * margin), h * (1 + 2 * margin))
  side_px = max(1, round(side))
  cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
  return round(cx - side_px / 2), round(cy - side_px / 2), side_px


def crop_face(
  frame: np.ndarray,
  box: np.ndarray,
  landmarks: np.ndarray,
  size: int = 380,
  margin: float = 1 / 3,
) -> tuple[np.ndarray, np.ndarray]:
  """Crops one face.

  Args:
    frame: (H, W, 3) uint8 source frame.
    box: (4,) x1, y1, x2, y2 in frame pixels.
    landmarks: (5, 2) x, y in frame pixels.
    size: side of the square output.
    margin: added on each side, as a fraction of the box size.

  Returns:
    (size, size, 3) uint8 crop and its landmarks (5, 2) float32 in crop pixels.
  """
  x0, y0, side = square_region(box, margin)
  h, w = frame.shape[:2]
  canvas = np.zeros((side, side, 3), np.uint8)
  # Intersection of the square with the frame, in both coordinate systems.
  fx0, fy0 = max(x0, 0), max(y0, 0)
  fx1, fy1 = min(x0 + side, w), min(y0 + side, h)
  if fx1 > fx0 and fy1 > fy0:
    canvas[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0] = frame[fy0:fy1, fx0:fx1]
  # Area interpolation when shrinking avoids aliasing; cubic when enlarging.
  interp = cv2.INTER_AREA if side >= size else cv2.INTER_CUBIC
  crop = cv2.resize(canvas, (size, size), interpolation=interp)
  scale = size / side
  crop_landmarks = (
    np.asarray(landmarks, np.float32) - np.array([x0, y0], np.float32)
  ) * scale
  return crop, crop_landmarks.astype(np.float32)
