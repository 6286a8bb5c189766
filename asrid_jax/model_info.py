"""What a trained model knows about its training data, kept beside it.

`train` copies the training shards' dataset_info.json into the workdir
(`WORKDIR/dataset_info.json`), and `export` ships it with the model. From it
come, without touching the training shards (which may be elsewhere, or gone):

  * the constant-prior baseline of `evaluate` (the training FAKE fraction per
    level), so an external test set imported alone (`--splits_from input`,
    only a `test` split) is still judged against the right constant;
  * how `predict` must cut faces from raw video (frame sampling, detector and
    crop margin), so a model trained on tight crops is fed tight crops.

Older workdirs without the copy fall back to the config's data dir.
"""

from __future__ import annotations

import pathlib
import shutil
from typing import Any

from absl import logging

from asrid_jax.data import records

# Package root: models/ (shipped models) lives beside asrid_jax/.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO_ROOT / "models" / "dfdc_faces"


def store_training_info(data_dir: str, workdir: pathlib.Path) -> None:
  """Copies DATA_DIR/dataset_info.json to WORKDIR (atomically)."""
  src = pathlib.Path(data_dir) / records.DATASET_INFO
  if not src.is_file():
    logging.warning("%s missing: the workdir keeps no dataset info", src)
    return
  dst = workdir / records.DATASET_INFO
  tmp = dst.with_name(dst.name + ".tmp")
  shutil.copyfile(src, tmp)
  tmp.replace(dst)


def training_info(
  workdir: str | pathlib.Path | None, data_dir: str | None = None
) -> dict[str, Any] | None:
  """The training data's dataset_info: the workdir's copy, else DATA_DIR's.

  None (with a warning) when neither can be read.
  """
  errors = []
  for folder in (workdir, data_dir):
    if folder is None:
      continue
    if not (pathlib.Path(folder) / records.DATASET_INFO).is_file():
      errors.append(f"no {records.DATASET_INFO} in {folder}")
      continue
    try:
      return records.read_dataset_info(folder)
    except (OSError, ValueError) as e:
      errors.append(str(e))
  logging.warning("training dataset info unavailable: %s", "; ".join(errors))
  return None


def priors_from_info(info: dict[str, Any] | None) -> dict[str, float]:
  """Training FAKE fraction per level from dataset_info's 'train' counts.

  Frame level counts records, video level videos. The clip level (face
  tracks, dynamic variants) is not counted in dataset_info; it takes the
  video fraction (tracks of one video share its label).
  """
  train = ((info or {}).get("splits") or {}).get("train") or {}
  out = {}
  for level, key in (("frame", "records"), ("video", "videos")):
    counts = train.get(key)
    if not isinstance(counts, dict):  # no per-label counts (old/other info)
      continue
    total = counts.get("FAKE", 0) + counts.get("REAL", 0)
    if total:
      out[level] = counts.get("FAKE", 0) / total
  if "video" in out:
    out["clip"] = out["video"]
  return out
