"""Tests for asrid_jax.metrics: hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from asrid_jax import metrics

# ---------------------------------------------------------------------------
# Hand-computed values
# ---------------------------------------------------------------------------


def test_log_loss_hand_values():
  y = [1, 0, 1, 0]
  p = [0.9, 0.2, 0.6, 0.5]
  want = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.5)) / 4
  assert metrics.log_loss(y, p) == pytest.approx(want, rel=1e-12)


def test_log_loss_clips_to_eps():
  # A certain and wrong prediction costs -log(eps), not infinity.
  assert metrics.log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))
  assert metrics.log_loss([0], [1.0], eps=0.01) == pytest.approx(
    -math.log(0.01)
  )
  # eps=0: the unclipped loss.
  assert metrics.log_loss([1], [0.0], eps=0.0) == math.inf
  # Perfect predictions clip to eps as well: a tiny, not zero, loss.
  assert metrics.log_loss([1, 0], [1.0, 0.0]) == pytest.approx(
    -math.log1p(-1e-15)
  )


def test_accuracy_and_confusion_hand_values():
  y = [1, 1, 1, 0, 0]
  p = [0.9, 0.5, 0.1, 0.4, 0.7]  # 0.5 counts as FAKE
  assert metrics.accuracy(y, p) == pytest.approx(3 / 5)
  cm = metrics.confusion_matrix(y, p)
  np.testing.assert_array_equal(cm, [[1, 1], [1, 2]])
  np.testing.assert_array_equal(
    cm, skm.confusion_matrix(y, (np.array(p) >= 0.5).astype(int))
  )
  assert metrics.accuracy(y, p, threshold=0.95) == pytest.approx(2 / 5)


def test_auc_ap_eer_hand_values():
  # Scores: FAKE 0.8, 0.4; REAL 0.6, 0.2. Pairs (fake > real): 3 of 4.
  y = [1, 1, 0, 0]
  p = [0.8, 0.4, 0.6, 0.2]
  assert metrics.roc_auc(y, p) == pytest.approx(0.75)
  # Ranked: 0.8 F (P=1, R=.5), 0.6 R, 0.4 F (P=2/3, R=1): AP = .5 + .5*2/3.
  assert metrics.average_precision(y, p) == pytest.approx(0.5 + 1 / 3)
  # ROC points (fpr, tpr): (0,0) (0,.5) (.5,.5) (.5,1) (1,1): FPR = FNR = .5.
  assert metrics.equal_error_rate(y, p) == pytest.approx(0.5)
  fpr, tpr, thr = metrics.roc_curve(y, p)
  np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
  np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
  assert thr[0] == np.inf


def test_ties_count_half_in_auc():
  assert metrics.roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
  assert metrics.roc_auc([1, 1, 0], [0.7, 0.5, 0.5]) == pytest.approx(0.75)


def test_eer_perfect_inverse_and_interpolated():
  assert metrics.equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
  assert metrics.equal_error_rate([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 1.0
  # Ranked .9 REAL, .5 FAKE, .1 REAL: ROC (0,0) (.5,0) (.5,1) (1,1), so FPR
  # and FNR meet on the vertical segment at fpr = .5.
  assert metrics.equal_error_rate([0, 1, 0], [0.9, 0.5, 0.1]) == 0.5
  # One positive ranked between 3 negatives (1 above, 2 below):
  # points (0,0) (1/3,0) (1/3,1): crossing on the vertical segment at 1/3.
  got = metrics.equal_error_rate([0, 1, 0, 0], [0.9, 0.5, 0.3, 0.1])
  assert got == pytest.approx(1 / 3)
  # A sloped segment (tied scores): FAKE 0.5, 0.5; REAL 0.5, 0.1. Points
  # (0,0) (.5,1) (1,1): FPR = 1 - TPR on the first segment at t = 1/3.
  got = metrics.equal_error_rate([1, 1, 0, 0], [0.5, 0.5, 0.5, 0.1])
  assert got == pytest.approx(1 / 3)


def test_binary_metrics_summary():
  y = [1, 1, 0, 0]
  p = [0.8, 0.4, 0.6, 0.2]
  out = metrics.binary_metrics(y, p)
  assert out["n"] == 4 and out["n_fake"] == 2
  assert out["roc_auc"] == pytest.approx(0.75)
  assert out["accuracy"] == pytest.approx(0.5)
  assert out["confusion_matrix"] == [[1, 1], [1, 1]]


def test_prior_baseline():
  y = np.array([1] * 17 + [0] * 3)  # 85% FAKE
  out = metrics.prior_baseline(y, 0.85)
  assert out["accuracy"] == pytest.approx(0.85)
  want = -(0.85 * math.log(0.85) + 0.15 * math.log(0.15))
  assert out["log_loss"] == pytest.approx(want)
  assert out["log_loss"] == pytest.approx(0.4227, abs=1e-4)
  # A prior below 0.5 calls everything REAL.
  assert metrics.prior_baseline(y, 0.3)["accuracy"] == pytest.approx(0.15)
  with pytest.raises(ValueError, match="prior"):
    metrics.prior_baseline(y, 1.5)


# ---------------------------------------------------------------------------
# Against scikit-learn on random data (with and without ties)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("round_to", [None, 1])
def test_matches_sklearn(seed, round_to):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(2, 300))
  y = rng.integers(0, 2, n)
  y[0], y[1] = 0, 1
  p = np.clip(rng.beta(2, 2, n) + 0.2 * y, 0, 1)
  if round_to is not None:
    p = np.round(p, round_to)  # many ties
  assert metrics.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p))
  assert metrics.average_precision(y, p) == pytest.approx(
    skm.average_precision_score(y, p)
  )
  pc = np.clip(p, 1e-15, 1 - 1e-15)
  assert metrics.log_loss(y, p) == pytest.approx(skm.log_loss(y, pc))
  assert metrics.accuracy(y, p) == pytest.approx(
    skm.accuracy_score(y, p >= 0.5)
  )
  fpr, tpr, _ = metrics.roc_curve(y, p)
  sk_fpr, sk_tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  # EER lies where FPR and FNR meet: brute force on a fine interpolation.
  grid = np.linspace(0, 1, 200001)
  fnr = 1 - np.interp(grid, fpr, tpr, left=0, right=1)
  # For vertical segments interp picks the top; use the crossing bracket.
  eer = metrics.equal_error_rate(y, p)
  assert np.any(fnr <= grid + 1e-4)
  cross = grid[np.argmax(fnr <= grid)]
  assert eer == pytest.approx(cross, abs=1e-4)


# ---------------------------------------------------------------------------
# Degenerate and bad input
# ---------------------------------------------------------------------------


def test_one_class_gives_nan_for_ranking_metrics():
  fakes = [1, 1, 1]
  p = [0.2, 0.7, 0.9]
  assert math.isnan(metrics.roc_auc(fakes, p))
  assert math.isnan(metrics.equal_error_rate(fakes, p))
  assert metrics.average_precision(fakes, p) == pytest.approx(1.0)
  assert math.isnan(metrics.average_precision([0, 0], [0.1, 0.2]))
  out = metrics.binary_metrics(fakes, p)
  assert math.isnan(out["roc_auc"]) and out["accuracy"] == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="both REAL and FAKE"):
    metrics.roc_curve(fakes, p)


@pytest.mark.parametrize(
  "labels, scores, match",
  [
    ([], [], "empty"),
    ([1, 0], [0.5], "differ"),
    ([1, 2], [0.5, 0.5], "0 \\(REAL\\) or 1"),
    ([1, 0], [0.5, 1.5], "sigmoid"),
    ([1, 0], [0.5, float("nan")], "non-finite"),
    ([[1, 0]], [[0.5, 0.5]], "1-D"),
  ],
)
def test_bad_input_raises(labels, scores, match):
  with pytest.raises(ValueError, match=match):
    metrics.log_loss(labels, scores)


# ---------------------------------------------------------------------------
# Video aggregation
# ---------------------------------------------------------------------------


def _reference_confident(pred, t=0.8):
  """The winner's rule, restated independently for the comparison."""
  pred = np.asarray(pred)
  sz = len(pred)
  fakes = np.count_nonzero(pred > t)
  if fakes > sz // 2.5 and fakes > 11:
    return pred[pred > t].mean()
  if np.count_nonzero(pred < 0.2) > 0.9 * sz:
    return pred[pred < 0.2].mean()
  return pred.mean()


