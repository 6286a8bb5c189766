"""Video decoding and frame sampling with OpenCV.

Frames are decoded sequentially: `grab()` on every frame and `retrieve()` only
on the sampled ones, which is much cheaper than seeking in long-GOP H.264
streams (a seek decodes from the previous key frame anyway). `FrameStream`
decodes in a background thread so detection can start on the first frames.
"""

import dataclasses
import os
import pathlib
import threading
import time

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
  # The range is cut before it becomes a list: headers can claim 2^32
  # frames.
  return list(range(0, max(num_frames, 0), frame_step)[:max_frames])


def expected_samples(frame_count: int, frame_step: int, max_frames: int):
  """How many frames sample_indices gives for a header's frame count (a
  negative count reads as 0)."""
  return len(sample_indices(frame_step, max_frames, frame_count))


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
  frames, indices, stats = [], [], {}
  decoder = _decode(path, frame_step, max_frames, stats)
  geometry, fps = next(decoder)
  for index, rgb in decoder:
    indices.append(index)
    frames.append(rgb)
  return _checked(geometry, fps, indices, frames, stats, frame_step, min_frames)


def _open(path: pathlib.Path):
  if not path.is_file():
    raise VideoError("file not found")
  if path.stat().st_size == 0:
    raise VideoError("empty file (0 bytes)")
  cap = cv2.VideoCapture(str(path))
  if not cap.isOpened():
    cap.release()
    raise VideoError("OpenCV cannot open it (not a video or corrupt container)")
  return cap


def _decode(path, frame_step: int, max_frames: int, stats: dict):
  """Yields (Geometry, fps), then (frame number, RGB frame) per sampled one.

  stats['decoded'] counts the frames decoded so far.

  Decodes sequentially: grab() every frame, retrieve() the sampled ones.
  The header frame count can be wrong (truncated files): it decodes until
  the stream really ends or enough frames were sampled.
  """
  cap = _open(pathlib.Path(path))
  try:
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    header_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if width <= 0 or height <= 0:
      raise VideoError(f"invalid frame size {width}x{height}")
    yield Geometry(width, height, header_count), fps
    index = sampled = 0
    while sampled < max_frames:
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
        sampled += 1
        yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      index += 1
      stats["decoded"] = index
  finally:
    cap.release()


def _checked(geometry, fps, indices, frames, stats, frame_step, min_frames):
  if not frames:
    raise VideoError("no frame could be decoded (truncated or corrupt stream)")
  if len(frames) < min_frames:
    raise VideoError(
      f"too short: {len(frames)} sampled frame(s) (every {frame_step}th of "
      f"{stats.get('decoded', 0)} decoded), fewer than the minimum "
      f"{min_frames}"
    )
  return SampledFrames(
    geometry=geometry, fps=fps, frame_indices=indices, frames=frames
  )


class FrameStream:
  """`read_frames` in a background thread, its frames usable as they come.

  OpenCV releases the GIL while it decodes, so a consumer (face detection)
  works on the first frames while the later ones are decoded: on 2 cores
  decode and detection overlap instead of adding up.

    stream = FrameStream(path, 10, 30, 8)
    while stream.wait(i): use(stream[i]); i += 1
    frames = stream.result()  # SampledFrames, or raises VideoError
  """

  def __init__(self, path, frame_step=10, max_frames=30, min_frames=1):
    self._stats: dict = {}
    self._args = (path, frame_step, max_frames, self._stats)
    self._min_frames = min_frames
    self._frames: list[np.ndarray] = []
    self._indices: list[int] = []
    self._head = None
    self._error: BaseException | None = None
    self._done = False
    self.waited = 0.0  # seconds consumers spent blocked in wait()/result()
    self.busy = 0.0  # seconds the thread spent decoding
    # Sampled frames the header's frame count promises (0 until it is read;
    # set before the first frame arrives). Truncated files give fewer.
    self.expected = 0
    self._cond = threading.Condition()
    self._thread = threading.Thread(
      target=self._run, name="decode", daemon=True
    )
    self._thread.start()

  def _run(self) -> None:
    start = time.perf_counter()
    try:
      decoder = _decode(*self._args)
      head = next(decoder)
      geometry, _ = head
      self.expected = expected_samples(
        geometry.frame_count, self._args[1], self._args[2]
      )
      with self._cond:
        self._head = head
      for index, rgb in decoder:
        with self._cond:
          self._indices.append(index)
          self._frames.append(rgb)
          self._cond.notify_all()
    except BaseException as e:  # noqa: BLE001 (re-raised by result())
      self._error = e
    finally:
      with self._cond:
        self.busy = time.perf_counter() - start
        self._done = True
        self._cond.notify_all()

  @property
  def decoding(self) -> bool:
    """Whether the background thread is still decoding."""
    return not self._done

  def wait(self, i: int) -> bool:
    """Blocks until frame i is decoded (True) or the stream ended (False)."""
    start = time.perf_counter()
    with self._cond:
      self._cond.wait_for(lambda: len(self._frames) > i or self._done)
      self.waited += time.perf_counter() - start
      return len(self._frames) > i

  def __getitem__(self, i: int) -> np.ndarray:
    return self._frames[i]

  def result(self) -> SampledFrames:
    """Waits for the end; the frames as read_frames returns them."""
    start = time.perf_counter()
    self._thread.join()
    self.waited += time.perf_counter() - start
    if self._error is not None:
      raise self._error
    geometry, fps = self._head
    return _checked(
      geometry,
      fps,
      self._indices,
      self._frames,
      self._stats,
      self._args[1],
      self._min_frames,
    )
