"""Built-in sample: a small DFDC-style tree of REAL and FAKE face clips.

  python -m preprocessing.make_sample OUT_DIR [--num_originals 10]
      [--fakes_per_original 2] [--frames 80] [--size 320x240] [--fps 25]
      [--seed 0] [--overwrite]

Writes OUT_DIR/sample_part_0/{metadata.json, *.mp4} (the layout of
dfdc_train_part_N) and OUT_DIR/sample_info.json (the settings and a checksum
of every file; written last, so its presence means the sample is complete).

REAL clips film a real face photo that ships in scikit-image
(`skimage.data.astronaut()`) with a virtual camera: per clip a different
framing, drift, shake, zoom, small roll, lighting that changes over time and
sensor noise. Each FAKE clip is its REAL clip, frame for frame (same size,
frame count and motion), with the face self-blended (asrid_jax.data.sbi): one
parameter draw per clip, replayed on every frame through the landmarks mapped
by that frame's camera, with a slow flicker of the blend ratio as face-swap
videos show. The 5 landmarks are detected once on the photo with
facenet-pytorch MTCNN (weights in its wheel; no network).

Everything is deterministic from --seed. A rerun with the same settings finds
the sample complete and skips; different settings need --overwrite. Files are
written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import pathlib
import shutil
import sys
import time

import cv2
import numpy as np
from absl import logging
from tqdm import tqdm

from asrid_jax.data import sbi

GENERATOR_VERSION = 1
PART_DIR = "sample_part_0"
INFO_FILE = "sample_info.json"
_TMP_PREFIX = ".make_sample_tmp"
# Fraction of the frame height the face box spans, drawn per clip.
_FACE_HEIGHT = (0.38, 0.55)
# The FAKE faces of the sample are never subtler than half-blended, so the
# tiny demo has a learnable signal.
_SAMPLE_SBI = sbi.SBIRanges(blend_choices=(0.5, 0.75, 1.0, 1.0))


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """What determines a sample (recorded in sample_info.json)."""

  num_originals: int = 10
  fakes_per_original: int = 2
  frames: int = 80
  width: int = 320
  height: int = 240
  fps: float = 25.0
  seed: int = 0

  def __post_init__(self):
    if self.num_originals < 1 or self.fakes_per_original < 0:
      raise ValueError("need num_originals >= 1 and fakes_per_original >= 0")
    if self.frames < 1 or self.fps <= 0:
      raise ValueError("need frames >= 1 and fps > 0")
    if self.width < 64 or self.height < 64 or self.width % 2 or self.height % 2:
      raise ValueError(
        f"frame size must be even and at least 64x64, got "
        f"{self.width}x{self.height}"
      )


@dataclasses.dataclass(frozen=True)
class Camera:
  """One clip's camera path and lighting, drawn from the seed."""

  face_height: float  # face box height / frame height
  offset: np.ndarray  # (2,) face-centre offset from the frame centre, px
  drift: np.ndarray  # (2,) px over the whole clip
  shake_amp: np.ndarray  # (2,) px
  shake_freq: np.ndarray  # (2,) cycles per clip
  shake_phase: np.ndarray  # (2,)
  zoom: float  # relative zoom change over the clip
  roll: float  # degrees at the start
  roll_amp: float  # degrees
  tint: np.ndarray  # (3,) per-channel gain (white balance)
  gain_amp: float  # relative brightness swing
  gain_phase: float
  light_slope: float  # side-light ramp, relative gain at the frame edges


def _draw_camera(rng: np.random.Generator, s: SampleSettings) -> Camera:
  return Camera(
    face_height=float(rng.uniform(*_FACE_HEIGHT)),
    offset=rng.uniform(-1, 1, 2) * (0.12 * s.width, 0.08 * s.height),
    drift=rng.uniform(-1, 1, 2) * (0.10 * s.width, 0.06 * s.height),
    shake_amp=rng.uniform(0.5, 3.0, 2),
    shake_freq=rng.uniform(1.0, 4.0, 2),
    shake_phase=rng.uniform(0, 2 * np.pi, 2),
    zoom=float(rng.uniform(-0.15, 0.15)),
    roll=float(rng.uniform(-6, 6)),
    roll_amp=float(rng.uniform(0, 3)),
    tint=rng.uniform(0.9, 1.1, 3),
    gain_amp=float(rng.uniform(0.05, 0.2)),
    gain_phase=float(rng.uniform(0, 2 * np.pi)),
    light_slope=float(rng.uniform(-0.15, 0.15)),
  )