def test_confident_branches():
  # 14 of 32 above 0.8 (> 12 = 32 // 2.5, > 11): mean of the high ones.
  p = np.r_[np.full(14, 0.9), np.full(18, 0.3)]
  assert metrics.confident_score(p) == pytest.approx(0.9)
  # 12 high: > 11 but not > 12: falls through to the plain mean.
  p = np.r_[np.full(12, 0.9), np.full(20, 0.3)]
  assert metrics.confident_score(p) == pytest.approx(p.mean())
  # 30 of 32 below 0.2 (> 28.8): mean of the low ones.
  p = np.r_[np.full(30, 0.1), np.full(2, 0.7)]
  assert metrics.confident_score(p) == pytest.approx(0.1)
  # Few units (4 clips a track): the winner's fixed 11 never fires, so
  # confident would equal mean; the default count scales with n instead.
  p = np.r_[np.full(3, 0.95), np.full(1, 0.3)]
  assert metrics.confident_score(p) == pytest.approx(0.95)
  assert metrics.confident_score(p, min_fake_count=11) == pytest.approx(
    p.mean()
  )
  p = np.r_[np.full(5, 0.95), np.full(3, 0.5)]  # 5 > floor(8*.4)=3, > 2
  assert metrics.confident_score(p) == pytest.approx(0.95)
  p = np.r_[np.full(2, 0.95), np.full(6, 0.5)]  # 2 of 8: not confident
  assert metrics.confident_score(p) == pytest.approx(p.mean())


