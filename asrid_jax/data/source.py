"""Worker-side pieces of the input pipeline: record source, examples, loading.

Everything here is pickled into grain's worker processes, so this module
imports numpy/OpenCV only (no JAX): a worker starts in about a second.

An *example* is one row `(key, slot)` of an int64 table:
  * picture sampling: key = record id, slot = 0 (one crop, T = 1);
  * video sampling: key = face-track id, slot = which clip of the track.
    A track of n frames has ceil(n / T) clip slots. At evaluation slot k is
    frames [k*T, k*T + T), except the last slot, which is the last T frames
    of the track (`clip_frames`): every clip is T real, consecutive frames,
    as in training, and the tail clip overlaps its neighbour (frame scores
    average the duplicates). In training each slot draws a random start in
    [0, n - T] (per-record RNG), so every window of the track is seen over
    the epochs at the same rate. Only a track shorter than T gives a padded
    clip: its last frame repeated, frame_order = -1 marking the repeats,
    which the temporal head masks out (`frame_mask`); train, evaluate and
    predict cut clips with the same function. `short_tracks='skip'` drops
    tracks shorter than T instead.
  * key = -1 is padding (evaluation only): a zero example with _mask False.
"""

from __future__ import annotations

import bisect

import cv2
import grain
import numpy as np

from asrid_jax.data import records
from asrid_jax.data.index import SplitIndex

# Fields of the contract batch (CONTRACTS.md "Batches"); 'landmarks' travels
# with each example only as far as augmentation.
BATCH_KEYS = ("image", "label", "video_idx", "face_index", "frame_order")


class ShardSource(grain.sources.RandomAccessDataSource):
  """Serialized records of a split by global record id (shard order).

  Each shard is a `records.ShardReader`: pread on a lazily opened descriptor
  (opened per worker after unpickling), checksums verified on every read.
  """

  def __init__(self, shards: tuple[str, ...] | list[str]):
    self._readers = [records.ShardReader(s) for s in shards]
    self._offsets = np.cumsum([0] + [len(r) for r in self._readers]).tolist()

  def __len__(self) -> int:
    return self._offsets[-1]

  def locate(self, record: int) -> tuple[int, int]:
    """(shard number, position in the shard) of a global record id."""
    if not 0 <= record < len(self):
      raise IndexError(f"record {record} out of range [0, {len(self)})")
    s = bisect.bisect_right(self._offsets, record) - 1
    return s, record - self._offsets[s]

  def describe(self, record: int) -> str:
    s, pos = self.locate(record)
    return f"{self._readers[s].path} record {pos}"

  def __getitem__(self, record: int) -> bytes:
    s, pos = self.locate(int(record))
    return self._readers[s][pos]

  def __repr__(self) -> str:
    return f"ShardSource({len(self._readers)} shards, {len(self)} records)"


# ----------------------------------------------------------------------------
# Example tables.
# ----------------------------------------------------------------------------


