r"""Compact face shards for the GPU check: a stratified subset, re-encoded small.

At most 64 MiB travels to the GPU machine with the code (bench/GPU.md), so
bench/gpu_check.sh trains on a subset of the imported DFDC crops instead of
the 277 MB of shards:

  python -m bench.make_gpu_data                       # .gpu_data/dfdc_faces_128
  python -m bench.make_gpu_data --src DIR --out DIR --train 3000 --val 500 \
      --size 128 --quality 90
  python -m bench.make_gpu_data --synthetic --out DIR --train 12 --val 4 \
      --size 64                                       # --smoke: no real data

Reads the shards of --src (written by `preprocessing.import_faces` or
`extract_faces`; default $ASRID_DFDC_SHARDS, else /work/runs/dfdc_shards),
picks --train/--val/--test videos per split with the split's REAL:FAKE ratio
kept (seeded), decodes every record of those videos, resizes the crop to
--size (INTER_AREA; landmarks scaled with it), re-encodes it with the
project's JPEG codec and writes it through preprocessing's ShardSink (atomic
shards + manifests + .meta.npz), then a dataset_info.json with the subset's
counts and the source's crop convention. --synthetic takes the source from
`asrid_jax.data.synthetic` (drawn faces, written to OUT.source), for the
CPU smoke run and tests. 3000 + 500 DFDC crops at 128 px are about 12 MB.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import time

import cv2
import numpy as np

from asrid_jax.data import index as index_lib
from asrid_jax.data import records
from preprocessing import output as output_lib

DEFAULT_SRC = os.environ.get("ASRID_DFDC_SHARDS", "/work/runs/dfdc_shards")
DEFAULT_OUT = ".gpu_data/dfdc_faces_128"
# Source info keys that stay true for a resized subset (crop convention,
# layout, label names); counts and sizes are the subset's own.
KEPT_INFO = ("crop", "groups_known", "input", "input_layout", "label_names")


def pick_videos(
  split_index: index_lib.SplitIndex, count: int, seed: int
) -> np.ndarray:
  """Sorted indices of `count` videos, the split's label ratio kept."""
  labels = split_index.video_labels()
  present = np.flatnonzero(labels >= 0)
  if count >= len(present):
    return present
  rng = np.random.default_rng(seed)
  chosen = []
  fake = present[labels[present] == records.LABEL_FAKE]
  real = present[labels[present] == records.LABEL_REAL]
  n_fake = round(count * len(fake) / len(present))
  # Both labels whenever the split has both (evaluation needs an AUC).
  n_fake = min(max(n_fake, int(len(fake) > 0)), count - int(len(real) > 0))
  for group, n in ((fake, n_fake), (real, count - n_fake)):
    chosen.append(rng.choice(group, size=min(n, len(group)), replace=False))
  return np.sort(np.concatenate(chosen))


def resize_record(
  rec: records.FaceRecord, size: int, quality: int
) -> records.FaceRecord:
  """The crop at size x size (landmarks scaled), re-encoded."""
  image = rec.decode_image()
  h, w = image.shape[:2]
  interp = cv2.INTER_AREA if size < max(h, w) else cv2.INTER_LINEAR
  small = cv2.resize(image, (size, size), interpolation=interp)
  scale = np.asarray([size / w, size / h], np.float32)
  rec.image = records.encode_jpeg(small, quality)
  rec.height = rec.width = size
  rec.landmarks = rec.landmarks * scale
  return rec