@pytest.mark.parametrize("seed", range(5))
def test_confident_matches_reference_rule(seed):
  rng = np.random.default_rng(seed)
  for _ in range(200):
    n = int(rng.integers(1, 60))
    p = rng.choice([0.05, 0.1, 0.5, 0.85, 0.95], n) * rng.uniform(0.97, 1, n)
    assert metrics.confident_score(p, min_fake_count=11) == pytest.approx(
      _reference_confident(p)
    )
    if n == 32:  # the scaled default is the winner's rule at its 32 frames
      assert metrics.confident_score(p) == pytest.approx(
        _reference_confident(p)
      )


def test_aggregate_videos_tracks_and_clip():
  scores = [0.2, 0.4, 0.9, 0.7, 0.1, 0.3, 0.6]
  vids = ["b", "b", "b", "b", "a", "a", "c"]
  tracks = [0, 0, 1, 1, 0, 0, 0]
  ids, s, n = metrics.aggregate_videos(scores, vids, tracks)
  assert list(ids) == ["a", "b", "c"]
  np.testing.assert_allclose(s, [0.2, 0.8, 0.6])  # b: max(0.3, 0.8)
  np.testing.assert_array_equal(n, [2, 4, 1])
  _, s, _ = metrics.aggregate_videos(scores, vids, tracks, track_reduce="mean")
  np.testing.assert_allclose(s, [0.2, 0.55, 0.6])
  _, s, _ = metrics.aggregate_videos(scores, vids)  # no tracks: one group
  np.testing.assert_allclose(s, [0.2, 0.55, 0.6])
  _, s, _ = metrics.aggregate_videos(scores, vids, tracks, clip=(0.25, 0.75))
  np.testing.assert_allclose(s, [0.25, 0.75, 0.6])
  _, s, _ = metrics.aggregate_videos(
    scores, vids, tracks, strategy="confident", min_fake_count=0
  )
  np.testing.assert_allclose(s, [0.2, 0.9, 0.6])  # b track 1: 0.9 > 0.8
  with pytest.raises(ValueError, match="unknown strategy"):
    metrics.aggregate_videos(scores, vids, strategy="vote")
  with pytest.raises(ValueError, match="differ"):
    metrics.aggregate_videos(scores, vids[:3])
