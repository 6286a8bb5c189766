"""Face extraction speed and agreement: the default settings vs the legacy pass.

  python -m bench.preprocess_bench [--repeats 2] [--device cpu] [--max_videos N]

For every video (the real sample videos when $ASRID_REAL_SAMPLES is set, and
the built-in synthetic sample) it runs `preprocessing.faces.
extract_video_faces` (the path extract_faces and predict share) twice per
repeat: with the legacy settings (`faces.legacy_settings()`: every frame
searched whole down to the detector's 40 px, no size rule: the pass before
issue 13) and with the default settings (the track rule, keyframe detection:
every `--keyframe_step`-th sampled frame searched whole, the others around
its faces; `--detect_relative_size` adds the face-size-scaled search, off by
default), alternating which goes first, on one detector. Reported per video:
s/video per stage, the legacy/new time ratio measured in the same run (the
machine may be loaded by others: compare ratios and CPU seconds), tracks
found by each, frames searched whole, and the agreement of the new pass with
the legacy one on the same frames:

- recall: of the legacy pass's boxes in the tracks the current track rule
  keeps when given the legacy detections (the same rule, shot cuts
  included, applied to both), the fraction with a new-pass box in a kept
  track of IoU >= 0.5 in the same frame; `recall_all` counts every box of
  the legacy pass's own tracks, also those of the small faces the size rule
  now drops and of the frames the cut rule now splits off;
  `det recall` matches the same legacy boxes against the new pass's
  detections before tracking (what the detection scheme decides; the rest
  is the track linking reacting to boxes that moved a pixel);
- median IoU of the matched boxes;
- crops moved: matched faces whose square crop window moves by more than
  `--shift_px` pixels of the output crop (image_size) side.

Decoding: per real video, CPU seconds per sampled frame of the two
sequential decoders (`read_frames`' "opencv": grab every frame, retrieve the
sampled ones; "auto": PyAV dropping the unsampled frames nothing refers to),
the frames each decoded, and seeking to each of the first `--seek_frames`
sampled frames.

Prints tables and writes bench/results/preprocess_bench.json.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import platform
import tempfile
import time

import cv2
import numpy as np

from asrid_jax import reporting
from bench import common as bench_common
from preprocessing import crop as crop_lib
from preprocessing import faces as faces_lib
from preprocessing import tracks as tracks_lib
from preprocessing import video as video_lib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
STAGES = ("decode", "detect", "crop")


def _videos(work: pathlib.Path, max_videos: int) -> list[tuple[str, str]]:
  """(source, path) of the real sample videos and the synthetic sample."""
  found = []
  real = os.environ.get("ASRID_REAL_SAMPLES")
  if real and (pathlib.Path(real) / "videos").is_dir():
    found += [
      ("real", str(p))
      for p in sorted((pathlib.Path(real) / "videos").glob("*.mp4"))
    ]
  from preprocessing import make_sample

  part = make_sample.make_sample(work / "sample", progress=False)
  synthetic = sorted(part.glob("*.mp4"))[: max(1, max_videos)]
  found += [("synthetic", str(p)) for p in synthetic]
  return found


def _boxes_by_frame(result: faces_lib.VideoFaces, tracks=None) -> dict:
  out = {}
  for t in result.raw_tracks if tracks is None else tracks:
    for pos, box in zip(t.positions, t.boxes, strict=True):
      out.setdefault(pos, []).append(np.asarray(box, np.float64))
  return out


def agreement(
  reference: dict, candidate: dict, image_size: int, margin: float
) -> dict:
  """Recall, IoU and crop shifts of candidate boxes vs reference boxes."""
  matched, ious, shifts = 0, [], []
  total = sum(len(v) for v in reference.values())
  for pos, ref_boxes in reference.items():
    cand = candidate.get(pos, [])
    if not cand:
      continue
    iou = tracks_lib.iou_matrix(np.stack(ref_boxes), np.stack(cand))
    for i, box in enumerate(ref_boxes):
      j = int(np.argmax(iou[i]))
      if iou[i, j] < 0.5:
        continue
      matched += 1
      ious.append(float(iou[i, j]))
      x0, y0, side = crop_lib.square_region(box, margin)
      cx0, cy0, cside = crop_lib.square_region(cand[j], margin)
      # In output-crop pixels: what the model sees move.
      move = max(abs(cx0 - x0), abs(cy0 - y0), abs(cside - side))
      shifts.append(move * image_size / side)
  return {
    "boxes": total,
    "matched": matched,
    "recall": matched / total if total else 1.0,
    "median_iou": float(np.median(ious)) if ious else None,
    "shifts": shifts,
  }


def _one(path, detector, settings) -> tuple[faces_lib.VideoFaces, dict]:
  start, cpu = time.perf_counter(), time.process_time()
  result = faces_lib.extract_video_faces(path, detector, settings)
  # CPU seconds (all threads) beside wall time: on a machine loaded by
  # others, wall time mostly measures the others.
  return result, {
    "total": time.perf_counter() - start,
    "cpu": time.process_time() - cpu,
  }


def decode_costs(path: str, frame_step: int, max_frames: int, seeks: int):
  """CPU s per sampled frame: the "opencv" decoder (grab/retrieve), the
  "auto" one (PyAV, dropping frames) and seek + read; the frames each
  decoded; and the wall seconds of decoding alone with the default decoder,
  the floor of decode + detect."""
  costs = {}
  for decoder, key in (("opencv", "grab"), ("auto", "skip")):
    stats = {}
    cpu, wall = time.process_time(), time.perf_counter()
    frames_in = video_lib._decode(path, frame_step, max_frames, stats, decoder)
    next(frames_in)
    indices = [index for index, _ in frames_in]
    costs[f"{key}_wall"] = time.perf_counter() - wall
    costs[key] = (time.process_time() - cpu) / len(indices)
    costs[f"{key}_frames"] = (stats["frames_decoded"], stats["decoded"])
    costs[f"{key}_decoder"] = stats["decoder"]
  cap = cv2.VideoCapture(path)
  cpu = time.process_time()
  chosen = indices[:seeks]
  try:
    for index in chosen:
      cap.set(cv2.CAP_PROP_POS_FRAMES, index)
      cap.read()
  finally:
    cap.release()
  return {
    **costs,
    "seek": (time.process_time() - cpu) / len(chosen),
    "decode_wall": costs["skip_wall"],
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.preprocess_bench")
  p.add_argument("--device", default="cpu")
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--frame_step", type=int, default=10)
  p.add_argument("--max_frames", type=int, default=30)
  p.add_argument("--max_videos", type=int, default=3, help="synthetic ones")
  p.add_argument("--shift_px", type=float, default=4.0)
  defaults = faces_lib.FaceSettings()
  p.add_argument("--keyframe_step", type=int, default=defaults.keyframe_step)
  p.add_argument("--region_margin", type=float, default=defaults.region_margin)
  p.add_argument(
    "--detect_relative_size", type=float, default=defaults.detect_relative_size
  )
  p.add_argument("--seek_frames", type=int, default=10, help="0: no seeking")
  args = p.parse_args(argv)
  import torch

  from preprocessing.detect import MTCNNDetector

  detector = MTCNNDetector(device=args.device)
  # Warm-up outside the clock: the first MTCNN call allocates its buffers.
  detector.detect([np.zeros((240, 320, 3), np.uint8)])
  common = dict(
    frame_step=args.frame_step, max_frames=args.max_frames, min_frames=3
  )
  fast = faces_lib.FaceSettings(
    **common,
    detect_relative_size=args.detect_relative_size,
    keyframe_step=args.keyframe_step,
    region_margin=args.region_margin,
  )
  legacy = faces_lib.legacy_settings(**common)
  rows = []
  with tempfile.TemporaryDirectory(prefix="preprocess_bench_") as tmp:
    for source, path in _videos(pathlib.Path(tmp), args.max_videos):
      times = {"legacy": [], "fast": []}
      for rep in range(args.repeats):
        order = ("legacy", "fast") if rep % 2 == 0 else ("fast", "legacy")
        for name in order:
          settings = legacy if name == "legacy" else fast
          result, seconds = _one(path, detector, settings)
          times[name].append({**result.timings, **seconds})
          if name == "legacy":
            old = result
          else:
            new = result
      if not old.ok:
        rows.append({"video": pathlib.Path(path).name, "skip": old.skip_reason})
        continue
      n = len(old.frame_indices)
      ref_tracks = tracks_lib.build_tracks(
        old.detections, fast.tracks, new.shot_starts
      )
      agree = agreement(
        _boxes_by_frame(old, ref_tracks),
        _boxes_by_frame(new),
        fast.image_size,
        fast.margin,
      )
      detected = {
        pos: list(d.boxes) for pos, d in enumerate(new.detections) if len(d)
      }
      agree_det = agreement(
        _boxes_by_frame(old, ref_tracks), detected, fast.image_size, fast.margin
      )
      agree_all = agreement(
        _boxes_by_frame(old), _boxes_by_frame(new), fast.image_size, fast.margin
      )
      mean = {
        k: {
          s: float(np.mean([t[s] for t in v]))
          for s in (*STAGES, "total", "cpu")
        }
        for k, v in times.items()
      }
      rows.append(
        {
          "video": pathlib.Path(path).name,
          "source": source,
          "frames": n,
          "size": f"{old.geometry.width}x{old.geometry.height}",
          "tracks_legacy": len(old.tracks),
          "tracks_fast": len(new.tracks),
          "shot_cuts": len(new.shot_starts),
          "seconds": mean,
          "detect_ratio": [
            a["detect"] / b["detect"]
            for a, b in zip(times["legacy"], times["fast"], strict=True)
          ],
          "decode_detect_ratio": [
            (a["decode"] + a["detect"]) / (b["decode"] + b["detect"])
            for a, b in zip(times["legacy"], times["fast"], strict=True)
          ],
          "cpu_ratio": [
            a["cpu"] / b["cpu"]
            for a, b in zip(times["legacy"], times["fast"], strict=True)
          ],
          "recall": agree["recall"],
          "recall_all": agree_all["recall"],
          "det_recall": agree_det["recall"],
          "detect_counts": new.detect_counts,
          "decode_costs": (
            decode_costs(
              path, args.frame_step, args.max_frames, args.seek_frames
            )
            if source == "real" and args.seek_frames > 0
            else None
          ),
          "median_iou": agree["median_iou"],
          "matched": agree["matched"],
          "crops_moved": int(
            np.sum(np.asarray(agree["shifts"]) > args.shift_px)
          ),
        }
      )

  ok = [r for r in rows if "skip" not in r]
  header = (
    "video", "size", "cuts", "tracks old/new", "old dec+det s",
    "new dec+det s",
    "ratio", "cpu s old/new", "cpu ratio", "recall", "recall_all",
    "det recall", "med IoU", f"moved>{args.shift_px:g}px", "whole/frames",
  )  # fmt: skip
  table = []
  for r in ok:
    o, f = r["seconds"]["legacy"], r["seconds"]["fast"]
    table.append(
      (
        r["video"][:28],
        r["size"],
        str(r["shot_cuts"]),
        f"{r['tracks_legacy']}/{r['tracks_fast']}",
        f"{o['decode']:.2f}+{o['detect']:.2f}",
        f"{f['decode']:.2f}+{f['detect']:.2f}",
        "/".join(f"{x:.2f}" for x in r["decode_detect_ratio"]),
        f"{o['cpu']:.2f}/{f['cpu']:.2f}",
        "/".join(f"{x:.2f}" for x in r["cpu_ratio"]),
        f"{r['recall']:.3f}",
        f"{r['recall_all']:.3f}",
        f"{r['det_recall']:.3f}",
        "-" if r["median_iou"] is None else f"{r['median_iou']:.3f}",
        f"{r['crops_moved']}/{r['matched']}",
        f"{r['detect_counts'].get('whole_frames', '-')}/{r['frames']}",
      )
    )
  total_old = sum(
    r["seconds"]["legacy"]["decode"] + r["seconds"]["legacy"]["detect"]
    for r in ok
  )
  total_new = sum(
    r["seconds"]["fast"]["decode"] + r["seconds"]["fast"]["detect"] for r in ok
  )
  print(
    f"preprocess_bench, device {args.device}, torch threads "
    f"{torch.get_num_threads()}, {args.repeats} repeat(s), ratio = legacy / "
    "fast decode+detect per repeat"
  )
  print(reporting.format_table(header, table))
  cpu_old = sum(r["seconds"]["legacy"]["cpu"] for r in ok)
  cpu_new = sum(r["seconds"]["fast"]["cpu"] for r in ok)
  print(
    f"all videos: CPU seconds legacy {cpu_old:.2f}, fast {cpu_new:.2f} "
    f"({cpu_old / max(cpu_new, 1e-9):.2f}x)"
  )
  print(
    f"all videos: decode+detect legacy {total_old:.2f} s, fast "
    f"{total_new:.2f} s ({total_old / max(total_new, 1e-9):.2f}x)"
  )
  hd = [r for r in ok if r["size"] == "1920x1080"]
  for name in ("legacy", "fast") if hd else ():
    mean = {
      k: float(np.mean([r["seconds"][name][k] for r in hd]))
      for k in ("decode", "detect", "cpu")
    }
    print(
      f"1080p clips ({len(hd)}), {name}: decode {mean['decode']:.2f} s + "
      f"detect {mean['detect']:.2f} s = {mean['decode'] + mean['detect']:.2f}"
      f" s a video (wall), {mean['cpu']:.2f} CPU s"
    )
  costs = [r["decode_costs"] for r in hd if r["decode_costs"]]
  for key, name in (("grab", "opencv"), ("skip", "auto")) if costs else ():
    print(
      f"1080p clips: decoding alone (no detection), decoder {name}: "
      f"{np.mean([c[key + '_wall'] for c in costs]):.2f} s a video (wall), "
      f"{np.mean([c[key] for c in costs]) * args.max_frames:.2f} CPU s"
    )
  seeks = [r for r in ok if r.get("decode_costs")]
  if seeks:
    print(
      f"decoding, CPU s per sampled frame (every {args.frame_step}th): "
      "the opencv decoder (grab/retrieve, every frame decoded), auto (PyAV "
      "or opencv, dropping the unsampled frames nothing refers to), "
      f"frames decoded / read by each, and seek (first {args.seek_frames} "
      "sampled frames)"
    )

    def row(r):
      c = r["decode_costs"]
      return (
        r["video"][:28],
        r["size"],
        f"{c['grab']:.4f}",
        f"{c['skip']:.4f} ({c['skip_decoder']})",
        f"{c['grab'] / c['skip']:.2f}",
        "{}/{}".format(*c["grab_frames"]),
        "{}/{}".format(*c["skip_frames"]),
        f"{c['seek']:.4f}",
        f"{c['seek'] / c['grab']:.1f}",
      )

    print(
      reporting.format_table(
        (
          "video",
          "size",
          "opencv",
          "auto",
          "opencv/auto",
          "decoded opencv",
          "decoded auto",
          "seek",
          "seek/opencv",
        ),
        [row(r) for r in seeks],
      )
    )
  for r in rows:
    if "skip" in r:
      print(f"skipped {r['video']}: {r['skip']}")
  RESULTS.mkdir(parents=True, exist_ok=True)
  result = {
    "settings": {
      "legacy": dataclasses.asdict(legacy),
      "fast": dataclasses.asdict(fast),
    },
    "device": args.device,
    "machine": {
      "cpus": os.cpu_count(),
      "cpu_model": bench_common.cpu_name(),
      "load_average": os.getloadavg(),
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
