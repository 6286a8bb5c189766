"""`python -m asrid_jax.predict`'s command line (asrid_jax/predict.py runs it)."""

import argparse

from asrid_jax import reporting
from preprocessing.video import DECODERS


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m asrid_jax.predict",
    description="P(FAKE) for raw videos, a DFDC submission CSV, heatmaps.",
  )
  a = p.add_argument
  a("inputs", nargs="+", metavar="VIDEO_OR_DIR")
  a(
    "--workdir",
    default=None,
    help="training workdir or exported model (has checkpoints/); default: "
    "the shipped models/dfdc_faces",
  )
  a(
    "--checkpoint",
    default="best",
    type=reporting.checkpoint_arg,
    help="best, latest or a step number",
  )
  a("--out", default=None, help="default WORKDIR/predict")
  a("--heatmaps", action="store_true", help="write heatmaps/<video>.png")
  a("--heatmap_frames", type=int, default=4, help="rows per face track")
  a("--heatmap_tile", type=int, default=192, help="pixels per grid cell")
  a(
    "--strategy",
    choices=("mean", "confident"),
    default=None,
    help="per face track; default: the model config's eval.strategy, as "
    "evaluate uses",
  )
  a("--track_reduce", choices=("max", "mean"), default=None)
  a(
    "--clip",
    type=reporting.clip_arg,
    default=None,
    help="LO,HI video-score clip",
  )
  a("--fallback", type=float, default=0.5, help="score without a face")
  a("--batch_size", type=int, default=8, help="clips per model call")
  a(
    "--data_dir",
    default=None,
    help="shards whose dataset_info.json gives "
    "the face settings (default: the config's data.dir)",
  )
  a("--device", default=None, help="MTCNN device: cpu or cuda[:N]")
  a("--frame_step", type=int, default=None, help="override the shards'")
  a("--max_frames", type=int, default=None, help="override the shards'")
  a("--min_frames", type=int, default=1, help="fewer frames: fallback")
  a(
    "--keyframe_step",
    type=int,
    default=None,
    help="override the shards': search every Nth sampled frame whole, the "
    "others around its faces (1: every frame whole, as before issue 13)",
  )
  a(
    "--decoder",
    choices=DECODERS,
    default=None,
    help="auto (default): PyAV, dropping the unsampled frames nothing "
    "refers to; opencv: decode every frame (the same frames)",
  )
  a(
    "--ema",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="use EMA weights when present (default: config.eval.use_ema)",
  )
  return p
