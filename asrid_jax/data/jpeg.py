"""The project's one JPEG codec (OpenCV), re-exported by records.

Preprocessing encodes with it; the input pipeline, augmentation and
prediction decode with it, so a crop read back has exactly the pixels the
model trains on.
"""

import cv2
import numpy as np


def decode_jpeg(data: bytes, where: str = "image") -> np.ndarray:
  """JPEG bytes -> (H, W, 3) uint8 RGB; ValueError naming `where` if bad."""
  image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if image is None:
    raise ValueError(f"{where}: image/encoded is not a decodable JPEG")
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  """(H, W, 3) uint8 RGB -> JPEG bytes at `quality` (1..100)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
    raise ValueError(
      f"encode_jpeg needs an (H, W, 3) uint8 image, got {image.dtype} "
      f"{image.shape}"
    )
  ok, buf = cv2.imencode(
    ".jpg",
    cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
    [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
  )
  if not ok:
    raise RuntimeError(f"OpenCV could not JPEG-encode a {image.shape} image")
  return buf.tobytes()
