r"""Face extraction: labelled videos -> TFRecord face-crop shards.

  python -m preprocessing.extract_faces --input DIR_OR_CSV --output DIR \
      [--frame_step 10 --max_frames 30 --min_frames 8 --downscale 0.5 \
       --device cpu --batch_size 8 --image_size 380 --jpeg_quality 95 \
       --num_workers N --worker_index I --overwrite ...]

--input is a DFDC-style folder tree (metadata.json files at any depth) or a
CSV of path,label[,original[,split]]. Videos are processed group by group (an
original first, then its fakes, which reuse the original's face boxes when
their geometry matches). Each worker of --num_workers processes a
deterministic part of the groups and writes its own shards; a rerun resumes
where a killed run stopped. See preprocessing/output.py for the layout.

Exit code 0 unless nothing at all could be processed, or the run could not
start or finish (bad flags, another run holding this worker's output lock,
an unwritable or full output folder): then 1 and one line saying why.
"""

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence

from absl import logging
from tqdm import tqdm

from asrid_jax.data import records
from preprocessing import faces as faces_lib
from preprocessing import inputs as inputs_lib
from preprocessing import output as output_lib
from preprocessing import splits as splits_lib
from preprocessing.detect import Detector
from preprocessing.extract_args import (  # noqa: F401 (re-exported)
  build_parser,
  face_settings,
  stored_settings,
)


class NothingProcessedError(RuntimeError):
  """No video of the input (or of this worker's part) gave a single face."""


@dataclasses.dataclass
class RunSummary:
  processed: int = 0  # videos written in this run
  skipped: int = 0  # videos skipped in this run
  already_done: int = 0  # videos of this worker's part done by earlier runs
  faces: int = 0  # records written in this run
  input_issues: int = 0
  seconds: float = 0.0
  frames: int = 0  # sampled frames decoded for written videos
  timings: dict = dataclasses.field(
    default_factory=lambda: dict.fromkeys(
      ("decode", "detect", "crop", "encode", "write"), 0.0
    )
  )
  info: dict = dataclasses.field(default_factory=dict)

  def line(self, output: str) -> str:
    splits = self.info.get("splits", {})
    counts = "/".join(
      f"{s} {splits.get(s, {}).get('num_videos', 0)}" for s in records.SPLITS
    )
    return (
      f"extract_faces: {self.processed} videos processed ({self.faces} faces),"
      f" {self.skipped} skipped, {self.already_done} already done,"
      f" {self.input_issues} input problems; videos in {output}: {counts};"
      f" {self.seconds:.1f} s"
    )


