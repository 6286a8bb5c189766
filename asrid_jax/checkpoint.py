"""One Orbax CheckpointManager for training state, data iterator and config.

Layout: WORKDIR/checkpoints/<step>/{model, opt, data, config}
  model   {'params', 'model_state'[, 'ema']}   flat str-keyed dicts
  opt     {'opt': optax state, 'step': int32}
  data    the grain iterator state, one JSON file per process
  config  the full ml_collections config as JSON (evaluate.py needs no flags)

Retention: the last `keep` checkpoints AND the best one by validation LogLoss
(checkpoints saved right after an evaluation carry it as a metric).

Saves are asynchronous (Orbax writes in a background thread after the device
-> host copy); the iterator state is snapshotted at the save call, so the
loop can keep consuming batches meanwhile. Orbax writes each step into
'<step>.orbax-checkpoint-tmp*' and renames it when complete, so a save
interrupted by kill -9 never looks like a checkpoint; `Checkpointer` lists
such leftovers at start-up (`incomplete`), logs them, and Orbax removes them.

Faults: a save that fails (disk full, read-only folder) raises one
CheckpointError naming the step, the folder and the root cause, instead of
Orbax's background-thread traceback. A checkpoint that cannot be restored
(a data file missing or corrupt) is skipped with a warning naming it, and the
previous good one is used (`restore_latest_good`, and `restore_for_eval` for
'best'/'latest'); training moves it aside to WORKDIR/damaged_checkpoints/ so
that the step can be written again.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time
from collections.abc import Mapping
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from asrid_jax import sharding as sharding_lib
from asrid_jax import train_state

METRIC = "val_logloss"
# The 'model' item: weights, batch statistics, and (with ema_decay) their EMAs.
MODEL_KEYS = ("params", "model_state", "ema", "ema_stats")
DAMAGED_DIR = "damaged_checkpoints"
_TMP_MARK = ".orbax-checkpoint-tmp"
_pp = ocp.checkpoint_managers


class CheckpointError(RuntimeError):
  """A checkpoint could not be written or read; the message says why."""


def root_cause(exc: BaseException) -> str:
  """The innermost OSError of an exception chain (else the exception)."""
  seen, found, e = set(), None, exc
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError):
      found = e
    e = e.__cause__ or e.__context__
  best = found or exc
  if isinstance(best, OSError) and best.strerror:
    where = f" ({best.filename})" if best.filename else ""
    return f"{best.strerror}{where}"
  text = str(best).strip().splitlines()
  return f"{type(best).__name__}: {text[0] if text else ''}"


def parse_which(text: str | int) -> str | int:
  """'best' | 'latest' | a step number; ValueError otherwise."""
  if isinstance(text, int) or text in ("best", "latest"):
    return text
  try:
    return int(text)
  except (TypeError, ValueError):
    raise ValueError(
      f"--checkpoint={text!r}: must be best, latest or a step number"
    ) from None


class _IteratorSnapshot:
  """A grain-checkpointable view of an iterator's state at one moment.

  grain's handler calls `get_state()` (bytes unless the object is a grain
  DatasetIterator) when it writes, which with async saves may be after the
  training loop has moved on; freezing the state at save time avoids that.
  On restore `set_state(bytes)` forwards to the live iterator.
  """

  def __init__(self, iterator: Any, state: Any = None):
    self._it = iterator
    self._state = state

  def get_state(self) -> bytes:
    state = self._state
    return state if isinstance(state, bytes) else json.dumps(state).encode()

  def set_state(self, state: bytes) -> None:
    current = self._it.get_state()
    self._it.set_state(
      state if isinstance(current, bytes) else json.loads(state)
    )

  def start_prefetch(self) -> None:
    if hasattr(self._it, "start_prefetch"):
      self._it.start_prefetch()


def find_incomplete(directory: pathlib.Path) -> list[pathlib.Path]:
  """Checkpoint folders a killed save left behind (never restored)."""
  if not directory.is_dir():
    return []
  return sorted(p for p in directory.iterdir() if _TMP_MARK in p.name)


class Checkpointer:
  """Save/restore of the training state; see the module docstring."""

  def __init__(
    self,
    workdir: str | pathlib.Path,
    *,
    keep: int = 3,
    async_save: bool = True,
    read_only: bool = False,
  ):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self.incomplete = find_incomplete(self.directory)
    for path in self.incomplete:
      logging.warning(
        "ignoring half-written checkpoint %s (a save was interrupted); "
        "resuming from the last complete one",
        path,
      )
    policy = _pp.AnyPreservationPolicy(
      [
        _pp.LatestN(n=keep),
        _pp.BestN(
          get_metric_fn=lambda m: m[METRIC],
          reverse=True,  # sorted descending: the last (kept) ones are lowest
          n=1,
          keep_checkpoints_without_metrics=False,
        ),
      ]
    )
    options = ocp.CheckpointManagerOptions(
      preservation_policy=policy,
      # Orbax writes and loads per-step metrics only when best_fn is set;
      # retention itself is the preservation policy above.
      best_fn=lambda m: m[METRIC],
      best_mode="min",
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=not read_only,
      create=not read_only,
      read_only=read_only,
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_names=("model", "opt", "data", "config"),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def best_step(self) -> int | None:
    """The step with the lowest validation LogLoss (None without metrics)."""
    scored = []
    for step in self.manager.all_steps():
      m = self.manager.metrics(step)
      if m and METRIC in m:
        scored.append((float(m[METRIC]), step))
    return min(scored)[1] if scored else None

  def resolve(self, which: str | int) -> int:
    """'latest' | 'best' | a step number -> an existing step."""
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
    if which == "latest":
      return max(steps)
    if which == "best":
      best = self.best_step()
      if best is None:
        logging.warning("no checkpoint has %s; using the latest", METRIC)
        return max(steps)
      return best
    step = parse_which(which)
    if not isinstance(step, int):
      return self.resolve(step)
    if step not in steps:
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {self.directory}; have {steps}"
      )
    return step

  def save(
    self,
    step: int,
    state: Mapping[str, Any],
    *,
    data_iter: Any = None,
    config: ml_collections.ConfigDict | None = None,
    metrics: Mapping[str, float] | None = None,
    force: bool = False,
  ) -> bool:
    """Starts an (async) save of `state` at `step`; returns if it saved."""
    model = {k: state[k] for k in MODEL_KEYS if k in state}
    items = dict(
      model=ocp.args.StandardSave(model),
      opt=ocp.args.StandardSave({"opt": state["opt"], "step": state["step"]}),
    )
    if data_iter is not None:
      snap = _IteratorSnapshot(data_iter, data_iter.get_state())
      items["data"] = grain.checkpoint.CheckpointSave(snap)
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config.to_json()))
    try:
      # Also raises a failure of the previous async save.
      return self.manager.save(
        step,
        args=ocp.args.Composite(**items),
        metrics=dict(metrics) if metrics else None,
        force=force,
      )
    except Exception as e:  # noqa: BLE001 (Orbax/TensorStore raise many types)
      raise CheckpointError(
        f"checkpoint save (step {step}) in {self.directory} failed: "
        f"{root_cause(e)}"
      ) from e

  def restore_latest_good(
    self, abstract_state: Mapping[str, Any], data_iter: Any = None
  ) -> tuple[int, dict[str, Any]] | tuple[None, None]:
    """(step, state) of the newest checkpoint that restores; (None, None)
    when there is none. Damaged ones are moved aside, with a warning."""
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return step, self.restore(step, abstract_state, data_iter)
      except Exception as e:  # noqa: BLE001 (TensorStore, Orbax, OSError...)
        moved = self._move_aside(step)
        logging.warning(
          "checkpoint step %d in %s is damaged (%s); moved to %s, falling "
          "back to the previous one",
          step,
          self.directory,
          root_cause(e),
          moved,
        )
    if self.all_steps():
      raise CheckpointError(f"no checkpoint in {self.directory} restores")
    return None, None

  def _move_aside(self, step: int) -> pathlib.Path:
    target = self.directory.parent / DAMAGED_DIR / f"{step}-{int(time.time())}"
    if jax.process_index() == 0:  # one mover on a shared file system
      target.parent.mkdir(parents=True, exist_ok=True)
      shutil.move(str(self.directory / str(step)), str(target))
    self.manager.reload()
    return target

  def restore(
    self, step: int, abstract_state: Mapping[str, Any], data_iter: Any = None
  ) -> dict[str, Any]:
    """Restores the training state (and the iterator, in place)."""
    model_t = {k: abstract_state[k] for k in MODEL_KEYS if k in abstract_state}
    # A checkpoint from before EMA batch statistics existed: they start as
    # the raw statistics (what evaluation used then).
    fill_stats = "ema_stats" in model_t and not self.has_item(step, "ema_stats")
    if fill_stats:
      del model_t["ema_stats"]
    opt_t = {"opt": abstract_state["opt"], "step": abstract_state["step"]}
    items = dict(
      model=ocp.args.StandardRestore(model_t),
      opt=ocp.args.StandardRestore(opt_t),
    )
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(
        _IteratorSnapshot(data_iter)
      )
    out = self.manager.restore(step, args=ocp.args.Composite(**items))
    state = dict(out["model"])
    state.update(opt=out["opt"]["opt"], step=out["opt"]["step"])
    if fill_stats:
      state["ema_stats"] = jax.tree.map(jnp.copy, state["model_state"])
    return state

  def restore_model(self, step: int, abstract: Mapping[str, Any]) -> dict:
    """Only the 'model' item (params, model_state[, ema])."""
    out = self.manager.restore(
      step, args=ocp.args.Composite(model=ocp.args.StandardRestore(abstract))
    )
    return dict(out["model"])

  def config(self, step: int) -> ml_collections.ConfigDict:
    out = self.manager.restore(
      step, args=ocp.args.Composite(config=ocp.args.JsonRestore())
    )
    return ml_collections.ConfigDict(out["config"])

  def has_ema(self, step: int) -> bool:
    return self.has_item(step, "ema")

  def has_item(self, step: int, key: str) -> bool:
    """Whether the step's 'model' item holds `key` (e.g. 'ema', 'ema_stats').

    Read from the item's tree metadata file: the manager's item_metadata is
    None for an item whose handler this process has not used yet (a fresh
    process restoring), which made EMA weights look absent.
    """
    path = self.directory / str(step) / "model" / "_METADATA"
    try:
      tree = json.loads(path.read_text())["tree_metadata"]
    except (OSError, ValueError, KeyError):
      return False
    return any(
      v.get("key_metadata", [{}])[0].get("key") == key for v in tree.values()
    )

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(
        f"checkpoint save in {self.directory} failed: {root_cause(e)}"
      ) from e

  def close(self) -> None:
    """Waits for the last save, then closes; a failed save raises once."""
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception as e:  # noqa: BLE001 (already reported by wait())
        logging.warning("closing the checkpoint manager: %s", root_cause(e))


def saved_config(
  workdir: str | pathlib.Path,
) -> tuple[int, ml_collections.ConfigDict] | None:
  """(step, config) of the newest checkpoint whose config reads; None if none.

  A relaunch compares its config with this before anything is compiled. It
  reads the files directly (`<step>/config/metadata`, what JsonSave writes):
  an Orbax manager here would add a multi-process barrier that processes
  could reach in different orders.
  """
  directory = pathlib.Path(workdir) / "checkpoints"
  if not directory.is_dir():
    return None
  steps = sorted(
    (int(p.name) for p in directory.iterdir() if p.name.isdigit()),
    reverse=True,
  )
  for step in steps:
    path = directory / str(step) / "config" / "metadata"
    try:
      return step, ml_collections.ConfigDict(json.loads(path.read_text()))
    except (OSError, ValueError) as e:  # a damaged step: try the next
      logging.warning("checkpoint step %d: config unreadable (%s)", step, e)
  return None


def _abstract(tree: Mapping[str, Any], shard: Any) -> dict:
  return {
    k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=shard[k])
    for k, v in tree.items()
  }


def restore_for_eval(
  workdir: str | pathlib.Path,
  which: str | int = "best",
  mesh: jax.sharding.Mesh | None = None,
  *,
  use_ema: bool | None = None,
) -> tuple[ml_collections.ConfigDict, nnx.Module, int]:
  """(config, model in eval mode, step) from WORKDIR's checkpoints.

  Works on any mesh (default: all devices on 'data'): parameters are
  restored replicated, or as config.sharding_rules place them on `mesh`.
  `use_ema` (default config.eval.use_ema) takes the EMA parameters when the
  checkpoint has them.
  """
  ckpt = Checkpointer(workdir, read_only=True)
  which = parse_which(which)
  first = ckpt.resolve(which)
  # 'best'/'latest' fall back to the next newest good checkpoint; an
  # explicit step fails in one line.
  order = [first]
  if not isinstance(which, int):
    order += sorted((s for s in ckpt.all_steps() if s != first), reverse=True)
  errors = []
  for step in order:
    try:
      result = _restore_step(ckpt, step, mesh, use_ema)
    except Exception as e:  # noqa: BLE001 (TensorStore, Orbax, OSError...)
      errors.append(f"step {step}: {root_cause(e)}")
      logging.warning(
        "checkpoint step %d in %s is damaged (%s)%s",
        step,
        ckpt.directory,
        root_cause(e),
        "; trying the previous one" if step != order[-1] else "",
      )
      continue
    ckpt.close()
    if errors:
      logging.warning(
        "using step %d instead of damaged %s", step, "; ".join(errors)
      )
    logging.info("restored step %d from %s", step, workdir)
    return result
  ckpt.close()
  raise CheckpointError(
    f"{ckpt.directory}: no usable checkpoint for {which!r}: "
    + "; ".join(errors)
  )


def _restore_step(ckpt, step, mesh, use_ema):
  config = ckpt.config(step)
  if mesh is None:
    mesh = sharding_lib.make_mesh([("data", -1)])
  model = train_state.abstract_model(config.model)
  spec = train_state.ModelSpec.of(model)
  params, rest = spec.split(model)
  rules = config.get("sharding_rules", [])
  p_shard = sharding_lib.param_shardings(params, mesh, rules)
  r_shard = {k: sharding_lib.replicated(mesh) for k in rest}
  target = {
    "params": _abstract(params, p_shard),
    "model_state": _abstract(rest, r_shard),
  }
  if use_ema is None:
    use_ema = bool(config.get("eval", {}).get("use_ema", True))
  if ckpt.has_ema(step):
    target["ema"] = _abstract(params, p_shard)
  if ckpt.has_item(step, "ema_stats"):
    target["ema_stats"] = _abstract(rest, r_shard)
  restored = ckpt.restore_model(step, target)
  chosen = (
    restored["ema"] if use_ema and "ema" in restored else restored["params"]
  )
  # EMA weights go with the EMA of the batch statistics (BatchNorm running
  # statistics of the raw weights do not match them).
  stats = restored["model_state"]
  if chosen is restored.get("ema") and "ema_stats" in restored:
    stats = restored["ema_stats"]
  logging.info(
    "step %d: %s parameters",
    step,
    "EMA" if chosen is restored.get("ema") else "raw",
  )
  model = spec.merge(chosen, stats, train=False)
  return config, model, step
