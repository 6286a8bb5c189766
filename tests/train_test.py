"""End-to-end training tests on synthetic shards (tiny config, 32x32 crops).

Compiles dominate the cost on a 2-core machine, so the module shares one
persistent compilation cache (runs of the same program after the first load
it) and turns most XLA optimisations off.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from asrid_jax import checkpoint as ckpt_lib
from asrid_jax import sharding, train
from asrid_jax import step as step_lib
from asrid_jax.data import pipeline, synthetic
from configs import common

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import train_worker  # noqa: E402

WORKER = pathlib.Path(train_worker.__file__)
STEPS = 4


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("train")
  data = root / "shards"
  synthetic.write_synthetic_shards(data, image_size=32, seed=0)
  cache = root / "xla_cache"
  saved = {
    k: jax.config.values[k]
    for k in (
      "jax_compilation_cache_dir",
      "jax_disable_most_optimizations",
      "jax_threefry_partitionable",
    )
  }
  jax.config.update("jax_compilation_cache_dir", str(cache))
  jax.config.update("jax_disable_most_optimizations", True)
  jax.config.update("jax_threefry_partitionable", True)
  yield types.SimpleNamespace(root=root, data=data, cache=cache)
  for k, v in saved.items():
    jax.config.update(k, v)


def _config(env, total=STEPS):
  return train_worker.tiny_config(str(env.data), total)


def _params(result):
  return {k: np.asarray(v) for k, v in result["state"]["params"].items()}


def _order(workdir):
  lines = (pathlib.Path(workdir) / "data_order.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def straight(env):
  """STEPS steps in one go: the reference for the resume tests."""
  workdir = env.root / "straight"
  result = train.train_and_evaluate(_config(env), workdir)
  assert result["step"] == STEPS and result["stopped"] == "done"
  return types.SimpleNamespace(params=_params(result), order=_order(workdir))


def _assert_same_params(got, want):
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_straight_run_trains_and_checkpoints(env, straight):
  ckpt = ckpt_lib.Checkpointer(env.root / "straight", read_only=True)
  assert ckpt.all_steps() == [2, 4]
  cfg = ckpt.config(4)
  assert cfg.model.variant == "dyn_mix" and cfg.total_steps == STEPS
  ckpt.close()
  assert [r["step"] for r in straight.order] == list(range(1, STEPS + 1))
  # Different batches each step (the iterator advances).
  assert straight.order[0]["video_idx"] != straight.order[1]["video_idx"] or (
    straight.order[0]["frame_order"] != straight.order[1]["frame_order"]
  )
  # The model moved away from its initialisation.
  mesh = sharding.make_mesh([("data", -1)])
  cfg = _config(env)
  trainer = step_lib.Trainer(cfg, mesh, common.derive_seed(cfg))
  init = jax.device_get(trainer.init_state()["params"])
  moved = [k for k in init if not np.array_equal(init[k], straight.params[k])]
  assert len(moved) > 0.9 * len(init)


def test_sigterm_then_relaunch_matches_straight_run(env, straight):
  workdir = env.root / "sigterm"

  def on_step(step):
    if step == 1:
      os.kill(os.getpid(), signal.SIGTERM)

  first = train.train_and_evaluate(_config(env), workdir, on_step=on_step)
  assert first["stopped"] == "preempted" and first["step"] == 1
  second = train.train_and_evaluate(_config(env), workdir)
  assert second["step"] == STEPS and second["stopped"] == "done"
  _assert_same_params(_params(second), straight.params)
  assert _order(workdir) == straight.order
  assert second["trainer"].traces == 1  # 3 steps, one trace


def test_kill9_during_save_uses_previous_checkpoint(env, straight):
  workdir = env.root / "kill9"
  proc = subprocess.run(
    [
      sys.executable,
      str(WORKER),
      "single",
      str(workdir),
      str(env.data),
      str(STEPS),
    ],
    env={
      **os.environ,
      train.KILL_AFTER_SAVE_ENV: str(STEPS),
      "ASRID_TEST_CACHE": str(env.cache),
      "JAX_PLATFORMS": "cpu",
    },
    capture_output=True,
    text=True,
    timeout=400,
  )
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  ckdir = workdir / "checkpoints"
  half = ckpt_lib.find_incomplete(ckdir)
  assert [p.name.split(".")[0] for p in half] == [str(STEPS)]
  assert (ckdir / "2").is_dir() and not (ckdir / str(STEPS)).exists()
  result = train.train_and_evaluate(_config(env), workdir)
  assert result["incomplete_checkpoints"] == [str(half[0])]
  assert result["step"] == STEPS
  assert not ckpt_lib.find_incomplete(ckdir)  # cleaned up after reporting
  _assert_same_params(_params(result), straight.params)
  # Steps 3-4 were replayed from the step-2 iterator state: same batches.
  assert _order(workdir)[-2:] == straight.order[-2:]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(env):
  workdir, port, total = env.root / "multi", _free_port(), 2
  outs = [env.root / f"params_{i}.npz" for i in range(2)]
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        str(WORKER),
        "multi",
        str(workdir),
        str(env.data),
        str(total),
        str(port),
        str(i),
        str(outs[i]),
      ],
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  errors = []
  try:
    for p in procs:
      _, err = p.communicate(timeout=420)
      errors.append(err)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for p, err in zip(procs, errors, strict=True):
    assert p.returncode == 0, err[-3000:]
  got = [dict(np.load(o)) for o in outs]
  _assert_same_params(got[0], got[1])

  # One process, 8 devices, the same global batches: process p's rows are
  # what the pipeline gives host p of 2, in process order.
  cfg = _config(env, total)
  cfg.optim.eps = train_worker.MULTI_ADAM_EPS
  seed = common.derive_seed(cfg)
  mesh = sharding.make_mesh(cfg.mesh)
  trainer = step_lib.Trainer(cfg, mesh, seed)
  state = trainer.init_state()
  iters = [
    pipeline.make_train_iterator(
      split="train",
      global_batch_size=cfg.batch_size,
      sharding=None,
      seed=seed,
      **{**cfg.data, "process_index": p, "process_count": 2},
    )
    for p in range(2)
  ]
  for _ in range(total):
    parts = [next(it) for it in iters]
    local = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
    batch = sharding.global_batch(local, mesh)
    state, _ = trainer.train_step(state, batch, jax.random.key(seed))
  want = jax.device_get(state["params"])
  for k, v in want.items():
    np.testing.assert_allclose(got[0][k], v, rtol=1e-4, atol=1e-6, err_msg=k)


def test_grad_accumulation_equals_full_batch(env):
  """Without batch-dependent layers, 2 micro-batches == one full batch."""
  cfg = _config(env)
  cfg.model.update(variant="baseline", frozen_bn=True, dropout=0.0)
  mesh = sharding.make_mesh([("data", 4)], jax.devices()[:4])
  seed = 7
  it = pipeline.make_train_iterator(
    split="train",
    global_batch_size=cfg.batch_size,
    sharding=None,
    seed=seed,
    **cfg.data,
  )
  batch = sharding.global_batch(next(it), mesh)
  params, losses = [], []
  for accum in (1, 2):
    cfg.grad_accum_steps = accum
    trainer = step_lib.Trainer(cfg, mesh, seed)
    state, metrics = trainer.train_step(
      trainer.init_state(), batch, jax.random.key(0)
    )
    params.append(jax.device_get(state["params"]))
    losses.append(float(metrics["loss"]["total"]))
  assert losses[0] == pytest.approx(losses[1], rel=1e-5)
  for k in params[0]:
    np.testing.assert_allclose(
      params[0][k], params[1][k], rtol=1e-4, atol=1e-6, err_msg=k
    )
  cfg.grad_accum_steps = 3
  with pytest.raises(ValueError, match="micro-batches divisible"):
    step_lib.Trainer(cfg, mesh, seed)


def test_nonfinite_loss_names_step_and_term():
  with pytest.raises(FloatingPointError, match="step 7: term 'dynamic'"):
    train._check_finite(7, {"static": 0.5, "dynamic": float("nan")})


def test_validation_summary_logs_auc(monkeypatch):
  from asrid_jax import evaluate as eval_lib

  video = {"log_loss": 0.4, "accuracy": 0.75, "roc_auc": 0.8125}
  video["prior"] = {"log_loss": 0.69}
  result = types.SimpleNamespace(metrics={"video": video})
  monkeypatch.setattr(eval_lib, "evaluate", lambda *a, **k: result)
  config = types.SimpleNamespace(get=lambda k, d=None: d)
  out = train._evaluate(config, None, None)
  assert out["val/auc"] == 0.8125
  assert out["val/log_loss"] == 0.4 and out["val/prior_log_loss"] == 0.69
  video["roc_auc"] = float("nan")  # one-class split: no AUC, no NaN logged
  assert "val/auc" not in train._evaluate(config, None, None)


def test_multiprocess_preemption_check_is_not_per_step(monkeypatch):
  from jax.experimental import multihost_utils

  calls = []

  def allgather(x):
    calls.append(int(x))
    return np.asarray([x, 0])

  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
  preempt = train._Preemption(check_every=5)
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    stops = [s for s in range(1, 13) if preempt.requested(s)]
    assert stops == [5, 10]  # the flag is seen only at check steps
    assert calls == [1, 1] and preempt.collectives == 2
    assert preempt.requested(13, force=True) and len(calls) == 3
  finally:
    preempt.restore()
  monkeypatch.setattr(jax, "process_count", lambda: 1)
  single = train._Preemption(check_every=5)
  try:
    os.kill(os.getpid(), signal.SIGTERM)
    assert single.requested(1) and len(calls) == 3  # no collective
  finally:
    single.restore()