def validate(args: argparse.Namespace) -> None:
  """Rejects flag values that would fail every video, with the reason."""
  checks = [
    (args.frame_step >= 1, "--frame_step must be >= 1"),
    (args.max_frames >= 1, "--max_frames must be >= 1"),
    (
      1 <= args.min_frames <= args.max_frames,
      "--min_frames must be between 1 and --max_frames",
    ),
    (0 < args.downscale <= 1, "--downscale must be in (0, 1]"),
    (args.image_size >= 16, "--image_size must be >= 16"),
    (1 <= args.jpeg_quality <= 100, "--jpeg_quality must be in [1, 100]"),
    (args.margin >= 0, "--margin must be >= 0"),
    (args.batch_size >= 1, "--batch_size must be >= 1"),
    (args.records_per_shard >= 1, "--records_per_shard must be >= 1"),
    (len(args.thresholds) == 3, "--thresholds needs 3 comma-separated values"),
    (len(args.split_ratios) == 3, "--split_ratios needs 3 values"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(message)


def make_detector(args: argparse.Namespace) -> Detector:
  from preprocessing.detect import MTCNNDetector

  return MTCNNDetector(
    device=args.device,
    batch_size=args.batch_size,
    downscale=args.downscale,
    min_face_size=args.min_face_size,
    thresholds=args.thresholds,
  )


def run(
  args: argparse.Namespace, detector: Detector | None = None
) -> RunSummary:
  """Processes this worker's part of the input; see the module docstring.

  Args:
    args: parsed flags (build_parser()).
    detector: face detector; built from the flags when None.

  Returns:
    What this run did, with the merged dataset_info in `info`.

  Raises:
    NothingProcessedError: no usable video, or none of this worker's videos
      gave a face (after writing dataset_info.json when others did).
  """
  validate(args)
  start = time.perf_counter()
  summary = RunSummary()
  items, issues = inputs_lib.discover(args.input)
  for issue in issues:
    logging.warning("input problem: %s: %s", issue.name, issue.reason)
  summary.input_issues = len(issues)
  if not items:
    raise NothingProcessedError(_nothing_message(args.input, issues))
  groups, notes = splits_lib.group_videos(items)
  split_of, split_notes, mine, out = output_lib.plan_worker(groups, args)
  notes += split_notes
  for note in notes:
    logging.warning("note: %s: %s", note.name, note.reason)
  try:
    return _run_locked(
      args, detector, out, mine, split_of, items, issues, notes, summary, start
    )
  finally:
    out.unlock()


def _run_locked(
  args, detector, out, mine, split_of, items, issues, notes, summary, start
) -> RunSummary:
  """run() once this worker's output lock is held (prepare() takes it)."""
  out.prepare(stored_settings(args), args.overwrite)
  manifests = out.manifests()
  # A group already (partly) written keeps its split, even if the input has
  # changed since, so a group never ends up in two splits.
  for m in manifests:
    for v in m["videos"]:
      split_of[v.get("original") or v["video_id"]] = m["split"]
  done = out.done_videos({v.video_id: v.path for v in items})
  my_ids = [v.video_id for g in mine for v in g.videos]
  pending = [v for v in my_ids if v not in done]
  summary.already_done = len(my_ids) - len(pending)
  logging.info(
    "worker %d/%d: %d groups, %d videos, %d already done, %d to do",
    args.worker_index,
    args.num_workers,
    len(mine),
    len(my_ids),
    summary.already_done,
    len(pending),
  )
  if pending and detector is None:
    detector = make_detector(args)
  settings = face_settings(args)
  sink = output_lib.ShardSink(out, args.records_per_shard)
  try:
    with tqdm(total=len(pending), unit="video", desc="extract_faces") as bar:
      for group in mine:
        todo = {v.video_id for v in group.videos} - done
        if todo:
          _process_group(
            group,
            todo,
            split_of[group.key],
            detector,
            settings,
            args,
            out,
            sink,
            summary,
            bar,
          )
    sink.close()
  except BaseException:
    sink.abort()
    raise
  records.write_json_atomic(
    out.finished_marker,
    {"videos": len(my_ids), "groups": len(mine)},
  )
  summary.info = merge_info(out, args, issues, notes)
  summary.seconds = time.perf_counter() - start
  written = {v["video_id"] for m in out.manifests() for v in m["videos"]} & set(
    my_ids
  )
  if my_ids and not written:
    reasons = [
      f"  {e['video']}: {e['reason']}" for e in summary.info["skipped"][:5]
    ]
    raise NothingProcessedError(
      "\n".join(
        [
          f"none of the {len(my_ids)} videos of worker {args.worker_index} "
          f"of {args.num_workers} gave a face crop; all reasons are in "
          f"{out.root / records.DATASET_INFO} ('skipped'):",
          *reasons,
        ]
      )
    )
  if not my_ids:
    logging.warning("worker %d has no videos to process", args.worker_index)
  return summary


def _process_group(
  group, todo, split, detector, settings, args, out, sink, summary, bar
) -> None:
  """The original first (also when done: its boxes serve pending fakes)."""
  reference = None
  fakes_todo = any(f.video_id in todo for f in group.fakes)
  for item in group.videos:
    is_original = item is group.original
    needed_as_reference = is_original and args.reuse_boxes and fakes_todo
    if item.video_id not in todo and not needed_as_reference:
      continue
    try:
      result = faces_lib.extract_video_faces(
        item.path, detector, settings, None if is_original else reference
      )
    except Exception as e:  # noqa: BLE001 (one video must not stop the run)
      logging.exception("%s: unexpected error", item.video_id)
      if item.video_id in todo:
        out.log_skip(
          item.video_id,
          f"unexpected error: {e!r}",
          retry=True,
          split=split,
          label=item.label,
        )
        summary.skipped += 1
        bar.update(1)
      continue
    if is_original and args.reuse_boxes:
      reference = result.reference(item.video_id)
    if item.video_id not in todo:
      continue
    for stage in ("decode", "detect", "crop"):
      summary.timings[stage] += result.timings.get(stage, 0.0)
    if result.ok:
      _write_video(item, split, result, args, sink, summary)
    else:
      logging.warning("skipped %s: %s", item.video_id, result.skip_reason)
      # The file's stamp lets a rerun retry it once the user repairs it.
      # Split and label let evaluation score it at the fallback, as DFDC does.
      out.log_skip(
        item.video_id,
        result.skip_reason,
        path=item.path,
        split=split,
        label=item.label,
      )
      summary.skipped += 1
    bar.update(1)
    bar.set_postfix(faces=summary.faces, skipped=summary.skipped)


def _write_video(item, split, result, args, sink, summary) -> None:
  t0 = time.perf_counter()
  data = []
  for track, i in result.iter_faces():
    crop = track.crops[i]
    data.append(
      records.FaceRecord(
        image=records.encode_jpeg(crop, args.jpeg_quality),
        height=crop.shape[0],
        width=crop.shape[1],
        video_id=item.video_id,
        original=item.original,
        label=item.label,
        frame_index=int(track.frame_indices[i]),
        frame_order=int(track.frame_orders[i]),
        face_index=track.face_index,
        box=track.boxes[i],
        landmarks=track.landmarks[i],
        score=float(track.scores[i]),
      ).to_bytes()
    )
  t1 = time.perf_counter()
  meta = {
    "video_id": item.video_id,
    "label": item.label,
    "original": item.original,
    "tracks": len(result.tracks),
    "frames": len(result.frame_indices),
    "boxes_from": result.boxes_from,
  }
  sink.add_video(split, meta, data)
  summary.timings["encode"] += t1 - t0
  summary.timings["write"] += time.perf_counter() - t1
  summary.processed += 1
  summary.faces += len(data)
  summary.frames += len(result.frame_indices)


def merge_info(
  out: output_lib.OutputDir,
  args: argparse.Namespace,
  issues: Sequence[inputs_lib.Issue],
  notes: Sequence[inputs_lib.Issue],
) -> dict:
  """dataset_info.json from every worker's shards and skip logs."""
  manifests = out.manifests()
  written = {v["video_id"] for m in manifests for v in m["videos"]}
  skipped = out.skipped(issues, written)
  info = {
    "input": str(args.input),
    "image_size": args.image_size,
    "label_names": {str(k): v for k, v in output_lib.LABEL_NAMES.items()},
    "settings": stored_settings(args),
    "splits": output_lib.summarize(manifests),
    "skipped": skipped,
    "notes": [n.as_dict() for n in notes],
    "workers": output_lib.workers_info(out),
  }
  info["num_videos"] = sum(s["num_videos"] for s in info["splits"].values())
  info["num_records"] = sum(s["num_records"] for s in info["splits"].values())
  # Written even when no shard exists: it is where the skip reasons are.
  records.write_dataset_info(out.root, info)
  return info


def _nothing_message(source, issues) -> str:
  lines = [f"no usable video in {source} ({len(issues)} problem(s)):"]
  lines += [f"  {i.name}: {i.reason}" for i in issues[:20]]
  if len(issues) > 20:
    lines.append(f"  ... and {len(issues) - 20} more")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  logging.set_verbosity(logging.INFO)
  try:
    summary = run(args)
  except (
    NothingProcessedError,
    output_lib.SettingsMismatchError,
    output_lib.OutputBusyError,
    FileNotFoundError,
    ValueError,
  ) as e:
    print(f"extract_faces: error: {e}", file=sys.stderr)
    return 1
  except OSError as e:
    # Read-only, immutable or full output: one line, not a traceback.
    print(
      f"extract_faces: error: {e.filename or args.output}: "
      f"{e.strerror or e}; complete shards already in {args.output} are "
      "kept (a rerun resumes after them), the unfinished shard was dropped",
      file=sys.stderr,
    )
    return 1
  print(summary.line(args.output))
  return 0


if __name__ == "__main__":
  sys.exit(main())
