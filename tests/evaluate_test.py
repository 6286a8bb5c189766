"""Tests for asrid_jax.evaluate: exact pass, metrics vs direct computation."""

import csv
import json

import cv2
import jax
import numpy as np
import pytest
from eval_helpers import random_model, save_checkpoint
from flax import nnx

from asrid_jax import evaluate, scoring
from asrid_jax import metrics as metrics_lib
from asrid_jax.data import index as index_lib
from asrid_jax.data import records, synthetic
from asrid_jax.data import source as source_lib
from configs import dyn_mix

IMAGE_SIZE = 32
CLIP_LEN = 3


@pytest.fixture(scope="module")
def config():
  c = dyn_mix.get_config("runlocal")
  c.data.image_size = IMAGE_SIZE
  c.data.clip_len = CLIP_LEN
  c.eval.batch_size = 8
  return c


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("shards")
  summary = synthetic.write_synthetic_shards(
    data_dir,
    videos_per_split={"train": 6, "val": 3, "test": 5},
    frames=(2, 7),
    image_size=40,
    fake_fraction=0.5,
    seed=3,
  )
  return data_dir, summary


@pytest.fixture(scope="module")
def model(config):
  return random_model(config.model)


# ---------------------------------------------------------------------------
# Collection: masks, padded frames, dedupe (no model needed)
# ---------------------------------------------------------------------------


def _fake_forward(images, frame_order=None):
  # P(FAKE) of a frame = its first pixel / 255: easy to check by hand.
  del frame_order
  frames = np.asarray(images)[..., 0, 0, 0].astype(np.float64) / 255.0
  return {"frame_probs": frames, "clip_probs": frames.mean(axis=1)}


def test_collect_drops_masked_rows_and_padded_frames():
  image = np.zeros((3, 2, 4, 4, 3), np.uint8)
  image[0, :, 0, 0, 0] = [51, 102]  # video 0 face 0: frames 0, 1
  image[1, :, 0, 0, 0] = [204, 204]  # video 1 face 0: frame 0 + its repeat
  image[2, :, 0, 0, 0] = [255, 255]  # padding row
  batch = {
    "image": image,
    "label": np.array([1, 0, 0]),
    "video_idx": np.array([0, 1, -1]),
    "face_index": np.array([0, 0, -1]),
    "frame_order": np.array([[0, 1], [0, -1], [-1, -1]]),
    "_mask": np.array([True, True, False]),
  }
  preds = scoring.collect(_fake_forward, [batch], progress=False)
  np.testing.assert_array_equal(preds.frame_video, [0, 0, 1])
  np.testing.assert_array_equal(preds.frame_order, [0, 1, 0])
  np.testing.assert_allclose(preds.frame_probs, [0.2, 0.4, 0.8])
  np.testing.assert_array_equal(preds.clip_video, [0, 1])
  np.testing.assert_allclose(preds.clip_probs, [0.3, 0.8])
  np.testing.assert_array_equal(preds.clip_label, [1, 0])


def test_summarize_levels_and_rows():
  preds = scoring.Predictions(
    frame_video=np.array([0, 0, 0, 1, 1, 2]),
    frame_face=np.array([0, 0, 1, 0, 0, 0]),
    frame_order=np.array([0, 1, 0, 0, 1, 0]),
    frame_label=np.array([1, 1, 1, 0, 0, 1]),
    frame_probs=np.array([0.9, 0.7, 0.2, 0.1, 0.3, 0.6]),
    clip_video=np.array([0, 0, 1, 2]),
    clip_face=np.array([0, 1, 0, 0]),
    clip_label=np.array([1, 1, 0, 1]),
    clip_probs=np.array([0.8, 0.3, 0.2, 0.4]),
  )
  priors = {"frame": 0.5, "clip": 0.75, "video": 2 / 3}
  result, rows = scoring.summarize(
    preds, ["a.mp4", "b.mp4", "c.mp4"], priors=priors, strategy="mean"
  )
  assert result["counts"] == {
    "frames": 6,
    "clips": 4,
    "tracks": 4,
    "videos": 3,
    "skipped_videos": 0,
  }
  # Video scores from clips (auto: clip head present), max over tracks.
  video_scores = [0.8, 0.2, 0.4]
  labels = [1, 0, 1]
  want = metrics_lib.binary_metrics(labels, video_scores)
  for key in ("log_loss", "accuracy", "roc_auc", "average_precision"):
    assert result["video"][key] == pytest.approx(want[key])
  assert result["video"]["prior"]["log_loss"] == pytest.approx(
    metrics_lib.prior_baseline(labels, 2 / 3)["log_loss"]
  )
  assert result["frame"]["n"] == 6 and result["clip"]["n"] == 4
  assert [r["video_id"] for r in rows] == ["a.mp4", "b.mp4", "c.mp4"]
  assert [r["frames_used"] for r in rows] == [3, 2, 1]
  assert [r["tracks"] for r in rows] == [2, 1, 1]
  np.testing.assert_allclose([r["score"] for r in rows], video_scores)
  # Frame-level unit scores instead: track means (0.8, 0.2 | 0.2 | 0.6).
  result, _ = scoring.summarize(
    preds, ["a", "b", "c"], strategy="mean", score_source="frame"
  )
  assert result["video"]["log_loss"] == pytest.approx(
    metrics_lib.log_loss(labels, [0.8, 0.2, 0.6])
  )
  assert "prior" not in result["video"]
  text = scoring.format_report(result)
  assert "video_confident" in text and "LogLoss" in text


