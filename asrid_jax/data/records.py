"""Face-crop shards: TFRecord files of `tf.train.Example`, no TensorFlow.

The on-disk format is the one TensorFlow reads (`tf.data.TFRecordDataset` and
`tf.io.parse_single_example` work on our shards), but nothing here needs
TensorFlow: the proto comes from tensorflow-datasets' bundled copy and the
checksums from google-crc32c.

Framing of one record (all little-endian):

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

Each shard `NAME.tfrecord` has a sidecar `NAME.tfrecord.idx`: N pairs of
uint64 (offset, length) of the records' data, for random access with `pread`.

Each shard also gets `NAME.tfrecord.meta.npz` when it is written: one row per
record of (video, face_index, frame_order, label), so a reader's start-up
never parses record payloads (`data/index.py`). Its `signature` is keyed on
content (shard size, index size and the index's CRC-32C), not on mtime, so a
copy of the data (rsync, gsutil, staging to local SSD) or a read-only mount
keeps it valid. A tool that rewrites a shard without ShardWriter must delete
its .meta.npz.

Shards are written under temporary names and renamed when complete, metadata
and index first, shard last: a visible shard is always whole, and a killed
writer leaves nothing that readers pick up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import struct
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import google_crc32c
import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from asrid_jax.data.descriptors import (  # noqa: F401 (re-exported)
  MAX_OPEN_SHARDS,
  raise_open_file_limit,
)
from asrid_jax.data.descriptors import DescriptorPool as _DescriptorPool
from asrid_jax.data.files import (  # noqa: F401 (re-exported)
  fsync_dir,
  honour_umask,
  write_json_atomic,
)
from asrid_jax.data.jpeg import decode_jpeg, encode_jpeg  # noqa: F401
from asrid_jax.data.tfrecord import FOOTER as _FOOTER
from asrid_jax.data.tfrecord import HEADER as _HEADER
from asrid_jax.data.tfrecord import frame, masked_crc32c  # noqa: F401

# Bump when a field is added, removed or changes meaning.
SCHEMA_VERSION = 1
LABEL_REAL = 0
LABEL_FAKE = 1
SHARD_SUFFIX = ".tfrecord"
INDEX_SUFFIX = ".idx"
META_SUFFIX = ".meta.npz"
# Bump when the per-shard metadata changes meaning; old files are rebuilt.
# 2: content-keyed signature (1 was keyed on mtime).
META_VERSION = 2
DATASET_INFO = "dataset_info.json"
SPLITS = ("train", "val", "test")


class CorruptRecordError(ValueError):
  """A record whose framing or checksum is wrong; names the file and offset."""

  def __init__(self, path: os.PathLike | str, offset: int, reason: str):
    self.path = str(path)
    self.offset = offset
    self.reason = reason
    super().__init__(f"{self.path}: corrupt record at byte {offset}: {reason}")


# ----------------------------------------------------------------------------
# The Example schema.
# ----------------------------------------------------------------------------

# Feature name -> (proto list kind, FaceRecord attribute).
FEATURES: dict[str, tuple[str, str]] = {
  "image/encoded": ("bytes", "image"),
  "image/height": ("int64", "height"),
  "image/width": ("int64", "width"),
  "video/id": ("bytes", "video_id"),
  "video/original": ("bytes", "original"),
  "video/label": ("int64", "label"),
  "frame/index": ("int64", "frame_index"),
  "frame/order": ("int64", "frame_order"),
  "face/index": ("int64", "face_index"),
  "face/box": ("float", "box"),
  "face/landmarks": ("float", "landmarks"),
  "face/score": ("float", "score"),
}


@dataclasses.dataclass(eq=False)
class FaceRecord:
  """One face crop of one sampled frame of one video.

  `box` is (x1, y1, x2, y2) in source-video pixels; `landmarks` are the five
  MTCNN points (left eye, right eye, nose, mouth left, mouth right) as (x, y)
  in pixels of the stored crop, so augmentations can use them directly.
  """

  image: bytes
  height: int
  width: int
  video_id: str
  original: str
  label: int
  frame_index: int
  frame_order: int
  face_index: int
  box: np.ndarray
  landmarks: np.ndarray
  score: float

  def __post_init__(self):
    self.box = np.asarray(self.box, np.float32).reshape(4)
    self.landmarks = np.asarray(self.landmarks, np.float32).reshape(5, 2)
    # Stored as float32: round now so a record equals its round trip.
    self.score = float(np.float32(self.score))
    if self.label not in (LABEL_REAL, LABEL_FAKE):
      raise ValueError(f"label must be 0 (REAL) or 1 (FAKE), got {self.label}")

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, FaceRecord):
      return NotImplemented
    return all(
      np.array_equal(getattr(self, f.name), getattr(other, f.name))
      for f in dataclasses.fields(self)
    )

  def to_bytes(self) -> bytes:
    """The serialized `tf.train.Example`."""
    example = tf_example_pb2.Example()
    fmap = example.features.feature
    for name, (kind, attr) in FEATURES.items():
      value = getattr(self, attr)
      if kind == "bytes":
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        fmap[name].bytes_list.value.append(raw)
      elif kind == "int64":
        fmap[name].int64_list.value.append(int(value))
      else:
        fmap[name].float_list.value.extend(
          np.asarray(value, np.float32).ravel().tolist()
        )
    return example.SerializeToString(deterministic=True)

  @classmethod
  def from_bytes(cls, data: bytes) -> FaceRecord:
    """Parses a serialized Example; raises ValueError naming a missing field."""
    example = tf_example_pb2.Example.FromString(data)
    fmap = example.features.feature
    kwargs: dict[str, Any] = {}
    for name, (kind, attr) in FEATURES.items():
      if name not in fmap:
        raise ValueError(f"record has no field {name!r}")
      feature = fmap[name]
      if kind == "bytes":
        (value,) = feature.bytes_list.value
        kwargs[attr] = value if attr == "image" else value.decode("utf-8")
      elif kind == "int64":
        (kwargs[attr],) = feature.int64_list.value
      else:
        values = np.asarray(feature.float_list.value, np.float32)
        kwargs[attr] = float(values[0]) if attr == "score" else values
    return cls(**kwargs)

  def decode_image(self) -> np.ndarray:
    """The crop as (H, W, 3) uint8 RGB."""
    return decode_jpeg(self.image)


# ----------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------


def index_path(shard_path: os.PathLike | str) -> pathlib.Path:
  return pathlib.Path(str(shard_path) + INDEX_SUFFIX)


def meta_path(shard_path: os.PathLike | str) -> pathlib.Path:
  return pathlib.Path(str(shard_path) + META_SUFFIX)


def _signature_of(shard_size: int, index_bytes: bytes) -> np.ndarray:
  return np.asarray(
    [
      META_VERSION,
      SCHEMA_VERSION,
      shard_size,
      len(index_bytes),
      google_crc32c.value(index_bytes),
    ],
    np.int64,
  )


def content_signature(shard_path: os.PathLike | str) -> np.ndarray:
  """What a shard's metadata is valid for: sizes and the index's checksum.

  Reads the index (16 bytes a record), never the records; survives copies.
  """
  shard_path = pathlib.Path(shard_path)
  raw = index_path(shard_path).read_bytes()
  return _signature_of(shard_path.stat().st_size, raw)


# The per-record columns of a .meta.npz (besides `signature`, `video_ids`).
META_COLUMNS = ("video", "face_index", "frame_order", "label")


def write_shard_meta(
  path: os.PathLike | str,
  signature: np.ndarray,
  video_ids: list[str],
  rows: np.ndarray,
) -> None:
  """Writes a .meta.npz atomically; `rows` is (N, 4) in META_COLUMNS order."""
  path = pathlib.Path(path)
  rows = np.asarray(rows, np.int64).reshape(-1, 4)
  # '.tmp-' in the name: preprocessing's debris sweep removes it if killed.
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
  try:
    honour_umask(fd)  # mkstemp's 0600 would lock out other users
    with os.fdopen(fd, "wb") as f:
      np.savez(
        f,
        signature=np.asarray(signature, np.int64),
        video_ids=np.asarray(video_ids, dtype=str),
        video=rows[:, 0].astype(np.int32),
        face_index=rows[:, 1].astype(np.int32),
        frame_order=rows[:, 2].astype(np.int32),
        label=rows[:, 3].astype(np.int8),
      )
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


class ShardWriter:
  """Writes one shard and its index atomically.

  Use as a context manager. Records go to temporary files in the same folder;
  on a clean exit they are flushed, fsynced and renamed (metadata, index,
  then the shard, so a visible shard always has both). On an exception, or
  when the process dies, no file under the final names appears. Every record
  must be a FaceRecord Example: its identity fields go to the .meta.npz.
  """

  def __init__(self, path: os.PathLike | str):
    self.path = pathlib.Path(path)
    self.path.parent.mkdir(parents=True, exist_ok=True)
    tag = f".tmp-{os.getpid()}-{id(self):x}"
    self._tmp = self.path.with_name(self.path.name + tag)
    self._tmp_index = self.path.with_name(self.path.name + INDEX_SUFFIX + tag)
    self._video_ids: dict[str, int] = {}
    self._rows: list[tuple[int, int, int, int]] = []
    self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed in close())
    self._entries: list[tuple[int, int]] = []
    self._offset = 0
    self._closed = False

  @property
  def num_records(self) -> int:
    return len(self._entries)

  def write(self, data: bytes) -> None:
    if self._closed:
      raise ValueError(f"{self.path}: write after close")
    try:
      rec = FaceRecord.from_bytes(data)
    except ValueError as e:
      raise ValueError(
        f"{self.path}: record {len(self._entries)} is not a face record ({e})"
      ) from None
    vid = self._video_ids.setdefault(rec.video_id, len(self._video_ids))
    self._rows.append((vid, rec.face_index, rec.frame_order, rec.label))
    self._file.write(frame(data))
    self._entries.append((self._offset + _HEADER.size, len(data)))
    self._offset += _HEADER.size + len(data) + _FOOTER.size

  def close(self) -> None:
    """Publishes the shard under its final name."""
    if self._closed:
      return
    self._closed = True
    try:
      self._file.flush()
      os.fsync(self._file.fileno())
      self._file.close()
      entries = np.asarray(self._entries, dtype="<u8").reshape(-1, 2)
      raw_index = entries.tobytes()
      with open(self._tmp_index, "wb") as f:
        f.write(raw_index)
        f.flush()
        os.fsync(f.fileno())
      write_shard_meta(
        meta_path(self.path),
        _signature_of(self._offset, raw_index),
        list(self._video_ids),
        np.asarray(self._rows, np.int64),
      )
      os.replace(self._tmp_index, index_path(self.path))
      os.replace(self._tmp, self.path)
      fsync_dir(self.path.parent)
    except BaseException:
      self._discard()
      raise

  def abort(self) -> None:
    """Drops everything written; nothing becomes visible."""
    if not self._closed:
      self._closed = True
      self._file.close()
    self._discard()

  def _discard(self) -> None:
    for p in (self._tmp, self._tmp_index):
      p.unlink(missing_ok=True)

  def __enter__(self) -> ShardWriter:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
    else:
      self.abort()


# ----------------------------------------------------------------------------
# Reading.
# ----------------------------------------------------------------------------


def read_index(shard_path: os.PathLike | str) -> np.ndarray:
  """(N, 2) uint64 array of (offset, length) of each record's data."""
  path = index_path(shard_path)
  try:
    raw = path.read_bytes()
  except FileNotFoundError:
    raise FileNotFoundError(
      f"{path}: index missing for shard {shard_path}"
    ) from None
  if len(raw) % 16:
    raise ValueError(f"{path}: index size {len(raw)} is not a multiple of 16")
  return np.frombuffer(raw, dtype="<u8").reshape(-1, 2)


