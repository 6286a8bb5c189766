"""MTCNN face detection (facenet-pytorch, bundled weights) on downscaled frames.

DFDC winners detected on half-resolution frames: MTCNN is about 3x faster at
960x540 than at 1920x1080 and finds the same faces. Boxes and landmarks are
mapped back to full-resolution pixels here, so nothing downstream ever sees
the detection scale.
"""

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import cv2
import numpy as np


@dataclasses.dataclass
class Detections:
  """The faces found in one frame, in full-resolution pixels."""

  boxes: np.ndarray  # float32 (n, 4) x1, y1, x2, y2
  scores: np.ndarray  # float32 (n,)
  landmarks: np.ndarray  # float32 (n, 5, 2) x, y

  @classmethod
  def empty(cls) -> "Detections":
    return cls(
      np.zeros((0, 4), np.float32),
      np.zeros((0,), np.float32),
      np.zeros((0, 5, 2), np.float32),
    )

  def __len__(self) -> int:
    return len(self.boxes)


class Detector(Protocol):
  """Anything that finds faces in a list of equally sized RGB frames."""

  def detect(self, frames: Sequence[np.ndarray]) -> list[Detections]: ...


def downscale_frame(frame: np.ndarray, scale: float) -> np.ndarray:
  """Resizes by `scale` (area interpolation: no aliasing when shrinking)."""
  if scale == 1.0:
    return frame
  h, w = frame.shape[:2]
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def to_full_resolution(
  det: Detections, scale_x: float, scale_y: float
) -> Detections:
  """Maps detections made on a resized frame back to the source frame."""
  factor = np.array([scale_x, scale_y], np.float32)
  return Detections(
    boxes=(det.boxes.reshape(-1, 2, 2) / factor).reshape(-1, 4),
    scores=det.scores,
    landmarks=det.landmarks / factor,
  )


def _is_pool_3x3_s2(module) -> bool:
  import torch

  return (
    isinstance(module, torch.nn.MaxPool2d)
    and module.kernel_size in (3, (3, 3))
    and module.stride in (2, (2, 2))
    and module.padding in (0, (0, 0))
    and module.dilation in (1, (1, 1))
    and module.ceil_mode
  )


