r"""Evaluate a checkpoint on a split: DFDC LogLoss beside the constant prior.

  python -m asrid_jax.evaluate --workdir=DIR [--split=test] \
      [--checkpoint=best|latest|STEP] [--out=DIR]

The run restores the model from the Orbax checkpoint in DIR with the config
saved beside it (no training flag is repeated), makes one exact pass over the
split (every clip of every face track once; the padded last batch masked) on
whatever mesh the devices give, and reports three levels:

* frame: the static head's P(FAKE) for every face crop (record) of the split;
  a frame repeated in several clips is counted once.
* clip: the dynamic head's P(FAKE) per clip (dynamic variants only).
* video: the unit scores (clips for dynamic variants, frames otherwise) of each
  face track reduced by 'mean' or the DFDC 1st place 'confident' strategy,
  then the max over the video's face tracks (`--track_reduce=mean` switches),
  optionally clipped (`--clip=0.01,0.99`).

Each level lists LogLoss (DFDC formula, eps 1e-15), accuracy at 0.5, ROC AUC,
AP, EER and the confusion matrix, beside the LogLoss/accuracy of always
predicting the training split's FAKE fraction: on DFDC (~85% FAKE) that
constant has 85% accuracy, which a useful model must beat on LogLoss.

Outputs in --out (default WORKDIR/eval_<split>_<step>): metrics.json,
videos.csv (video_id, label, score, score_mean, score_confident,
frames_used, tracks), roc.png and scores.png.

`evaluate(config, model, split)` is the library entry that train.py's
periodic validation calls with the live model.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx
from tqdm import tqdm

from asrid_jax import metrics as metrics_lib
from asrid_jax import reporting

STRATEGIES = ("mean", "confident")

# ---------------------------------------------------------------------------
# Forward pass
# ---------------------------------------------------------------------------


def make_forward(
  model: nnx.Module, *, with_attention: bool = False
) -> Callable[[Any], dict[str, jax.Array]]:
  """A jitted images -> probabilities function on an eval-mode VIEW of model.

  The model is split and merged into a second module object that shares the
  arrays, so switching it to eval mode (BatchNorm running statistics, no
  dropout) leaves the caller's model, e.g. the one being trained, untouched.
  Parameters keep whatever sharding they have; the batch brings its own.
  """
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, images):
    view = nnx.merge(graphdef, state)
    view.eval()
    out = view(images)
    probs = {"frame_probs": jax.nn.sigmoid(out["frame_logits"])}
    if "clip_logit" in out:
      probs["clip_probs"] = jax.nn.sigmoid(out["clip_logit"])
    if with_attention and "attention" in out:
      probs["attention"] = out["attention"]
    return probs

  return functools.partial(forward, state)


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


def collect(
  forward: Callable[[Any], Mapping[str, Any]],
  batches: Iterable[Mapping[str, Any]],
  *,
  total: int | None = None,
  desc: str = "eval",
  progress: bool = True,
) -> Predictions:
  """Runs `forward` on every batch and keeps the unmasked rows on the host."""
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
  for batch in bar:
    out = forward(batch["image"])
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

  def cat(parts, dtype):
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

  frame_video, frame_face = cat(fv, np.int64), cat(ff, np.int64)
  frame_order, frame_probs = cat(fo, np.int64), cat(fp, np.float64)
  frame_label = cat(fl, np.int64)
  # The pipeline pads a track shorter than a clip by repeating its last frame
  # with frame_order -1: those are not records. Clips do not overlap, so each
  # remaining (video, face, order) should be unique; averaging duplicates
  # keeps a frame counted once even if a pipeline ever overlaps clips.
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
  labels = np.asarray([vid_label[v] for v in vids])
  for name in STRATEGIES:
    s = np.asarray([scores[name][v] for v in vids])
    result[f"video_{name}"] = level(labels, s, "video")
  result["video"] = result[f"video_{strategy}"]

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
  return (
    f"{table}\n"
    f"video confusion ({result['settings']['strategy']}): "
    f"REAL->REAL {cm[0][0]}  REAL->FAKE {cm[0][1]}  "
    f"FAKE->REAL {cm[1][0]}  FAKE->FAKE {cm[1][1]}"
  )


# ---------------------------------------------------------------------------
# The library entry point
# ---------------------------------------------------------------------------


def training_priors(data_dir: str, split: str = "train") -> dict[str, float]:
  """The FAKE fraction of the training split per level, from its index.

  Frame level counts records, clip level face tracks, video level videos.
  """
  from asrid_jax.data import pipeline

  out = {}
  for level, unit in (
    ("frame", "record"),
    ("clip", "track"),
    ("video", "video"),
  ):
    counts = pipeline.label_counts(data_dir, split, unit)
    total = counts[0] + counts[1]
    if total:
      out[level] = counts[1] / total
  return out


def _place_on_mesh(model: nnx.Module, mesh: jax.sharding.Mesh) -> None:
  """Replicates on `mesh` any parameter that lives elsewhere (in place).

  A freshly built or host-restored model sits on one default device, which
  jit cannot combine with a batch sharded over the mesh; a model already laid
  out on the mesh (train.py's, possibly fsdp-sharded) is left alone.
  """
  mesh_devices = set(mesh.devices.flat)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = nnx.state(model)

  def place(x):
    if isinstance(x, jax.Array) and set(x.sharding.device_set) == mesh_devices:
      return x
    return jax.device_put(x, replicated)

  nnx.update(model, jax.tree.map(place, state))


def evaluate(
  config: Any,
  model: nnx.Module,
  split: str = "val",
  *,
  data_dir: str | None = None,
  mesh: jax.sharding.Mesh | None = None,
  batch_size: int | None = None,
  priors: Mapping[str, float] | None = None,
  strategy: str = "confident",
  track_reduce: str = "max",
  clip: tuple[float, float] | None = None,
  score_source: str = "auto",
  eps: float = metrics_lib.DFDC_EPS,
  confident_kwargs: Mapping[str, Any] | None = None,
  progress: bool = True,
) -> EvalResult:
  """One exact pass of `model` over `split`; metrics at every level.

  Args:
    config: the run's ml_collections config (data, mesh, eval sections).
    model: an ASRID module; evaluated on an eval-mode view, so a model in
      train mode (train.py's) stays in train mode.
    split: 'train', 'val' or 'test' under config.data.dir (or `data_dir`).
    mesh: the device mesh; default: built from config.mesh on all devices.
    batch_size: global clips per batch; default config.eval.batch_size.
    priors: training FAKE fractions per level; default: counted from the
      'train' split of the same data dir (none when it has no shards).
    strategy, track_reduce, clip, score_source, eps, confident_kwargs: see
      `summarize`.
    progress: tqdm bar (process 0 only).

  Returns:
    EvalResult; `result.log_loss` is the video-level DFDC LogLoss.
  """
  from asrid_jax import sharding as sharding_lib
  from asrid_jax.data import pipeline

  data_config = dict(config.data)
  if data_dir is not None:
    data_config["dir"] = data_dir
  data_dir = data_config["dir"]
  if mesh is None:
    mesh = sharding_lib.make_mesh(config.mesh)
  eval_config = dict(config.get("eval") or {})
  batch_size = int(
    batch_size or eval_config.get("batch_size", config.batch_size)
  )
  # Round up to a multiple of the data-parallel size: padding rows are masked.
  dp = sharding_lib.data_parallel_size(mesh)
  batch_size = -(-batch_size // dp) * dp
  if priors is None:
    try:
      priors = training_priors(data_dir)
    except FileNotFoundError as e:
      logging.warning("no prior baseline: %s", e)
      priors = {}

  _place_on_mesh(model, mesh)
  forward = make_forward(model)
  ids = pipeline.video_ids(data_dir, split)
  total = pipeline.eval_num_batches(
    split=split, global_batch_size=batch_size, **data_config
  )
  iterator = pipeline.make_eval_iterator(
    split=split,
    global_batch_size=batch_size,
    sharding=sharding_lib.batch_sharding(mesh),
    **data_config,
  )
  start = time.perf_counter()
  preds = collect(
    forward,
    iterator,
    total=total,
    desc=f"eval {split}",
    progress=progress,
  )
  seconds = time.perf_counter() - start
  result, rows = summarize(
    preds,
    ids,
    priors=priors,
    strategy=strategy,
    track_reduce=track_reduce,
    clip=clip,
    score_source=score_source,
    eps=eps,
    confident_kwargs=confident_kwargs,
  )
  result.update(
    split=split,
    data_dir=str(data_dir),
    variant=config.model.get("variant"),
    batch_size=batch_size,
    num_batches=total,
    devices=int(mesh.devices.size),
    seconds=round(seconds, 3),
  )
  return EvalResult(result, rows, preds)