# ---------------------------------------------------------------------------
# A real pass over shards written by the test
# ---------------------------------------------------------------------------


def _direct(model, data_dir, split):
  """Scores every clip straight from the shard files, without the pipeline."""
  idx = index_lib.load_split_index(data_dir, split)
  by_record = {}
  for shard in idx.shards:
    for data in records.iter_records(shard):
      rec = records.FaceRecord.from_bytes(data)
      image, _ = source_lib.decode_resize(rec.image, IMAGE_SIZE, shard)
      by_record[(rec.video_id, rec.face_index, rec.frame_order)] = (
        image,
        rec.label,
      )
  tracks = {}
  for (vid, face, _), value in sorted(by_record.items()):
    tracks.setdefault((vid, face), []).append(value)
  # Every clip of every track, cut as evaluation must: consecutive T frames,
  # the tail clip the LAST T frames (overlapping), and only a track shorter
  # than T padded (its last frame repeated, masked in the temporal head).
  clips, masks, meta = [], [], []
  for (vid, face), items in tracks.items():
    images = [i for i, _ in items]
    n = len(images)
    starts = list(range(0, n, CLIP_LEN))
    starts[-1] = max(0, n - CLIP_LEN)
    for s in starts:
      chunk = images[s : s + CLIP_LEN]
      meta.append((vid, face, items[0][1], list(range(s, s + len(chunk)))))
      pad = CLIP_LEN - len(chunk)
      clips.append(np.stack(chunk + [chunk[-1]] * pad))
      masks.append([True] * len(chunk) + [False] * pad)
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, x, mask):
    view = nnx.merge(graphdef, state)
    view.eval()
    out = view(x, frame_mask=mask)
    return jax.nn.sigmoid(out["frame_logits"]), jax.nn.sigmoid(
      out["clip_logit"]
    )

  frame_probs, clip_probs = map(
    np.asarray, forward(state, np.stack(clips), np.asarray(masks))
  )
  # A frame in two clips (the overlapping tail) counts once: the mean.
  per_frame = {}
  clip_y, clip_v, clip_f = [], [], []
  for (vid, face, label, positions), probs in zip(
    meta, frame_probs, strict=True
  ):
    for pos, prob in zip(positions, probs, strict=False):
      per_frame.setdefault((vid, face, pos), (label, []))[1].append(prob)
    clip_y.append(label)
    clip_v.append(vid)
    clip_f.append(face)
  frame_y, frame_p, frame_k = [], [], []
  for (vid, face, _), (label, probs) in sorted(per_frame.items()):
    frame_y.append(label)
    frame_p.append(float(np.mean(probs)))
    frame_k.append((vid, face))
  clip_p = clip_probs.tolist()
  return {
    "frame": (np.array(frame_y), np.array(frame_p)),
    "frame_keys": frame_k,
    "clip": (np.array(clip_y), np.array(clip_p)),
    "clip_ids": (np.array(clip_v), np.array(clip_f)),
    "num_records": len(by_record),
  }


@pytest.fixture(scope="module")
def result_8(config, shards, model):
  """evaluate() of the live model on all 8 devices, shared by two tests."""
  config = config.copy_and_resolve_references()
  config.data.dir = str(shards[0])
  return evaluate.evaluate(config, model, "test", progress=False)