def separable_max_pool_3x3(x):
  """MaxPool2d(3, 2, ceil_mode=True) as two 1-D passes (NCHW)."""
  import torch
  from torch.nn import functional as F

  h, w = x.shape[-2:]
  ho, wo = -(-(h - 3) // 2) + 1, -(-(w - 3) // 2) + 1
  pad_h, pad_w = 2 * ho + 1 - h, 2 * wo + 1 - w
  if pad_h > 0 or pad_w > 0:
    x = F.pad(x, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=float("-inf"))
  cols = torch.maximum(
    torch.maximum(x[..., 0 : 2 * wo - 1 : 2], x[..., 1 : 2 * wo : 2]),
    x[..., 2 : 2 * wo + 1 : 2],
  )
  return torch.maximum(
    torch.maximum(
      cols[..., 0 : 2 * ho - 1 : 2, :], cols[..., 1 : 2 * ho : 2, :]
    ),
    cols[..., 2 : 2 * ho + 1 : 2, :],
  )


def separable_max_pool_3x3_module():
  """A torch module equal to nn.MaxPool2d(3, 2, ceil_mode=True)."""
  import torch

  class _Pool(torch.nn.Module):
    def forward(self, x):
      return separable_max_pool_3x3(x)

  return _Pool()


def _as_detections(boxes, probs, points) -> Detections:
  # facenet-pytorch returns None for a frame without faces and object arrays
  # otherwise (ENVIRONMENT.md): normalise to float32 arrays.
  if boxes is None or len(boxes) == 0:
    return Detections.empty()
  boxes = np.asarray(np.stack(list(boxes)), np.float32).reshape(-1, 4)
  probs = np.asarray(list(probs), np.float32).reshape(-1)
  points = np.asarray(np.stack(list(points)), np.float32).reshape(-1, 5, 2)
  return Detections(boxes, probs, points)


class MTCNNDetector:
  """facenet-pytorch MTCNN with every face kept, run in batches.

  Args:
    device: 'cpu' or 'cuda' (or 'cuda:N').
    batch_size: frames per MTCNN call.
    downscale: detection runs on frames resized by this factor.
    min_face_size: smallest face to find, in FULL-resolution pixels.
    thresholds: MTCNN's three stage thresholds.
  """

  def __init__(
    self,
    device: str = "cpu",
    batch_size: int = 8,
    downscale: float = 0.5,
    min_face_size: int = 40,
    thresholds: Sequence[float] = (0.6, 0.7, 0.7),
  ):
    # Torch stays inside preprocessing/ and is imported only when a detector
    # is built, so the module itself is cheap to import.
    import torch
    from facenet_pytorch import MTCNN

    if not 0.0 < downscale <= 1.0:
      raise ValueError(f"downscale must be in (0, 1], got {downscale}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if device.startswith("cuda") and not torch.cuda.is_available():
      raise ValueError(f"device {device!r} requested but CUDA is unavailable")
    self.device = device
    self.batch_size = batch_size
    self.downscale = downscale
    self.min_face_size = min_face_size
    # MTCNN's minimum size is in the pixels of the image it sees; below its
    # 12-pixel cell it would upsample every frame, which only costs time.
    self._detect_min = max(12, round(min_face_size * downscale))
    self._mtcnn = MTCNN(
      keep_all=True,
      min_face_size=self._detect_min,
      thresholds=list(thresholds),
      select_largest=False,
      post_process=False,
      device=torch.device(device),
    )
    self._mtcnn.eval()
    self._threads: Callable[[], int] | None = None  # see sharing_cpu
    # RNet and ONet spend a third of their time in torch's 3x3 max pooling
    # on CPU; the separable version returns the same values (a max is
    # exact) in a fifth of the time, so boxes do not change.
    for net in (self._mtcnn.rnet, self._mtcnn.onet):
      for name, module in list(net.named_children()):
        if _is_pool_3x3_s2(module):
          setattr(net, name, separable_max_pool_3x3_module())

  @contextlib.contextmanager
  def sharing_cpu(self, busy: Callable[[], bool]):
    """While active, detection on CPU leaves a core to a concurrent job.

    Each `detect` call runs torch with one thread fewer than it was given
    (torch.get_num_threads() on entry; at least 1) while `busy()` is true,
    and with all of them once it is false; on exit the count is restored.
    Face extraction decodes in a background thread (video.FrameStream):
    with torch's threads on every core as well, the two contend and a
    1080p clip takes 1.5x as long as with one thread left to the decoder;
    once decoding ends, the detection left gets the decoder's core back.
    """
    if self.device != "cpu":
      yield
      return
    import torch

    threads = torch.get_num_threads()
    self._threads = lambda: max(1, threads - 1) if busy() else threads
    try:
      yield
    finally:
      self._threads = None
      torch.set_num_threads(threads)

  def detect(
    self,
    frames: Sequence[np.ndarray],
    *,
    min_face_size: float | None = None,
    regions: Sequence[tuple[int, int, int, int]] | None = None,
  ) -> list[Detections]:
    """Finds faces in RGB uint8 frames of one size; full-resolution boxes.

    Args:
      frames: RGB uint8 frames, all of one size.
      min_face_size: smallest face to find, full-resolution pixels; when it
        is above the detector's own, MTCNN's image pyramid starts at a
        coarser level (most of its cost: it shrinks with the square of the
        ratio). The frames keep the detector's resolution, so the later
        stages, which place the boxes, see the same pixels as before.
      regions: (x0, y0, x1, y1) full-resolution pixels; when given, only
        faces in these regions are searched, with the whole frame's pyramid
        (preprocessing/mtcnn_regions.py), at a cost that follows their area.
    """
    from preprocessing import mtcnn_regions

    detect_min = self._detect_min
    if min_face_size is not None and min_face_size > self.min_face_size:
      detect_min = max(detect_min, round(min_face_size * self.downscale))
    downscale = self.downscale
    if self._threads is not None:
      import torch

      torch.set_num_threads(self._threads())
    results = []
    for start in range(0, len(frames), self.batch_size):
      chunk = frames[start : start + self.batch_size]
      small = np.stack([downscale_frame(f, downscale) for f in chunk])
      sy = small.shape[1] / chunk[0].shape[0]
      sx = small.shape[2] / chunk[0].shape[1]
      # facenet-pytorch reads its minimum size at call time.
      self._mtcnn.min_face_size = detect_min
      scaled = None
      if regions is not None:
        scaled = [
          (
            int(np.floor(x0 * sx)),
            int(np.floor(y0 * sy)),
            int(np.ceil(x1 * sx)),
            int(np.ceil(y1 * sy)),
          )
          for x0, y0, x1, y1 in regions
        ]
      # On CPU the pyramid is built from a summed-area table (the same
      # values, faster); on a GPU torch builds whole-frame levels itself.
      search = (
        mtcnn_regions.exact_pyramid(self._mtcnn, small, scaled)
        if scaled is not None or self.device == "cpu"
        else contextlib.nullcontext()
      )
      try:
        with search:
          boxes, probs, points = self._mtcnn.detect(small, landmarks=True)
      finally:
        self._mtcnn.min_face_size = self._detect_min
      for b, p, pts in zip(boxes, probs, points, strict=True):
        results.append(to_full_resolution(_as_detections(b, p, pts), sx, sy))
    return results
