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

import argparse
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from asrid_jax import hostmem, reporting, scoring
from asrid_jax import metrics as metrics_lib
from asrid_jax.scoring import STRATEGIES, EvalResult, format_report

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


def default_priors(data_dir: str) -> dict[str, float]:
  """Training priors from DATA_DIR/dataset_info.json (no record is read);
  counted from the train split's index only for shards without one."""
  from asrid_jax import model_info

  info = model_info.training_info(None, data_dir)
  priors = model_info.priors_from_info(info)
  if priors:
    return priors
  try:
    return training_priors(data_dir)
  except FileNotFoundError as e:
    logging.warning("no prior baseline: %s", e)
    return {}


def _check_schema(data_dir) -> None:
  """Refuses shards whose dataset_info.json has another schema version."""
  from asrid_jax.data import records

  if (pathlib.Path(data_dir) / records.DATASET_INFO).is_file():
    records.read_dataset_info(data_dir)  # ValueError naming both versions


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
  strategy: str | None = None,
  track_reduce: str | None = None,
  clip: tuple[float, float] | None = None,
  score_source: str = "auto",
  eps: float = metrics_lib.DFDC_EPS,
  confident_kwargs: Mapping[str, Any] | None = None,
  progress: bool = True,
  max_videos: int = 0,
  should_stop: Any = None,
) -> EvalResult:
  """One exact pass of `model` over `split`; metrics at every level.

  Args:
    config: the run's ml_collections config (data, mesh, eval sections).
    model: an ASRID module; evaluated on an eval-mode view, so a model in
      train mode (train.py's) stays in train mode.
    split: 'train', 'val' or 'test' under config.data.dir (or `data_dir`).
    mesh: the device mesh; default: built from config.mesh on all devices.
    batch_size: global clips per batch; default config.eval.batch_size.
    priors: training FAKE fractions per level; default: from the data
      dir's dataset_info.json 'train' counts (`default_priors`).
    strategy, track_reduce, clip: the video aggregation; None takes
      config.eval's (`scoring.aggregation_settings`), which predict uses too.
    score_source, eps, confident_kwargs: see
      `scoring.summarize`.
    progress: tqdm bar (process 0 only).
    max_videos: > 0 evaluates a fixed label-stratified subset of that many
      videos (`pipeline.subset_videos`; train.py's periodic validation).
    should_stop: `scoring.collect`'s early stop (SIGTERM); a cut pass has
      metrics['interrupted'] True.

  Returns:
    EvalResult; `result.log_loss` is the video-level DFDC LogLoss.
  """
  from asrid_jax import sharding as sharding_lib
  from asrid_jax.data import pipeline

  data_config = dict(config.data)
  if data_dir is not None:
    data_config["dir"] = data_dir
  data_dir = data_config["dir"]
  _check_schema(data_dir)
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
    priors = default_priors(data_dir)

  _place_on_mesh(model, mesh)
  forward = scoring.make_forward(model)
  ids = pipeline.video_ids(data_dir, split)
  total = pipeline.eval_num_batches(
    split=split,
    global_batch_size=batch_size,
    max_videos=max_videos,
    **data_config,
  )
  iterator = pipeline.make_eval_iterator(
    split=split,
    global_batch_size=batch_size,
    sharding=sharding_lib.batch_sharding(mesh),
    max_videos=max_videos,
    **data_config,
  )
  start = time.perf_counter()
  preds = scoring.collect(
    forward,
    iterator,
    total=total,
    desc=f"eval {split}",
    progress=progress,
    should_stop=should_stop,
  )
  seconds = time.perf_counter() - start
  if preds.interrupted:
    logging.warning("evaluation of %s cut short (stop requested)", split)
    if preds.frame_probs.size == 0:
      return EvalResult({"interrupted": True, "split": split}, [], preds)
  # Videos preprocessing skipped count at the fallback, as DFDC scores them.
  from asrid_jax.data import index as index_lib

  skipped, unknown = index_lib.skipped_videos(data_dir, split)
  if max_videos:
    skipped = []  # a subset pass: its videos only
  if unknown and not max_videos:
    logging.warning(
      "%s: %d skipped video(s) have no recorded split/label (older "
      "preprocessing) and are not in the video metrics",
      data_dir,
      unknown,
    )
  result, rows = scoring.summarize(
    preds,
    ids,
    skipped=skipped,
    priors=priors,
    **scoring.aggregation_settings(
      config.get("eval"),
      strategy=strategy,
      track_reduce=track_reduce,
      clip=clip,
    ),
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
    max_videos=int(max_videos),
    interrupted=bool(preds.interrupted),
  )
  return EvalResult(result, rows, preds)


