"""`python -m preprocessing.extract_faces`' command line, and the face
settings it gives (preprocessing/extract_faces.py runs it)."""

import argparse

from preprocessing import faces as faces_lib
from preprocessing import output as output_lib
from preprocessing import shots
from preprocessing import video as video_lib
from preprocessing.tracks import TrackSettings


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m preprocessing.extract_faces",
    description="Face extraction: labelled videos -> TFRecord face-crop "
    "shards.",
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  a = p.add_argument
  a("--input", required=True, help="DFDC folder tree or CSV file")
  a("--output", required=True, help="shard folder (dataset_info.json root)")
  # Sampling.
  a("--frame_step", type=int, default=10, help="sample every Nth frame")
  a("--max_frames", type=int, default=30, help="sampled frames per video")
  a("--min_frames", type=int, default=8, help="skip videos with fewer")
  # Detection.
  a("--downscale", type=float, default=0.5, help="detect on resized frames")
  a("--min_face_size", type=int, default=40, help="full-resolution pixels")
  a(
    "--thresholds",
    type=output_lib.floats,
    default=(0.6, 0.7, 0.7),
    help="MTCNN",
  )
  a("--device", default="cpu", help="cpu or cuda[:N]")
  a("--batch_size", type=int, default=8, help="frames per MTCNN call")
  a(
    "--detect_relative_size",
    type=float,
    default=0.0,
    help="after the first frame, search faces down to this fraction of its "
    "largest face only, e.g. 0.4 (0: every frame at --downscale/"
    "--min_face_size; the default: 0.4 lost low-score faces, bench/"
    "preprocess_bench.py)",
  )
  a(
    "--keyframe_step",
    type=int,
    default=faces_lib.FaceSettings.keyframe_step,
    help="search every Nth sampled frame whole, the frames between and "
    "after only around the faces found there (1: every frame whole)",
  )
  a(
    "--region_margin",
    type=float,
    default=faces_lib.FaceSettings.region_margin,
    help="those regions: keyframe boxes grown by this times their size",
  )
  a(
    "--decoder",
    choices=video_lib.DECODERS,
    default=faces_lib.FaceSettings.decoder,
    help="auto: PyAV, dropping the unsampled frames no other frame refers "
    "to (H.264/HEVC; ~40%% less decoding); opencv: decode every frame. "
    "The sampled frames are the same",
  )
  a(
    "--reuse_boxes",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="fakes reuse their original's boxes when the geometry matches",
  )
  # Tracks.
  a("--iou_threshold", type=float, default=0.2)
  a("--max_gap", type=int, default=2, help="missed frames inside a track")
  a("--min_track_fraction", type=float, default=0.2)
  a("--min_track_length", type=int, default=2)
  a("--min_track_score", type=float, default=0.75)
  a(
    "--min_track_relative_size",
    type=float,
    default=0.5,
    help="drop tracks smaller (median box height) than this fraction of "
    "the main face's (0: keep every size)",
  )
  a("--track_rank", choices=("weight", "length"), default="weight")
  a("--cut_threshold", type=float, default=shots.DEFAULT_THRESHOLD)
  a(
    "--legacy_faces",
    action="store_true",
    help="detection and track rule exactly as before issue 13 (sets "
    "--detect_relative_size 0 --keyframe_step 1 "
    "--min_track_relative_size 0 --track_rank length --cut_threshold 0)",
  )
  # Crops.
  a("--margin", type=float, default=1 / 3, help="fraction of the box a side")
  a("--image_size", type=int, default=380, help="square crop side")
  a("--jpeg_quality", type=int, default=95)
  output_lib.add_split_and_output_args(p, (0.7, 0.2, 0.1), 1000)
  return p


def face_settings(args: argparse.Namespace) -> faces_lib.FaceSettings:
  legacy = getattr(args, "legacy_faces", False)
  settings = faces_lib.FaceSettings(
    frame_step=args.frame_step,
    max_frames=args.max_frames,
    min_frames=args.min_frames,
    margin=args.margin,
    image_size=args.image_size,
    detect_relative_size=args.detect_relative_size,
    keyframe_step=args.keyframe_step,
    region_margin=args.region_margin,
    decoder=args.decoder,
    tracks=TrackSettings(
      iou_threshold=args.iou_threshold,
      max_gap=args.max_gap,
      min_fraction=args.min_track_fraction,
      min_length=args.min_track_length,
      min_score=args.min_track_score,
      min_relative_size=args.min_track_relative_size,
      rank=args.track_rank,
      cut_threshold=args.cut_threshold,
    ),
  )
  if legacy:
    settings = faces_lib.legacy_settings(**vars(settings))
  return settings


def stored_settings(args: argparse.Namespace) -> dict:
  """The settings that decide the records; a resume must use the same.

  The decoder does not: it gives the same frames either way.
  """
  settings = face_settings(args).as_dict()
  settings.pop("decoder")
  return {
    **settings,
    "downscale": args.downscale,
    "min_face_size": args.min_face_size,
    "thresholds": list(args.thresholds),
    "reuse_boxes": args.reuse_boxes,
    "jpeg_quality": args.jpeg_quality,
    "seed": args.seed,
    "split_ratios": list(args.split_ratios),
    "splits_from": args.splits_from,
  }
