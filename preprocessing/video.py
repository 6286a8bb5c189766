"""Video decoding and frame sampling.

OpenCV reads the header (frame size, count, rate) of every video. Frames are
then decoded sequentially, which is much cheaper than seeking in long-GOP
H.264 streams (a seek decodes from the previous key frame anyway), in one of
two ways (`decoder`):

- "opencv": `grab()` on every frame and `retrieve()` only on the sampled
  ones. Every frame is decoded.
- "auto" (the default): H.264 and HEVC streams are decoded with PyAV, which
  lets the decoder drop, packet by packet, the frames that are neither
  sampled nor a reference for another frame (`skip_frame = NONREF` on those
  packets only). No decoded frame depends on a dropped one, so the sampled
  frames are bit for bit those of the "opencv" path; at 1080p about half
  the frames are dropped (~40% less decoding). A frame's number is its rank
  in presentation order among the packets' timestamps, which is what the
  "opencv" path counts. Other codecs, streams whose timestamps cannot give
  that order (missing, duplicated, reordered further than `_REORDER_LIMIT`
  packets, flagged corrupt or discarded), rotated streams (OpenCV turns
  their frames upright) and installs without PyAV use the "opencv" path.

`FrameStream` decodes in a background thread so detection can start on the
first frames.
"""

import dataclasses
import os
import pathlib
import threading
import time

import cv2
import numpy as np

try:  # PyAV: per-packet frame dropping; without it OpenCV decodes everything
  import av
except ImportError:  # pragma: no cover (requirements.txt installs it)
  av = None

DECODERS = ("auto", "opencv")
# Codecs whose decoders honour skip_frame = NONREF and are bit-exact.
_SKIPPING_CODECS = frozenset({"h264", "hevc"})
# How far decode order may run from presentation order (H.264 allows 16).
_REORDER_LIMIT = 32
# The packets planned are held in memory: past this, OpenCV decodes (a 10-s
# 1080p DFDC clip's first 330 packets are 2.7 MB).
_PLAN_BYTES = 256 << 20


def decoding_threads(spare: int = 0) -> int:
  """PyAV's frame threads: one per core less `spare` for a consumer running
  beside the decoder, at least 1, at most 16."""
  return max(1, min((os.cpu_count() or 1) - spare, 16))


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
  decoder: str = "auto",
) -> SampledFrames:
  """Decodes every `frame_step`-th frame, at most `max_frames` of them.

  Args:
    path: a video file OpenCV can open.
    frame_step: keep frames 0, step, 2*step, ...
    max_frames: stop after this many sampled frames.
    min_frames: fewer sampled frames than this is an error.
    decoder: "auto" or "opencv" (module docstring); same frames either way.

  Returns:
    The sampled RGB frames, their indices and the video geometry.

  Raises:
    VideoError: the file is missing, empty, not a decodable video, or shorter
      than `min_frames` sampled frames; the message says which.
  """
  frames, indices, stats = [], [], {}
  frames_in = _decode(path, frame_step, max_frames, stats, decoder)
  geometry, fps = next(frames_in)
  for index, rgb in frames_in:
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


def _decode(
  path,
  frame_step: int,
  max_frames: int,
  stats: dict,
  decoder: str = "auto",
  threads: int | None = None,
):
  """Yields (Geometry, fps), then (frame number, RGB frame) per sampled one.

  threads: PyAV's decoding threads (frame threading; None:
  `decoding_threads()`). OpenCV picks its own.

  stats['decoded'] counts the frames read so far (decoded or dropped),
  stats['frames_decoded'] those the decoder returned, stats['decoder']
  says which path decodes.

  The header frame count can be wrong (truncated files): it decodes until
  the stream really ends or enough frames were sampled.
  """
  if decoder not in DECODERS:
    raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
  if threads is None:
    threads = decoding_threads()
  path = pathlib.Path(path)
  cap = _open(path)
  try:
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    header_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    if width <= 0 or height <= 0:
      raise VideoError(f"invalid frame size {width}x{height}")
    yield Geometry(width, height, header_count), fps
    plan = (
      _skip_plan(path, frame_step * max_frames)
      if decoder == "auto" and av is not None
      else None
    )
    if plan is not None:
      stats["decoder"] = "pyav"
      try:
        yield from _decode_skipping(
          plan, frame_step, max_frames, stats, width, height, threads
        )
        return
      except _UseOpenCV:  # raised before any frame was yielded
        pass
    stats["decoder"] = "opencv"
    index = sampled = 0
    while sampled < max_frames:
      if not cap.grab():
        break
      if index % frame_step == 0:
        ok, bgr = cap.retrieve()
        if not ok or bgr is None:
          break
        _check_size(index, bgr.shape[1], bgr.shape[0], width, height)
        sampled += 1
        yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      index += 1
      stats["decoded"] = stats["frames_decoded"] = index
  finally:
    cap.release()


