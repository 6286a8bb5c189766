r"""Face images -> the same TFRecord shards as `extract_faces`.

  python -m preprocessing.import_faces --input INPUT --output DIR \
      [--images DIR --image_size 224 --crop_margin unknown|estimate|M \
       --split_ratios 0.8,0.1,0.1 --splits_from seed|input --seed 0 \
       --device cpu --batch_size 32 --min_face_size 56 \
       --num_workers N --worker_index I --overwrite ...]

INPUT is a deepfake-faces `metadata.csv`, a CSV `path,label[,original]
[,video][,split]` of image files, or a folder with REAL/ and FAKE/ subfolders
(preprocessing/image_inputs.py). Each image is padded to a square (black,
centred: no distortion) and resized to --image_size, then MTCNN runs on it to
fill `face/box`, `face/landmarks` and `face/score` (in the stored image's
pixels), so the landmark-driven augmentations (flip, part dropout, SBI) work
on imported crops. An image without a face keeps a whole-image box, template
landmarks and score 0, and is counted and listed in dataset_info.json
('faces'). Splits are grouped by original, as in extract_faces.

--crop_margin records how the crops were cut, so that `predict` cuts faces
from raw video the same way (a model trained on tight crops must be fed tight
crops): a number (the margin on each side as a fraction of the face box, as
extract_faces' --margin), 'estimate' (measured here: the median of
(side / MTCNN box side - 1) / 2 over the images with a face), or 'unknown'.

Resume, atomic shards, per-worker parts and skip logs are extract_faces'
(preprocessing/output.py). Exit code 0 unless nothing could be imported.
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import logging
from tqdm import tqdm

from asrid_jax.data import records
from preprocessing import face_image, image_inputs
from preprocessing import output as output_lib
from preprocessing import splits as splits_lib
from preprocessing.detect import Detections, Detector
from preprocessing.face_image import TEMPLATE_LANDMARKS  # noqa: F401


class NothingImportedError(RuntimeError):
  """No image of the input (or of this worker's part) could be imported."""


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m preprocessing.import_faces",
    description=__doc__.split("\n\n")[0],
    formatter_class=argparse.ArgumentDefaultsHelpFormatter,
  )
  a = p.add_argument
  a("--input", required=True, help="metadata.csv, images CSV or folder")
  a("--output", required=True, help="shard folder (dataset_info.json root)")
  a("--images", default=None, help="deepfake-faces image folder")
  a("--image_size", type=int, default=224, help="square side stored")
  a("--crop_margin", default="unknown", help="a number, estimate or unknown")
  a("--jpeg_quality", type=int, default=95)
  a(
    "--detect",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="MTCNN boxes and landmarks (off: whole-image boxes)",
  )
  a("--device", default="cpu", help="MTCNN device: cpu or cuda[:N]")
  a("--batch_size", type=int, default=32, help="images per MTCNN call")
  a("--min_face_size", type=int, default=56, help="stored-image pixels")
  a(
    "--thresholds",
    type=output_lib.floats,
    default=(0.6, 0.7, 0.7),
    help="MTCNN",
  )
  output_lib.add_split_and_output_args(p, (0.8, 0.1, 0.1), 2000)
  return p


def _crop_margin(text: str) -> str | float:
  if text in ("unknown", "estimate"):
    return text
  try:
    value = float(text)
  except ValueError:
    raise ValueError(
      f"--crop_margin must be a number, 'estimate' or 'unknown', got {text!r}"
    ) from None
  if not -0.5 < value <= 2.0:
    raise ValueError(f"--crop_margin must be in (-0.5, 2], got {value}")
  return value


