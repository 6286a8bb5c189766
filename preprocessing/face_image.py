"""One face image for import_faces: read it, square it, pick its face.

Kept apart from the importer's bookkeeping (splits, shards, info) so that the
pixel-level rules are in one short place: an image of any size and depth is
padded to a square (black, centred: no distortion) and resized, and of the
faces MTCNN finds the largest is the one the image is about.
"""

import cv2
import numpy as np

from preprocessing import crop as crop_lib
from preprocessing.detect import Detections

# Landmarks of a face that fills a tight square crop (fractions of the side;
# MTCNN order: eyes, nose, mouth corners), used where MTCNN finds no face.
TEMPLATE_LANDMARKS = np.array(
  [[0.34, 0.40], [0.66, 0.40], [0.50, 0.58], [0.37, 0.76], [0.63, 0.76]],
  np.float32,
)


def load_square(path, size: int) -> np.ndarray:
  """Image file -> (size, size, 3) RGB uint8, padded to a square first.

  Raises ValueError naming the file for an empty or undecodable file.
  """
  try:
    data = np.fromfile(path, np.uint8)
  except OSError as e:
    raise ValueError(f"{path}: cannot read ({e.strerror or e})") from None
  if data.size == 0:
    raise ValueError(f"{path}: empty file (0 bytes)")
  image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
  if image is None or image.size == 0:
    raise ValueError(f"{path}: not a decodable image ({data.size} bytes)")
  if image.dtype != np.uint8:  # 16-bit PNG/TIFF
    image = (image / (65535.0 if image.dtype == np.uint16 else 1.0)) * 255
    image = np.clip(image, 0, 255).astype(np.uint8)
  if image.ndim == 2:
    image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
  elif image.shape[2] == 4:
    image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
  else:
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
  h, w = image.shape[:2]
  square, _ = crop_lib.crop_face(
    image, np.array([0, 0, w, h], np.float32), np.zeros((5, 2)), size, 0.0
  )
  return square


def main_face(
  det: Detections, size: int
) -> tuple[np.ndarray, np.ndarray, float]:
  """(box, landmarks, score) of the face an image is about: the largest.

  No face: the whole image, template landmarks and score 0.
  """
  if not len(det):
    box = np.array([0, 0, size, size], np.float32)
    return box, TEMPLATE_LANDMARKS * size, 0.0
  area = (det.boxes[:, 2] - det.boxes[:, 0]) * (
    det.boxes[:, 3] - det.boxes[:, 1]
  )
  i = int(np.argmax(area))
  return det.boxes[i], det.landmarks[i], float(det.scores[i])