def _check_size(index, frame_width, frame_height, width, height):
  if (frame_width, frame_height) != (width, height):
    raise VideoError(
      f"frame {index} is {frame_width}x{frame_height}, header says "
      f"{width}x{height}"
    )


class _UseOpenCV(Exception):
  """The stream turned out to need OpenCV's handling (before any frame)."""


@dataclasses.dataclass
class _SkipPlan:
  """An open PyAV stream, its first packets and their frame numbers."""

  container: object
  stream: object
  packets: list  # in decode order
  ranks: list[int]  # frame number (presentation rank) of each packet


def _skip_plan(path: pathlib.Path, frames_needed: int) -> _SkipPlan | None:
  """Demuxes (reads, does not decode) the packets of the first
  `frames_needed` frames; None where the "opencv" path must decode.

  Packets are ranked by timestamp. A packet beyond those read can rank
  below a read one only if decode order ran more than _REORDER_LIMIT / 2
  from presentation order, which is checked on the packets read.
  """
  try:
    container = av.open(str(path))
  except av.FFmpegError:
    return None
  try:
    packets = _plan_packets(container, frames_needed + _REORDER_LIMIT)
  except av.FFmpegError:  # a damaged container: OpenCV's handling decides
    packets = None
  if packets is not None:
    order = sorted(range(len(packets)), key=lambda i: packets[i].pts)
    ranks = [0] * len(packets)
    for rank, i in enumerate(order):
      ranks[i] = rank
    unique = len({p.pts for p in packets}) == len(packets)
    if unique and all(
      abs(rank - i) < _REORDER_LIMIT // 2 for i, rank in enumerate(ranks)
    ):
      return _SkipPlan(container, container.streams.video[0], packets, ranks)
  container.close()
  return None


def _plan_packets(container, count: int) -> list | None:
  """The first `count` packets of the first video stream, if it is one
  `_SKIPPING_CODECS` decodes and every packet has a usable timestamp and
  they fit in `_PLAN_BYTES`; else None."""
  streams = container.streams.video
  if not streams or streams[0].codec_context.name not in _SKIPPING_CODECS:
    return None
  packets, size = [], 0
  for packet in container.demux(streams[0]):
    if packet.size == 0:  # the end-of-stream marker
      continue
    if packet.pts is None or packet.is_corrupt or packet.is_discard:
      return None
    packets.append(packet)
    size += packet.size
    if size > _PLAN_BYTES:
      return None
    if len(packets) >= count:
      break
  return packets


def _decode_skipping(
  plan: _SkipPlan, frame_step, max_frames, stats, w, h, threads
):
  """Yields (frame number, RGB frame) per sampled frame of a _SkipPlan,
  letting the decoder drop the unsampled frames nothing refers to."""
  needed = frame_step * max_frames
  wanted = {
    packet.pts: rank
    for packet, rank in zip(plan.packets, plan.ranks, strict=True)
    if rank < needed and rank % frame_step == 0
  }
  context = plan.stream.codec_context
  context.thread_type = "FRAME"  # before thread_count, or it is ignored
  context.thread_count = threads
  sampled = 0

  def frames():
    try:
      for packet in plan.packets:
        context.skip_frame = "DEFAULT" if packet.pts in wanted else "NONREF"
        yield from context.decode(packet)
      context.skip_frame = "DEFAULT"
      yield from context.decode(None)  # what the decoder still holds
    except av.FFmpegError:  # a damaged stream ends there, as in OpenCV
      return

  stats["frames_decoded"] = 0
  try:
    for frame in frames():
      if not stats["frames_decoded"] and frame.rotation:
        # OpenCV turns frames by the display matrix (phone videos).
        raise _UseOpenCV
      stats["frames_decoded"] += 1
      rank = wanted.get(frame.pts)
      if rank is None:
        continue
      stats["decoded"] = rank + 1
      _check_size(rank, frame.width, frame.height, w, h)
      sampled += 1
      yield rank, frame.to_ndarray(format="rgb24")
      if sampled == len(wanted):
        break
  finally:
    plan.container.close()


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

  OpenCV and PyAV release the GIL while they decode, so a consumer (face
  detection) works on the first frames while the later ones are decoded: on
  2 cores decode and detection overlap instead of adding up.

    stream = FrameStream(path, 10, 30, 8)
    while stream.wait(i): use(stream[i]); i += 1
    frames = stream.result()  # SampledFrames, or raises VideoError
  """

  def __init__(
    self, path, frame_step=10, max_frames=30, min_frames=1, decoder="auto"
  ):
    self._stats: dict = {}
    # The consumer runs beside the decoder: it keeps a core for itself (on
    # 2 cores, 1 decoding thread: 1.08 against 1.12 s a 1080p clip with
    # MTCNN, 1.97 against 2.02 CPU s; bench/preprocess_bench.py).
    threads = decoding_threads(spare=1)
    self._args = (path, frame_step, max_frames, self._stats, decoder, threads)
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
