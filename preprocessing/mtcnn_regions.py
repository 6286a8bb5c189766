"""MTCNN's image pyramid built exactly and fast, and restricted to regions.

Cropping a region and running MTCNN on the crop changes what it sees: its
pyramid levels are sized from the crop, so they sample the pixels on a
slightly different grid, and the boxes and scores of faces near its
thresholds move (a DFDC face scored 0.79 on the whole frame and 0.74 in a
crop, and fell below the track filter's mean score). Here MTCNN runs on the
whole frames with its own code, but its first stage computes each pyramid
level only in a window around the regions, on the level's own grid: the
level's pixels there are the area averages `imresample` gives, and PNet
runs on windows aligned with its stride, so the candidates inside the
regions are those of the whole-frame pass (up to float rounding in PNet's
convolutions on a smaller input); RNet and ONet then refine them on the
whole frames as usual. Cost follows the regions' area, not the frame's.

The levels come from the frames' summed-area table (`area_resize`), bit for
bit the values of torch's CPU area interpolation on the frames' integer
pixels (sum / height / width), in about half its time: whole-frame searches
on CPU build their pyramid this way too (a third of a 1080p search was
`imresample`), with the same boxes. On a GPU whole frames keep torch's own
levels, whose CUDA kernel multiplies by 1 / (height * width): region levels
may differ from them by an ulp, which moves boxes by float rounding only.

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


def area_windows(size: int, out: int, lo: int, hi: int):
  """Input spans [start, end) of output pixels lo..hi-1 when `size`
  pixels are area-resized to `out` (torch's adaptive average pooling:
  start = floor(i * size / out), end = ceil((i + 1) * size / out))."""
  i = np.arange(lo, hi)
  return (i * size) // out, ((i + 1) * size + out - 1) // out


def summed_area(frames: np.ndarray, y0: int, x0: int, y1: int, x1: int):
  """(N, y1 - y0 + 1, x1 - x0 + 1, C) int32 summed-area table of a crop."""
  import cv2

  return np.stack([cv2.integral(f[y0:y1, x0:x1]) for f in frames])


def area_resize(
  table: np.ndarray,
  origin: tuple[int, int],
  size: tuple[int, int],
  out: tuple[int, int],
  rows: tuple[int, int],
  cols: tuple[int, int],
) -> np.ndarray:
  """Rows x cols of frames of `size` area-resized to `out`, (N, h, w, C).

  Bit for bit what torch's `interpolate(mode='area')` (facenet-pytorch's
  `imresample`) gives on the float frames: the frames hold integers, so a
  window's sum is exact in any order (a summed-area table's differences),
  and torch divides it by the window's height, then by its width, as here.

  Args:
    table: summed_area of the frames' crop starting at `origin` (y, x); it
      must cover the input spans of rows x cols.
    size: the frames' (height, width); out: the level's.
    rows, cols: [lo, hi) of the output to compute.
  """
  ys, ye = area_windows(size[0], out[0], *rows)
  xs, xe = area_windows(size[1], out[1], *cols)
  oy, ox = origin
  band = table[:, ye - oy] - table[:, ys - oy]
  sums = (band[:, :, xe - ox] - band[:, :, xs - ox]).astype(np.float32)
  kh = (ye - ys).astype(np.float32)[None, :, None, None]
  kw = (xe - xs).astype(np.float32)[None, None, :, None]
  return sums / kh / kw


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
def exact_pyramid(mtcnn, frames: np.ndarray, regions: Sequence[Region] | None):
  """While active, `mtcnn.detect(frames)` builds its pyramid levels here.

  Each level comes from the frames' summed-area table (`area_resize`: the
  values `imresample` gives, bit for bit, at a fraction of its cost on a
  whole frame). With `regions`, only windows around them are built and
  searched: PNet runs on each window, aligned with its stride, so the
  candidates inside the regions are those of the whole-frame pass.

  Args:
    mtcnn: a facenet_pytorch MTCNN.
    frames: (N, H, W, C) uint8, what is passed to `mtcnn.detect`.
    regions: (x0, y0, x1, y1) in those frames' pixels; None: all of them.
  """
  import torch
  from facenet_pytorch.models.utils import detect_face as library

  height, width = frames.shape[1:3]
  scales = pyramid_scales(height, width, mtcnn.min_face_size, mtcnn.factor)
  sizes = [(int(height * s + 1), int(width * s + 1)) for s in scales]
  if regions is None:
    windows = [[(0, 0, w, h)] for h, w in sizes]
  else:
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
  # The input pixels any window needs: one summed-area table covers them.
  spans = [
    (
      *area_windows(height, size[0], wy0, wy1),
      *area_windows(width, size[1], wx0, wx1),
    )
    for size, ws in zip(sizes, windows, strict=True)
    for wx0, wy0, wx1, wy1 in ws
  ]
  y0 = min((ys[0] for ys, *_ in spans), default=0)
  y1 = max((ye[-1] for _, ye, *_ in spans), default=0)
  x0 = min((xs[0] for *_, xs, _ in spans), default=0)
  x1 = max((xe[-1] for *_, xe in spans), default=0)
  table = summed_area(frames, y0, x0, y1, x1) if spans else None
  state = {"level": 0, "pnet": 0}
  original_resample, original_pnet = library.imresample, mtcnn.pnet.forward

  def imresample(img, size):
    level = state["level"]
    if level >= len(scales):  # RNet's and ONet's crops
      return original_resample(img, size)
    state["level"] += 1
    expected = sizes[level]
    if tuple(size) != expected or tuple(img.shape[2:]) != (height, width):
      raise RuntimeError(
        f"facenet-pytorch pyramid level {level}: {tuple(size)} from "
        f"{tuple(img.shape[2:])}, expected {expected} from {(height, width)}"
      )
    # Only the windows' bounding box of the level is built (detect_face
    # only normalises it before PNet, which the hook below places).
    bx0, by0, bx1, by1 = boxes[level]
    level_img = np.zeros(
      (len(frames), by1 - by0, bx1 - bx0, frames.shape[3]), np.float32
    )
    for wx0, wy0, wx1, wy1 in windows[level]:
      level_img[:, wy0 - by0 : wy1 - by0, wx0 - bx0 : wx1 - bx0] = area_resize(
        table, (y0, x0), (height, width), size, (wy0, wy1), (wx0, wx1)
      )
    # NCHW with channels last in memory, like imresample's result.
    return torch.from_numpy(level_img).permute(0, 3, 1, 2).to(img.device)

  def pnet(x):
    level = state["pnet"]
    state["pnet"] += 1
    n = x.shape[0]
    oh, ow = (_pnet_size(v) for v in sizes[level])
    shape = (max(oh, 0), max(ow, 0))
    reg = torch.zeros(n, 4, *shape, dtype=x.dtype, device=x.device)
    probs = torch.zeros(n, 2, *shape, dtype=x.dtype, device=x.device)
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
  if regions is not None:
    mtcnn.pnet.forward = pnet
  try:
    yield
  finally:
    library.imresample = original_resample
    mtcnn.pnet.forward = original_pnet