def _camera_matrix(
  cam: Camera, t: float, face_center, face_h: float, s: SampleSettings
) -> np.ndarray:
  """2x3 affine photo -> frame at clip time t in [0, 1]."""
  zoom = cam.face_height * s.height / face_h * (1.0 + cam.zoom * t)
  shake = cam.shake_amp * np.sin(
    2 * np.pi * cam.shake_freq * t + cam.shake_phase
  )
  target = (
    np.array([s.width / 2, s.height / 2]) + cam.offset + cam.drift * t + shake
  )
  roll = cam.roll + cam.roll_amp * math.sin(2 * np.pi * t)
  m = cv2.getRotationMatrix2D(
    (float(face_center[0]), float(face_center[1])), roll, zoom
  )
  m[:, 2] += target - face_center
  return m


def _light(cam: Camera, t: float, s: SampleSettings) -> np.ndarray:
  """(1, W, 3) multiplicative lighting at time t: gain, tint, side light."""
  gain = 1.0 + cam.gain_amp * math.sin(2 * np.pi * t + cam.gain_phase)
  ramp = np.linspace(-1.0, 1.0, s.width) * cam.light_slope * math.cos(np.pi * t)
  return ((gain * (1.0 + ramp))[:, None] * cam.tint)[None].astype(np.float32)


