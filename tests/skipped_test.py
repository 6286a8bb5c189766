"""Videos preprocessing skipped count at the fallback in video metrics.

DFDC scores every test video and `predict` gives a video without a usable
face the fallback 0.5; an evaluation that drops them reports a LogLoss over
an easier subset.
"""

import numpy as np
import pytest

from asrid_jax import metrics as metrics_lib
from asrid_jax import scoring
from asrid_jax.data import index as index_lib
from asrid_jax.data import records
from preprocessing import output as output_lib


def _preds():
  return scoring.Predictions(
    frame_video=np.array([0, 0, 1]),
    frame_face=np.array([0, 0, 0]),
    frame_order=np.array([0, 1, 0]),
    frame_label=np.array([1, 1, 0]),
    frame_probs=np.array([0.9, 0.7, 0.2]),
    clip_video=np.array([0, 1]),
    clip_face=np.array([0, 0]),
    clip_label=np.array([1, 0]),
    clip_probs=np.array([0.8, 0.1]),
  )


def test_skipped_videos_enter_video_metrics_and_prior_at_fallback():
  skipped = [("c.mp4", 1), ("d.mp4", 0), ("e.mp4", 1)]
  result, rows = scoring.summarize(
    _preds(),
    ["a.mp4", "b.mp4"],
    priors={"video": 0.75},
    strategy="mean",
    skipped=skipped,
  )
  labels = [1, 0, 1, 0, 1]
  scores = [0.8, 0.1, 0.5, 0.5, 0.5]
  video = result["video"]
  assert video["n"] == 5
  assert video["log_loss"] == pytest.approx(
    metrics_lib.log_loss(labels, scores)
  )
  assert video["prior"]["log_loss"] == pytest.approx(
    metrics_lib.prior_baseline(labels, 0.75)["log_loss"]
  )
  assert result["counts"]["skipped_videos"] == 3
  assert result["frame"]["n"] == 3  # frame level: only what was scored
  assert [r["video_id"] for r in rows][2:] == ["c.mp4", "d.mp4", "e.mp4"]
  assert {r["score"] for r in rows[2:]} == {0.5}
  assert rows[2]["frames_used"] == 0
  assert "3 video(s) skipped" in scoring.format_report(result)
  # Without them the LogLoss is the (better) one over scored videos only.
  alone, _ = scoring.summarize(_preds(), ["a.mp4", "b.mp4"], strategy="mean")
  assert alone["video"]["log_loss"] < video["log_loss"]
  assert "skipped" not in scoring.format_report(alone)


def test_skip_log_records_split_and_label_for_evaluation(tmp_path):
  out = output_lib.OutputDir(tmp_path)
  out.log_skip("x.mp4", "no face", split="test", label=records.LABEL_FAKE)
  out.log_skip("y.mp4", "too short", split="val", label=records.LABEL_REAL)
  entries = out.skip_entries()
  assert entries["x.mp4"]["split"] == "test"
  assert entries["x.mp4"]["label"] == 1
  info = {
    "skipped": [
      {"video": "x.mp4", "reason": "no face", "split": "test", "label": 1},
      {"video": "y.mp4", "reason": "too short", "split": "val", "label": 0},
      {"video": "bad.csv line 3", "reason": "no such file"},  # input error
    ]
  }
  records.write_dataset_info(tmp_path, info)
  assert index_lib.skipped_videos(tmp_path, "test") == ([("x.mp4", 1)], 1)
  assert index_lib.skipped_videos(tmp_path, "val") == ([("y.mp4", 0)], 1)
  assert index_lib.skipped_videos(tmp_path / "nowhere", "test") == ([], 0)