# ---------------------------------------------------------------------------
# Outputs and the command line
# ---------------------------------------------------------------------------

VIDEO_CSV_HEADER = (
  "video_id",
  "label",
  "score",
  "score_mean",
  "score_confident",
  "frames_used",
  "tracks",
)


def write_outputs(
  result: EvalResult, out_dir: str | pathlib.Path
) -> dict[str, pathlib.Path]:
  """metrics.json, videos.csv, roc.png, scores.png in `out_dir`."""
  from asrid_jax.data import records

  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = {"metrics": out / "metrics.json"}
  records.write_json_atomic(paths["metrics"], _json_ready(result.metrics))
  paths["videos"] = reporting.write_csv(
    out / "videos.csv",
    VIDEO_CSV_HEADER,
    [[row[k] for k in VIDEO_CSV_HEADER] for row in result.videos],
  )
  p = result.predictions
  labels = np.asarray([r["label"] for r in result.videos])
  curves = {"frame": (p.frame_label, p.frame_probs)}
  if p.clip_probs is not None:
    curves["clip"] = (p.clip_label, p.clip_probs)
  for name in STRATEGIES:
    curves[f"video ({name})"] = (
      labels,
      np.asarray([r[f"score_{name}"] for r in result.videos]),
    )
  split = result.metrics.get("split", "")
  roc = reporting.plot_roc(out / "roc.png", curves, title=f"ROC, {split}")
  if roc is not None:
    paths["roc"] = roc
  else:
    logging.warning("no ROC plot: the split has only one class")
  paths["scores"] = reporting.plot_histograms(
    out / "scores.png",
    curves,
    title=f"P(FAKE) by true label, {split}",
  )
  return paths


def _json_ready(obj: Any) -> Any:
  """NaN -> None (JSON has no NaN), numpy scalars -> Python numbers."""
  if isinstance(obj, Mapping):
    return {str(k): _json_ready(v) for k, v in obj.items()}
  if isinstance(obj, list | tuple):
    return [_json_ready(v) for v in obj]
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not np.isfinite(obj):
    return None
  return obj


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m asrid_jax.evaluate",
    description="Evaluate a checkpoint: DFDC LogLoss and more, beside the "
    "constant-prior baseline.",
  )
  a = p.add_argument
  a("--workdir", required=True, help="training workdir (has checkpoints/)")
  a("--split", default="test", help="train, val or test (default test)")
  a(
    "--checkpoint",
    default="best",
    type=reporting.checkpoint_arg,
    help="best, latest or a step number",
  )
  a("--out", default=None, help="default WORKDIR/eval_<split>_<step>")
  a("--data_dir", default=None, help="shards (default: the config's)")
  a("--batch_size", type=int, default=None, help="default config.eval's")
  a("--devices", type=int, default=None, help="use the first N devices")
  a("--strategy", choices=STRATEGIES, default=None, help="default: config")
  a("--track_reduce", choices=("max", "mean"), default=None)
  a("--score_source", choices=("auto", "clip", "frame"), default="auto")
  a(
    "--clip",
    type=reporting.clip_arg,
    default=None,
    help="LO,HI video-score clip",
  )
  a("--eps", type=float, default=metrics_lib.DFDC_EPS, help="LogLoss clip")
  a("--min_fake_count", type=int, default=None, help="confident strategy")
  a(
    "--ema",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="use EMA weights when present (default: config.eval.use_ema)",
  )
  return p