@functools.lru_cache(maxsize=1)
def photo_and_landmarks() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The astronaut photo (RGB uint8), its face box and 5 MTCNN landmarks."""
  import skimage.data  # heavy: only generation needs these
  import torch
  from facenet_pytorch import MTCNN

  photo = skimage.data.astronaut()
  with torch.inference_mode():
    boxes, probs, points = MTCNN(keep_all=True, device="cpu").detect(
      photo, landmarks=True
    )
  if boxes is None or len(boxes) == 0:
    raise RuntimeError("MTCNN found no face in skimage.data.astronaut()")
  best = int(np.argmax(np.asarray(probs, dtype=float)))
  # Rounded so tiny numeric differences between CPUs do not change the sample.
  box = np.round(np.asarray(boxes[best], dtype=float), 1)
  lm = np.round(np.asarray(points[best], dtype=float), 1)
  return photo, box, lm


def clip_names(s: SampleSettings) -> list[tuple[str, list[str]]]:
  """[(real file, [its fake files])] in generation order."""
  return [
    (
      f"real_{i:03d}.mp4",
      [f"fake_{i:03d}_{k}.mp4" for k in range(s.fakes_per_original)],
    )
    for i in range(s.num_originals)
  ]


def metadata(s: SampleSettings) -> dict:
  """The DFDC-style metadata.json content."""
  meta = {}
  for real, fakes in clip_names(s):
    meta[real] = {"label": "REAL", "split": "train", "original": None}
    for fake in fakes:
      meta[fake] = {"label": "FAKE", "split": "train", "original": real}
  return meta


def _open_writer(path: pathlib.Path, s: SampleSettings) -> cv2.VideoWriter:
  writer = cv2.VideoWriter(
    str(path), cv2.VideoWriter_fourcc(*"mp4v"), s.fps, (s.width, s.height)
  )
  if not writer.isOpened():
    raise RuntimeError(f"OpenCV cannot write mp4v video {path}")
  return writer


def _clip_plan(s: SampleSettings, index: int):
  """(camera, noise rng, [(sbi params, flicker)] per fake) of one original.

  Independent seed streams per clip: a clip does not change when others are
  added (a larger --num_originals keeps the first clips as they were).
  """
  seq = np.random.SeedSequence([s.seed, index])
  cam_seed, noise_seed, *fake_seeds = seq.spawn(2 + s.fakes_per_original)
  cam = _draw_camera(np.random.default_rng(cam_seed), s)
  fakes = []
  for fake_seed in fake_seeds:
    rng = np.random.default_rng(fake_seed)
    params = sbi.sample_params(rng, _SAMPLE_SBI)
    flicker = (float(rng.uniform(0.0, 0.15)), float(rng.uniform(0, 2 * np.pi)))
    fakes.append((params, flicker))
  return cam, np.random.default_rng(noise_seed), fakes


def _frame_matrices(s: SampleSettings, cam: Camera, box) -> np.ndarray:
  """(F, 2, 3) photo -> frame affine of every frame of a clip."""
  face_center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
  face_h = float(box[3] - box[1])
  return np.stack(
    [
      _camera_matrix(cam, f / max(s.frames - 1, 1), face_center, face_h, s)
      for f in range(s.frames)
    ]
  )


def ground_truth(s: SampleSettings, index: int) -> dict[str, np.ndarray]:
  """Where the face is in every frame of original `index` (and its fakes).

  Returns {'boxes': (F, 4) x1, y1, x2, y2 (the photo's MTCNN box mapped by
  the camera; axis-aligned hull of its corners), 'landmarks': (F, 5, 2)}, in
  frame pixels.
  """
  _, box, lm = photo_and_landmarks()
  cam, _, _ = _clip_plan(s, index)
  mats = _frame_matrices(s, cam, box)
  corners = np.array(
    [[box[0], box[1]], [box[2], box[1]], [box[0], box[3]], [box[2], box[3]]]
  )
  mapped = (
    np.einsum("fij,nj->fni", mats[:, :, :2], corners) + mats[:, None, :, 2]
  )
  boxes = np.concatenate([mapped.min(1), mapped.max(1)], axis=1)
  lms = np.einsum("fij,nj->fni", mats[:, :, :2], lm) + mats[:, None, :, 2]
  return {"boxes": boxes, "landmarks": lms}


def _write_original(index: int, s: SampleSettings, folder: pathlib.Path):
  """Renders one REAL clip and its FAKE clips in a single pass."""
  photo, box, lm = photo_and_landmarks()
  cam, noise_rng, fakes = _clip_plan(s, index)
  mats = _frame_matrices(s, cam, box)
  real_name, fake_names = clip_names(s)[index]
  writers = [_open_writer(folder / n, s) for n in [real_name, *fake_names]]
  photo_f = photo.astype(np.float32)
  try:
    for f, m in enumerate(mats):
      t = f / max(s.frames - 1, 1)
      frame = cv2.warpAffine(
        photo_f,
        m,
        (s.width, s.height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT_101,
      )
      frame = frame * _light(cam, t, s)
      frame += noise_rng.normal(0.0, 2.0, frame.shape).astype(np.float32)
      frame = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
      writers[0].write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
      frame_lm = lm @ m[:, :2].T + m[:, 2]
      for writer, (params, (amp, phase)) in zip(
        writers[1:], fakes, strict=True
      ):
        # Slow blend flicker: the swap's strength wavers as in real fakes.
        wave = 0.5 + 0.5 * math.sin(4 * np.pi * t + phase)
        blend = params.blend * (1.0 - amp * wave)
        fake, _ = sbi.apply(
          frame, frame_lm, dataclasses.replace(params, blend=blend)
        )
        writer.write(cv2.cvtColor(fake, cv2.COLOR_RGB2BGR))
  finally:
    for writer in writers:
      writer.release()


def _sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _existing_state(out_dir: pathlib.Path, s: SampleSettings) -> str:
  """'absent', 'same' (complete, same settings) or 'different'."""
  info_path = out_dir / INFO_FILE
  part = out_dir / PART_DIR
  if not info_path.exists() and not part.exists():
    return "absent"
  try:
    info = json.loads(info_path.read_text())
  except (OSError, ValueError):
    return "different"
  if info.get("settings") != _settings_json(s):
    return "different"
  for rel, digest in info.get("files", {}).items():
    path = out_dir / rel
    if not path.is_file() or _sha256(path) != digest:
      return "different"
  return "same"


def _settings_json(s: SampleSettings) -> dict:
  return {"generator_version": GENERATOR_VERSION, **dataclasses.asdict(s)}


def _pid_alive(pid: str) -> bool:
  try:
    os.kill(int(pid), 0)
  except (ValueError, ProcessLookupError):
    return False
  except PermissionError:
    return True
  return True


def _foreign_entries(out_dir: pathlib.Path) -> list[str]:
  ours = {PART_DIR, INFO_FILE}
  return sorted(
    p.name
    for p in out_dir.iterdir()
    if p.name not in ours and not p.name.startswith(_TMP_PREFIX)
  )


def make_sample(
  out_dir: str | os.PathLike,
  settings: SampleSettings = SampleSettings(),
  overwrite: bool = False,
  progress: bool = True,
) -> pathlib.Path:
  """Writes the sample under out_dir (see the module docstring).

  Returns the part folder holding metadata.json and the clips. Raises
  FileExistsError if out_dir holds a different sample (without overwrite) or
  anything that is not a sample.
  """
  out_dir = pathlib.Path(out_dir)
  s = settings
  out_dir.mkdir(parents=True, exist_ok=True)
  foreign = _foreign_entries(out_dir)
  if foreign:
    raise FileExistsError(
      f"{out_dir} holds files that are not a make_sample sample "
      f"({', '.join(foreign[:5])}); choose an empty or new folder"
    )
  state = _existing_state(out_dir, s)
  if state == "same":
    logging.info("%s already holds this sample; skipping", out_dir)
    return out_dir / PART_DIR
  if state == "different" and not overwrite:
    raise FileExistsError(
      f"{out_dir} holds a different or incomplete sample; pass --overwrite "
      f"to replace it, or choose another folder"
    )
  # Leftovers of an interrupted run are ours to remove (not those of a run
  # still going).
  for stale in out_dir.glob(_TMP_PREFIX + "_*"):
    if not _pid_alive(stale.name.rsplit("_", 1)[-1]):
      shutil.rmtree(stale, ignore_errors=True)

  tmp = out_dir / f"{_TMP_PREFIX}_{os.getpid()}"
  tmp_part = tmp / PART_DIR
  tmp_part.mkdir(parents=True)
  try:
    photo_and_landmarks()  # detect once, before the progress bar starts
    for i in tqdm(
      range(s.num_originals),
      desc="make_sample",
      unit="original",
      disable=not progress,
    ):
      _write_original(i, s, tmp_part)
    (tmp_part / "metadata.json").write_text(
      json.dumps(metadata(s), indent=1) + "\n"
    )
    files = {
      f"{PART_DIR}/{p.name}": _sha256(p) for p in sorted(tmp_part.iterdir())
    }
    info = {"settings": _settings_json(s), "files": files}
    (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
    # Replace: drop the old info first (so a crash in between leaves no
    # complete-looking sample), then the old part, then move the new in.
    (out_dir / INFO_FILE).unlink(missing_ok=True)
    shutil.rmtree(out_dir / PART_DIR, ignore_errors=True)
    os.replace(tmp_part, out_dir / PART_DIR)
    os.replace(tmp / INFO_FILE, out_dir / INFO_FILE)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return out_dir / PART_DIR


# ----------------------------------------------------------------------- CLI


def _parse_size(text: str) -> tuple[int, int]:
  try:
    w, h = (int(v) for v in text.lower().split("x"))
  except ValueError:
    raise argparse.ArgumentTypeError(
      f"--size must be WIDTHxHEIGHT, got {text!r}"
    ) from None
  return w, h


def _parser() -> argparse.ArgumentParser:
  # argparse, not absl flags: this module is imported by tests and other
  # tools, and module-level absl flags would collide with theirs.
  d = SampleSettings()
  p = argparse.ArgumentParser(
    prog="python -m preprocessing.make_sample",
    description="Write the built-in DFDC-style sample of REAL/FAKE clips.",
  )
  p.add_argument("out_dir", help="folder to write the sample into")
  p.add_argument("--num_originals", type=int, default=d.num_originals)
  p.add_argument("--fakes_per_original", type=int, default=d.fakes_per_original)
  p.add_argument("--frames", type=int, default=d.frames, help="per clip")
  p.add_argument(
    "--size",
    type=_parse_size,
    default=(d.width, d.height),
    help=f"WIDTHxHEIGHT (default {d.width}x{d.height})",
  )
  p.add_argument("--fps", type=float, default=d.fps)
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace a different sample already in OUT_DIR",
  )
  return p


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  try:
    settings = SampleSettings(
      num_originals=args.num_originals,
      fakes_per_original=args.fakes_per_original,
      frames=args.frames,
      width=args.size[0],
      height=args.size[1],
      fps=args.fps,
      seed=args.seed,
    )
  except ValueError as e:
    parser.error(str(e))
  start = time.perf_counter()
  out_dir = pathlib.Path(args.out_dir)
  present = out_dir.is_dir() and _existing_state(out_dir, settings) == "same"
  try:
    part = make_sample(out_dir, settings, overwrite=args.overwrite)
  except FileExistsError as e:
    print(f"make_sample: {e}", file=sys.stderr)
    return 1
  clips = len(list(part.glob("*.mp4")))
  size = sum(p.stat().st_size for p in part.iterdir())
  print(
    f"make_sample: {clips} clips ({settings.num_originals} REAL, "
    f"{settings.num_originals * settings.fakes_per_original} FAKE), "
    f"{size / 1e6:.1f} MB in {part} (metadata.json there), "
    + (
      "already present"
      if present
      else f"made in {time.perf_counter() - start:.1f} s"
    )
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
