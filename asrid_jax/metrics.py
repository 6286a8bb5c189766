"""Binary detection metrics and video-level aggregation, in plain numpy.

Conventions: label 1 = FAKE, 0 = REAL (the DFDC convention); a score is
P(FAKE) in [0, 1].

DFDC LogLoss. The competition's evaluation page defines
  LogLoss = -1/n * sum_i [y_i log(p_i) + (1 - y_i) log(1 - p_i)]
over the n test VIDEOS, natural log, and says predictions are "bounded away
from the extremes by a small value" without publishing it. Kaggle scored it
with its standard log-loss metric, which clipped to [1e-15, 1 - 1e-15] (the
scikit-learn default of that time), so that is our default `eps`. A single
confident mistake then costs -log(1e-15) = 34.5, which is why DFDC teams
clipped their own predictions as well (`clip` in `aggregate_videos`).

Degenerate inputs: ROC AUC and EER need both classes and average precision
needs at least one FAKE; when that is missing they return NaN (never raise),
so an evaluation of a one-class split still reports LogLoss and accuracy.
Empty inputs, shape mismatches, labels outside {0, 1} or scores outside [0, 1]
raise ValueError.

The "confident" video aggregation follows the DFDC 1st-place solution
(selimsef/dfdc_deepfake_challenge); see `confident_score`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

DFDC_EPS = 1e-15

# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------


def _check(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
  """Returns (labels int64, scores float64) as 1-D arrays, validated."""
  y = np.asarray(labels)
  p = np.asarray(scores, dtype=np.float64)
  if y.ndim != 1 or p.ndim != 1:
    raise ValueError(
      f"labels and scores must be 1-D, got shapes {y.shape} and {p.shape}"
    )
  if y.shape != p.shape:
    raise ValueError(f"labels {y.shape} and scores {p.shape} differ in length")
  if y.size == 0:
    raise ValueError("metrics of an empty set are undefined (0 samples)")
  if not np.all((y == 0) | (y == 1)):
    bad = np.unique(y[(y != 0) & (y != 1)])[:5]
    raise ValueError(f"labels must be 0 (REAL) or 1 (FAKE), got {bad}")
  if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
    raise ValueError(
      "scores must be probabilities in [0, 1] (apply a sigmoid to logits); "
      f"got min {np.nanmin(p)!r}, max {np.nanmax(p)!r}, "
      f"{int(np.sum(~np.isfinite(p)))} non-finite"
    )
  return y.astype(np.int64), p


def _both_classes(y: np.ndarray) -> bool:
  return bool(np.any(y == 1) and np.any(y == 0))


# ---------------------------------------------------------------------------
# Pointwise metrics
# ---------------------------------------------------------------------------


def log_loss(labels: Any, scores: Any, *, eps: float = DFDC_EPS) -> float:
  """DFDC LogLoss: mean binary cross-entropy of clipped P(FAKE), natural log."""
  if not 0.0 <= eps < 0.5:
    raise ValueError(f"eps must be in [0, 0.5), got {eps}")
  y, p = _check(labels, scores)
  p = np.clip(p, eps, 1.0 - eps)
  with np.errstate(divide="ignore"):
    # eps = 0 is allowed (an unclipped loss) and may then give inf.
    terms = y * np.log(p) + (1 - y) * np.log1p(-p)
  return float(-np.mean(terms))


def predict_labels(scores: Any, threshold: float = 0.5) -> np.ndarray:
  """Hard labels: FAKE (1) where P(FAKE) >= threshold, else REAL (0).

  The tie goes to FAKE, so a 0.5 fallback score counts as a FAKE call.
  """
  return (np.asarray(scores, dtype=np.float64) >= threshold).astype(np.int64)


def accuracy(labels: Any, scores: Any, *, threshold: float = 0.5) -> float:
  """Fraction of samples whose thresholded score equals the label."""
  y, p = _check(labels, scores)
  return float(np.mean(predict_labels(p, threshold) == y))


def confusion_matrix(
  labels: Any, scores: Any, *, threshold: float = 0.5
) -> np.ndarray:
  """2x2 counts [[TN, FP], [FN, TP]]: rows true REAL/FAKE, cols predicted."""
  y, p = _check(labels, scores)
  pred = predict_labels(p, threshold)
  out = np.zeros((2, 2), dtype=np.int64)
  np.add.at(out, (y, pred), 1)
  return out


# ---------------------------------------------------------------------------
# Ranking metrics
# ---------------------------------------------------------------------------


def _ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks with ties given their average rank."""
  order = np.argsort(x, kind="mergesort")
  xs = x[order]
  # Starts of each run of equal values in the sorted array.
  starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
  ends = np.r_[starts[1:], xs.size]
  avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
  ranks = np.empty(x.size, dtype=np.float64)
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def roc_auc(labels: Any, scores: Any) -> float:
  """Area under the ROC curve (Mann-Whitney U; ties count one half).

  NaN when only one class is present.
  """
  y, p = _check(labels, scores)
  if not _both_classes(y):
    return float("nan")
  n_pos = int(y.sum())
  n_neg = y.size - n_pos
  rank_sum = _ranks(p)[y == 1].sum()
  u = rank_sum - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def _cumulative_counts(
  y: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(tp, fp, thresholds) at each distinct score, highest score first."""
  order = np.argsort(-p, kind="mergesort")
  ps, ys = p[order], y[order]
  # Last index of each run of equal scores: the operating points.
  last = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])
  tp = np.cumsum(ys)[last]
  fp = (last + 1) - tp
  return tp.astype(np.float64), fp.astype(np.float64), ps[last]


def roc_curve(
  labels: Any, scores: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf.

  Raises ValueError when only one class is present (the curve is undefined).
  """
  y, p = _check(labels, scores)
  if not _both_classes(y):
    raise ValueError("ROC curve needs both REAL and FAKE samples")
  tp, fp, thr = _cumulative_counts(y, p)
  tpr = np.r_[0.0, tp / tp[-1]]
  fpr = np.r_[0.0, fp / fp[-1]]
  return fpr, tpr, np.r_[np.inf, thr]


def average_precision(labels: Any, scores: Any) -> float:
  """AP = sum_n (R_n - R_{n-1}) P_n over distinct thresholds (no interpolation).

  The same definition as scikit-learn's average_precision_score. NaN when
  there is no FAKE sample (recall undefined).
  """
  y, p = _check(labels, scores)
  if not np.any(y == 1):
    return float("nan")
  tp, fp, _ = _cumulative_counts(y, p)
  precision = tp / (tp + fp)
  recall = tp / tp[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def equal_error_rate(labels: Any, scores: Any) -> float:
  """EER: the error rate where FPR equals FNR (= 1 - TPR).

  Found on the ROC polyline: the segment where FPR - FNR changes sign is
  interpolated linearly, as randomising between two thresholds would. NaN when
  only one class is present.
  """
  y, _ = _check(labels, scores)
  if not _both_classes(y):
    return float("nan")
  fpr, tpr, _ = roc_curve(labels, scores)
  fnr = 1.0 - tpr
  diff = fpr - fnr  # rises from -1 at (0, 0) to +1 at (1, 1)
  i = int(np.argmax(diff >= 0.0))  # first point at or past the crossing
  if diff[i] == 0.0:
    return float(fpr[i])
  t = -diff[i - 1] / (diff[i] - diff[i - 1])
  return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


# ---------------------------------------------------------------------------
# Summaries and the constant-prior baseline
# ---------------------------------------------------------------------------


def binary_metrics(
  labels: Any,
  scores: Any,
  *,
  eps: float = DFDC_EPS,
  threshold: float = 0.5,
) -> dict[str, Any]:
  """All metrics of one set of scores, JSON-ready (floats, ints, lists)."""
  y, p = _check(labels, scores)
  cm = confusion_matrix(y, p, threshold=threshold)
  return {
    "n": int(y.size),
    "n_fake": int(y.sum()),
    "fake_fraction": float(y.mean()),
    "log_loss": log_loss(y, p, eps=eps),
    "accuracy": accuracy(y, p, threshold=threshold),
    "roc_auc": roc_auc(y, p),
    "average_precision": average_precision(y, p),
    "eer": equal_error_rate(y, p),
    "confusion_matrix": cm.tolist(),
  }


def prior_baseline(
  labels: Any,
  prior: float,
  *,
  eps: float = DFDC_EPS,
  threshold: float = 0.5,
) -> dict[str, float]:
  """LogLoss and accuracy of always predicting `prior` (= training fake
  fraction). A model must beat this: on DFDC (~85% FAKE) the constant predicts
  FAKE for everything, scores ~85% accuracy and a LogLoss of ~0.42.
  """
  if not 0.0 <= prior <= 1.0:
    raise ValueError(f"prior must be a fraction in [0, 1], got {prior}")
  y = np.asarray(labels)
  constant = np.full(y.shape, float(prior))
  return {
    "prior": float(prior),
    "log_loss": log_loss(y, constant, eps=eps),
    "accuracy": accuracy(y, constant, threshold=threshold),
  }


# ---------------------------------------------------------------------------
# Video-level aggregation
# ---------------------------------------------------------------------------


# The DFDC winner's confident rule: more than 11 of its 32 frames a video.
WINNER_MIN_FAKE, WINNER_UNITS = 11, 32


def confident_score(
  scores: Any,
  *,
  fake_threshold: float = 0.8,
  real_threshold: float = 0.2,
  fake_fraction: float = 0.4,
  min_fake_count: int | None = None,
  real_fraction: float = 0.9,
) -> float:
  """The DFDC 1st-place "confident" strategy, for one video's frame scores.

  With n scores, let k be how many exceed `fake_threshold`:
  - if k is above both floor(n * fake_fraction) and `min_fake_count`, the
    video is a confident FAKE: return the mean of those k high scores (a
    deepfake often manipulates only part of the clip, so plain averaging with
    the clean frames would water the evidence down);
  - else if more than `real_fraction * n` scores are below `real_threshold`,
    it is a confident REAL: return the mean of those low scores;
  - otherwise return the plain mean.
  The thresholds are the winner's. Its `min_fake_count` was 11 for 32
  frames a video; a fixed 11 never fires for fewer units (4 clips a track of
  a dynamic variant: confident silently equalled mean), so by default
  (`min_fake_count=None`) it scales with the number of units:
  floor(n * 11 / 32), which is 11 at n = 32. An int keeps it fixed.
  """
  p = np.asarray(scores, dtype=np.float64).ravel()
  if p.size == 0:
    raise ValueError("confident_score of an empty score list")
  n = p.size
  if min_fake_count is None:
    min_fake_count = math.floor(n * WINNER_MIN_FAKE / WINNER_UNITS + 1e-9)
  high = p > fake_threshold
  k = int(high.sum())
  # floor(n * 0.4) == n // 2.5 of the reference; the epsilon keeps products
  # like 5 * 0.4 = 2.0000000000000004 from flooring the wrong way.
  if k > math.floor(n * fake_fraction + 1e-9) and k > min_fake_count:
    return float(p[high].mean())
  low = p < real_threshold
  if low.sum() > real_fraction * n:
    return float(p[low].mean())
  return float(p.mean())


def reduce_scores(scores: Any, strategy: str = "mean", **kwargs: Any) -> float:
  """One score from many: 'mean', 'max', 'median' or 'confident'."""
  p = np.asarray(scores, dtype=np.float64).ravel()
  if p.size == 0:
    raise ValueError("cannot reduce an empty score list")
  if strategy == "confident":
    return confident_score(p, **kwargs)
  if kwargs:
    raise ValueError(f"strategy {strategy!r} takes no options, got {kwargs}")
  if strategy == "mean":
    return float(p.mean())
  if strategy == "max":
    return float(p.max())
  if strategy == "median":
    return float(np.median(p))
  raise ValueError(
    f"unknown strategy {strategy!r}; use mean, max, median or confident"
  )


def aggregate_videos(
  scores: Any,
  video_ids: Sequence[Any] | np.ndarray,
  track_ids: Sequence[Any] | np.ndarray | None = None,
  *,
  strategy: str = "mean",
  track_reduce: str = "max",
  clip: tuple[float, float] | None = None,
  **strategy_kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per-frame (or per-clip) scores -> one score per video.

  Each face track of a video is reduced with `strategy` ('mean' or
  'confident', see `confident_score`); the video score is then the
  `track_reduce` ('max' by default: a video is fake when any of its faces is)
  over its tracks. Without `track_ids` all scores of a video form one group.
  `clip=(lo, hi)` clips the final video scores, as DFDC teams did to bound
  the LogLoss of a confident mistake.

  Returns (unique video ids sorted, video scores, number of scores used).
  """
  p = np.asarray(scores, dtype=np.float64).ravel()
  vids = np.asarray(video_ids)
  if vids.shape != p.shape:
    raise ValueError(f"video_ids {vids.shape} and scores {p.shape} differ")
  tids = np.zeros(p.shape, np.int64) if track_ids is None else track_ids
  tids = np.asarray(tids)
  if tids.shape != p.shape:
    raise ValueError(f"track_ids {tids.shape} and scores {p.shape} differ")
  if clip is not None and not 0.0 <= clip[0] <= clip[1] <= 1.0:
    raise ValueError(f"clip must be (lo, hi) with 0 <= lo <= hi <= 1: {clip}")
  uniq, inverse = np.unique(vids, return_inverse=True)
  out = np.empty(uniq.size, np.float64)
  counts = np.bincount(inverse, minlength=uniq.size)
  order = np.argsort(inverse, kind="mergesort")
  bounds = np.r_[0, np.cumsum(counts)]
  for v in range(uniq.size):
    idx = order[bounds[v] : bounds[v + 1]]
    vt = tids[idx]
    track_scores = [
      reduce_scores(p[idx[vt == t]], strategy, **strategy_kwargs)
      for t in np.unique(vt)
    ]
    out[v] = reduce_scores(track_scores, track_reduce)
  if clip is not None:
    out = np.clip(out, clip[0], clip[1])
  return uniq, out, counts