def test_evaluate_matches_direct_computation(shards, model, result_8):
  data_dir, summary = shards
  result = result_8
  m = result.metrics
  assert m["counts"]["frames"] == summary["test"]["records"]
  assert m["counts"]["videos"] == summary["test"]["videos"]
  assert len(result.videos) == summary["test"]["videos"]
  assert (
    sum(r["frames_used"] for r in result.videos) == summary["test"]["records"]
  )
  assert {r["label"] for r in result.videos} == {0, 1}

  direct = _direct(model, data_dir, "test")
  assert direct["num_records"] == m["counts"]["frames"]
  y, p = direct["frame"]
  assert m["frame"]["log_loss"] == pytest.approx(
    metrics_lib.log_loss(y, p), rel=1e-4
  )
  # Scores frame by frame, with a tolerance: an untrained model's scores tie
  # to ~1e-6, so their ROC AUC depends on rounding (CPU model, XLA reduction
  # order) and is not compared here (metrics_test covers AUC on separated
  # scores).
  preds = result.predictions
  ids = index_lib.video_ids(data_dir, "test")
  got = {}
  for v, f, prob in zip(
    preds.frame_video, preds.frame_face, preds.frame_probs, strict=True
  ):
    got.setdefault((ids[v], int(f)), []).append(prob)
  want = {}
  for key, prob in zip(direct["frame_keys"], p, strict=True):
    want.setdefault(key, []).append(prob)
  assert sorted(got) == sorted(want)
  for key, probs in want.items():
    np.testing.assert_allclose(got[key], probs, rtol=1e-4, atol=1e-6)
  y, p = direct["clip"]
  assert m["clip"]["n"] == len(p)
  assert m["clip"]["log_loss"] == pytest.approx(
    metrics_lib.log_loss(y, p), rel=1e-4
  )
  vids, faces = direct["clip_ids"]
  ids, scores, _ = metrics_lib.aggregate_videos(
    p, vids, faces, strategy="confident"
  )
  rows = {r["video_id"]: r for r in result.videos}
  np.testing.assert_allclose([rows[v]["score"] for v in ids], scores, rtol=1e-4)
  labels = [rows[v]["label"] for v in ids]
  assert m["video"]["log_loss"] == pytest.approx(
    metrics_lib.log_loss(labels, scores), rel=1e-4
  )
  # The prior: the training split's FAKE fraction of videos.
  train = summary["train"]
  prior = train["fake"] / train["videos"]
  assert m["video"]["prior"]["prior"] == pytest.approx(prior)
  assert m["video"]["prior"]["log_loss"] == pytest.approx(
    metrics_lib.prior_baseline(labels, prior)["log_loss"]
  )
  # The caller's model is still in train mode (evaluated on a view).
  assert not model.deterministic


# ---------------------------------------------------------------------------
# The command line: a checkpoint saved on 8 devices, evaluated on 2
# ---------------------------------------------------------------------------


def test_cli_restores_other_mesh_and_writes_outputs(
  config, shards, model, result_8, tmp_path, capsys
):
  data_dir, summary = shards
  config = config.copy_and_resolve_references()
  config.data.dir = str(data_dir)
  workdir = tmp_path / "run"
  save_checkpoint(workdir, config, model, step=7)
  out = tmp_path / "eval"
  argv = [f"--workdir={workdir}", "--split=test", f"--out={out}"]
  assert evaluate.main([*argv, "--devices=2"]) == 0
  printed = capsys.readouterr().out
  assert "step 7" in printed and "2 device(s)" in printed
  assert "video_confident" in printed and "prior LL" in printed

  saved = json.loads((out / "metrics.json").read_text())
  assert saved["step"] == 7 and saved["devices"] == 2
  assert saved["counts"]["frames"] == summary["test"]["records"]
  # Same weights on 8 devices (the live model) give the same numbers.
  direct = result_8.metrics
  assert direct["devices"] == 8
  for level in ("frame", "clip", "video"):
    assert saved[level]["log_loss"] == pytest.approx(
      direct[level]["log_loss"], rel=1e-4
    )
  with open(out / "videos.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == summary["test"]["videos"]
  assert list(rows[0]) == list(evaluate.VIDEO_CSV_HEADER)
  assert sum(int(r["frames_used"]) for r in rows) == summary["test"]["records"]
  for name in ("roc.png", "scores.png"):
    image = cv2.imread(str(out / name))
    assert image is not None and image.shape[0] > 100, name


def test_cli_names_missing_workdir(tmp_path, capsys):
  assert evaluate.main([f"--workdir={tmp_path}"]) == 1
  err = capsys.readouterr().err
  assert str(tmp_path) in err and "no checkpoints" in err
