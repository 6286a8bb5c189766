"""Start-up checks of a training run: the config, the data, a relaunch.

Everything here runs before anything is compiled, so a bad value costs a
second, not a compile plus a step (a zero cadence used to die with
ZeroDivisionError after the first step; a missing val split after 1000
steps). Each check names the key or the file and the reason.

A relaunch on a workdir that has checkpoints is compared with the config
saved in the latest one: architecture changes (`model.*` keys that shape the
parameters) are refused, naming the keys; other changes (learning rate, step
count, cadences...) are allowed, logged and appended to
WORKDIR/relaunches.jsonl, and the run keeps the checkpoint's seed.
"""

from __future__ import annotations

import difflib
import json
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from asrid_jax.data import records

# model.* keys that do not change any parameter's shape or meaning.
MODEL_KEYS_ALLOWED_TO_CHANGE = ("dropout", "dtype", "depthwise_impl")
RELAUNCH_LOG = "relaunches.jsonl"


class ConfigError(ValueError):
  """The config (or the data it names) cannot give a sensible run."""


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _as_dict(config) -> dict:
  if isinstance(config, ml_collections.ConfigDict):
    return json.loads(config.to_json())
  return json.loads(json.dumps(config))


def closest_keys(key: str, config) -> list[str]:
  """Known config keys closest to an unknown `key` (for the error line)."""
  known = list(flatten(_as_dict(config)))
  candidates = list(known)
  if "." not in key:  # a top-level typo may mean a section
    candidates += sorted({k.split(".", 1)[0] for k in known if "." in k})
  close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
  if not close and "." in key:
    # 'data.foo': the nearest keys of the same section.
    section = key.rpartition(".")[0]
    same = [k for k in known if k.startswith(section + ".")]
    close = difflib.get_close_matches(key, same, n=3, cutoff=0.0)
  return close


# ----------------------------------------------------------------------------
# Config and data
# ----------------------------------------------------------------------------


def validate(config, data_parallel: int) -> dict[str, Any]:
  """Checks cadences, batch divisibility, paths and splits.

  Args:
    config: the run's config.
    data_parallel: devices on the mesh's data axes.

  Returns:
    {'evals': bool (False when there is no validation split: the run then
    trains without evaluations), 'train_counts': {label: videos}}.

  Raises:
    ConfigError: every problem found, one per line.
  """
  problems = []

  def need(ok: bool, message: str) -> None:
    if not ok:
      problems.append(message)

  ints = {
    "total_steps": 1,
    "log_every": 1,
    "checkpoint_every": 1,
    "eval_every": 0,
    "keep_checkpoints": 1,
    "batch_size": 1,
  }
  for key, low in ints.items():
    value = config.get(key)
    need(
      isinstance(value, int) and value >= low,
      f"config.{key} = {value!r}: must be an integer >= {low}",
    )
  accum = config.get("grad_accum_steps", 1)
  need(
    isinstance(accum, int) and accum >= 1,
    f"config.grad_accum_steps = {accum!r}: must be an integer >= 1",
  )
  batch = config.get("batch_size")
  if all(isinstance(v, int) and v >= 1 for v in (batch, accum)):
    micro = batch // accum
    need(
      batch % accum == 0 and micro % data_parallel == 0,
      f"config.batch_size {batch} / grad_accum_steps {accum} = "
      f"{batch / accum:g} clips per micro-batch: must be a whole multiple "
      f"of the {data_parallel} data-parallel devices",
    )
  model_init = config.get("model_init") or ""
  need(
    not model_init or pathlib.Path(model_init).is_dir(),
    f"config.model_init = {model_init!r}: no such folder (write one with "
    "`python -m asrid_jax.convert`)",
  )
  result = {"evals": config.get("eval_every", 0) > 0, "train_counts": {}}
  data_dir = pathlib.Path(config.data.dir)
  if not data_dir.is_dir():
    problems.append(
      f"config.data.dir = {str(data_dir)!r}: no such folder (write shards "
      "with `python -m preprocessing.extract_faces`)"
    )
  else:
    _check_data(config, data_dir, result, problems)
  if problems:
    raise ConfigError(
      "the config cannot train:\n" + "\n".join(f"  {p}" for p in problems)
    )
  return result