def validate(args: argparse.Namespace) -> None:
  checks = [
    (args.image_size >= 16, "--image_size must be >= 16"),
    (1 <= args.jpeg_quality <= 100, "--jpeg_quality must be in [1, 100]"),
    (args.batch_size >= 1, "--batch_size must be >= 1"),
    (args.records_per_shard >= 1, "--records_per_shard must be >= 1"),
    (len(args.thresholds) == 3, "--thresholds needs 3 comma-separated values"),
    (
      len(args.split_ratios) == 3 and min(args.split_ratios) >= 0,
      "--split_ratios needs 3 non-negative values",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)
  _crop_margin(args.crop_margin)


def stored_settings(args: argparse.Namespace) -> dict:
  """The settings that decide the records; a resume must use the same.

  `margin` is present only when known (a number), so predict's face
  settings (which read it) never see a word.
  """
  settings = {
    "source": "import_faces",
    "image_size": args.image_size,
    "crop_margin": _crop_margin(args.crop_margin),
    "jpeg_quality": args.jpeg_quality,
    "detect": args.detect,
    "min_face_size": args.min_face_size,
    "thresholds": list(args.thresholds),
    "seed": args.seed,
    "split_ratios": list(args.split_ratios),
    "splits_from": args.splits_from,
  }
  if isinstance(settings["crop_margin"], float):
    settings["margin"] = settings["crop_margin"]
  return settings


# ----------------------------------------------------------------------------
# The detector (face_image.py reads and squares the images).
# ----------------------------------------------------------------------------


def make_detector(args: argparse.Namespace) -> Detector:
  from preprocessing.detect import MTCNNDetector

  return MTCNNDetector(
    device=args.device,
    batch_size=args.batch_size,
    downscale=1.0,
    min_face_size=args.min_face_size,
    thresholds=args.thresholds,
  )


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


@dataclasses.dataclass
class ImportSummary:
  videos: int = 0  # written in this run
  images: int = 0
  no_face: int = 0  # written with a whole-image box
  skipped: int = 0  # videos of which no image could be read
  bad_images: int = 0  # unreadable images (their video may still be written)
  already_done: int = 0
  input_issues: int = 0
  seconds: float = 0.0
  info: dict = dataclasses.field(default_factory=dict)

  def line(self, output: str) -> str:
    splits = self.info.get("splits", {})
    counts = "/".join(
      f"{s} {splits.get(s, {}).get('num_videos', 0)}" for s in records.SPLITS
    )
    return (
      f"import_faces: {self.images} images of {self.videos} videos written "
      f"({self.no_face} without a detected face), {self.skipped} videos and "
      f"{self.bad_images} images skipped, {self.already_done} already done, "
      f"{self.input_issues} input problems; videos in {output}: {counts}; "
      f"{self.seconds:.1f} s"
    )


class _Batch:
  """Videos whose images wait for one MTCNN call (all images one size)."""

  def __init__(self):
    self.videos: list[tuple[image_inputs.ImageVideo, str, list]] = []
    self.num_images = 0

  def add(self, video, split, images) -> None:
    self.videos.append((video, split, images))
    self.num_images += len(images)


def run(
  args: argparse.Namespace, detector: Detector | None = None
) -> ImportSummary:
  """Imports this worker's part of the input; see the module docstring."""
  validate(args)
  start = time.perf_counter()
  summary = ImportSummary()
  found = image_inputs.discover(args.input, args.images)
  issues = list(found.issues)
  for issue in issues:
    logging.warning("input problem: %s: %s", issue.name, issue.reason)
  summary.input_issues = len(issues)
  if not found.videos:
    lines = [f"no usable image in {args.input} ({len(issues)} problem(s)):"]
    lines += [f"  {i.name}: {i.reason}" for i in issues[:20]]
    if len(issues) > 20:
      lines.append(f"  ... and {len(issues) - 20} more")
    raise NothingImportedError("\n".join(lines))
  if not found.groups_known:
    logging.warning(
      "%s: no originals known (%s layout): every video is its own group, so "
      "a fake and its original may fall into different splits",
      args.input,
      found.layout,
    )
  by_id = {v.video_id: v for v in found.videos}
  groups, _ = splits_lib.group_videos([v.as_video_item() for v in found.videos])
  notes = [
    image_inputs.Issue(
      f.video_id,
      f"FAKE whose original {g.key} is not in the input: kept, grouped "
      "under that name",
    )
    for g in groups
    if g.original is None
    for f in g.fakes
  ]
  split_of, split_notes, mine, out = output_lib.plan_worker(groups, args)
  notes += split_notes
  for note in notes:
    logging.warning("note: %s: %s", note.name, note.reason)
  # Released however run() ends: a kept exception would otherwise hold
  # the lock and make every later run in this process OutputBusyError.
  try:
    out.prepare(stored_settings(args), args.overwrite)
    for m in out.manifests():  # a group keeps the split it was written to
      for v in m["videos"]:
        split_of[v.get("original") or v["video_id"]] = m["split"]
    done = out.done_videos()
    todo = [
      (by_id[v.video_id], split_of[g.key])
      for g in mine
      for v in g.videos
      if v.video_id not in done
    ]
    summary.already_done = sum(len(g) for g in mine) - len(todo)
    if todo and detector is None and args.detect:
      detector = make_detector(args)
    sink = output_lib.ShardSink(out, args.records_per_shard)
    batch = _Batch()
    try:
      total = sum(len(v.frames) for v, _ in todo)
      with tqdm(total=total, unit="image", desc="import_faces") as bar:
        for video, split in todo:
          images = []
          for path in video.frames:
            try:
              images.append(face_image.load_square(path, args.image_size))
            except ValueError as e:
              logging.warning("skipped image: %s", e)
              summary.bad_images += 1
              images.append(str(e))
          batch.add(video, split, images)
          if batch.num_images >= args.batch_size:
            _flush(batch, detector, args, out, sink, summary)
            batch = _Batch()
          bar.update(len(video.frames))
          bar.set_postfix(no_face=summary.no_face, bad=summary.bad_images)
        _flush(batch, detector, args, out, sink, summary)
      sink.close()
    except BaseException:
      sink.abort()
      raise
    my_ids = [v.video_id for g in mine for v in g.videos]
    records.write_json_atomic(
      out.finished_marker, {"videos": len(my_ids), "groups": len(mine)}
    )
    summary.info = merge_info(out, args, found, issues, notes)
    summary.seconds = time.perf_counter() - start
    if my_ids and not summary.info.get("num_videos"):
      raise NothingImportedError(
        f"none of the {len(my_ids)} videos of worker {args.worker_index} of "
        f"{args.num_workers} had a readable image; reasons are in "
        f"{out.work} (*.skipped.jsonl)"
      )
    return summary
  finally:
    out.unlock()


def _flush(batch, detector, args, out, sink, summary) -> None:
  """Detects faces on the batch's readable images, writes its videos."""
  readable = [
    im for _, _, ims in batch.videos for im in ims if not isinstance(im, str)
  ]
  if detector is not None and readable:
    found = iter(detector.detect(readable))
  else:
    found = iter([Detections.empty()] * len(readable))
  for video, split, images in batch.videos:
    data, errors, sides, no_face = [], [], [], []
    for order, image in enumerate(images):
      if isinstance(image, str):
        errors.append(image)
        continue
      box, marks, score = face_image.main_face(next(found), args.image_size)
      if score == 0.0:
        no_face.append(video.frames[order].name)
      else:
        sides.append(float(max(box[2] - box[0], box[3] - box[1])))
      data.append(
        records.FaceRecord(
          image=records.encode_jpeg(image, args.jpeg_quality),
          height=args.image_size,
          width=args.image_size,
          video_id=video.video_id,
          original=video.original,
          label=video.label,
          frame_index=order,
          frame_order=order,
          face_index=0,
          box=box,
          landmarks=marks,
          score=score,
        ).to_bytes()
      )
    if not data:
      reason = "; ".join(errors) if errors else "no image"
      out.log_skip(video.video_id, reason, retry=True)
      summary.skipped += 1
      continue
    meta = {
      "video_id": video.video_id,
      "label": video.label,
      "original": video.original,
      "tracks": 1,
      "frames": len(data),
      "boxes_from": "mtcnn" if detector is not None else "whole image",
      "no_face": no_face,
      "bad_images": errors,
      # Face box side / image side: what --crop_margin estimate uses.
      "face_fraction": [s / args.image_size for s in sides],
    }
    sink.add_video(split, meta, data)
    summary.videos += 1
    summary.images += len(data)
    summary.no_face += len(no_face)


def merge_info(out, args, found, issues, notes) -> dict:
  """dataset_info.json from every worker's shards and skip logs."""
  manifests = out.manifests()
  written = [v for m in manifests for v in m["videos"]]
  skipped = out.skipped(issues, {v["video_id"] for v in written})
  bad = [
    {"video": v["video_id"], "reason": r}
    for v in written
    for r in v.get("bad_images", [])
  ]
  no_face = sorted(
    f"{v['video_id']}:{name}" for v in written for name in v.get("no_face", [])
  )
  fractions = [f for v in written for f in v.get("face_fraction", [])]
  settings = stored_settings(args)
  crop = {"margin": settings["crop_margin"], "how": "given"}
  if settings["crop_margin"] == "estimate":
    if fractions:
      margin = float((1.0 / np.median(fractions) - 1.0) / 2.0)
      crop = {
        "margin": round(margin, 4),
        "how": f"estimated from {len(fractions)} MTCNN boxes: median of "
        "(side / box side - 1) / 2",
      }
      settings["margin"] = crop["margin"]
    else:
      crop = {"margin": "unknown", "how": "estimate asked, but no face found"}
  elif settings["crop_margin"] == "unknown":
    crop["how"] = "not given (--crop_margin unknown)"
  info = {
    "input": str(args.input),
    "input_layout": found.layout,
    "groups_known": found.groups_known,
    "image_size": args.image_size,
    "label_names": {str(k): v for k, v in output_lib.LABEL_NAMES.items()},
    "settings": settings,
    "crop": crop,
    "splits": output_lib.summarize(manifests),
    "faces": {
      "images": sum(v["records"] for v in written),
      "no_face": len(no_face),
      "no_face_images": no_face,
      "median_face_fraction": float(np.median(fractions))
      if fractions
      else None,
    },
    "skipped": skipped + bad,
    "notes": [n.as_dict() for n in notes],
    "workers": output_lib.workers_info(out),
  }
  if not found.groups_known:
    info["notes"].insert(
      0,
      {
        "video": str(args.input),
        "reason": "no originals known: videos are split one by one, so a "
        "fake and its original (the same person and scene) may sit in "
        "different splits",
      },
    )
  info["num_videos"] = sum(s["num_videos"] for s in info["splits"].values())
  info["num_records"] = sum(s["num_records"] for s in info["splits"].values())
  if manifests:
    records.write_dataset_info(out.root, info)
  return info


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  logging.set_verbosity(logging.INFO)
  try:
    summary = run(args)
  except (
    NothingImportedError,
    output_lib.SettingsMismatchError,
    FileNotFoundError,
    ValueError,
  ) as e:
    print(f"import_faces: error: {e}", file=sys.stderr)
    return 1
  print(summary.line(args.output))
  faces = summary.info.get("faces", {})
  if not args.detect:
    print("  detection off (--no-detect): every image has a whole-image box")
  elif faces.get("no_face"):
    print(
      f"  {faces['no_face']} images without a detected face kept a "
      "whole-image box (dataset_info.json 'faces.no_face_images')"
    )
  crop = summary.info.get("crop", {})
  print(f"  crop margin: {crop.get('margin')} ({crop.get('how')})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
