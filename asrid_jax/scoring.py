"""Model outputs -> host predictions -> frame, clip and video metrics.

The pieces of an evaluation that do not depend on where batches come from:
an eval-mode jitted forward (`make_forward`, also used by predict), the
gathering of sharded outputs on the host with padding removed (`collect`),
and the metric tables at every level beside the prior baseline
(`summarize`, `format_report`). `asrid_jax.evaluate` wires them to the input
pipeline and the checkpoints.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from asrid_jax import metrics as metrics_lib
from asrid_jax import reporting

STRATEGIES = ("mean", "confident")
TRACK_REDUCES = ("max", "mean")


def aggregation_settings(
  eval_config: Mapping[str, Any] | None,
  *,
  strategy: str | None = None,
  track_reduce: str | None = None,
  clip: tuple[float, float] | None = None,
) -> dict[str, Any]:
  """The video aggregation of a run: explicit values over config.eval's.

  One setting for evaluate and predict, so the two never score a video
  differently unless told to. A clip of (0, 1) means none. Configs saved
  before the setting existed get the previous evaluate defaults.
  """
  cfg = dict(eval_config or {})
  strategy = strategy or cfg.get("strategy", "confident")
  track_reduce = track_reduce or cfg.get("track_reduce", "max")
  if clip is None:
    clip = tuple(cfg.get("clip") or (0.0, 1.0))
  clip = (float(clip[0]), float(clip[1]))
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}: {strategy!r}")
  if track_reduce not in TRACK_REDUCES:
    raise ValueError(
      f"track_reduce must be one of {TRACK_REDUCES}: {track_reduce!r}"
    )
  return {
    "strategy": strategy,
    "track_reduce": track_reduce,
    "clip": None if clip == (0.0, 1.0) else clip,
  }


# ---------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 1))
def _forward(graphdef, with_attention, state, images, frame_order=None):
  view = nnx.merge(graphdef, state)
  view.eval()
  # Padded positions of a short clip (frame_order -1) are masked out of the
  # temporal head, as in training.
  mask = None if frame_order is None else frame_order >= 0
  out = view(images, frame_mask=mask)
  probs = {"frame_probs": jax.nn.sigmoid(out["frame_logits"])}
  if "clip_logit" in out:
    probs["clip_probs"] = jax.nn.sigmoid(out["clip_logit"])
  if with_attention and "attention" in out:
    probs["attention"] = out["attention"]
  return probs


def make_forward(
  model: nnx.Module, *, with_attention: bool = False
) -> Callable[[Any], dict[str, jax.Array]]:
  """A jitted (images[, frame_order]) -> probabilities function on an
  eval-mode VIEW of model (frame_order (B, T), -1 on padded frames).

  The model is split and merged into a second module object that shares the
  arrays, so switching it to eval mode (BatchNorm running statistics, no
  dropout) leaves the caller's model, e.g. the one being trained, untouched.
  Parameters keep whatever sharding they have; the batch brings its own.
  The graph definition is a static argument of one module-level jit, so
  periodic validation of the same architecture compiles once per run.
  """
  graphdef, state = nnx.split(model)
  return functools.partial(_forward, graphdef, with_attention, state)


def to_host(x: Any) -> np.ndarray:
  """A (possibly multi-host, sharded) global array as a full numpy array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


# ---------------------------------------------------------------------------
# Collecting predictions
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Predictions:
  """Host-side predictions of one pass, masked rows removed.

  Frame arrays have one row per distinct (video, face, frame_order); clip
  arrays one row per evaluated clip (clip_probs None for static variants).
  """

  frame_video: np.ndarray
  frame_face: np.ndarray
  frame_order: np.ndarray
  frame_label: np.ndarray
  frame_probs: np.ndarray
  clip_video: np.ndarray
  clip_face: np.ndarray
  clip_label: np.ndarray
  clip_probs: np.ndarray | None
  interrupted: bool = False  # the pass was cut short (should_stop)


