"""One video-aggregation setting for evaluate and predict (config.eval)."""

import pathlib
import types

import numpy as np
import pytest

from asrid_jax import evaluate, predict, scoring
from configs import common


def test_config_setting_is_shared_and_flags_override():
  cfg = common.base_config("dyn_mix", "runlocal")
  got = scoring.aggregation_settings(cfg.eval)
  assert got == {"strategy": "confident", "track_reduce": "max", "clip": None}
  # Neither CLI sets its own default any more: both fall back to the config.
  for args in (
    evaluate.build_parser().parse_args(["--workdir=w"]),
    predict.build_parser().parse_args(["x.mp4"]),
  ):
    assert args.strategy is None and args.track_reduce is None
    assert args.clip is None
  over = scoring.aggregation_settings(
    cfg.eval, strategy="mean", clip=(0.05, 0.95)
  )
  assert over == {
    "strategy": "mean",
    "track_reduce": "max",
    "clip": (0.05, 0.95),
  }
  # A config saved before the setting existed keeps evaluate's old default.
  assert scoring.aggregation_settings({})["strategy"] == "confident"
  with pytest.raises(ValueError, match="strategy"):
    scoring.aggregation_settings({}, strategy="median")


def test_predict_clips_the_video_score():
  faces = types.SimpleNamespace(
    ok=True,
    skip_reason=None,
    tracks=[
      types.SimpleNamespace(
        face_index=0,
        crops=np.full((4, 8, 8, 3), 255, np.uint8),
        frame_indices=np.arange(4),
      )
    ],
    timings={},
  )

  def forward(images, frame_order=None):
    frames = images[..., 0, 0, 0].astype(np.float64) / 255.0
    return {"frame_probs": frames, "clip_probs": frames.mean(axis=1)}

  options = predict.PredictOptions(
    image_size=8,
    clip_len=2,
    dynamic=True,
    jpeg_quality=None,
    strategy="confident",
    clip=(0.02, 0.98),
  )
  result = predict.predict_video(
    "v.mp4",
    pathlib.Path("v.mp4"),
    extract=lambda _: faces,
    forward=forward,
    options=options,
  )
  assert result.score == pytest.approx(0.98)
