"""The shard folder of `extract_faces`: shards, manifests, resume state, info.

Layout of OUTPUT:
  dataset_info.json                      merged summary (records.write_dataset_info)
  {train,val,test}/PREFIX-NNNNN.tfrecord  complete shards (+ .idx, by ShardWriter)
  {train,val,test}/PREFIX-NNNNN.tfrecord.videos.json
                                         manifest: the videos inside the shard
  _work/settings.json                    settings the shards were made with
  _work/PREFIX.skipped.jsonl             videos a worker skipped, with reasons
                                         (and the file's size/mtime then)
  _work/PREFIX.lock                      held (flock) by the running worker
where PREFIX = wIIIIIofNNNNN names the worker (index of count).

Resume never trusts a separate "done" list that could disagree with the
data: a video is done when a COMPLETE shard holds it (its manifest is written
just before the shard becomes visible, and a manifest without its shard is
ignored), or when a skip log says it was skipped for a lasting reason.
A killed run therefore loses only the videos of shards it had not finished,
and they are redone; nothing is ever written twice.
"""

import collections
import json
import os
import pathlib
import re
import shutil
from collections.abc import Iterable, Sequence

from absl import logging

from asrid_jax import locks
from asrid_jax.data import records

WORK_DIR = "_work"
MANIFEST_SUFFIX = ".videos.json"
LABEL_NAMES = {records.LABEL_REAL: "REAL", records.LABEL_FAKE: "FAKE"}


def worker_prefix(num_workers: int, worker_index: int) -> str:
  return f"w{worker_index:05d}of{num_workers:05d}"


def manifest_path(shard: pathlib.Path) -> pathlib.Path:
  return shard.with_name(shard.name + MANIFEST_SUFFIX)


class SettingsMismatchError(ValueError):
  """A rerun with settings that differ from those of the existing shards."""


OutputBusyError = locks.BusyError


def file_stamp(path: os.PathLike | str) -> list[int] | None:
  """[size, mtime_ns] of a file, None when it cannot be read."""
  try:
    st = os.stat(path)
  except OSError:
    return None
  return [st.st_size, st.st_mtime_ns]


