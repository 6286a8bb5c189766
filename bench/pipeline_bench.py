"""Input pipeline throughput: frames/s for decode, decode+augment and clips.

    python -m bench.pipeline_bench [--data_dir DIR] [--steps 20]

Reads `demo_out/shards` (the built-in sample) when it exists, otherwise
writes synthetic 380x380 shards to a temporary folder. Each row runs the
training iterator (0 and 2 worker processes) after one warm-up batch (which
includes worker start-up) and reports frames/s, next to a reference in the
same run: a plain sequential loop of pread + checksum + JPEG decode, no grain.
Prints a table and writes bench/results/pipeline_bench.json.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
import time

import cv2
import numpy as np
from absl import app, flags

from asrid_jax import reporting
from asrid_jax.data import index as index_lib
from asrid_jax.data import pipeline, records, source, synthetic

_DATA_DIR = flags.DEFINE_string("data_dir", "demo_out/shards", "Shard folder.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to read.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed batches per row.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 380, "Model input size.")
_OUT = flags.DEFINE_string(
  "out", "bench/results/pipeline_bench.json", "JSON output."
)

# name, sampling, per-process batch (examples), augment
_ROWS = (
  ("decode", "picture", 16, None),
  ("decode+augment", "picture", 16, True),
  ("clips T=8 +augment", "video", 2, True),
)


def reference_fps(data_dir: str, split: str, n: int, size: int) -> float:
  """Sequential pread + crc + parse + decode + resize, no grain."""
  idx = index_lib.load_split_index(data_dir, split)
  src = source.ShardSource(idx.shards)
  ids = np.random.default_rng(0).integers(0, len(src), n)
  t0 = time.perf_counter()
  for r in ids:
    rec = records.FaceRecord.from_bytes(src[int(r)])
    source.decode_resize(rec.image, size, "bench")
  return n / (time.perf_counter() - t0)


def run_row(data_dir, split, sampling, batch, aug, workers, steps, size):
  it = pipeline.make_train_iterator(
    split=split,
    global_batch_size=batch,
    sharding=None,
    seed=0,
    dir=data_dir,
    image_size=size,
    sampling=sampling,
    clip_len=8,
    augment=aug,
    worker_count=workers,
    prefetch=2,
    read_threads=2,
    process_index=0,
    process_count=1,
  )
  t0 = time.perf_counter()
  first = next(it)
  warmup = time.perf_counter() - t0
  frames_per_batch = first["image"].shape[0] * first["image"].shape[1]
  t0 = time.perf_counter()
  for _ in range(steps):
    next(it)
  elapsed = time.perf_counter() - t0
  if hasattr(it, "close"):
    it.close()
  return {
    "frames_per_s": steps * frames_per_batch / elapsed,
    "batches_per_s": steps / elapsed,
    "frames_per_batch": frames_per_batch,
    "warmup_s": warmup,
  }


def main(argv):
  del argv
  data_dir = _DATA_DIR.value
  tmp = None
  if not records.list_shards(data_dir, _SPLIT.value):
    tmp = tempfile.TemporaryDirectory(prefix="pipeline_bench_")
    data_dir = tmp.name
    print(
      f"{_DATA_DIR.value} has no {_SPLIT.value} shards; writing synthetic ones"
    )
    synthetic.write_synthetic_shards(
      data_dir,
      videos_per_split={_SPLIT.value: 12},
      frames=(8, 16),
      image_size=380,
    )
  size = _IMAGE_SIZE.value
  cv2.setNumThreads(1)  # measure our parallelism, not OpenCV's
  ref = reference_fps(data_dir, _SPLIT.value, 200, size)
  results = {
    "data_dir": _DATA_DIR.value if tmp is None else "synthetic 380x380",
    "image_size": size,
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "reference_sequential_decode_fps": ref,
    "rows": [],
  }
  header = ("pipeline", "workers", "frames/s", "x ref", "warm-up s")
  table = [("reference (no grain)", "-", f"{ref:.1f}", "1.00", "-")]
  for name, sampling, batch, aug in _ROWS:
    for workers in (0, 2):
      r = run_row(
        data_dir,
        _SPLIT.value,
        sampling,
        batch,
        aug,
        workers,
        _STEPS.value,
        size,
      )
      r.update(
        name=name, workers=workers, ratio_to_reference=r["frames_per_s"] / ref
      )
      results["rows"].append(r)
      table.append(
        (
          name,
          workers,
          f"{r['frames_per_s']:.1f}",
          f"{r['ratio_to_reference']:.2f}",
          f"{r['warmup_s']:.2f}",
        )
      )
  print(reporting.format_table(header, table))
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(results, indent=2) + "\n")
  print(f"wrote {out}")
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  app.run(main)