def collect(
  forward: Callable[[Any], Mapping[str, Any]],
  batches: Iterable[Mapping[str, Any]],
  *,
  total: int | None = None,
  desc: str = "eval",
  progress: bool = True,
  should_stop: Callable[[int], bool] | None = None,
) -> Predictions:
  """Runs `forward` on every batch and keeps the unmasked rows on the host.

  `should_stop(i)`, asked before batch i, ends the pass early (a SIGTERM
  during periodic validation); it must answer the same on every process
  (train.py's preemption check does). `Predictions.interrupted` says so.
  """
  fv, ff, fo, fl, fp = [], [], [], [], []
  cv, cf, cl, cp = [], [], [], []
  bar = tqdm(
    batches,
    total=total,
    desc=desc,
    unit="batch",
    disable=not progress or jax.process_index() != 0,
    leave=False,
  )

  def keep(batch: Mapping[str, Any], out: Mapping[str, Any]) -> None:
    mask = to_host(batch["_mask"]).astype(bool) if "_mask" in batch else None
    host = {
      k: to_host(batch[k])
      for k in ("label", "video_idx", "face_index", "frame_order")
    }
    frame_probs = to_host(out["frame_probs"]).astype(np.float64)
    clip_probs = (
      to_host(out["clip_probs"]).astype(np.float64)
      if "clip_probs" in out
      else None
    )
    if mask is None:
      mask = np.ones(frame_probs.shape[0], bool)
    t = frame_probs.shape[1]
    rows = np.flatnonzero(mask)
    label, video, face = (
      host["label"][rows],
      host["video_idx"][rows],
      host["face_index"][rows],
    )
    cv.append(video)
    cf.append(face)
    cl.append(label)
    if clip_probs is not None:
      cp.append(clip_probs[rows])
    fv.append(np.repeat(video, t))
    ff.append(np.repeat(face, t))
    fo.append(host["frame_order"][rows].reshape(-1))
    fl.append(np.repeat(label, t))
    fp.append(frame_probs[rows].reshape(-1))

  # One batch in flight: the next forward is dispatched before the previous
  # outputs are fetched, so the device computes while the host copies and
  # loads the following batch.
  pending = None
  interrupted = False
  for i, batch in enumerate(bar):
    if should_stop is not None and should_stop(i):
      interrupted = True
      break
    out = forward(batch["image"], batch["frame_order"])
    if pending is not None:
      keep(*pending)
    pending = (batch, out)
  if pending is not None:
    keep(*pending)

  def cat(parts, dtype):
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

  frame_video, frame_face = cat(fv, np.int64), cat(ff, np.int64)
  frame_order, frame_probs = cat(fo, np.int64), cat(fp, np.float64)
  frame_label = cat(fl, np.int64)
  # The pipeline pads a track shorter than a clip by repeating its last frame
  # with frame_order -1: those are not records. A track's tail clip overlaps
  # the one before it (it is the last T frames), so a frame can be scored
  # twice: duplicates are averaged and each frame counts once.
  real = frame_order >= 0
  frame_video, frame_face = frame_video[real], frame_face[real]
  frame_order, frame_probs = frame_order[real], frame_probs[real]
  frame_label = frame_label[real]
  keys = np.stack([frame_video, frame_face, frame_order], axis=1)
  _, first, inverse = np.unique(
    keys, axis=0, return_index=True, return_inverse=True
  )
  inverse = inverse.reshape(-1)
  sums = np.bincount(inverse, weights=frame_probs, minlength=first.size)
  counts = np.bincount(inverse, minlength=first.size)
  return Predictions(
    frame_video=frame_video[first],
    frame_face=frame_face[first],
    frame_order=frame_order[first],
    frame_label=frame_label[first],
    frame_probs=sums / np.maximum(counts, 1),
    clip_video=cat(cv, np.int64),
    clip_face=cat(cf, np.int64),
    clip_label=cat(cl, np.int64),
    clip_probs=cat(cp, np.float64) if cp else None,
    interrupted=interrupted,
  )


# ---------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class EvalResult:
  """What `evaluate` returns: JSON-ready metrics and per-video rows."""

  metrics: dict[str, Any]
  videos: list[dict[str, Any]]
  predictions: Predictions

  @property
  def log_loss(self) -> float:
    """The headline number: video-level DFDC LogLoss (primary strategy)."""
    return self.metrics["video"]["log_loss"]


