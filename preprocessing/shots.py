"""Shot cuts between sampled frames, so that no face track spans one.

Edited footage (news, interviews, the Hamilton sample clip) cuts from one
shot to another; IoU linking alone joins a face before the cut to whatever
face sits in about the same place after it (on the Hamilton clip the singer's
track went on as an audience member's), and a track holding two people is a
temporal inconsistency the model is trained to call fake. A cut is where the
colour distribution jumps: the Bhattacharyya distance between hue-saturation
histograms (16 x 8 bins, on the frame subsampled to about 64 px on its short
side) of consecutive sampled frames is above `threshold`. Measured on the
shared sample clips at every 10th frame: the Hamilton clip's three cuts
0.39-0.51, its close-up shot with fast motion up to 0.26, the DFDC and other
single-shot clips at most 0.08; the default threshold 0.33 sits between.
Cost: about 0.3 ms a 1080p frame.
"""

from collections.abc import Sequence

import cv2
import numpy as np

DEFAULT_THRESHOLD = 0.33
BINS = (16, 8)  # hue, saturation


def signature(frame: np.ndarray) -> np.ndarray:
  """Normalised hue-saturation histogram of an RGB uint8 frame, (128,)."""
  step = max(1, min(frame.shape[:2]) // 64)
  small = np.ascontiguousarray(frame[::step, ::step])
  hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
  hist = cv2.calcHist([hsv], [0, 1], None, list(BINS), [0, 180, 0, 256])
  return (hist / max(float(hist.sum()), 1.0)).ravel().astype(np.float32)


def distance(a: np.ndarray, b: np.ndarray) -> float:
  """Bhattacharyya distance of two signatures: 0 same, 1 disjoint."""
  return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))


def shot_starts(
  frames: Sequence[np.ndarray], threshold: float = DEFAULT_THRESHOLD
) -> list[int]:
  """Positions i > 0 where a new shot starts (a cut between i-1 and i).

  threshold <= 0 finds none (cut detection off).
  """
  if threshold <= 0 or len(frames) < 2:
    return []
  sigs = [signature(f) for f in frames]
  return [
    i for i in range(1, len(sigs)) if distance(sigs[i - 1], sigs[i]) > threshold
  ]
