"""Prediction speed on raw videos: seconds per video, decode/detect/model.

  python -m bench.predict_bench [--config dyn_mix] [--max_videos N]

Runs `asrid_jax.predict`'s per-video path (the preprocessing code: decode
of every 10th frame up to 30 with `--decoder` (preprocessing/video.py),
MTCNN at half resolution, IoU tracks, 1/3-margin crops; then JPEG round
trip, clips of the config's length and the model) over the real sample
videos when $ASRID_REAL_SAMPLES is set, else over the built-in sample. The
model is the full-size paper config with random weights (speed does not
depend on the weights). The reference is the DFDC competition's budget:
4000 test videos in 9 hours on a Kaggle GPU notebook, about 8 s per video.
Prints a table and writes bench/results/predict_bench.json.
"""

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from asrid_jax import predict, scoring
from asrid_jax.models import asrid as asrid_lib
from preprocessing import video

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DFDC_SECONDS_PER_VIDEO = 9 * 3600 / 4000  # 8.1 s
STAGES = ("decode", "detect", "crop", "model", "total")


def random_model(model_config: dict, seed: int = 0) -> nnx.Module:
  """Random weights without running the initialisers (fast on CPU)."""
  abstract = nnx.eval_shape(
    lambda: asrid_lib.ASRID(**model_config, rngs=nnx.Rngs(0))
  )
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  flat = []
  for path, var in nnx.to_flat_state(state):
    leaf = var.get_value()
    name = str(path[-1])
    if "var" in name:
      value = np.ones(leaf.shape, leaf.dtype)
    elif "mean" in name or "center" in name:
      value = np.zeros(leaf.shape, leaf.dtype)
    else:
      fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
      value = rng.standard_normal(leaf.shape) / np.sqrt(max(fan_in, 1))
    flat.append((path, var.replace(jax.numpy.asarray(value, leaf.dtype))))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _videos() -> tuple[list[tuple[str, pathlib.Path]], str]:
  real = os.environ.get("ASRID_REAL_SAMPLES")
  if real and (pathlib.Path(real) / "videos").is_dir():
    folder = pathlib.Path(real) / "videos"
    return predict.find_videos([folder]), "real sample videos"
  from preprocessing import make_sample

  work = pathlib.Path(tempfile.mkdtemp(prefix="predict_bench_"))
  make_sample.make_sample(work / "sample", progress=False)
  return predict.find_videos([work / "sample"]), "built-in sample"


def main() -> None:
  p = argparse.ArgumentParser(prog="python -m bench.predict_bench")
  p.add_argument("--config", default="dyn_mix", help="configs/<name>.py")
  p.add_argument("--max_videos", type=int, default=0, help="0 = all")
  p.add_argument("--device", default="cpu", help="MTCNN device")
  p.add_argument(
    "--decoder", default="auto", choices=video.DECODERS, help="video.py"
  )
  args = p.parse_args()

  import importlib

  config = importlib.import_module(f"configs.{args.config}").get_config()
  videos, source = _videos()
  if args.max_videos:
    videos = videos[: args.max_videos]
  model = random_model(dict(config.model))
  settings, det_kwargs = predict.face_settings_from_info(
    None, min_frames=1, device=args.device, decoder=args.decoder
  )
  from preprocessing import faces as faces_lib
  from preprocessing.detect import MTCNNDetector

  detector = MTCNNDetector(**det_kwargs)
  detector.detect([np.zeros((240, 320, 3), np.uint8)])  # warm-up
  options = predict.PredictOptions(
    image_size=int(config.data.image_size),
    clip_len=int(config.data.clip_len),
    dynamic=model.dynamic_head is not None,
    batch_size=4,
  )
  forward = scoring.make_forward(model)
  size, t = options.image_size, options.clip_len
  start = time.perf_counter()
  # With frame orders, as predict calls it: without them jit would compile
  # a second program inside the first video's model time.
  jax.block_until_ready(
    forward(
      np.zeros((4, t, size, size, 3), np.uint8), np.zeros((4, t), np.int32)
    )
  )
  compile_s = time.perf_counter() - start

  results = predict.predict_videos(
    videos,
    extract=lambda path: faces_lib.extract_video_faces(
      path, detector, settings
    ),
    forward=forward,
    options=options,
  )
  rows = []
  for r in results:
    import cv2

    cap = cv2.VideoCapture(str(r.path))
    w, h = (
      int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
      int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
    )
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    rows.append(
      {
        "video": r.filename,
        "size": f"{w}x{h}",
        "frames": frames,
        "faces": r.faces,
        "tracks": len(r.track_scores),
        "reason": r.reason,
        **{k: float(r.timings.get(k, 0.0)) for k in STAGES},
      }
    )
  scored = [r for r in rows if not r["reason"]]
  mean = {k: float(np.mean([r[k] for r in scored])) for k in STAGES}
  header = ["video", "size", "faces", *(f"{k} s" for k in STAGES)]
  print(
    f"predict_bench: {args.config} at {size}x{size}, clips of {t}, "
    f"{source}, {jax.devices()[0].platform} ({os.cpu_count()} cores), "
    f"model compile {compile_s:.1f} s (once), load average "
    f"{os.getloadavg()[0]:.1f}"
  )
  from asrid_jax import reporting

  table = [
    [r["video"][:28], r["size"], r["faces"], *(r[k] for k in STAGES)]
    for r in rows
  ]
  table.append(["mean (scored)", "", "", *(mean[k] for k in STAGES)])
  print(reporting.format_table(header, table, digits=2))
  ratio = mean["total"] / DFDC_SECONDS_PER_VIDEO
  print(
    f"mean {mean['total']:.2f} s/video = {ratio:.2f}x the DFDC GPU budget "
    f"({DFDC_SECONDS_PER_VIDEO:.1f} s/video); detection is "
    f"{100 * mean['detect'] / mean['total']:.0f}% of it"
  )
  RESULTS.mkdir(exist_ok=True)
  out = {
    "config": args.config,
    "image_size": size,
    "clip_len": t,
    "source": source,
    "platform": jax.devices()[0].platform,
    "cpu_count": os.cpu_count(),
    "load_average_1m": os.getloadavg()[0],
    "machine": platform.machine(),
    "compile_s": compile_s,
    "settings": {
      "frame_step": settings.frame_step,
      "max_frames": settings.max_frames,
      "decoder": settings.decoder,
      **det_kwargs,
    },
    "videos": rows,
    "mean_scored": mean,
    "dfdc_budget_s": DFDC_SECONDS_PER_VIDEO,
    "ratio_to_dfdc_budget": ratio,
  }
  path = RESULTS / "predict_bench.json"
  path.write_text(json.dumps(out, indent=1) + "\n")
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