class OutputDir:
  """One worker's view of the shard folder."""

  def __init__(
    self, root: str | os.PathLike, num_workers: int = 1, worker_index: int = 0
  ):
    self.root = pathlib.Path(root)
    self.num_workers = num_workers
    self.worker_index = worker_index
    self.prefix = worker_prefix(num_workers, worker_index)
    self.work = self.root / WORK_DIR
    self.skip_log = self.work / f"{self.prefix}.skipped.jsonl"
    self.finished_marker = self.work / f"{self.prefix}.finished.json"
    self.lock_path = self.work / f"{self.prefix}.lock"
    self._lock = None

  # --------------------------------------------------------------------------
  # Start of a run.
  # --------------------------------------------------------------------------

  def prepare(self, settings: dict, overwrite: bool) -> None:
    """Locks, clears what --overwrite redoes, removes debris, checks settings.

    The lock comes first: without it a second run on the same worker would
    delete the first's in-flight temp shard as debris.
    """
    self.lock()
    if overwrite:
      self._clear(everything=self.num_workers == 1)
    self.work.mkdir(parents=True, exist_ok=True)
    # Written again when this run completes its part.
    self.finished_marker.unlink(missing_ok=True)
    self._remove_debris()
    # Compare as JSON would store them (tuples become lists).
    settings = json.loads(json.dumps(settings))
    path = self.work / "settings.json"
    if path.is_file():
      old = json.loads(path.read_text(encoding="utf-8"))
      diff = sorted(
        k for k in set(old) | set(settings) if old.get(k) != settings.get(k)
      )
      if diff:
        if not overwrite:
          changes = ", ".join(
            f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff
          )
          raise SettingsMismatchError(
            f"{self.root} holds shards made with other settings ({changes}); "
            "use the same settings to resume, or --overwrite to redo"
          )
        records.write_json_atomic(path, settings)
    else:
      records.write_json_atomic(path, settings)

  def lock(self) -> None:
    """Takes this worker's lock (OutputBusyError when another holds it)."""
    if self._lock is None:
      self._lock = locks.take_lock(
        self.lock_path,
        f"worker {self.worker_index} of {self.num_workers} of {self.root}",
      )

  def unlock(self) -> None:
    if self._lock is not None:
      self._lock.close()
      self._lock = None

  def _own_files(self) -> Iterable[pathlib.Path]:
    for split in records.SPLITS:
      folder = self.root / split
      if folder.is_dir():
        yield from folder.glob(self.prefix + "-*")

  def _clear(self, everything: bool) -> None:
    if everything:
      for split in records.SPLITS:
        shutil.rmtree(self.root / split, ignore_errors=True)
      # Lock files stay: a running worker of another count may hold one.
      for path in self.work.glob("*") if self.work.is_dir() else ():
        if path.suffix == ".lock":
          continue
        if path.is_dir():
          shutil.rmtree(path, ignore_errors=True)
        else:
          path.unlink(missing_ok=True)
      (self.root / records.DATASET_INFO).unlink(missing_ok=True)
      logging.info("--overwrite: removed all shards in %s", self.root)
      return
    removed = 0
    for path in list(self._own_files()):
      path.unlink(missing_ok=True)
      removed += 1
    self.skip_log.unlink(missing_ok=True)
    logging.info("--overwrite: removed %d files of %s", removed, self.prefix)

  def _remove_debris(self) -> None:
    """Temp files of a killed writer and manifests whose shard never landed."""
    for path in list(self._own_files()):
      if ".tmp-" in path.name:
        path.unlink(missing_ok=True)
      elif path.name.endswith(MANIFEST_SUFFIX):
        shard = path.with_name(path.name[: -len(MANIFEST_SUFFIX)])
        if not shard.is_file():
          path.unlink(missing_ok=True)
          records.index_path(shard).unlink(missing_ok=True)

  # --------------------------------------------------------------------------
  # What is already there.
  # --------------------------------------------------------------------------

  def manifests(self) -> list[dict]:
    """The manifest of every complete shard, all workers, all splits."""
    result = []
    for split in records.SPLITS:
      for shard in records.list_shards(self.root, split):
        path = manifest_path(shard)
        try:
          manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
          # A shard is the truth; rebuild a lost manifest from its records.
          logging.warning("%s: manifest unreadable, scanning the shard", shard)
          manifest = manifest_from_records(shard, split)
        manifest["shard"] = shard.relative_to(self.root).as_posix()
        result.append(manifest)
    return result

  def skipped(self, issues, written_ids) -> list[dict]:
    """dataset_info's 'skipped': the input issues, then every logged skip
    of a video no shard holds (with its split and label when logged)."""
    out = [i.as_dict() for i in issues]
    for vid, entry in sorted(self.skip_entries().items()):
      if vid not in written_ids:
        kept = {k: entry[k] for k in ("split", "label") if k in entry}
        out.append({"video": vid, "reason": entry["reason"], **kept})
    return out

  def skip_entries(self) -> dict[str, dict]:
    """video_id -> {'video', 'reason', 'retry'} from every worker's log."""
    entries: dict[str, dict] = {}
    if not self.work.is_dir():
      return entries
    for log in sorted(self.work.glob("*.skipped.jsonl")):
      for line in log.read_text(encoding="utf-8").splitlines():
        try:
          entry = json.loads(line)
        except json.JSONDecodeError:
          continue  # a line cut by a kill: that video is simply redone
        entries[entry["video"]] = entry
    return entries

  def done_videos(self, paths: dict[str, pathlib.Path] | None = None) -> set:
    """Videos no rerun should touch: in a complete shard or skipped for good.

    A skip counts only while the file is as it was then (same size and
    mtime, when `paths` maps video ids to files): a repaired file is retried.
    """
    done = {v["video_id"] for m in self.manifests() for v in m["videos"]}
    for vid, entry in self.skip_entries().items():
      if entry.get("retry") or vid in done:
        continue
      stamp = entry.get("stamp")
      if paths and vid in paths and stamp is not None:
        if file_stamp(paths[vid]) != stamp:
          logging.info("%s changed since it was skipped: retrying", vid)
          continue
      done.add(vid)
    return done

  def next_shard_number(self) -> int:
    numbers = [-1]
    for path in self._own_files():
      match = re.match(re.escape(self.prefix) + r"-(\d+)\.", path.name)
      if match:
        numbers.append(int(match.group(1)))
    return max(numbers) + 1

  # --------------------------------------------------------------------------
  # Writing.
  # --------------------------------------------------------------------------

  def log_skip(
    self,
    video_id: str,
    reason: str,
    retry: bool = False,
    path: os.PathLike | str | None = None,
    split: str | None = None,
    label: int | None = None,
  ) -> None:
    """Appends to this worker's skip log, durably (a kill keeps the line).

    `split` and `label` (when known) let evaluation count the video at the
    fallback score, as DFDC scores every video.
    """
    self.work.mkdir(parents=True, exist_ok=True)
    entry = {"video": video_id, "reason": reason, "retry": retry}
    if split is not None:
      entry["split"] = split
    if label is not None:
      entry["label"] = int(label)
    if path is not None:
      entry["stamp"] = file_stamp(path)
    line = json.dumps(entry, ensure_ascii=False)
    with open(self.skip_log, "a", encoding="utf-8") as f:
      f.write(line + "\n")
      f.flush()
      os.fsync(f.fileno())