def summarize(
  preds: Predictions,
  video_ids: list[str],
  *,
  priors: Mapping[str, float] | None = None,
  strategy: str = "confident",
  track_reduce: str = "max",
  clip: tuple[float, float] | None = None,
  score_source: str = "auto",
  eps: float = metrics_lib.DFDC_EPS,
  threshold: float = 0.5,
  confident_kwargs: Mapping[str, Any] | None = None,
  skipped: Sequence[tuple[str, int]] = (),
  fallback: float = 0.5,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """Frame, clip and video metrics (+ prior baselines) and per-video rows.

  Args:
    preds: from `collect`.
    video_ids: the split's sorted id table that `video_idx` indexes.
    priors: the training FAKE fraction per level {'frame', 'clip', 'video'};
      a level without one gets no baseline.
    strategy: the video score reported as 'video' ('mean' or 'confident');
      both are always computed.
    track_reduce: how face-track scores make a video score ('max', 'mean').
    clip: optional (lo, hi) clipping of the video scores.
    score_source: unit scores for the video level: 'clip' (dynamic head),
      'frame' (static head) or 'auto' (clip when the model has a clip head).
    eps, threshold: LogLoss clipping and the accuracy threshold.
    confident_kwargs: options of `metrics.confident_score`.
    skipped: (video_id, label) of the split's videos that preprocessing
      skipped (no face, too short, undecodable). DFDC scores every video and
      predict gives them `fallback`, so the video level (and its prior
      baseline) counts them at `fallback`; frame and clip levels cannot.
    fallback: their score.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
  if preds.frame_probs.size == 0:
    raise ValueError("no unmasked example was evaluated (empty split?)")
  priors = dict(priors or {})
  if score_source == "auto":
    score_source = "clip" if preds.clip_probs is not None else "frame"
  if score_source == "clip":
    if preds.clip_probs is None:
      raise ValueError("score_source='clip' but the model has no clip head")
    unit = (preds.clip_video, preds.clip_face, preds.clip_probs)
  elif score_source == "frame":
    unit = (preds.frame_video, preds.frame_face, preds.frame_probs)
  else:
    raise ValueError(
      f"score_source must be auto, clip or frame: {score_source}"
    )

  def level(labels, scores, prior_key):
    out = metrics_lib.binary_metrics(
      labels, scores, eps=eps, threshold=threshold
    )
    if prior_key in priors:
      out["prior"] = metrics_lib.prior_baseline(
        labels, priors[prior_key], eps=eps, threshold=threshold
      )
    return out

  result: dict[str, Any] = {
    "settings": {
      "eps": eps,
      "threshold": threshold,
      "strategy": strategy,
      "track_reduce": track_reduce,
      "clip": list(clip) if clip else None,
      "score_source": score_source,
      "confident": dict(confident_kwargs or {}),
    },
    "counts": {
      "frames": int(preds.frame_probs.size),
      "clips": int(preds.clip_video.size),
      "tracks": int(
        np.unique(
          np.stack([preds.frame_video, preds.frame_face]), axis=1
        ).shape[1]
      ),
      "videos": int(np.unique(preds.frame_video).size),
    },
    "frame": level(preds.frame_label, preds.frame_probs, "frame"),
  }
  if preds.clip_probs is not None:
    result["clip"] = level(preds.clip_label, preds.clip_probs, "clip")

  # Video level: labels from any row of the video (one label per video).
  vid_label = {}
  for v, y in zip(
    preds.frame_video.tolist(), preds.frame_label.tolist(), strict=True
  ):
    vid_label[v] = y
  scores = {}
  for name in STRATEGIES:
    kwargs = dict(confident_kwargs or {}) if name == "confident" else {}
    ids, s, _ = metrics_lib.aggregate_videos(
      unit[2],
      unit[0],
      unit[1],
      strategy=name,
      track_reduce=track_reduce,
      clip=clip,
      **kwargs,
    )
    scores[name] = dict(zip(ids.tolist(), s.tolist(), strict=True))
  vids = sorted(vid_label)
  evaluated = {video_ids[v] for v in vids}
  skipped = [(str(v), int(y)) for v, y in skipped if str(v) not in evaluated]
  labels = np.asarray(
    [vid_label[v] for v in vids] + [y for _, y in skipped], np.int64
  )
  for name in STRATEGIES:
    s = np.asarray([scores[name][v] for v in vids] + [fallback] * len(skipped))
    result[f"video_{name}"] = level(labels, s, "video")
  result["video"] = result[f"video_{strategy}"]
  result["counts"]["skipped_videos"] = len(skipped)
  result["settings"]["fallback"] = fallback

  frames_used = np.bincount(preds.frame_video, minlength=len(video_ids))
  tracks = {}
  for v, f in zip(
    preds.frame_video.tolist(), preds.frame_face.tolist(), strict=True
  ):
    tracks.setdefault(v, set()).add(f)
  rows = [
    {
      "video_id": video_ids[v],
      "label": int(vid_label[v]),
      "score": scores[strategy][v],
      "score_mean": scores["mean"][v],
      "score_confident": scores["confident"][v],
      "frames_used": int(frames_used[v]),
      "tracks": len(tracks[v]),
    }
    for v in vids
  ] + [
    {
      "video_id": vid,
      "label": y,
      "score": fallback,
      "score_mean": fallback,
      "score_confident": fallback,
      "frames_used": 0,
      "tracks": 0,
    }
    for vid, y in skipped
  ]
  return result, rows


def format_report(result: Mapping[str, Any]) -> str:
  """The console table: one row per level, the prior baseline beside each."""
  header = [
    "level",
    "n",
    "fake%",
    "LogLoss",
    "prior LL",
    "acc",
    "prior acc",
    "AUC",
    "AP",
    "EER",
  ]
  rows = []
  for key in ("frame", "clip", "video_mean", "video_confident"):
    if key not in result:
      continue
    m = result[key]
    p = m.get("prior", {})
    rows.append(
      [
        key,
        m["n"],
        f"{100 * m['fake_fraction']:.1f}",
        m["log_loss"],
        p.get("log_loss"),
        m["accuracy"],
        p.get("accuracy"),
        m["roc_auc"],
        m["average_precision"],
        m["eer"],
      ]
    )
  table = reporting.format_table(header, rows)
  cm = result["video"]["confusion_matrix"]
  n_skip = result["counts"].get("skipped_videos", 0)
  skip_line = (
    f"{n_skip} video(s) skipped by preprocessing are scored at the fallback "
    f"{result['settings'].get('fallback', 0.5)} in the video rows\n"
    if n_skip
    else ""
  )
  return (
    f"{table}\n{skip_line}"
    f"video confusion ({result['settings']['strategy']}): "
    f"REAL->REAL {cm[0][0]}  REAL->FAKE {cm[0][1]}  "
    f"FAKE->REAL {cm[1][0]}  FAKE->FAKE {cm[1][1]}"
  )
