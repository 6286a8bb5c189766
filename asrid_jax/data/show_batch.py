"""Saves a PNG grid of what the model sees: augmented training examples.

    python -m asrid_jax.data.show_batch --data_dir demo_out/shards \\
        --out grid.png [--sampling video --clip_len 4 --sbi_prob 0.3]

One row per example (one column per clip frame), captioned with its label
(REAL green, FAKE red; '+SBI' when the label was REAL in the shards and a
self-blend turned it FAKE), video id and frame order. `--synthetic` draws
from freshly written synthetic shards instead of --data_dir.
"""

from __future__ import annotations

import pathlib
import tempfile

import cv2
import numpy as np
from absl import app, flags

from asrid_jax.data import index as index_lib
from asrid_jax.data import pipeline, synthetic

_DATA_DIR = flags.DEFINE_string("data_dir", "demo_out/shards", "Shard folder.")
_OUT = flags.DEFINE_string("out", "grid.png", "PNG to write.")
_SPLIT = flags.DEFINE_string("split", "train", "Split to draw from.")
_SAMPLING = flags.DEFINE_enum("sampling", "video", ["video", "picture"], "")
_CLIP_LEN = flags.DEFINE_integer("clip_len", 4, "Frames per clip (video).")
_NUM = flags.DEFINE_integer("num", 8, "Examples to show.")
_SIZE = flags.DEFINE_integer("image_size", 160, "Image size.")
_AUGMENT = flags.DEFINE_bool("augment", True, "Apply the default augment.")
_SBI = flags.DEFINE_float("sbi_prob", 0.3, "SBI probability on REAL crops.")
_BALANCE = flags.DEFINE_string("balance", "0.5", "'natural' or REAL fraction.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_SYNTHETIC = flags.DEFINE_bool("synthetic", False, "Use synthetic shards.")


def render_grid(batch: dict, video_ids: list[str], stored_labels) -> np.ndarray:
  """(B, T, H, W, 3) batch -> one RGB uint8 image with captions."""
  images = np.asarray(batch["image"])
  b, t, h, w, _ = images.shape
  cap, gap = 34, 4
  grid = np.full((b * (h + cap + gap), t * (w + gap), 3), 255, np.uint8)
  for i in range(b):
    label = int(batch["label"][i])
    v = int(batch["video_idx"][i])
    sbi = label == 1 and stored_labels[v] == 0
    text = ("FAKE" + (" +SBI" if sbi else "")) if label else "REAL"
    color = (200, 0, 0) if label else (0, 140, 0)
    y = i * (h + cap + gap)
    cv2.putText(
      grid, text, (4, y + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1
    )
    name = pathlib.Path(video_ids[v]).name[:28]
    orders = ",".join(str(o) for o in np.asarray(batch["frame_order"][i]))
    cv2.putText(
      grid,
      f"{name} face {int(batch['face_index'][i])} order {orders}",
      (4, y + 29),
      cv2.FONT_HERSHEY_SIMPLEX,
      0.35,
      (60, 60, 60),
      1,
    )
    for j in range(t):
      x = j * (w + gap)
      grid[y + cap : y + cap + h, x : x + w] = images[i, j]
  return grid


def main(argv):
  del argv
  data_dir = _DATA_DIR.value
  tmp = None
  if _SYNTHETIC.value:
    tmp = tempfile.TemporaryDirectory(prefix="show_batch_")
    data_dir = tmp.name
    synthetic.write_synthetic_shards(
      data_dir,
      videos_per_split={_SPLIT.value: 8},
      frames=(4, 10),
      image_size=128,
    )
  balance = _BALANCE.value
  it = pipeline.make_train_iterator(
    split=_SPLIT.value,
    global_batch_size=_NUM.value,
    sharding=None,
    seed=_SEED.value,
    dir=data_dir,
    image_size=_SIZE.value,
    sampling=_SAMPLING.value,
    clip_len=_CLIP_LEN.value,
    augment=_AUGMENT.value,
    sbi_prob=_SBI.value,
    balance=balance if balance == "natural" else float(balance),
    process_index=0,
    process_count=1,
  )
  batch = next(it)
  idx = index_lib.load_split_index(data_dir, _SPLIT.value)
  grid = render_grid(batch, list(idx.video_ids), idx.video_labels())
  out = pathlib.Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(out), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
    raise OSError(f"{out}: could not write the PNG")
  print(f"wrote {out} ({grid.shape[1]}x{grid.shape[0]})")
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  app.run(main)