def clip_frames(n: int, clip_len: int) -> np.ndarray:
  """The evaluation clips of an n-frame track: (ceil(n/T), T) int64 frame
  positions, -1 where a track shorter than T is padded.

  Clip k starts at k*T; the last starts at n - T (the last T frames, which
  may overlap the previous clip) so no clip holds a repeated frame unless
  the whole track is shorter than T.
  """
  if n < 1 or clip_len < 1:
    raise ValueError(f"need n >= 1 and clip_len >= 1, got {n}, {clip_len}")
  k = -(-n // clip_len)
  starts = np.arange(k, dtype=np.int64) * clip_len
  starts[-1] = max(0, n - clip_len)
  frames = starts[:, None] + np.arange(clip_len, dtype=np.int64)
  frames[frames >= n] = -1
  return frames


def make_examples(
  index: SplitIndex, sampling: str, clip_len: int, short_tracks: str = "pad"
) -> tuple[np.ndarray, np.ndarray]:
  """(examples (M, 2) int64, labels (M,) int8) for the whole split."""
  if sampling == "picture":
    ids = np.arange(index.num_records, dtype=np.int64)
    return np.stack([ids, np.zeros_like(ids)], 1), index.label.copy()
  if sampling != "video":
    raise ValueError(f"sampling must be 'picture' or 'video', got {sampling!r}")
  if clip_len < 1:
    raise ValueError(f"clip_len must be >= 1, got {clip_len}")
  if short_tracks not in ("pad", "skip"):
    raise ValueError(
      f"short_tracks must be 'pad' or 'skip', got {short_tracks!r}"
    )
  lengths = index.track_lengths
  slots = -(-lengths // clip_len)  # ceil
  if short_tracks == "skip":
    slots[lengths < clip_len] = 0
  track = np.repeat(np.arange(index.num_tracks, dtype=np.int64), slots)
  first = np.repeat(np.cumsum(slots) - slots, slots)
  slot = np.arange(len(track), dtype=np.int64) - first
  return np.stack([track, slot], 1), index.track_label[track].copy()


class BalancedEpochs(grain.MapDataset):
  """An epoch of examples with the minority class oversampled to a fraction.

  With `real_fraction=None` an epoch is the examples as given. Otherwise the
  class below its target share is resampled up (never is data dropped): all
  examples of the other class, plus floor copies of the minority class and a
  per-epoch random subset for the remainder, so over epochs every minority
  example is repeated equally often. Index e * len + j is slot j of epoch e,
  which is what `shuffle(...).repeat()` passes down.
  """

  def __init__(
    self,
    examples: np.ndarray,
    labels: np.ndarray,
    real_fraction: float | None,
    seed: int,
  ):
    super().__init__()
    self._examples = examples
    self._seed = seed
    real = np.flatnonzero(labels == records.LABEL_REAL)
    fake = np.flatnonzero(labels == records.LABEL_FAKE)
    if real_fraction is None:
      self._major, self._minor, self._minor_count = (
        np.arange(len(examples)),
        real[:0],
        0,
      )
    else:
      if not 0.0 < real_fraction < 1.0:
        raise ValueError(f"balance must be in (0, 1), got {real_fraction}")
      if not len(real) or not len(fake):
        raise ValueError(
          f"balance={real_fraction} needs both labels; this part has "
          f"{len(real)} REAL and {len(fake)} FAKE examples"
        )
      want_real = real_fraction * len(fake) / (1.0 - real_fraction)
      if want_real >= len(real):
        self._major, self._minor = fake, real
        self._minor_count = int(round(want_real))
      else:
        want_fake = (1.0 - real_fraction) * len(real) / real_fraction
        self._major, self._minor = real, fake
        self._minor_count = int(round(want_fake))
    self._length = len(self._major) + self._minor_count
    self._cached_epoch = (-1, None)

  def __len__(self) -> int:
    return self._length

  def __str__(self) -> str:
    return f"BalancedEpochs(len={self._length})"

  def _minor_order(self, epoch: int) -> np.ndarray:
    cached_epoch, order = self._cached_epoch
    if cached_epoch != epoch:
      rng = np.random.default_rng([self._seed, epoch])
      order = rng.permutation(self._minor)
      self._cached_epoch = (epoch, order)
    return order

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, j = divmod(int(index), self._length)
    if j < len(self._major):
      return self._examples[self._major[j]]
    j -= len(self._major)
    n = len(self._minor)
    # Full copies in fixed order; the last partial copy is an epoch-specific
    # random subset, so no example is favoured across epochs.
    if j < (self._minor_count // n) * n:
      return self._examples[self._minor[j % n]]
    return self._examples[self._minor_order(epoch)[j % n]]


# ----------------------------------------------------------------------------
# Loading: records -> decoded, resized frames.
# ----------------------------------------------------------------------------


def decode_resize(
  data: bytes, size: int, where: str
) -> tuple[np.ndarray, tuple[int, int]]:
  """JPEG bytes -> ((size, size, 3) uint8 RGB, stored (height, width))."""
  image = records.decode_jpeg(data, where)
  return resize_square(image, size), image.shape[:2]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
  """(h, w, 3) -> (size, size, 3): area filter to shrink, bilinear to grow."""
  h, w = image.shape[:2]
  if (h, w) == (size, size):
    return image
  interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
  return cv2.resize(image, (size, size), interpolation=interp)


class LoadExample(grain.transforms.RandomMap):
  """Example row -> dict of frames and ids (see module docstring)."""

  def __init__(
    self,
    index: SplitIndex,
    *,
    sampling: str,
    clip_len: int,
    image_size: int,
    random_start: bool,
    with_mask: bool,
  ):
    self._source = ShardSource(index.shards)
    self._index = index
    self._picture = sampling == "picture"
    self._t = 1 if self._picture else clip_len
    self._size = image_size
    self._random_start = random_start
    self._with_mask = with_mask

  def padding(self) -> dict[str, np.ndarray]:
    t, s = self._t, self._size
    out = {
      "image": np.zeros((t, s, s, 3), np.uint8),
      "landmarks": np.zeros((t, 5, 2), np.float32),
      "label": np.int32(0),
      "video_idx": np.int32(-1),
      "face_index": np.int32(-1),
      "frame_order": np.full((t,), -1, np.int32),
    }
    if self._with_mask:
      out["_mask"] = np.bool_(False)
    return out

  def _record_ids(self, key: int, slot: int, rng: np.random.Generator):
    if self._picture:
      return [key]
    idx, t = self._index, self._t
    lo, hi = int(idx.track_starts[key]), int(idx.track_starts[key + 1])
    n = hi - lo
    if self._random_start:
      start = int(rng.integers(0, n - t + 1)) if n > t else 0
    else:  # slot k of clip_frames(n, t); the last one ends at the track end
      start = min(slot * t, max(0, n - t))
    return idx.track_records[lo + start : lo + min(start + t, n)].tolist()

  def random_map(self, element, rng: np.random.Generator):
    key, slot = int(element[0]), int(element[1])
    if key < 0:
      return self.padding()
    idx = self._index
    ids = self._record_ids(key, slot, rng)
    frames, marks = [], []
    for r in ids:
      where = self._source.describe(r)
      try:
        rec = records.FaceRecord.from_bytes(self._source[r])
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
      if (
        rec.frame_order != idx.frame_order[r]
        or rec.face_index != idx.face_index[r]
        or rec.video_id != idx.video_ids[idx.video[r]]
      ):
        raise ValueError(
          f"{where}: does not match its {records.SHARD_SUFFIX}"
          "-side index cache; delete the *.meta.npz files and retry"
        )
      image, (h, w) = decode_resize(rec.image, self._size, where)
      scale = np.asarray([self._size / w, self._size / h], np.float32)
      frames.append(image)
      marks.append(rec.landmarks * scale)
    orders = idx.frame_order[ids].astype(np.int32)
    pad = self._t - len(ids)
    if pad:  # repeat the last frame; frame_order -1 marks the repeats
      frames += [frames[-1]] * pad
      marks += [marks[-1]] * pad
      orders = np.concatenate([orders, np.full(pad, -1, np.int32)])
    out = {
      "image": np.stack(frames),
      "landmarks": np.stack(marks).astype(np.float32),
      "label": np.int32(idx.label[ids[0]]),
      "video_idx": np.int32(idx.video[ids[0]]),
      "face_index": np.int32(idx.face_index[ids[0]]),
      "frame_order": orders,
    }
    if self._with_mask:
      out["_mask"] = np.bool_(True)
    return out


class ToBatchFields(grain.transforms.Map):
  """Keeps the contract's batch fields (drops landmarks after augmenting)."""

  def map(self, element: dict) -> dict:
    keys = BATCH_KEYS + (("_mask",) if "_mask" in element else ())
    return {k: element[k] for k in keys}
