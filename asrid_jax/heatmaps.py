"""Attention heatmaps: face crops with the M attention maps overlaid.

One PNG per video, a grid with one row per sampled face crop: the crop with
its frame number and static-head P(FAKE) written on it, then each attention
map (min-max scaled on its own) blended over the crop in the JET colour map.
A grid of R rows and M maps is (R * tile, (1 + M) * tile) pixels.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import cv2
import numpy as np


def render_heatmap(
  crops: np.ndarray,
  maps: np.ndarray | None,
  captions: Sequence[str],
  *,
  tile: int = 192,
  alpha: float = 0.5,
) -> np.ndarray:
  """A (R * tile, (1 + M) * tile, 3) uint8 RGB grid: crop, then each map.

  Row r shows crop r with `captions[r]` written on it, then its M attention
  maps (each min-max scaled on its own, so the picture shows WHERE a head
  looks, not how strongly) in the JET colour map blended over the crop.
  """
  rows = []
  num_maps = 0 if maps is None else maps.shape[-1]
  for r, crop in enumerate(crops):
    base = cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA)
    cells = [base.copy()]
    for m in range(num_maps):
      a = maps[r, :, :, m].astype(np.float32)
      # Min-max per map: softplus maps never reach 0, so dividing by the max
      # alone would tint the whole crop; a flat map stays flat (all zero).
      span = float(a.max() - a.min())
      a = (a - a.min()) / span if span > 1e-6 * abs(float(a.max())) else a * 0
      a = cv2.resize(a, (tile, tile), interpolation=cv2.INTER_LINEAR)
      colour = cv2.applyColorMap(
        np.clip(a * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET
      )
      colour = cv2.cvtColor(colour, cv2.COLOR_BGR2RGB)
      cell = cv2.addWeighted(base, 1 - alpha, colour, alpha, 0)
      _caption(cell, f"map {m}")
      cells.append(cell)
    _caption(cells[0], captions[r])
    rows.append(np.concatenate(cells, axis=1))
  return np.concatenate(rows, axis=0)


def _caption(image: np.ndarray, text: str) -> None:
  """White text on a dark band at the top of a tile (in place)."""
  scale = image.shape[1] / 400
  height = max(12, int(28 * scale))
  image[:height] = (image[:height] * 0.35).astype(np.uint8)
  cv2.putText(
    image,
    text,
    (4, int(height * 0.75)),
    cv2.FONT_HERSHEY_SIMPLEX,
    max(0.3, 0.6 * scale),
    (255, 255, 255),
    1,
    cv2.LINE_AA,
  )


def pick_rows(track_outputs, num_frames: int, max_tracks: int = 3):
  """Picks evenly spaced frames of the first tracks for the heatmap grid."""
  crops, maps, captions = [], [], []
  for face, out in track_outputs[:max_tracks]:
    clips, orders = out["clips"], out["orders"]
    real = np.argwhere(orders >= 0)  # (n, 2): clip, slot of each real frame
    picks = np.unique(
      np.linspace(0, len(real) - 1, num_frames).round().astype(int)
    )
    for c, t in real[picks]:
      crops.append(clips[c, t])
      if "attention" in out:
        maps.append(out["attention"][c, t])
      p = float(out["frame_probs"][c, t])
      frame = int(out["frame_numbers"][orders[c, t]])
      captions.append(f"face {face} frame {frame}  P(FAKE) {p:.2f}")
  return (
    np.stack(crops),
    np.stack(maps) if maps else None,
    captions,
  )


def write_png(path: pathlib.Path, rgb: np.ndarray) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
    raise OSError(f"{path}: cannot write PNG")
  return path