def copy_split(
  src: pathlib.Path,
  split: str,
  count: int,
  sink: output_lib.ShardSink,
  size: int,
  quality: int,
  seed: int,
) -> int:
  """Writes `count` videos of src/split to the sink; returns records written."""
  split_index = index_lib.load_split_index(src, split)
  chosen = pick_videos(split_index, count, seed)
  readers = [records.ShardReader(s) for s in split_index.shards]
  offsets = split_index.shard_offsets
  # Records in track order (video, face, frame): a video's records are one run.
  order = split_index.track_records
  keep = np.isin(split_index.video[order], chosen)
  written = 0
  current, batch, meta = None, [], {}
  for record_id in order[keep].tolist():
    shard = int(np.searchsorted(offsets, record_id, side="right")) - 1
    raw = readers[shard][record_id - int(offsets[shard])]
    rec = resize_record(records.FaceRecord.from_bytes(raw), size, quality)
    if rec.video_id != current:
      if batch:
        sink.add_video(split, meta, batch)
        written += len(batch)
      current, batch = rec.video_id, []
      meta = {"video_id": rec.video_id, "label": rec.label, "tracks": 0}
      meta["original"] = rec.original
    meta["tracks"] = max(meta["tracks"], rec.face_index + 1)
    batch.append(rec.to_bytes())
  if batch:
    sink.add_video(split, meta, batch)
    written += len(batch)
  for reader in readers:
    reader.close()
  return written


def build(
  src: os.PathLike | str,
  out: os.PathLike | str,
  counts: dict[str, int],
  size: int = 128,
  quality: int = 90,
  seed: int = 0,
  records_per_shard: int = 2000,
) -> dict:
  """Builds OUT from SRC (replacing it); returns the new dataset_info."""
  src, out = pathlib.Path(src), pathlib.Path(out)
  src_info = records.read_dataset_info(src)
  settings = {
    "source": "bench.make_gpu_data",
    "subset_of": str(src),
    "counts": counts,
    "image_size": size,
    "jpeg_quality": quality,
    "seed": seed,
  }
  out_dir = output_lib.OutputDir(out)
  out_dir.prepare(settings, overwrite=True)
  sink = output_lib.ShardSink(out_dir, records_per_shard)
  try:
    for split, count in counts.items():
      if count > 0 and records.list_shards(src, split):
        copy_split(src, split, count, sink, size, quality, seed)
    sink.close()
  except BaseException:
    sink.abort()
    raise
  finally:
    out_dir.unlock()
  manifests = out_dir.manifests()
  splits = output_lib.summarize(manifests)
  info = {k: src_info[k] for k in KEPT_INFO if k in src_info}
  info.update(
    settings=settings,
    image_size=size,
    splits=splits,
    num_records=sum(s["num_records"] for s in splits.values()),
    num_videos=sum(s["num_videos"] for s in splits.values()),
    skipped=[],
  )
  records.write_dataset_info(out, info)
  return info


def synthetic_source(out: pathlib.Path, counts: dict[str, int]) -> pathlib.Path:
  """Drawn-face shards (one record a video, as imported crops) in OUT.source."""
  from asrid_jax.data import synthetic  # pylint: disable=g-import-not-at-top

  src = out.with_name(out.name + ".source")
  shutil.rmtree(src, ignore_errors=True)
  synthetic.write_synthetic_shards(
    src,
    videos_per_split={s: max(n, 2) for s, n in counts.items() if n > 0},
    videos_per_shard=8,
    frames=(1, 1),
    max_faces=1,
    image_size=96,
  )
  return src


def folder_bytes(path: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(
    prog="python -m bench.make_gpu_data", description=__doc__.splitlines()[0]
  )
  parser.add_argument("--src", default=DEFAULT_SRC)
  parser.add_argument("--out", default=DEFAULT_OUT)
  parser.add_argument("--synthetic", action="store_true")
  parser.add_argument("--train", type=int, default=3000)
  parser.add_argument("--val", type=int, default=500)
  parser.add_argument("--test", type=int, default=0)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--quality", type=int, default=90)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  counts = {"train": args.train, "val": args.val, "test": args.test}
  src = synthetic_source(out, counts) if args.synthetic else args.src
  t0 = time.perf_counter()
  info = build(src, out, counts, args.size, args.quality, args.seed)
  for split, s in info["splits"].items():
    if s["num_records"]:
      print(f"{split:<6} {s['num_records']:>6} records {s['records']}")
  mib = folder_bytes(out) / 2**20
  print(f"wrote {out} ({mib:.1f} MiB) in {time.perf_counter() - t0:.0f} s")
  return info


if __name__ == "__main__":
  main()
