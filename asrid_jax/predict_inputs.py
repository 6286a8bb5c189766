"""Prediction inputs: face settings from the training data, crops -> clips.

The crops `preprocessing.faces.extract_video_faces` cuts from a raw video take
the path a training crop took (JPEG at the shards' quality, decode, resize),
are cut into clips as evaluation cuts them, and run through the model in
fixed-size batches (one compile). `predict.py` re-exports these names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np


def face_settings_from_info(
  info: Mapping[str, Any] | None, **overrides: Any
) -> tuple[Any, dict[str, Any]]:
  """(FaceSettings, detector kwargs) as the training shards were made.

  `info` is the training data's dataset_info.json (None: preprocessing's
  defaults; track settings it predates take the values it was made with,
  `tracks.PREDATING`); `overrides` (non-None values) win over both.
  """
  from preprocessing import faces as faces_lib
  from preprocessing import tracks as tracks_lib

  stored = dict((info or {}).get("settings") or {})
  face_keys = {f.name for f in dataclasses.fields(faces_lib.FaceSettings)}
  track_keys = {f.name for f in dataclasses.fields(tracks_lib.TrackSettings)}
  kwargs = {k: v for k, v in stored.items() if k in face_keys - {"tracks"}}
  tracks = {
    k: v for k, v in (stored.get("tracks") or {}).items() if k in track_keys
  }
  if stored.get("tracks"):
    # Data made before a track setting existed was made without it.
    tracks = {**tracks_lib.PREDATING, **tracks}
  detector = {
    k: stored[k]
    for k in ("downscale", "min_face_size", "thresholds")
    if k in stored
  }
  for key, value in overrides.items():
    if value is None:
      continue
    if key in face_keys:
      kwargs[key] = value
    elif key in track_keys:
      tracks[key] = value
    else:
      detector[key] = value
  settings = faces_lib.FaceSettings(
    **kwargs, tracks=tracks_lib.TrackSettings(**tracks)
  )
  return settings, detector


def model_inputs(
  track_crops: np.ndarray,
  *,
  image_size: int,
  clip_len: int,
  jpeg_quality: int | None = 95,
) -> tuple[np.ndarray, np.ndarray]:
  """One track's crops -> (clips (K, T, S, S, 3) uint8, orders (K, T)).

  The crops take the path a training crop took: JPEG at the shards' quality,
  decode, resize to the model's size (the pipeline's `decode_resize`). Orders
  index the track's frames; -1 marks the repeated last frame of a clip of a
  track shorter than T.
  """
  from asrid_jax.data import records
  from asrid_jax.data import source as source_lib

  images = []
  for crop in track_crops:
    if jpeg_quality is not None:
      crop = records.decode_jpeg(records.encode_jpeg(crop, jpeg_quality))
    images.append(source_lib.resize_square(crop, image_size))
  # The clips evaluation cuts (source.clip_frames): the tail clip is the
  # last T frames; only a track shorter than T is padded (orders -1).
  orders = source_lib.clip_frames(len(images), clip_len)
  clips = np.stack([images[i] for i in np.maximum(orders, 0).ravel()])
  clips = clips.reshape(orders.shape + clips.shape[1:])
  # A short track's padding repeats its last frame, as the pipeline's does.
  clips[orders < 0] = images[-1]
  return clips, orders


def run_batched(
  forward: Callable[..., Mapping[str, Any]],
  clips: np.ndarray,
  batch_size: int,
  orders: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """forward over fixed-size batches (zero-padded: one compiled shape).

  `orders` (K, T), -1 on padded frames, masks them in the temporal head.
  """
  if orders is None:
    orders = np.zeros(clips.shape[:2], np.int64)
  outs: dict[str, list[np.ndarray]] = {}
  for start in range(0, len(clips), batch_size):
    chunk = clips[start : start + batch_size]
    order = orders[start : start + batch_size].astype(np.int32)
    n = len(chunk)
    if n < batch_size:
      pad = np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)
      chunk = np.concatenate([chunk, pad])
      order = np.concatenate(
        [order, np.full((batch_size - n,) + order.shape[1:], -1, np.int32)]
      )
    out = forward(chunk, order)
    for key, value in out.items():
      outs.setdefault(key, []).append(np.asarray(value)[:n])
  return {k: np.concatenate(v) for k, v in outs.items()}