def _check(path, offset: int, header: bytes, data: bytes, footer: bytes):
  """Verifies a frame's two checksums; `offset` is where the frame starts."""
  length_bytes = header[:8]
  (length_crc,) = struct.unpack("<I", header[8:12])
  if masked_crc32c(length_bytes) != length_crc:
    raise CorruptRecordError(path, offset, "length checksum mismatch")
  (data_crc,) = _FOOTER.unpack(footer)
  if masked_crc32c(data) != data_crc:
    raise CorruptRecordError(path, offset, "data checksum mismatch")


# This process's shard descriptors (descriptors.py: LRU, fork-safe).
DESCRIPTORS = _DescriptorPool()


class ShardReader:
  """Random access to the records of one shard by `os.pread`.

  Descriptors come from the process-wide pool (`DESCRIPTORS`, at most
  MAX_OPEN_SHARDS open), so any number of readers can exist per process and
  in every grain worker; nothing open is pickled. Threads share a descriptor
  safely because pread does not move a file position.
  """

  def __init__(self, path: os.PathLike | str, verify: bool = True):
    self.path = pathlib.Path(path)
    self.verify = verify
    self._index = read_index(self.path)

  def __len__(self) -> int:
    return len(self._index)

  def __getitem__(self, i: int) -> bytes:
    offset, length = (int(v) for v in self._index[i])
    start = offset - _HEADER.size
    size = _HEADER.size + length + _FOOTER.size
    fd = DESCRIPTORS.acquire(str(self.path))
    try:
      raw = os.pread(fd, size, start)
    finally:
      DESCRIPTORS.release(fd)
    if len(raw) != size:
      raise CorruptRecordError(self.path, start, "file ends inside the record")
    header, footer = raw[: _HEADER.size], raw[-_FOOTER.size :]
    data = raw[_HEADER.size : -_FOOTER.size]
    (stored_length,) = struct.unpack("<Q", header[:8])
    if stored_length != length:
      raise CorruptRecordError(
        self.path, start, f"index says {length} bytes, record {stored_length}"
      )
    if self.verify:
      _check(self.path, start, header, data, footer)
    return data

  def close(self) -> None:
    """Closes this shard's pooled descriptor (reopened on the next read)."""
    DESCRIPTORS.close_path(str(self.path))


