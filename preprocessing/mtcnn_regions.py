"""MTCNN restricted to regions of a frame, with the whole frame's pyramid.

Cropping a region and running MTCNN on the crop changes what it sees: its
pyramid levels are sized from the crop, so they sample the pixels on a
slightly different grid, and the boxes and scores of faces near its
thresholds move (a DFDC face scored 0.79 on the whole frame and 0.74 in a
crop, and fell below the track filter's mean score). Here MTCNN runs on the
whole frames with its own code, but its first stage computes each pyramid
level only in a window around the regions, on the level's own grid: the
level's pixels there are the area averages `imresample` would give (up to
float rounding) and PNet runs on windows aligned with its stride, so the
candidates inside the regions are those of the whole-frame pass; RNet and
ONet then refine them on the whole frames as usual. Cost follows the regions'
area, not the frame's.

This works through two hooks into facenet-pytorch 2.5 internals, active only
during one call: `detect_face`'s `imresample` (its first calls, one per
pyramid level, in order) and `pnet.forward`. The levels are recomputed here
with the library's formula and checked against each call, so a library
change that breaks the assumptions raises instead of detecting wrongly.
The hook on `imresample` is module-wide: no other MTCNN call may run in
another thread of the process meanwhile (extract_faces and predict detect
in one thread).
"""

import contextlib
from collections.abc import Sequence

import numpy as np

Region = tuple[int, int, int, int]  # x0, y0, x1, y1 in the detection frame


def pyramid_scales(height: int, width: int, minsize: float, factor: float):
  """The scales facenet-pytorch's detect_face uses for a frame size."""
  m = 12.0 / minsize
  minl = min(height, width) * m
  scales, scale = [], m
  while minl >= 12:
    scales.append(scale)
    scale *= factor
    minl *= factor
  return scales


def _pool_matrix(lo: int, hi: int, out: int, size: int):
  """Rows lo..hi-1 of adaptive average pooling size -> out, as a matrix.

  Returns (matrix (hi - lo, b - a), a, b): output row i averages input rows
  [floor(i * size / out), ceil((i + 1) * size / out)), as torch does.
  """
  import torch

  starts = [(i * size) // out for i in range(lo, hi)]
  ends = [((i + 1) * size + out - 1) // out for i in range(lo, hi)]
  a, b = starts[0], ends[-1]
  matrix = torch.zeros(hi - lo, b - a)
  for row, (s, e) in enumerate(zip(starts, ends, strict=True)):
    matrix[row, s - a : e - a] = 1.0 / (e - s)
  return matrix, a, b


def level_windows(
  regions: Sequence[Region], height: int, width: int, scale: float
) -> list[Region]:
  """Each region's window on one pyramid level, aligned for PNet.

  The window starts on an even level pixel (PNet's stride) and spans an
  even number of pixels unless it ends at the level's edge, so PNet's ceil-
  mode pooling pairs the same pixels as on the whole level. Windows too
  small for PNet's 12-pixel cell are dropped.
  """
  hs, ws = int(height * scale + 1), int(width * scale + 1)
  out = []
  for x0, y0, x1, y1 in regions:
    window = []
    for lo, hi, size, full in ((x0, x1, ws, width), (y0, y1, hs, height)):
      start = max(0, int(np.floor(lo * size / full)) // 2 * 2)
      stop = min(size, int(np.ceil(hi * size / full)) + 1)
      if stop < size and (stop - start) % 2:
        stop += 1
      window += [start, min(stop, size)]
    wx0, wx1, wy0, wy1 = window
    if wx1 - wx0 >= 12 and wy1 - wy0 >= 12:
      out.append((wx0, wy0, wx1, wy1))
  return out


def _pnet_size(n: int) -> int:
  # conv 3x3, max pool 2x2 (ceil), conv 3x3, conv 3x3.
  return -(-(n - 2) // 2) - 4


@contextlib.contextmanager
def restricted_pyramid(mtcnn, regions: Sequence[Region], height, width):
  """While active, `mtcnn.detect` searches only `regions` of its frames.

  Args:
    mtcnn: a facenet_pytorch MTCNN.
    regions: (x0, y0, x1, y1) in the pixels of the frames passed to it.
    height, width: those frames' size.
  """
  import torch
  from facenet_pytorch.models.utils import detect_face as library

  scales = pyramid_scales(height, width, mtcnn.min_face_size, mtcnn.factor)
  windows = [level_windows(regions, height, width, s) for s in scales]
  boxes = [
    (
      min((w[0] for w in ws), default=0),
      min((w[1] for w in ws), default=0),
      max((w[2] for w in ws), default=0),
      max((w[3] for w in ws), default=0),
    )
    for ws in windows
  ]
  state = {"level": 0, "pnet": 0}
  original_resample, original_pnet = library.imresample, mtcnn.pnet.forward

  def imresample(img, size):
    level = state["level"]
    if level >= len(scales):
      return original_resample(img, size)
    state["level"] += 1
    expected = (int(height * scales[level] + 1), int(width * scales[level] + 1))
    if tuple(size) != expected or tuple(img.shape[2:]) != (height, width):
      raise RuntimeError(
        f"facenet-pytorch pyramid level {level}: {tuple(size)} from "
        f"{tuple(img.shape[2:])}, expected {expected} from {(height, width)}"
      )
    # Only the windows' bounding box of the level is built (detect_face
    # only normalises it before PNet, which the hook below places).
    bx0, by0, bx1, by1 = boxes[level]
    level_img = torch.zeros(
      img.shape[:2] + (by1 - by0, bx1 - bx0), dtype=img.dtype
    )
    for wx0, wy0, wx1, wy1 in windows[level]:
      rows, a, b = _pool_matrix(wy0, wy1, size[0], height)
      cols, c, d = _pool_matrix(wx0, wx1, size[1], width)
      part = img[:, :, a:b, c:d]
      level_img[:, :, wy0 - by0 : wy1 - by0, wx0 - bx0 : wx1 - bx0] = (
        rows @ part @ cols.T
      )
    return level_img

  def pnet(x):
    level = state["pnet"]
    state["pnet"] += 1
    n = x.shape[0]
    hs, ws = int(height * scales[level] + 1), int(width * scales[level] + 1)
    oh, ow = _pnet_size(hs), _pnet_size(ws)
    reg = torch.zeros(n, 4, max(oh, 0), max(ow, 0), dtype=x.dtype)
    probs = torch.zeros(n, 2, max(oh, 0), max(ow, 0), dtype=x.dtype)
    bx0, by0 = boxes[level][:2]
    for wx0, wy0, wx1, wy1 in windows[level]:
      part_reg, part_probs = original_pnet(
        x[:, :, wy0 - by0 : wy1 - by0, wx0 - bx0 : wx1 - bx0]
      )
      h, w = part_probs.shape[2:]
      oy, ox = wy0 // 2, wx0 // 2
      probs[:, :, oy : oy + h, ox : ox + w] = part_probs
      reg[:, :, oy : oy + h, ox : ox + w] = part_reg
    return reg, probs

  library.imresample = imresample
  mtcnn.pnet.forward = pnet
  try:
    yield
  finally:
    library.imresample = original_resample
    mtcnn.pnet.forward = original_pnet
