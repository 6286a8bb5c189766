"""Face-extraction throughput: videos/s, frames/s, and where the time goes.

  python -m bench.preprocess_bench [--downscales 1.0,0.5] [--device cpu]

Runs `preprocessing.extract_faces` end to end (decode -> MTCNN -> tracks ->
crop -> JPEG -> shards) over the real sample videos when $ASRID_REAL_SAMPLES
is set, else over the built-in sample (`preprocessing.make_sample`). Each
setting writes to a fresh folder; the first row (full-resolution detection)
is the reference the others are compared with. On the built-in sample (an
original with fakes of the same geometry) a row without box reuse shows what
reusing the original's boxes saves. Prints a table and writes
bench/results/preprocess_bench.json.
"""

import argparse
import json
import os
import pathlib
import platform
import shutil
import tempfile
import time

import numpy as np

from asrid_jax import reporting
from preprocessing import extract_faces

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
STAGES = ("decode", "detect", "crop", "encode", "write")


def _input(work: pathlib.Path) -> tuple[pathlib.Path, str]:
  real = os.environ.get("ASRID_REAL_SAMPLES")
  if real and (pathlib.Path(real) / "videos").is_dir():
    return pathlib.Path(real) / "videos", "real sample videos"
  from preprocessing import make_sample

  make_sample.make_sample(work / "sample", progress=False)
  return work / "sample", "built-in sample (make_sample defaults)"


def _run(src, out, downscale, device, reuse, extra) -> dict:
  argv = ["--input", str(src), "--output", str(out), "--device", device]
  argv += ["--downscale", str(downscale), *extra]
  argv += [] if reuse else ["--no-reuse_boxes"]
  args = extract_faces.build_parser().parse_args(argv)
  detector = extract_faces.make_detector(args)
  # Warm-up outside the clock: the first MTCNN call allocates its buffers.
  detector.detect([np.zeros((240, 320, 3), np.uint8)])
  start = time.perf_counter()
  summary = extract_faces.run(args, detector=detector)
  seconds = time.perf_counter() - start
  return {
    "downscale": downscale,
    "reuse_boxes": reuse,
    "videos": summary.processed,
    "skipped": summary.skipped,
    "frames": summary.frames,
    "faces": summary.faces,
    "seconds": seconds,
    "videos_per_s": summary.processed / seconds,
    "frames_per_s": summary.frames / seconds,
    "stage_seconds": dict(summary.timings),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.preprocess_bench")
  p.add_argument("--downscales", default="1.0,0.5")
  p.add_argument("--device", default="cpu")
  p.add_argument("--frame_step", type=int, default=10)
  p.add_argument("--max_frames", type=int, default=30)
  args = p.parse_args(argv)
  import torch

  extra = ["--frame_step", str(args.frame_step)]
  extra += ["--max_frames", str(args.max_frames), "--min_frames", "3"]
  with tempfile.TemporaryDirectory(prefix="preprocess_bench_") as tmp:
    work = pathlib.Path(tmp)
    src, source = _input(work)
    configs = [(float(d), True) for d in args.downscales.split(",")]
    if source.startswith("built-in"):
      configs.append((configs[-1][0], False))
    rows = []
    for i, (downscale, reuse) in enumerate(configs):
      out = work / f"out{i}"
      rows.append(_run(src, out, downscale, args.device, reuse, extra))
      shutil.rmtree(out)
  ref = rows[0]["seconds"]
  for row in rows:
    row["speedup_vs_first"] = ref / row["seconds"]

  header = (
    "downscale",
    "reuse",
    "videos",
    "frames",
    "faces",
    "videos/s",
    "frames/s",
    "speedup",
    *(f"{s} s" for s in STAGES),
  )
  table = [
    (
      f"{r['downscale']:.2f}",
      str(r["reuse_boxes"]),
      r["videos"],
      r["frames"],
      r["faces"],
      f"{r['videos_per_s']:.3f}",
      f"{r['frames_per_s']:.2f}",
      f"{r['speedup_vs_first']:.2f}x",
      *(f"{r['stage_seconds'][s]:.2f}" for s in STAGES),
    )
    for r in rows
  ]
  print(f"preprocess_bench on {source}, device {args.device}, "
        f"torch threads {torch.get_num_threads()}")  # fmt: skip
  print(reporting.format_table(header, table))
  RESULTS.mkdir(parents=True, exist_ok=True)
  result = {
    "source": source,
    "device": args.device,
    "frame_step": args.frame_step,
    "max_frames": args.max_frames,
    "machine": {
      "cpus": os.cpu_count(),
      "torch_threads": torch.get_num_threads(),
      "python": platform.python_version(),
      "torch": torch.__version__,
    },
    "rows": rows,
  }
  path = RESULTS / "preprocess_bench.json"
  path.write_text(json.dumps(result, indent=2) + "\n")
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