def iter_records(
  shard_path: os.PathLike | str, verify: bool = True
) -> Iterator[bytes]:
  """Every record of a shard, read sequentially (no index needed)."""
  path = pathlib.Path(shard_path)
  with open(path, "rb") as f:
    offset = 0
    while True:
      header = f.read(_HEADER.size)
      if not header:
        return
      if len(header) < _HEADER.size:
        raise CorruptRecordError(path, offset, "file ends inside a header")
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      footer = f.read(_FOOTER.size)
      if len(data) < length or len(footer) < _FOOTER.size:
        raise CorruptRecordError(path, offset, "file ends inside the record")
      if verify:
        _check(path, offset, header, data, footer)
      yield data
      offset += _HEADER.size + length + _FOOTER.size


def list_shards(data_dir: os.PathLike | str, split: str) -> list[pathlib.Path]:
  """The complete shards of a split, sorted by name."""
  folder = pathlib.Path(data_dir) / split
  if not folder.is_dir():
    return []
  return sorted(p for p in folder.glob("*" + SHARD_SUFFIX) if p.is_file())


# ----------------------------------------------------------------------------
# dataset_info.json
# ----------------------------------------------------------------------------


def write_dataset_info(
  data_dir: os.PathLike | str, info: Mapping[str, Any]
) -> None:
  """Writes DATA_DIR/dataset_info.json with the schema version added."""
  write_json_atomic(
    pathlib.Path(data_dir) / DATASET_INFO,
    {**info, "schema_version": SCHEMA_VERSION},
  )


def read_dataset_info(data_dir: os.PathLike | str) -> dict:
  """Reads dataset_info.json; refuses a missing file or another schema."""
  path = pathlib.Path(data_dir) / DATASET_INFO
  if not path.is_file():
    raise FileNotFoundError(
      f"{path}: not found; is {data_dir} a folder written by "
      "`python -m preprocessing.extract_faces`?"
    )
  try:
    info = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  version = info.get("schema_version")
  if version != SCHEMA_VERSION:
    raise ValueError(
      f"{path}: schema_version {version!r}, this code reads {SCHEMA_VERSION}; "
      "re-run preprocessing or use a matching asrid_jax version"
    )
  return info