def eval_mesh(config: Any, num_devices: int | None = None) -> jax.sharding.Mesh:
  """config.mesh on the devices at hand (the first `num_devices` of them),
  else those devices all on 'data' (a checkpoint saved on any mesh loads)."""
  from asrid_jax import sharding as sharding_lib

  devices = jax.devices()
  if num_devices is not None:
    if not 1 <= num_devices <= len(devices):
      raise ValueError(
        f"--devices={num_devices}: this process has {len(devices)} devices"
      )
    devices = devices[:num_devices]
  try:
    return sharding_lib.make_mesh(config.mesh, devices)
  except (ValueError, KeyError, AttributeError) as e:
    logging.warning("config.mesh does not fit here (%s): data-parallel", e)
    return sharding_lib.make_mesh([("data", -1)], devices)


def run(args: argparse.Namespace) -> tuple[EvalResult, dict[str, pathlib.Path]]:
  """The command line's work, callable from tests."""
  from asrid_jax import checkpoint as checkpoint_lib

  workdir = pathlib.Path(args.workdir)
  if not (workdir / "checkpoints").is_dir():
    raise FileNotFoundError(
      f"{workdir}: no checkpoints/ folder (not a workdir?)"
    )
  ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
  step = ckpt.resolve(args.checkpoint)
  mesh = eval_mesh(ckpt.config(step), args.devices)
  ckpt.close()
  # By name, not by the resolved step: 'best'/'latest' then fall back to
  # the previous good checkpoint when that one is damaged.
  config, model, step = checkpoint_lib.restore_for_eval(
    workdir, args.checkpoint, mesh, use_ema=args.ema
  )
  confident = {}
  if args.min_fake_count is not None:
    confident["min_fake_count"] = args.min_fake_count
  # The prior is the model's own training data's (stored with the model),
  # whatever shards it is evaluated on (an external test set has no train).
  from asrid_jax import model_info

  priors = model_info.priors_from_info(
    model_info.training_info(workdir, config.data.dir)
  )
  result = evaluate(
    config,
    model,
    args.split,
    data_dir=args.data_dir,
    priors=priors or None,
    mesh=mesh,
    batch_size=args.batch_size,
    strategy=args.strategy,
    track_reduce=args.track_reduce,
    clip=args.clip,
    score_source=args.score_source,
    eps=args.eps,
    confident_kwargs=confident,
  )
  result.metrics.update(
    workdir=str(workdir), checkpoint=str(args.checkpoint), step=int(step)
  )
  paths: dict[str, pathlib.Path] = {}
  if jax.process_index() == 0:
    out = pathlib.Path(args.out or workdir / f"eval_{args.split}_{step}")
    paths = write_outputs(result, out)
  return result, paths


def main(argv: list[str] | None = None) -> int:
  from asrid_jax import checkpoint as checkpoint_lib

  args = build_parser().parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  reporting.quiet_library_logs()
  # grain workers read absl flags; nothing else here uses them.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  try:
    result, paths = run(args)
  except (
    FileNotFoundError,
    ValueError,
    checkpoint_lib.CheckpointError,  # no usable checkpoint
  ) as e:
    print(f"evaluate: error: {e}", file=sys.stderr)
    return 1
  if jax.process_index() == 0:
    m = result.metrics
    print(
      f"evaluate: {m['workdir']} step {m['step']} ({m['variant']}), split "
      f"{m['split']} of {m['data_dir']}: {m['counts']['videos']} videos, "
      f"{m['counts']['clips']} clips, {m['counts']['frames']} frames, "
      f"{m['devices']} device(s), {m['seconds']:.1f} s"
    )
    print(format_report(m))
    for name, path in paths.items():
      print(f"  {name:8s} {path}")
  return 0


if __name__ == "__main__":
  hostmem.ensure_hugepage_malloc()  # before any work: it may re-execute
  sys.exit(main())
