"""Input start-up and memory as the dataset grows (DFDC: ~4M records, ~4k shards).

    python -m bench.scale_bench [--large] [--out bench/results/scale_bench.json]

Writes synthetic shards of about 1k and 10k records per split in hundreds of
shards (`--large` adds 100k), plus the 10k size at a 3x larger crop (9x the
payload bytes), then measures each in a FRESH process (so numbers are per
process, as on a training host):

  start-up   seconds to load the split index (what every process and every
             evaluate/predict start pays), with the per-shard .meta.npz the
             shard writer leaves; and, for comparison, the old path that
             scans every record (metadata deleted);
  read MB    bytes the process read during start-up (/proc/self/io rchar)
             beside the shards' total size: the goal is no record payload;
  index MB   resident memory added by the index;
  worker MB  resident memory of one grain worker process while training
             batches flow;
  open fds   descriptors held by the main process and by the worker
             (bounded by records.MAX_OPEN_SHARDS, not by the shard count);
  rec/s      records per second through the training iterator (1 worker).

Prints a table and writes JSON. Linux only (/proc).
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_LARGE = flags.DEFINE_bool("large", False, "Also the 100k-record size.")
_OUT = flags.DEFINE_string(
  "out", "bench/results/scale_bench.json", "JSON output."
)
_CHILD = flags.DEFINE_string("child", None, "Internal: measure this folder.")
_KEEP = flags.DEFINE_string("keep", None, "Write data here and keep it.")

# (target records per split, shards, stored crop px)
_SIZES = ((1_000, 100, 32), (10_000, 200, 32), (10_000, 200, 96))
_LARGE_SIZES = ((100_000, 400, 32),)
_FRAMES = (5, 15)  # sampled frames per track: ~10 on average, 1-2 tracks


def _proc(path: str) -> dict[str, int]:
  out = {}
  with open(path) as f:
    for line in f:
      key, _, value = line.partition(":")
      first = value.split()[0] if value.split() else ""
      if first.isdigit():  # numeric fields only (Name:, State: are not)
        out[key.strip()] = int(first)
  return out


def _rss_mb(pid: str = "self") -> float:
  return _proc(f"/proc/{pid}/status").get("VmRSS", 0) / 1024.0


def _fds(pid: str = "self") -> int:
  return len(os.listdir(f"/proc/{pid}/fd"))


def _children() -> list[str]:
  me = str(os.getpid())
  kids = []
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[1] == me:
          kids.append(pid)
    except OSError:
      continue
  return kids


def measure(data_dir: str) -> dict:
  """Runs in a fresh process: start-up, memory, fds, records/s."""
  from asrid_jax.data import index as index_lib
  from asrid_jax.data import pipeline, records

  flags.FLAGS.mark_as_parsed()
  shards = records.list_shards(data_dir, "train")
  shard_bytes = sum(p.stat().st_size for p in shards)
  rss0, io0 = _rss_mb(), _proc("/proc/self/io")["rchar"]
  t0 = time.perf_counter()
  idx = index_lib.load_split_index(data_dir, "train")
  startup = time.perf_counter() - t0
  read = _proc("/proc/self/io")["rchar"] - io0
  rss1 = _rss_mb()
  cfg = dict(
    dir=data_dir,
    image_size=32,
    clip_len=4,
    worker_count=1,
    read_threads=2,
    augment=False,
  )
  it = pipeline.make_train_iterator(
    split="train", global_batch_size=16, sharding=None, seed=0, **cfg
  )
  next(it)  # worker start-up
  steps, t0 = 30, time.perf_counter()
  for _ in range(steps):
    next(it)
  rate = steps * 16 * 4 / (time.perf_counter() - t0)
  workers = _children()
  worker_rss = max((_rss_mb(p) for p in workers), default=float("nan"))
  worker_fds = max((_fds(p) for p in workers), default=-1)
  main_fds = _fds()
  it.close()
  return {
    "records": idx.num_records,
    "shards": len(shards),
    "shard_mb": shard_bytes / 2**20,
    "startup_s": startup,
    "startup_read_mb": read / 2**20,
    "index_mb": rss1 - rss0,
    "worker_rss_mb": worker_rss,
    "main_fds": main_fds,
    "worker_fds": worker_fds,
    "records_per_s": rate,
    "max_open_shards": records.MAX_OPEN_SHARDS,
  }


def _scan_startup(data_dir: str) -> dict:
  """The pre-metadata path: every record parsed (metadata deleted first)."""
  from asrid_jax.data import index as index_lib
  from asrid_jax.data import records

  for p in pathlib.Path(data_dir).rglob("*" + records.META_SUFFIX):
    p.unlink()
  io0 = _proc("/proc/self/io")["rchar"]
  t0 = time.perf_counter()
  index_lib.load_split_index(data_dir, "train", cache=False)
  return {
    "scan_startup_s": time.perf_counter() - t0,
    "scan_read_mb": (_proc("/proc/self/io")["rchar"] - io0) / 2**20,
  }


def _write(folder: pathlib.Path, target: int, shards: int, px: int) -> None:
  from asrid_jax.data import synthetic

  per_video = (sum(_FRAMES) / 2) * 1.5
  videos = max(shards, int(round(target / per_video)))
  synthetic.write_synthetic_shards(
    folder,
    videos_per_split={"train": videos},
    videos_per_shard=max(1, videos // shards),
    frames=_FRAMES,
    image_size=px,
    seed=0,
  )


def _run_child(folder: pathlib.Path, *extra: str) -> dict:
  proc = subprocess.run(
    [sys.executable, "-m", "bench.scale_bench", f"--child={folder}", *extra],
    capture_output=True,
    text=True,
    check=False,
  )
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CHILD.value:
    if _CHILD.value.endswith(":scan"):
      print(json.dumps(_scan_startup(_CHILD.value[: -len(":scan")])))
    else:
      print(json.dumps(measure(_CHILD.value)))
    return
  from asrid_jax import reporting

  sizes = _SIZES + (_LARGE_SIZES if _LARGE.value else ())
  root = pathlib.Path(_KEEP.value or tempfile.mkdtemp(prefix="scale_bench_"))
  rows = []
  try:
    for target, shards, px in sizes:
      folder = root / f"r{target}_s{shards}_px{px}"
      if not folder.is_dir():
        t0 = time.perf_counter()
        _write(folder, target, shards, px)
        print(f"wrote {folder} in {time.perf_counter() - t0:.0f} s")
      row = {"target": target, "px": px, **_run_child(folder)}
      scan_dir = root / "scan_copy"
      shutil.rmtree(scan_dir, ignore_errors=True)
      shutil.copytree(folder, scan_dir)
      row.update(_run_child(pathlib.Path(str(scan_dir) + ":scan")))
      shutil.rmtree(scan_dir, ignore_errors=True)
      rows.append(row)
  finally:
    if not _KEEP.value:
      shutil.rmtree(root, ignore_errors=True)
  header = [
    "records",
    "shards",
    "px",
    "shard MB",
    "start s",
    "read MB",
    "scan s",
    "scan MB",
    "index MB",
    "worker MB",
    "fds main/wrk",
    "rec/s",
  ]
  table = [
    [
      r["records"],
      r["shards"],
      r["px"],
      f"{r['shard_mb']:.0f}",
      f"{r['startup_s']:.3f}",
      f"{r['startup_read_mb']:.2f}",
      f"{r['scan_startup_s']:.2f}",
      f"{r['scan_read_mb']:.0f}",
      f"{r['index_mb']:.1f}",
      f"{r['worker_rss_mb']:.0f}",
      f"{r['main_fds']}/{r['worker_fds']}",
      f"{r['records_per_s']:.0f}",
    ]
    for r in rows
  ]
  print(reporting.format_table(header, table))
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(
    json.dumps(
      {"machine": platform.processor() or platform.machine(), "rows": rows},
      indent=2,
    )
  )
  print(f"wrote {out}")


if __name__ == "__main__":
  app.run(main)
