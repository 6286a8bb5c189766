"""The shipped model (models/dfdc_faces): it loads, and it scores real crops.

The scoring test imports the 22 DFDC face crops of $ASRID_REAL_SAMPLES/crops
(11 REAL, 11 FAKE, several frames of each video) as a test-only shard folder,
runs `evaluate` on it with the shipped model, and checks what evaluate
reports against values computed here on another path: the records decoded
and resized by OpenCV in the test, the model called directly, LogLoss,
accuracy and AUC from scikit-learn. It checks consistency, not quality
(22 crops cannot measure quality; the model card has the measured result).
"""

import csv
import json
import os
import pathlib

import cv2
import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from asrid_jax import checkpoint as checkpoint_lib
from asrid_jax import evaluate as eval_lib
from asrid_jax import model_info
from asrid_jax.data import records
from preprocessing import import_faces

MODEL = model_info.DEFAULT_MODEL


def _samples() -> pathlib.Path | None:
  root = os.environ.get("ASRID_REAL_SAMPLES")
  if not root or not (pathlib.Path(root) / "crops" / "labels.csv").is_file():
    return None
  return pathlib.Path(root) / "crops"


def test_shipped_model_loads_with_its_card_and_info():
  assert (MODEL / "README.md").is_file()
  config, model, step = checkpoint_lib.restore_for_eval(MODEL, "best")
  assert config.model.variant == "sta_new"
  assert config.data.sampling == "picture"
  assert step > 0
  # No optimizer state travels with the shipped model.
  assert not (MODEL / "checkpoints" / str(step) / "opt").exists()
  size = sum(f.stat().st_size for f in MODEL.rglob("*") if f.is_file())
  assert size < 10e6
  info = model_info.training_info(MODEL)
  priors = model_info.priors_from_info(info)
  train = info["splits"]["train"]["records"]
  assert priors["frame"] == pytest.approx(
    train["FAKE"] / (train["FAKE"] + train["REAL"])
  )
  # predict cuts faces as the training crops were cut.
  assert isinstance(info["settings"]["margin"], float)
  # The model runs and gives probabilities.
  size = int(config.data.image_size)
  x = np.zeros((2, 1, size, size, 3), np.uint8)
  out = jax.nn.sigmoid(model(x)["frame_logits"])
  assert out.shape == (2, 1) and np.all((out > 0) & (out < 1))


@pytest.mark.skipif(_samples() is None, reason="ASRID_REAL_SAMPLES not set")
def test_shipped_model_scores_real_crops_consistently(tmp_path):
  crops = _samples()
  shards = tmp_path / "shards"
  args = import_faces.build_parser().parse_args(
    [
      "--input",
      str(crops / "labels.csv"),
      "--output",
      str(shards),
      "--split_ratios",
      "0,0,1",
      "--no-detect",
    ]
  )
  summary = import_faces.run(args)
  with open(crops / "labels.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert summary.images == len(rows) == 22
  assert summary.info["splits"]["test"]["num_records"] == 22
  assert summary.info["splits"]["train"]["num_records"] == 0

  eval_args = eval_lib.build_parser().parse_args(
    [
      f"--workdir={MODEL}",
      f"--data_dir={shards}",
      "--split=test",
      f"--out={tmp_path / 'eval'}",
    ]
  )
  result, paths = eval_lib.run(eval_args)
  reported = json.loads(paths["metrics"].read_text())

  # Independent path: records -> OpenCV decode/resize -> the model directly.
  config, model, _ = checkpoint_lib.restore_for_eval(MODEL, "best")
  size = int(config.data.image_size)
  labels, images, videos = [], [], []
  for shard in records.list_shards(shards, "test"):
    for data in records.iter_records(shard):
      rec = records.FaceRecord.from_bytes(data)
      bgr = cv2.imdecode(np.frombuffer(rec.image, np.uint8), cv2.IMREAD_COLOR)
      rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
      images.append(cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA))
      labels.append(rec.label)
      videos.append(rec.video_id)
  x = np.stack(images)[:, None]
  scores = np.asarray(jax.nn.sigmoid(model(x)["frame_logits"]))[:, 0]
  labels = np.asarray(labels)
  assert labels.sum() == 11

  frame = reported["frame"]
  assert frame["n"] == 22 and frame["n_fake"] == 11
  assert frame["log_loss"] == pytest.approx(
    skm.log_loss(labels, scores, labels=[0, 1]), abs=2e-3
  )
  # Accuracy at 0.5 and AUC from our scores, except where a score sits so
  # close to 0.5 or to another score that rounding could flip it.
  if np.min(np.abs(scores - 0.5)) > 1e-3:
    assert frame["accuracy"] == pytest.approx(np.mean((scores > 0.5) == labels))
  gaps = np.diff(np.sort(scores))
  if gaps.size and np.min(gaps) > 1e-4:
    assert frame["roc_auc"] == pytest.approx(skm.roc_auc_score(labels, scores))
  # Prior: the shipped model's training FAKE fraction, not this folder's.
  prior = model_info.priors_from_info(model_info.training_info(MODEL))
  assert frame["prior"]["prior"] == pytest.approx(prior["frame"])
  assert frame["prior"]["log_loss"] == pytest.approx(
    skm.log_loss(labels, np.full(22, prior["frame"]), labels=[0, 1])
  )
  # Video level: mean of each video's frame scores (one track per video).
  by_video = {}
  for v, s, y in zip(videos, scores, labels, strict=True):
    by_video.setdefault(v, ([], y))[0].append(s)
  rows = {r["video_id"]: r for r in result.videos}
  assert set(rows) == set(by_video)
  for v, (s, y) in by_video.items():
    assert rows[v]["label"] == y
    assert float(rows[v]["score_mean"]) == pytest.approx(np.mean(s), abs=2e-3)
