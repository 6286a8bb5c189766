"""Video decoding and frame sampling with OpenCV.

Frames are decoded sequentially: `grab()` on every frame and `retrieve()` only
on the sampled ones, which is much cheaper than seeking in long-GOP H.264
streams (a seek decodes from the previous key frame anyway).
"""

import dataclasses
import os
import pathlib

import cv2
import numpy as np


class VideoError(Exception):
  """A video that cannot be used; the message is the human-readable reason."""


@dataclasses.dataclass(frozen=True)
class Geometry:
  """What must match for an original's face boxes to be valid on a fake."""

  width: int
  height: int
  frame_count: int  # as the container header says (DFDC fakes copy it)


@dataclasses.dataclass
class SampledFrames:
  """Every `frame_step`-th frame of a video, RGB uint8 (H, W, 3) each."""

  geometry: Geometry
  fps: float
  frame_indices: list[int]  # frame number in the video of each sampled frame
  frames: list[np.ndarray]


def sample_indices(frame_step: int, max_frames: int, num_frames: int):
  """Indices 0, step, 2*step, ... below num_frames, at most max_frames."""
  if frame_step < 1 or max_frames < 1:
    raise ValueError(
      f"frame_step and max_frames must be >= 1, got {frame_step}, {max_frames}"
    )
  return list(range(0, max(num_frames, 0), frame_step))[:max_frames]


def read_frames(
  path: str | os.PathLike,
  frame_step: int = 10,
  max_frames: int = 30,
  min_frames: int = 1,
) -> SampledFrames:
  """Decodes every `frame_step`-th frame, at most `max_frames` of them.

  Args:
    path: a video file OpenCV can open.
    frame_step: keep frames 0, step, 2*step, ...
    max_frames: stop after this many sampled frames.
    min_frames: fewer sampled frames than this is an error.

  Returns:
    The sampled RGB frames, their indices and the video geometry.

  Raises:
    VideoError: the file is missing, empty, not a decodable video, or shorter
      than `min_frames` sampled frames; the message says which.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise VideoError("file not found")
  if path.stat().st_size == 0:
    raise VideoError("empty file (0 bytes)")
  cap = cv2.VideoCapture(str(path))
  try:
    if not cap.isOpened():
      raise VideoError(
        "OpenCV cannot open it (not a video or corrupt container)"
      )
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    header_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if width <= 0 or height <= 0:
      raise VideoError(f"invalid frame size {width}x{height}")
    indices, frames = [], []
    index = 0
    # The header frame count can be wrong (truncated files): decode until the
    # stream really ends or enough frames were sampled.
    while len(frames) < max_frames:
      if not cap.grab():
        break
      if index % frame_step == 0:
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
          break
        if bgr.shape[:2] != (height, width):
          raise VideoError(
            f"frame {index} is {bgr.shape[1]}x{bgr.shape[0]}, header says "
            f"{width}x{height}"
          )
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        indices.append(index)
      index += 1
  finally:
    cap.release()
  if not frames:
    raise VideoError("no frame could be decoded (truncated or corrupt stream)")
  if len(frames) < min_frames:
    raise VideoError(
      f"too short: {len(frames)} sampled frame(s) (every {frame_step}th of "
      f"{index} decoded), fewer than the minimum {min_frames}"
    )
  return SampledFrames(
    geometry=Geometry(width, height, header_count),
    fps=fps,
    frame_indices=indices,
    frames=frames,
  )
