"""Compact index of a split's shards: who is in which record, cached on disk.

Start-up must not parse every record of a large split (DFDC: millions of
crops), so each shard has a small sidecar `<shard>.meta.npz` with one row per
record: (video, face_index, frame_order, label). `records.ShardWriter` writes
it with the shard (extract_faces, import_faces, the synthetic writer), so
start-up reads only the offset indexes and these tables, never a record.
Validity is keyed on content (`records.content_signature`: shard size, index
size and CRC-32C), so copies and read-only mounts of the data stay valid.

Shards written before that (or whose metadata is missing or stale) are
rebuilt once by a sequential, checksum-verified scan and the result written
beside them; `python -m asrid_jax.data.index DATA_DIR` does it ahead of time
(run it once before a folder becomes a read-only mount or is copied to many
hosts). On a read-only folder the rebuilt table is kept in memory only and a
warning says so.

`SplitIndex` joins the shards of a split into global tables: record ids in
shard order (the ids `source.ShardSource` serves), the sorted video-id table
that `video_idx` indexes, and face tracks (records of one face of one video
sorted by frame order), from which the pipeline cuts clips.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import threading

import numpy as np
from absl import logging
from tqdm import tqdm

from asrid_jax.data import records

META_SUFFIX = records.META_SUFFIX
META_VERSION = records.META_VERSION
meta_path = records.meta_path
_signature = records.content_signature


@dataclasses.dataclass(frozen=True)
class ShardMeta:
  """Per-record identity of one shard (row i = record i of the shard)."""

  video_ids: np.ndarray  # (V,) str, the shard's videos in first-seen order
  video: np.ndarray  # (N,) int32 into video_ids
  face_index: np.ndarray  # (N,) int32
  frame_order: np.ndarray  # (N,) int32
  label: np.ndarray  # (N,) int8

  def __len__(self) -> int:
    return len(self.video)


def _scan_shard(shard: pathlib.Path) -> ShardMeta:
  """Parses every record of a shard once (sequential, checksums verified)."""
  ids: dict[str, int] = {}
  rows = []
  for i, data in enumerate(records.iter_records(shard)):
    try:
      rec = records.FaceRecord.from_bytes(data)
    except ValueError as e:
      raise ValueError(f"{shard}: record {i}: {e}") from None
    vid = ids.setdefault(rec.video_id, len(ids))
    rows.append((vid, rec.face_index, rec.frame_order, rec.label))
  num_indexed = len(records.read_index(shard))
  if len(rows) != num_indexed:
    raise ValueError(
      f"{shard}: {len(rows)} records but its index lists {num_indexed}"
    )
  table = np.asarray(rows, np.int64).reshape(-1, 4)
  return ShardMeta(
    video_ids=np.asarray(list(ids), dtype=str),
    video=table[:, 0].astype(np.int32),
    face_index=table[:, 1].astype(np.int32),
    frame_order=table[:, 2].astype(np.int32),
    label=table[:, 3].astype(np.int8),
  )


def _write_meta(path: pathlib.Path, meta: ShardMeta, sig: np.ndarray) -> None:
  rows = np.stack(
    [meta.video, meta.face_index, meta.frame_order, meta.label], axis=1
  )
  records.write_shard_meta(path, sig, meta.video_ids.tolist(), rows)


def load_shard_meta(shard: os.PathLike | str, cache: bool = True) -> ShardMeta:
  """The shard's meta table, from its cache when the cache is current."""
  shard = pathlib.Path(shard)
  sig = _signature(shard)
  path = meta_path(shard)
  if cache and path.is_file():
    try:
      with np.load(path, allow_pickle=False) as z:
        if np.array_equal(z["signature"], sig):
          return ShardMeta(
            **{f.name: z[f.name] for f in dataclasses.fields(ShardMeta)}
          )
      logging.info("%s: stale or from an older version, rebuilding", path)
    except (OSError, ValueError, KeyError) as e:
      logging.warning("%s: unreadable cache (%s), rebuilding", path, e)
  meta = _scan_shard(shard)
  if cache:
    try:
      _write_meta(path, meta, sig)
    except OSError as e:
      logging.warning(
        "%s: cannot write index cache (%s); kept in memory only, so every "
        "start repeats the scan: run `python -m asrid_jax.data.index` on a "
        "writable copy",
        path,
        e,
      )
  return meta


@dataclasses.dataclass(frozen=True)
class SplitIndex:
  """Global tables over all records of one split.

  Record ids run over the shards in sorted name order. Tracks are the records
  of one (video, face_index), sorted by frame_order: track t owns
  `track_records[track_starts[t]:track_starts[t + 1]]`.
  """

  data_dir: str
  split: str
  shards: tuple[str, ...]
  shard_offsets: np.ndarray  # (S + 1,) first record id of each shard
  video_ids: tuple[str, ...]  # sorted; `video_idx` indexes this table
  video: np.ndarray  # (N,) int32 video_idx of each record
  face_index: np.ndarray  # (N,) int32
  frame_order: np.ndarray  # (N,) int32
  label: np.ndarray  # (N,) int8
  track_records: np.ndarray  # (N,) int64 record ids grouped by track
  track_starts: np.ndarray  # (K + 1,) int64
  track_video: np.ndarray  # (K,) int32
  track_face: np.ndarray  # (K,) int32
  track_label: np.ndarray  # (K,) int8

  @property
  def num_records(self) -> int:
    return len(self.video)

  @property
  def num_tracks(self) -> int:
    return len(self.track_video)

  @property
  def track_lengths(self) -> np.ndarray:
    return np.diff(self.track_starts)

  def video_labels(self) -> np.ndarray:
    """(V,) int8 label of each video of `video_ids`."""
    out = np.zeros(len(self.video_ids), np.int8)
    out[self.video] = self.label
    return out


