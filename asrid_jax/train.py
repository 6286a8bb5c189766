r"""Train ASRID: `python -m asrid_jax.train --config=configs/dyn_mix.py --workdir=DIR`.

Overrides: `--config.optim.lr=3e-4 --config.data.dir=/data/shards`; a CPU run on
the built-in sample: `--config=configs/dyn_mix.py:runlocal`. Relaunching with
the same workdir resumes from its latest checkpoint. Multi-host: run the same
command on every host (see README, "Multi-host"); `--coordinator_address`,
`--num_processes`, `--process_id` (or $ASRID_COORDINATOR_ADDRESS, ...) for
plain hosts, nothing on SLURM/Open MPI/Cloud TPU (auto-detected).

main() only parses flags; the work is `train_and_evaluate`, in big_vision
sections: Mesh / Input / Model / Shard / Step / Checkpoint / Evals / Loop.
The jitted step and the state layout live in `asrid_jax/step.py`.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from asrid_jax import checkpoint as ckpt_lib
from asrid_jax import hostmem, locks, reporting, train_checks
from asrid_jax import sharding as sharding_lib
from asrid_jax import step as step_lib
from configs import common as config_common

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Training config file (configs/<variant>.py[:arg]).",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs, events.")
_COORD = flags.DEFINE_string(
  "coordinator_address", None, "host:port of process 0 (multi-host)."
)
_NPROC = flags.DEFINE_integer("num_processes", None, "Processes (multi-host).")
_PID = flags.DEFINE_integer("process_id", None, "This process (multi-host).")

# Fault injection for tests: SIGKILL this process right after the save of the
# given step has started (the async write is still in flight).
KILL_AFTER_SAVE_ENV = "ASRID_TEST_SIGKILL_AFTER_SAVE_STEP"


class _Writer:
  """TensorBoard events (process 0 only, tensorboardX) plus absl logging."""

  def __init__(self, workdir: pathlib.Path):
    self._tb = None
    if jax.process_index() == 0:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._tb is None:
      return
    for k, v in values.items():
      self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class _Preemption:
  """SIGTERM -> save and stop at a step boundary, on every process.

  One process may get the signal a step before another, so with several
  processes the flag is combined over them (a one-int all-gather) and all
  stop at the same step, which keeps Orbax's collective save from
  deadlocking. That all-gather is a blocking device round trip, which would
  take away the host's run-ahead if done every step; it runs only every
  `check_every` steps (config.preemption_check_every), at the same steps on
  every process. A single process needs no collective and checks every step.
  """

  def __init__(self, check_every: int = 1):
    if check_every < 1:
      raise ValueError(
        f"config.preemption_check_every must be >= 1, got {check_every}"
      )
    self.flag = False
    self.check_every = check_every
    self.collectives = 0  # all-gathers issued (tests count them)
    self._old = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM: saving a checkpoint and stopping")
    self.flag = True

  def requested(self, step: int, force: bool = False) -> bool:
    """Whether to stop after `step`; `force` checks now (e.g. last step)."""
    if jax.process_count() == 1:
      return self.flag
    if not force and step % self.check_every:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    self.collectives += 1
    flags_all = multihost_utils.process_allgather(np.int32(self.flag))
    return bool(np.max(flags_all))

  def restore(self) -> None:
    signal.signal(signal.SIGTERM, self._old)


def _check_finite(step: int, metrics: dict[str, float]) -> None:
  for name, value in metrics.items():
    if not np.isfinite(value):
      raise FloatingPointError(
        f"non-finite loss at step {step}: term '{name}' = {value}; "
        "stopping (the last checkpoint is intact)"
      )


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [
    jax.numpy.isfinite(x).all()
    for x in jax.tree.leaves(tree)
    if jax.numpy.issubdtype(x.dtype, jax.numpy.inexact)
  ]
  return jax.numpy.stack(leaves).all() if leaves else jax.numpy.bool_(True)


def _check_pending(pending: list[tuple[int, dict]], state, step: int) -> None:
  """Losses, gradient norms and parameters are finite: run before every save.

  A NaN state is then never checkpointed (every relaunch would resume it),
  also when checkpoint_every is not a multiple of log_every, and also when
  the step's loss was still finite but its update was not.
  """
  for s, m in jax.device_get(pending):
    values = {k: float(v) for k, v in m["loss"].items()}
    if "grad_norm" in m.get("opt", {}):
      values["grad_norm"] = float(m["opt"]["grad_norm"])
    _check_finite(s, values)
  if not bool(jax.device_get(_all_finite(state["params"]))):
    raise FloatingPointError(
      f"non-finite parameters after step {step}; stopping without saving "
      "them (the last checkpoint is intact)"
    )


def _evaluate(config, model, mesh, should_stop=None) -> dict[str, float]:
  """Validation metrics (video level) of `model` via asrid_jax.evaluate.

  Runs on config.eval.max_videos videos (a fixed, label-stratified subset;
  0 = the whole split: at DFDC scale a full val pass is ~25k videos) and
  stops early when `should_stop` says so (SIGTERM): then returns {} and
  the step gets no validation result.
  """
  from asrid_jax import evaluate as eval_lib  # pylint: disable=g-import-not-at-top

  eval_cfg = dict(config.get("eval") or {})
  result = eval_lib.evaluate(
    config,
    model,
    split=eval_cfg.get("split", "val"),
    mesh=mesh,
    progress=False,
    max_videos=int(eval_cfg.get("max_videos", 0) or 0),
    should_stop=should_stop,
  )
  if result.metrics.get("interrupted"):
    return {}
  video = result.metrics["video"]
  out = {
    "val/log_loss": float(video["log_loss"]),
    "val/accuracy": float(video["accuracy"]),
  }
  auc = video.get("roc_auc")
  if auc is not None and np.isfinite(auc):
    out["val/auc"] = float(auc)
  if "prior" in video:
    out["val/prior_log_loss"] = float(video["prior"]["log_loss"])
  return out


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | os.PathLike,
  *,
  on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
  """Trains (resuming from WORKDIR when it has a checkpoint); returns a summary.

  Args:
    config: the experiment config (configs/*.py).
    workdir: checkpoints/, tensorboard/, and a config.json copy.
    on_step: called with the step number after every step (tests use it to
      raise signals at an exact step).

  Raises:
    train_checks.ConfigError: a bad config or data, or a relaunch that
      changes the architecture (before anything is compiled).
    locks.BusyError: another trainer holds this workdir.
    ckpt_lib.CheckpointError: a save failed (disk full...).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  # One trainer per workdir (per process index on multi-host): two would
  # race on Orbax's checkpoint cleanup.
  lock = locks.take_lock(
    workdir / f"lock.p{jax.process_index()}", f"training workdir {workdir}"
  )
  try:
    return _train_locked(config, workdir, on_step)
  finally:
    lock.close()


def _train_locked(config, workdir, on_step) -> dict[str, Any]:
  main_process = jax.process_index() == 0
  jax.config.update("jax_threefry_partitionable", True)

  # ------------------------------------------------------------- Mesh
  mesh = sharding_lib.make_mesh(config.mesh)
  checks = train_checks.validate(config, sharding_lib.data_parallel_size(mesh))
  seed = config_common.derive_seed(config)
  saved = ckpt_lib.saved_config(workdir)
  if saved is not None:
    saved_step, saved_config = saved
    train_checks.check_relaunch(
      config, saved_config, saved_step, workdir, record=main_process
    )
    # The run's seed is the first launch's (unless one is given): a changed
    # lr or step count must not silently change the random streams.
    if config.get("seed") is None:
      seed = saved_config.get("seed") or config_common.derive_seed(saved_config)
  # Recorded in config.json and every checkpoint's config, so later
  # relaunches find it whatever else changed.
  config.seed = seed
  logging.info(
    "mesh %s over %d processes; seed %d",
    dict(mesh.shape),
    jax.process_count(),
    seed,
  )
  if main_process:
    (workdir / "config.json").write_text(config.to_json(indent=2))
    # The model keeps its training data's info (priors, crop convention).
    from asrid_jax import model_info  # pylint: disable=g-import-not-at-top

    model_info.store_training_info(config.data.dir, workdir)

  # ------------------------------------------------------------ Input
  from asrid_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  batch_sharding = sharding_lib.batch_sharding(mesh)
  train_iter = pipeline.make_train_iterator(
    split="train",
    global_batch_size=config.batch_size,
    sharding=batch_sharding,
    seed=seed,
    **config.data,
  )
  frames_per_step = config.batch_size * (
    1 if config.data.sampling == "picture" else config.data.clip_len
  )

  # ------------------------------------------------ Model / Shard / Step
  trainer = step_lib.Trainer(config, mesh, seed)
  logging.info("parameters: %s", trainer.param_counts())

  # ------------------------------------------------------- Checkpoint
  ckpt = ckpt_lib.Checkpointer(
    workdir,
    keep=config.keep_checkpoints,
    async_save=config.get("async_checkpoints", True),
  )
  # Resume order: own checkpoint (the newest that restores; damaged ones
  # are moved aside with a warning) > config.model_init > scratch.
  start, state = ckpt.restore_latest_good(trainer.abstract_state(), train_iter)
  if start is not None:
    logging.info("resumed from %s at step %d", ckpt.directory, start)
  else:
    start = 0
    state = trainer.init_state(config.get("model_init", ""))
  incomplete = [str(p) for p in ckpt.incomplete]

  # ------------------------------------------------------------ Evals
  def run_eval(state) -> dict[str, float]:
    # A SIGTERM during validation cuts it short (checked per batch, with
    # the same collective cadence as the step loop).
    return _evaluate(
      config, trainer.eval_model(state), mesh, should_stop=preempt.requested
    )

  # ------------------------------------------------------------- Loop
  writer = _Writer(workdir)
  preempt = _Preemption(int(config.get("preemption_check_every", 10)))
  rng = jax.random.key(seed)
  pending: list[tuple[int, dict]] = []
  last_eval: dict[str, float] = {}
  total = config.total_steps
  kill_at = int(os.environ.get(KILL_AFTER_SAVE_ENV, "-1"))
  # Debug/test aid: which examples each step used. Gathering them is a
  # collective, so every process computes it; process 0 writes it.
  log_order = bool(config.get("log_data_order", False))
  order_log = (
    (workdir / "data_order.jsonl").open("a")
    if log_order and main_process
    else None
  )
  t_log, s_log, t_start, step = time.perf_counter(), start, time.time(), start
  stopped = "done"
  try:
    while step < total:
      batch = next(train_iter)
      state, metrics = trainer.train_step(state, batch, rng)
      step += 1
      pending.append((step, metrics))
      if log_order:
        record = json.dumps({"step": step, **trainer.fingerprint(batch)})
        if order_log is not None:
          order_log.write(record + "\n")
      if on_step is not None:
        on_step(step)
      last = step == total
      if step % config.log_every == 0 or last:
        host = jax.device_get(pending)
        for s, m in host:
          _check_finite(s, {k: float(v) for k, v in m["loss"].items()})
        pending.clear()
        now = time.perf_counter()
        rate = (step - s_log) * frames_per_step / max(now - t_log, 1e-9)
        summary = {
          f"train/{k}": float(np.mean([m["loss"][k] for _, m in host]))
          for k in host[-1][1]["loss"]
        }
        summary.update({k: float(v) for k, v in host[-1][1]["opt"].items()})
        summary["train/frames_per_s"] = rate
        writer.scalars(step, summary)
        eta = (total - step) * (now - t_log) / max(step - s_log, 1)
        logging.info(
          "step %d/%d  loss %.4f  lr %.2e  |g| %.3f  %.1f frames/s  ETA %s",
          step,
          total,
          summary["train/total"],
          summary["lr"],
          summary["grad_norm"],
          rate,
          time.strftime("%H:%M:%S", time.gmtime(eta)),
        )
        t_log, s_log = now, step
      metrics_for_ckpt = None
      evals_on = checks["evals"]  # False without a validation split
      if evals_on and (step % config.eval_every == 0 or last):
        result = run_eval(state)
        if result:
          last_eval = result
          writer.scalars(step, last_eval)
          logging.info("step %d validation: %s", step, last_eval)
          state = trainer.feed_validation_loss(state, last_eval["val/log_loss"])
          metrics_for_ckpt = {ckpt_lib.METRIC: last_eval["val/log_loss"]}
      saved = False
      if step % config.checkpoint_every == 0 or metrics_for_ckpt or last:
        _check_pending(pending, state, step)
        saved = ckpt.save(
          step,
          state,
          data_iter=train_iter,
          config=config,
          metrics=metrics_for_ckpt,
          force=True,
        )
        if step == kill_at:
          os.kill(os.getpid(), signal.SIGKILL)
      if preempt.requested(step):
        if not saved:
          _check_pending(pending, state, step)
          ckpt.save(
            step, state, data_iter=train_iter, config=config, force=True
          )
        stopped = "preempted"
        logging.warning(
          "stopped at step %d after SIGTERM (checkpoint saved)", step
        )
        break
  finally:
    preempt.restore()
    ckpt.close()
    writer.close()
    if order_log is not None:
      order_log.close()
  logging.info("%s at step %d in %.0f s", stopped, step, time.time() - t_start)
  return {
    "step": step,
    "stopped": stopped,
    "state": state,
    "trainer": trainer,
    "val": last_eval,
    "incomplete_checkpoints": incomplete,
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  reporting.quiet_library_logs()
  # Compiled programs are reused across relaunches (resume, evaluations).
  cache = os.environ.get(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.expanduser("~/.cache/asrid_jax/xla"),
  )
  jax.config.update("jax_compilation_cache_dir", cache)
  sharding_lib.maybe_initialize_distributed(
    _COORD.value, _NPROC.value, _PID.value
  )
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (
    train_checks.ConfigError,
    ckpt_lib.CheckpointError,
    locks.BusyError,
    FloatingPointError,
  ) as e:
    # One clear answer, not a traceback (the log above has the details).
    print(f"train: error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def _load_config_file(spec: str) -> ml_collections.ConfigDict:
  """get_config(arg) of 'configs/x.py[:arg]' (to name the known keys)."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_config_file", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _parse_flags(argv: list[str]) -> list[str]:
  """absl parsing; an unknown --config.KEY is one line with the closest keys.

  ml_collections raises AttributeError/KeyError with a 55-line traceback and
  no suggestion for nested keys.
  """
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    error = e
  overrides = [
    a[len("--config.") :].split("=", 1)[0]
    for a in argv[1:]
    if a.startswith("--config.")
  ]
  spec = next(
    (a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None
  )
  if spec is None:
    raise error
  config = _load_config_file(spec)
  known = train_checks.flatten(json.loads(config.to_json()))
  bad = [
    k
    for k in overrides
    if k not in known and not any(n.startswith(k + ".") for n in known)
  ]
  for key in bad or [str(error)]:
    close = train_checks.closest_keys(key, config)
    hint = f"; closest: {', '.join(close)}" if close else ""
    print(f"train: error: unknown config key {key!r}{hint}", file=sys.stderr)
  sys.exit(2)


if __name__ == "__main__":
  hostmem.ensure_hugepage_malloc()  # before any work: it may re-execute
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=_parse_flags)