class ShardSink:
  """Per-split shard writers of one worker; a video never spans two shards."""

  def __init__(self, out: OutputDir, records_per_shard: int = 1000):
    self.out = out
    self.records_per_shard = records_per_shard
    self._number = out.next_shard_number()
    self._open: dict[str, tuple[records.ShardWriter, list[dict]]] = {}
    self.shards_written = 0

  def add_video(self, split: str, meta: dict, data: Sequence[bytes]) -> None:
    """Writes all records of one video to the split's current shard."""
    if split not in self._open:
      name = f"{self.out.prefix}-{self._number:05d}{records.SHARD_SUFFIX}"
      self._number += 1
      writer = records.ShardWriter(self.out.root / split / name)
      self._open[split] = (writer, [])
    writer, videos = self._open[split]
    try:
      for item in data:
        writer.write(item)
    except OSError as e:
      # write() errors (ENOSPC) carry no file name: add the shard's.
      raise OSError(e.errno, e.strerror, str(writer.path)) from e
    videos.append({**meta, "records": len(data)})
    if writer.num_records >= self.records_per_shard:
      self._finish(split)

  def _finish(self, split: str) -> None:
    writer, videos = self._open.pop(split)
    # Manifest first: it counts only once the shard itself is visible.
    records.write_json_atomic(
      manifest_path(writer.path), {"split": split, "videos": videos}
    )
    writer.close()
    self.shards_written += 1

  def close(self) -> None:
    for split in list(self._open):
      self._finish(split)

  def abort(self) -> None:
    for writer, _ in self._open.values():
      writer.abort()
    self._open.clear()


def manifest_from_records(shard: pathlib.Path, split: str) -> dict:
  """A manifest rebuilt by reading a shard's records."""
  videos: dict[str, dict] = {}
  for data in records.iter_records(shard):
    rec = records.FaceRecord.from_bytes(data)
    entry = videos.setdefault(
      rec.video_id,
      {
        "video_id": rec.video_id,
        "label": rec.label,
        "original": rec.original,
        "records": 0,
        "tracks": 0,
      },
    )
    entry["records"] += 1
    entry["tracks"] = max(entry["tracks"], rec.face_index + 1)
  return {"split": split, "videos": list(videos.values())}


def summarize(manifests: Sequence[dict]) -> dict:
  """Counts per split and label: videos, records (faces) and shards."""
  splits = {}
  for split in records.SPLITS:
    videos = collections.Counter()
    faces = collections.Counter()
    shards = 0
    for m in manifests:
      if m["split"] != split:
        continue
      shards += 1
      for v in m["videos"]:
        name = LABEL_NAMES[v["label"]]
        videos[name] += 1
        faces[name] += v["records"]
    splits[split] = {
      "videos": {n: videos[n] for n in LABEL_NAMES.values()},
      "records": {n: faces[n] for n in LABEL_NAMES.values()},
      "num_videos": sum(videos.values()),
      "num_records": sum(faces.values()),
      "num_shards": shards,
    }
  return splits


# ----------------------------------------------------------------------------
# What extract_faces and import_faces share on the command line and in info.
# ----------------------------------------------------------------------------


def floats(text: str) -> tuple[float, ...]:
  """'0.8,0.1,0.1' -> (0.8, 0.1, 0.1) (argparse type)."""
  return tuple(float(v) for v in text.split(","))


def add_split_and_output_args(
  parser, split_ratios: tuple[float, float, float], records_per_shard: int
) -> None:
  """--seed, --split_ratios, --splits_from, scale-out and --overwrite."""
  a = parser.add_argument
  a("--seed", type=int, default=0, help="seed of the group split")
  a("--split_ratios", type=floats, default=split_ratios)
  a(
    "--splits_from",
    choices=("seed", "input"),
    default="seed",
    help="'input' honours the split given by the input (metadata.json, a "
    "CSV 'split' column)",
  )
  a("--num_workers", type=int, default=1)
  a("--worker_index", type=int, default=0)
  a("--records_per_shard", type=int, default=records_per_shard)
  a("--overwrite", action="store_true", help="redo instead of resuming")


def workers_info(out: OutputDir) -> dict:
  """Which workers of out.num_workers have finished their part."""
  finished = sorted(
    int(p.name[1:6])
    for p in out.work.glob(f"w*of{out.num_workers:05d}.finished.json")
  )
  return {
    "num_workers": out.num_workers,
    "finished": finished,
    "complete": len(finished) == out.num_workers,
  }


def plan_worker(groups, args) -> tuple[dict, list, list, OutputDir]:
  """Splits of every group and this worker's part, from the shared flags.

  Returns (group key -> split, notes on given splits, this worker's groups,
  its OutputDir). Both extract_faces and import_faces start this way.
  """
  from preprocessing import splits as splits_lib

  split_of, notes = splits_lib.assign_splits(
    groups,
    seed=args.seed,
    ratios=args.split_ratios,
    honour_given=args.splits_from == "input",
  )
  mine = splits_lib.partition(groups, args.num_workers, args.worker_index)
  out = OutputDir(args.output, args.num_workers, args.worker_index)
  return split_of, notes, mine, out
