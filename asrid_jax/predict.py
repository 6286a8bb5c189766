r"""Score raw videos: P(FAKE) per video, a DFDC submission CSV, heatmaps.

  python -m asrid_jax.predict VIDEO_OR_DIR... [--workdir=DIR] [--out=DIR] \
      [--heatmaps] [--checkpoint=best|latest|STEP]

Without --workdir the shipped model scores the videos: models/dfdc_faces
(frame-level sta_new trained on real DFDC face crops; its README.md is the
model card).

No preprocessing step is needed: each video goes through the very code that
built the training shards (`preprocessing.faces.extract_video_faces`: decode
every Nth frame, MTCNN on a downscaled frame, IoU face tracks, margin crop),
with the settings stored in the training data's dataset_info.json, then the
same JPEG round trip and resize the input pipeline applies, then the model.

How scores are formed:
* Each face track is cut into consecutive non-overlapping clips of the
  config's clip length (1 for picture-sampled variants), the last one padded
  by repeating its last frame, exactly as evaluation cuts them.
* Dynamic variants score a clip with the temporal head; static variants
  score each frame with the static head. A track's score is the mean of its
  unit scores (`--strategy=confident` uses the DFDC 1st place rule).
* The video's P(FAKE) is the MAX over its face tracks: a video is fake when
  any face in it is (DFDC fakes swap one face of several). `--track_reduce
  =mean` averages instead.
* A video that cannot be decoded or has no face track gets `--fallback`
  (0.5, as the DFDC winners did) and its reason; the run never stops for one
  bad video.

Outputs in --out (default WORKDIR/predict): predictions.csv (DFDC submission
format: filename,label with label = P(FAKE)), predictions_details.csv (the
reason, faces, track scores and the time split decode/detect/crop/model of
every video) and, with --heatmaps, heatmaps/<video>.png: sampled face crops,
the M attention maps overlaid, the frame scores written on them.

The model runs on one device; torch (MTCNN) is imported only when the
detector is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from asrid_jax import heatmaps, hostmem, reporting
from asrid_jax import metrics as metrics_lib
from asrid_jax.predict_args import build_parser  # noqa: F401 (re-exported)
from asrid_jax.predict_inputs import (  # noqa: F401 (re-exported)
  face_settings_from_info,
  model_inputs,
  run_batched,
)
from asrid_jax.predict_report import (  # noqa: F401 (re-exported)
  DETAIL_HEADER,
  SUBMISSION_HEADER,
  format_results,
  write_outputs,
)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg")


@dataclasses.dataclass
class VideoPrediction:
  """The result for one input video."""

  filename: str  # the submission key (name relative to its input folder)
  path: pathlib.Path
  score: float  # P(FAKE)
  reason: str = ""  # why the fallback was used; '' when the model scored it
  track_scores: list[float] = dataclasses.field(default_factory=list)
  faces: int = 0  # face crops scored
  units: int = 0  # clips (dynamic) or frames (static) scored
  timings: dict[str, float] = dataclasses.field(default_factory=dict)
  heatmap: pathlib.Path | None = None

  @property
  def fallback(self) -> bool:
    return bool(self.reason)


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------


def find_videos(
  inputs: Sequence[str | pathlib.Path],
) -> list[tuple[str, pathlib.Path]]:
  """(submission filename, path) for every file and video under folders.

  A file named on the command line is always kept (an unreadable one then
  gets the fallback and its reason); inside folders only files with a video
  suffix are taken, recursively, named relative to that folder (the DFDC
  submission uses bare file names, which is what a flat folder gives).
  """
  found: list[tuple[str, pathlib.Path]] = []
  for item in inputs:
    path = pathlib.Path(item)
    if path.is_dir():
      # A broken or looping symlink with a video name is kept: it gets the
      # fallback and its reason, instead of silently missing from the CSV.
      files = sorted(
        p
        for p in path.rglob("*")
        if p.suffix.lower() in VIDEO_SUFFIXES
        and (p.is_file() or p.is_symlink())
      )
      if not files:
        logging.warning(
          "%s: no video files (%s)", path, ", ".join(VIDEO_SUFFIXES)
        )
      found += [(p.relative_to(path).as_posix(), p) for p in files]
    else:
      found.append((path.name, path))
  names = [n for n, _ in found]
  dupes = sorted({n for n in names if names.count(n) > 1})
  if dupes:
    raise ValueError(
      f"several inputs share the submission filename(s) {dupes[:5]}: a "
      "submission CSV needs unique names; pass them in separate runs"
    )
  return found


# ---------------------------------------------------------------------------
# One video, many videos
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class PredictOptions:
  """How faces become a video score (see the module docstring)."""

  image_size: int  # model input side (config.data.image_size)
  clip_len: int  # frames per model example (1 for picture sampling)
  dynamic: bool  # score clips with the temporal head
  batch_size: int = 8  # clips per model call
  strategy: str = "mean"  # per track: 'mean' or 'confident'
  track_reduce: str = "max"  # over tracks: 'max' or 'mean'
  clip: tuple[float, float] | None = None  # (lo, hi) of the video score
  fallback: float = 0.5
  jpeg_quality: int | None = 95  # the shards' JPEG quality
  heatmap_dir: pathlib.Path | None = None
  heatmap_frames: int = 4  # rows per face track in a heatmap
  heatmap_tile: int = 192
  # Heatmap file names already taken in this run ('sub/x.mp4' and
  # 'sub__x.mp4' would both flatten to 'sub__x').
  heatmap_names: set = dataclasses.field(default_factory=set)


def predict_video(
  filename: str,
  path: pathlib.Path,
  *,
  extract: Callable[[pathlib.Path], Any],
  forward: Callable[[np.ndarray], Mapping[str, Any]],
  options: PredictOptions,
) -> VideoPrediction:
  """Faces of one video -> P(FAKE); never raises for a bad video."""
  start = time.perf_counter()
  result = VideoPrediction(filename, path, options.fallback)
  try:
    faces = extract(path)
    result.timings = {k: float(v) for k, v in faces.timings.items()}
    if not faces.ok:
      result.reason = faces.skip_reason
      return result
    t0 = time.perf_counter()
    track_outputs = []
    unit_scores, unit_tracks = [], []
    for track in faces.tracks:
      clips, orders = model_inputs(
        track.crops,
        image_size=options.image_size,
        clip_len=options.clip_len,
        jpeg_quality=options.jpeg_quality,
      )
      out = run_batched(forward, clips, options.batch_size, orders)
      out.update(clips=clips, orders=orders, frame_numbers=track.frame_indices)
      track_outputs.append((track.face_index, out))
      if options.dynamic:
        scores = out["clip_probs"]
      else:  # one score per frame: the overlapping tail scores some twice
        real = orders >= 0
        probs = np.asarray(out["frame_probs"], np.float64)[real]
        sums = np.bincount(orders[real], weights=probs)
        scores = sums / np.maximum(np.bincount(orders[real]), 1)
      unit_scores.append(np.asarray(scores, np.float64).reshape(-1))
      unit_tracks.append(np.full(unit_scores[-1].size, track.face_index))
      result.faces += len(track.crops)
    result.timings["model"] = time.perf_counter() - t0
    scores = np.concatenate(unit_scores)
    tracks = np.concatenate(unit_tracks)
    result.units = int(scores.size)
    result.track_scores = [
      metrics_lib.reduce_scores(scores[tracks == t], options.strategy)
      for t in np.unique(tracks)
    ]
    result.score = metrics_lib.reduce_scores(
      result.track_scores, options.track_reduce
    )
    if options.clip is not None:
      result.score = float(np.clip(result.score, *options.clip))
    if options.heatmap_dir is not None:
      crops, maps, captions = heatmaps.pick_rows(
        track_outputs, options.heatmap_frames
      )
      captions[0] += f"  video {result.score:.2f}"
      grid = heatmaps.render_heatmap(
        crops, maps, captions, tile=options.heatmap_tile
      )
      result.heatmap = heatmaps.write_png(
        options.heatmap_dir / heatmap_name(filename, options.heatmap_names),
        grid,
      )
  except Exception as e:  # noqa: BLE001 -- one video must not stop the run
    logging.exception("%s: prediction failed", path)
    result.score = options.fallback
    result.reason = f"error: {type(e).__name__}: {e}"
  finally:
    result.timings["total"] = time.perf_counter() - start
  return result


def heatmap_name(filename: str, taken: set) -> str:
  """A flat PNG name for `filename`, unique among `taken` (updated)."""
  base = pathlib.Path(filename).with_suffix("").as_posix().replace("/", "__")
  name, n = base, 1
  while name in taken:
    n += 1
    name = f"{base}-{n}"
  taken.add(name)
  return name + ".png"


def predict_videos(
  videos: Sequence[tuple[str, pathlib.Path]],
  *,
  extract: Callable[[pathlib.Path], Any],
  forward: Callable[[np.ndarray], Mapping[str, Any]],
  options: PredictOptions,
  progress: bool = True,
) -> list[VideoPrediction]:
  """predict_video over a list, with a tqdm bar."""
  from tqdm import tqdm

  results = []
  for filename, path in tqdm(
    videos, desc="predict", unit="video", disable=not progress
  ):
    results.append(
      predict_video(
        filename, path, extract=extract, forward=forward, options=options
      )
    )
  return results


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def _dataset_info(data_dir: str) -> dict | None:
  from asrid_jax.data import records

  try:
    return records.read_dataset_info(data_dir)
  except (FileNotFoundError, ValueError) as e:
    logging.warning("face settings: preprocessing defaults (%s)", e)
    return None


def run(args: argparse.Namespace) -> tuple[list[VideoPrediction], dict]:
  """The command line's work, callable from tests."""
  import jax

  from asrid_jax import checkpoint as checkpoint_lib
  from asrid_jax import scoring
  from asrid_jax import sharding as sharding_lib

  if not 0.0 <= args.fallback <= 1.0:
    raise ValueError(f"--fallback must be a probability, got {args.fallback}")
  videos = find_videos(args.inputs)
  if not videos:
    raise FileNotFoundError(f"no video found in {args.inputs}")
  from asrid_jax import model_info

  if args.workdir is None:
    args.workdir = str(model_info.DEFAULT_MODEL)
  workdir = pathlib.Path(args.workdir)
  if not (workdir / "checkpoints").is_dir():
    raise FileNotFoundError(
      f"{workdir}: no checkpoints/ folder (not a workdir?)"
    )
  # One device: a video's few clips do not need a mesh.
  mesh = sharding_lib.make_mesh([("data", 1)], jax.devices()[:1])
  config, model, step = checkpoint_lib.restore_for_eval(
    workdir, args.checkpoint, mesh, use_ema=args.ema
  )
  # Faces are cut as the training crops were: the data dir given, else the
  # model's own copy of its training dataset_info, else the config's dir.
  if args.data_dir:
    info = _dataset_info(args.data_dir)
  else:
    info = model_info.training_info(workdir, config.data.dir)
  crop_margin = ((info or {}).get("settings") or {}).get("crop_margin")
  if crop_margin == "unknown":
    logging.warning(
      "the training crops' margin is unknown (import_faces --crop_margin "
      "unknown): cutting faces with the default margin"
    )
  settings, detector_kwargs = face_settings_from_info(
    info,
    frame_step=args.frame_step,
    max_frames=args.max_frames,
    min_frames=args.min_frames,
    keyframe_step=args.keyframe_step,
    decoder=args.decoder,
    device=args.device,
  )
  from preprocessing import faces as faces_lib
  from preprocessing.detect import MTCNNDetector  # torch: imported here only

  detector = MTCNNDetector(**detector_kwargs)
  stored = (info or {}).get("settings") or {}
  picture = config.data.get("sampling", "video") == "picture"
  options = PredictOptions(
    image_size=int(config.data.image_size),
    clip_len=1 if picture else int(config.data.clip_len),
    dynamic=model.dynamic_head is not None,
    batch_size=args.batch_size,
    **scoring.aggregation_settings(
      config.get("eval"),
      strategy=args.strategy,
      track_reduce=args.track_reduce,
      clip=args.clip,
    ),
    fallback=args.fallback,
    jpeg_quality=stored.get("jpeg_quality", 95),
    heatmap_frames=args.heatmap_frames,
    heatmap_tile=args.heatmap_tile,
  )
  out_dir = pathlib.Path(args.out or workdir / "predict")
  if args.heatmaps:
    options.heatmap_dir = out_dir / "heatmaps"
  forward = scoring.make_forward(model, with_attention=args.heatmaps)
  # Compile once up front, so the first video's model time is not a compile.
  start = time.perf_counter()
  size = options.image_size
  jax.block_until_ready(
    forward(
      np.zeros((options.batch_size, options.clip_len, size, size, 3), np.uint8),
      np.zeros((options.batch_size, options.clip_len), np.int32),
    )
  )
  compile_s = time.perf_counter() - start

  def extract(path):
    return faces_lib.extract_video_faces(path, detector, settings)

  results = predict_videos(
    videos, extract=extract, forward=forward, options=options
  )
  paths = write_outputs(results, out_dir)
  # How the scores were made, beside the CSV (a submission is reproducible).
  paths["settings"] = out_dir / "predict_settings.json"
  from asrid_jax.data import records

  records.write_json_atomic(
    paths["settings"],
    {
      "workdir": str(workdir),
      "step": int(step),
      "strategy": options.strategy,
      "track_reduce": options.track_reduce,
      "clip": list(options.clip) if options.clip else None,
      "fallback": options.fallback,
      "confident_min_fake_count": "floor(n * 11 / 32)",
      "clip_len": options.clip_len,
      "dynamic": options.dynamic,
    },
  )
  meta = {
    "step": step,
    "variant": config.model.variant,
    "compile_s": compile_s,
    "settings": dataclasses.asdict(settings),
    "detector": detector_kwargs,
    "paths": paths,
  }
  return results, meta


def main(argv: list[str] | None = None) -> int:
  from asrid_jax import checkpoint as checkpoint_lib

  args = build_parser().parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  reporting.quiet_library_logs()
  try:
    results, meta = run(args)
  except (
    FileNotFoundError,
    ValueError,
    checkpoint_lib.CheckpointError,  # no usable checkpoint
  ) as e:
    print(f"predict: error: {e}", file=sys.stderr)
    return 1
  print(
    f"predict: {args.workdir} step {meta['step']} ({meta['variant']}), "
    f"{len(results)} videos; model compile {meta['compile_s']:.1f} s"
  )
  print(format_results(results))
  for name, path in meta["paths"].items():
    print(f"  {name:10s} {path}")
  maps = [r.heatmap for r in results if r.heatmap is not None]
  if maps:
    print(f"  heatmaps   {len(maps)} PNGs in {maps[0].parent}")
  return 0


if __name__ == "__main__":
  hostmem.ensure_hugepage_malloc()  # before any work: it may re-execute
  sys.exit(main())