def _build_split_index(
  data_dir: str, split: str, shards: list[pathlib.Path], cache: bool
) -> SplitIndex:
  metas = [
    load_shard_meta(s, cache)
    for s in tqdm(shards, desc=f"index {split}", unit="shard", leave=False)
  ]
  all_ids = sorted({v for m in metas for v in m.video_ids.tolist()})
  lookup = {v: i for i, v in enumerate(all_ids)}
  video = np.concatenate(
    [
      np.asarray([lookup[v] for v in m.video_ids.tolist()], np.int32)[m.video]
      for m in metas
    ]
  ).astype(np.int32)
  face = np.concatenate([m.face_index for m in metas]).astype(np.int32)
  order = np.concatenate([m.frame_order for m in metas]).astype(np.int32)
  label = np.concatenate([m.label for m in metas]).astype(np.int8)
  offsets = np.cumsum([0] + [len(m) for m in metas]).astype(np.int64)

  def where(record: int) -> str:
    s = int(np.searchsorted(offsets, record, side="right")) - 1
    return f"{shards[s]} record {record - offsets[s]}"

  # One label per video: a mixed video means a broken preprocessing run.
  video_label = np.full(len(all_ids), -1, np.int8)
  video_label[video] = label
  bad = np.flatnonzero(video_label[video] != label)
  if bad.size:
    r = int(bad[0])
    raise ValueError(
      f"{where(r)}: video {all_ids[video[r]]!r} has records with both labels"
    )

  perm = np.lexsort((order, face, video)).astype(np.int64)
  keys = np.stack([video[perm], face[perm], order[perm]], axis=1)
  same = np.all(keys[1:] == keys[:-1], axis=1)
  if same.any():
    r = int(perm[np.flatnonzero(same)[0] + 1])
    raise ValueError(
      f"{where(r)}: duplicate (video {all_ids[video[r]]!r}, face "
      f"{face[r]}, frame_order {order[r]})"
    )
  new_track = np.ones(len(perm), bool)
  new_track[1:] = np.any(keys[1:, :2] != keys[:-1, :2], axis=1)
  starts = np.flatnonzero(new_track)
  first = perm[starts]
  return SplitIndex(
    data_dir=data_dir,
    split=split,
    shards=tuple(str(s) for s in shards),
    shard_offsets=offsets,
    video_ids=tuple(all_ids),
    video=video,
    face_index=face,
    frame_order=order,
    label=label,
    track_records=perm,
    track_starts=np.append(starts, len(perm)).astype(np.int64),
    track_video=video[first],
    track_face=face[first],
    track_label=label[first],
  )


_CACHE: dict[tuple, SplitIndex] = {}
_CACHE_LOCK = threading.Lock()


def load_split_index(
  data_dir: os.PathLike | str, split: str, cache: bool = True
) -> SplitIndex:
  """The split's index; memoised per process while the shards are unchanged."""
  shards = records.list_shards(data_dir, split)
  if not shards:
    raise FileNotFoundError(
      f"{pathlib.Path(data_dir) / split}: no complete shards "
      f"(*{records.SHARD_SUFFIX} with {records.INDEX_SUFFIX}) for split "
      f"{split!r}"
    )
  key = (
    str(pathlib.Path(data_dir).resolve()),
    split,
    tuple((str(s), tuple(_signature(s))) for s in shards),
  )
  with _CACHE_LOCK:
    found = _CACHE.get(key)
  if found is not None:
    return found
  built = _build_split_index(str(data_dir), split, shards, cache)
  with _CACHE_LOCK:
    _CACHE[key] = built
  return built


def video_ids(data_dir: os.PathLike | str, split: str) -> list[str]:
  """The split's sorted video ids: `batch['video_idx']` indexes this list."""
  return list(load_split_index(data_dir, split).video_ids)


def label_counts(
  data_dir: os.PathLike | str, split: str, unit: str = "video"
) -> dict[int, int]:
  """{LABEL_REAL: n, LABEL_FAKE: m} counted per 'video', 'track' or 'record'.

  The constant-prior baseline uses the training split's FAKE fraction.
  """
  idx = load_split_index(data_dir, split)
  labels = {
    "video": idx.video_labels(),
    "track": idx.track_label,
    "record": idx.label,
  }
  if unit not in labels:
    raise ValueError(f"unit must be one of {sorted(labels)}, got {unit!r}")
  counts = np.bincount(labels[unit].astype(np.int64), minlength=2)
  return {
    records.LABEL_REAL: int(counts[0]),
    records.LABEL_FAKE: int(counts[1]),
  }


def skipped_videos(
  data_dir: os.PathLike | str, split: str
) -> tuple[list[tuple[str, int]], int]:
  """(video_id, label) of the split's videos preprocessing skipped, from
  dataset_info.json, and how many skipped entries lack a split or label
  (written before they were recorded, or input errors: not countable)."""
  try:
    info = records.read_dataset_info(data_dir)
  except (FileNotFoundError, ValueError):
    return [], 0
  found, unknown = [], 0
  for entry in info.get("skipped") or []:
    if entry.get("split") is None or entry.get("label") is None:
      unknown += 1
    elif entry["split"] == split:
      found.append((str(entry["video"]), int(entry["label"])))
  return sorted(set(found)), unknown


def main(argv: list[str]) -> int:
  """Builds (or refreshes) every shard's .meta.npz under DATA_DIR, once."""
  if len(argv) != 2:
    print("usage: python -m asrid_jax.data.index DATA_DIR", file=sys.stderr)
    return 2
  for split in records.SPLITS:
    if records.list_shards(argv[1], split):
      idx = load_split_index(argv[1], split)
      print(f"{split}: {len(idx.shards)} shards, {idx.num_records} records")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