def _check_data(config, data_dir, result, problems) -> None:
  if (data_dir / records.DATASET_INFO).is_file():
    try:
      records.read_dataset_info(data_dir)  # refuses other schema versions
    except ValueError as e:
      problems.append(str(e))
      return
  else:
    logging.warning(
      "%s has no %s (not written by extract_faces?)",
      data_dir,
      records.DATASET_INFO,
    )
  if not records.list_shards(data_dir, "train"):
    problems.append(f"{data_dir}/train: no shards (*.tfrecord)")
    return
  from asrid_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  counts = pipeline.label_counts(data_dir, "train", "video")
  result["train_counts"] = counts
  real, fake = counts[records.LABEL_REAL], counts[records.LABEL_FAKE]
  if not (real and fake):
    sbi = float(config.data.get("sbi_prob", 0.0) or 0.0)
    message = (
      f"{data_dir}/train has {real} REAL and {fake} FAKE videos: one class "
      "only, so the model can only learn the constant"
    )
    if sbi > 0 and real:
      logging.warning("%s; data.sbi_prob=%g makes the fakes", message, sbi)
    else:
      problems.append(
        message + " (add the other class, or set data.sbi_prob > 0 to "
        "blend pseudo-fakes from the REAL videos)"
      )
  split = (config.get("eval") or {}).get("split", "val")
  if result["evals"] and not records.list_shards(data_dir, split):
    logging.warning(
      "%s/%s: no shards: training WITHOUT validation (no evaluation, no "
      "best checkpoint); write a %s split to get them",
      data_dir,
      split,
      split,
    )
    result["evals"] = False


# ----------------------------------------------------------------------------
# Relaunch
# ----------------------------------------------------------------------------


def compare_relaunch(new, saved) -> tuple[list[str], dict[str, tuple]]:
  """(refused keys, {allowed key: (saved, new)}) between two configs."""
  a, b = flatten(_as_dict(saved)), flatten(_as_dict(new))
  changed = {
    k: (a.get(k), b.get(k))
    for k in sorted(set(a) | set(b))
    # An unset seed means "the run's own" (train.py keeps the saved one).
    if a.get(k) != b.get(k) and not (k == "seed" and b.get(k) is None)
  }
  refused = [
    k
    for k in changed
    if k.startswith("model.")
    and k.split(".", 1)[1] not in MODEL_KEYS_ALLOWED_TO_CHANGE
  ]
  allowed = {k: v for k, v in changed.items() if k not in refused}
  return refused, allowed


def check_relaunch(
  config, saved, step: int, workdir: pathlib.Path, record: bool = True
) -> dict[str, tuple]:
  """Refuses architecture changes; logs and records allowed ones."""
  refused, allowed = compare_relaunch(config, saved)
  if refused:
    diffs = ", ".join(
      f"{k}: {allowed_or(saved, k)!r} -> {allowed_or(config, k)!r}"
      for k in refused
    )
    raise ConfigError(
      f"{workdir}: its checkpoint (step {step}) has another architecture "
      f"({diffs}); relaunch with the same model config, or use a new workdir"
    )
  if allowed:
    text = ", ".join(f"{k}: {v[0]!r} -> {v[1]!r}" for k, v in allowed.items())
    logging.warning("relaunch at step %d with changed config: %s", step, text)
    if record:
      entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "step": step,
        "changes": {k: list(v) for k, v in allowed.items()},
      }
      with open(workdir / RELAUNCH_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
  return allowed


def allowed_or(config, key: str):
  return flatten(_as_dict(config)).get(key)
