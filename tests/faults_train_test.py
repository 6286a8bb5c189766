"""Issue 10, training/evaluation/conversion faults (tests/faults_test.py has
the preprocessing ones), numbered as in the issue.

Training uses the tiny 32x32 config of tests/train_worker.py on synthetic
shards with a module-wide compilation cache, so the few runs that really
train compile their step once; most cases fail before anything compiles.
"""

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from eval_helpers import random_model, save_checkpoint

from asrid_jax import checkpoint as ckpt_lib
from asrid_jax import evaluate, locks, predict, train, train_checks
from asrid_jax.data import records, synthetic

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import train_worker  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("faults_train")
  data = root / "shards"
  synthetic.write_synthetic_shards(data, image_size=32, seed=0)
  saved = {
    k: jax.config.values[k]
    for k in (
      "jax_compilation_cache_dir",
      "jax_disable_most_optimizations",
      "jax_threefry_partitionable",
    )
  }
  jax.config.update("jax_compilation_cache_dir", str(root / "xla_cache"))
  jax.config.update("jax_disable_most_optimizations", True)
  yield types.SimpleNamespace(root=root, data=data)
  for k, v in saved.items():
    jax.config.update(k, v)


def _config(data, total=4, **overrides):
  c = train_worker.tiny_config(str(data), total)
  c.log_data_order = False
  for key, value in overrides.items():
    node = c
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def _copy_data(env, name, drop=()):
  dst = env.root / name
  shutil.copytree(env.data, dst, ignore=shutil.ignore_patterns("*.meta.npz"))
  for split in drop:
    shutil.rmtree(dst / split)
  return dst


def _run(args, timeout=300):
  return subprocess.run(
    [sys.executable, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


@pytest.fixture(scope="module")
def trained(env):
  """A 4-step run, checkpoints at steps 2 and 4."""
  workdir = env.root / "trained"
  train.train_and_evaluate(_config(env.data), workdir)
  assert ckpt_lib.Checkpointer(workdir, read_only=True).all_steps() == [2, 4]
  return workdir


# ----------------------------------------------------------------------------
# Start-up checks (nothing compiles)
# ----------------------------------------------------------------------------


def test_04_other_schema_version_is_refused(env):
  data = _copy_data(env, "schema2")
  info = json.loads((data / records.DATASET_INFO).read_text())
  info["schema_version"] = 2
  (data / records.DATASET_INFO).write_text(json.dumps(info))
  with pytest.raises(
    train_checks.ConfigError, match="schema_version 2.*reads 1"
  ):
    train.train_and_evaluate(_config(data), env.root / "w04")
  with pytest.raises(ValueError, match="schema_version 2.*reads 1"):
    evaluate.evaluate(_config(data), model=None, split="val")


def test_05_bad_cadences_batch_and_paths_are_named(env):
  config = _config(env.data, checkpoint_every=0, log_every=-1, batch_size=7)
  config.model_init = str(env.root / "no_such_weights")
  with pytest.raises(train_checks.ConfigError) as e:
    train.train_and_evaluate(config, env.root / "w05")
  text = str(e.value)
  for needle in (
    "config.checkpoint_every = 0",
    "config.log_every = -1",
    "config.batch_size 7",
    "8 data-parallel devices",
    "config.model_init",
  ):
    assert needle in text, text
  with pytest.raises(train_checks.ConfigError, match="data.dir.*no such"):
    train.train_and_evaluate(_config(env.root / "nowhere"), env.root / "w05b")
  assert not (env.root / "w05" / "checkpoints").exists()


def _relabel(data, label):
  for split in records.SPLITS:
    for shard in records.list_shards(data, split):
      recs = [
        records.FaceRecord.from_bytes(d) for d in records.iter_records(shard)
      ]
      with records.ShardWriter(shard) as w:
        for r in recs:
          r.label = label
          w.write(r.to_bytes())


def test_06_one_class_training_split_is_refused_unless_sbi(env):
  data = _copy_data(env, "all_real")
  _relabel(data, records.LABEL_REAL)
  with pytest.raises(train_checks.ConfigError, match=r"\d+ REAL and 0 FAKE"):
    train.train_and_evaluate(_config(data), env.root / "w06")
  # Self-blended pseudo-fakes make the FAKE class: allowed, with a warning.
  config = _config(data)
  config.data.sbi_prob = 0.5
  checks = train_checks.validate(config, 8)
  assert checks["train_counts"][records.LABEL_FAKE] == 0


def test_15_second_trainer_on_a_workdir_is_refused(env, tmp_path):
  held = locks.take_lock(tmp_path / "lock.p0", "test")
  try:
    with pytest.raises(locks.BusyError, match=r"in use by pid \d+"):
      train.train_and_evaluate(_config(env.data), tmp_path)
  finally:
    held.close()


def test_05_20_cli_one_line_errors():
  bad = _run(
    [
      "-m",
      "asrid_jax.train",
      "--config=configs/dyn_mix.py:runlocal",
      "--workdir=/tmp/asrid_faults_unused",
      "--config.checkpoint_every=0",
    ]
  )
  assert bad.returncode == 1, bad.stderr[-3000:]
  assert "Traceback" not in bad.stderr
  assert "config.checkpoint_every = 0" in bad.stderr
  unknown = _run(
    [
      "-m",
      "asrid_jax.train",
      "--config=configs/dyn_mix.py:runlocal",
      "--workdir=/tmp/asrid_faults_unused",
      "--config.data.foo=1",
      "--config.optim.lrr=1",
    ]
  )
  assert unknown.returncode == 2, unknown.stderr[-3000:]
  lines = unknown.stderr.strip().splitlines()
  assert "Traceback" not in unknown.stderr
  assert lines == [
    line for line in lines if line.startswith("train: error: unknown")
  ], lines
  assert "'data.foo'; closest: data." in unknown.stderr
  assert "'optim.lrr'; closest: optim.lr" in unknown.stderr


# ----------------------------------------------------------------------------
# Runs that train
# ----------------------------------------------------------------------------


def test_07_no_val_split_trains_without_evaluations(env):
  data = _copy_data(env, "no_val", drop=("val",))
  workdir = env.root / "w07"
  # The `trained` run's program (same core config): a compilation cache hit.
  result = train.train_and_evaluate(_config(data, eval_every=2), workdir)
  assert result["step"] == 4 and result["val"] == {}
  assert ckpt_lib.Checkpointer(workdir, read_only=True).all_steps() == [2, 4]


def test_08_nan_state_is_never_checkpointed(env):
  # checkpoint_every is not a multiple of log_every: the old loop saved
  # step 1 before any finiteness check.
  config = _config(env.data, total=3, checkpoint_every=1, log_every=5)
  config.optim.lr = float("inf")
  workdir = env.root / "w08"
  with pytest.raises(FloatingPointError, match="step 1"):
    train.train_and_evaluate(config, workdir)
  assert ckpt_lib.Checkpointer(workdir, read_only=True).all_steps() == []


def _damage(workdir, step):
  """Deletes the data files of one checkpoint's model item."""
  model = workdir / "checkpoints" / str(step) / "model"
  data = [p for p in model.rglob("*") if p.is_file() and "/d/" in str(p)]
  assert data, sorted(model.rglob("*"))
  for p in data:
    p.unlink()


def test_16_18_relaunch_checks_and_damaged_checkpoint(env, trained, caplog):
  workdir = env.root / "w16"
  shutil.copytree(trained, workdir)
  # An architecture change is refused before anything compiles.
  other = _config(env.data, total=6)
  other.model.attention_dim = 8
  with pytest.raises(train_checks.ConfigError, match="model.attention_dim"):
    train.train_and_evaluate(other, workdir)
  # A damaged newest checkpoint: train falls back to step 2 with a warning;
  # a changed step count is allowed, reported and recorded.
  _damage(workdir, 4)
  caplog.set_level("WARNING")
  result = train.train_and_evaluate(_config(env.data, total=6), workdir)
  assert result["step"] == 6
  text = caplog.text
  assert "checkpoint step 4" in text and "damaged" in text
  assert "total_steps: 4 -> 6" in text
  moved = list((workdir / ckpt_lib.DAMAGED_DIR).iterdir())
  assert [p.name.split("-")[0] for p in moved] == ["4"]
  log = [
    json.loads(line)
    for line in (workdir / train_checks.RELAUNCH_LOG).read_text().splitlines()
  ]
  assert log[-1]["step"] == 4 and log[-1]["changes"]["total_steps"] == [4, 6]
  assert ckpt_lib.Checkpointer(workdir, read_only=True).all_steps()[-1] == 6
  # The first launch's seed, not the one the new step count would derive.
  seed = json.loads((trained / "config.json").read_text())["seed"]
  assert json.loads((workdir / "config.json").read_text())["seed"] == seed
  from configs import common

  assert common.derive_seed(_config(env.data, total=6)) != seed


def test_16_seed_is_the_first_launch_s(env):
  from configs import common

  first = _config(env.data, total=4)
  second = _config(env.data, total=6)
  second.optim.lr = 5e-4
  assert common.derive_seed(first) != common.derive_seed(second)
  refused, allowed = train_checks.compare_relaunch(second, first)
  assert refused == [] and set(allowed) == {"optim.lr", "total_steps"}


# ----------------------------------------------------------------------------
# Checkpoint faults seen by evaluate and predict
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_workdir(tmp_path_factory):
  from configs import dyn_mix

  config = dyn_mix.get_config("runlocal")
  config.data.image_size = 32
  config.data.clip_len = 3
  config.data.dir = str(tmp_path_factory.mktemp("no_shards"))
  path = tmp_path_factory.mktemp("eval_run")
  model = random_model(config.model)
  save_checkpoint(path, config, model, step=3)
  save_checkpoint(path, config, model, step=5)
  _damage(path, 5)
  return path


def test_18_eval_and_predict_fall_back_from_a_damaged_checkpoint(
  eval_workdir, caplog
):
  caplog.set_level("WARNING")
  for which in ("latest", "best"):
    _, _, step = ckpt_lib.restore_for_eval(eval_workdir, which)
    assert step == 3
    assert "checkpoint step 5" in caplog.text and "damaged" in caplog.text
  # An explicit step fails in one line naming it.
  with pytest.raises(ckpt_lib.CheckpointError, match="step 5") as e:
    ckpt_lib.restore_for_eval(eval_workdir, 5)
  assert "\n" not in str(e.value)


def test_19_checkpoint_argument(eval_workdir, capsys):
  for main in (evaluate.main, predict.main):
    extra = ["x.mp4"] if main is predict.main else []
    with pytest.raises(SystemExit) as e:
      main([*extra, f"--workdir={eval_workdir}", "--checkpoint=abc"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "must be best, latest or a step number" in err
    assert "invalid literal" not in err
  assert ckpt_lib.parse_which("250") == 250


def test_17_failed_async_save_is_one_clear_error(tmp_path, monkeypatch):
  ckpt = ckpt_lib.Checkpointer(tmp_path, async_save=False)

  def full(*a, **k):
    try:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/ocdbt")
    except OSError as inner:
      raise RuntimeError("tensorstore: write failed [many lines]") from inner

  monkeypatch.setattr(ckpt.manager, "save", full)
  monkeypatch.setattr(ckpt.manager, "wait_until_finished", full)
  state = {"params": {}, "opt": {}, "step": np.int32(1)}
  with pytest.raises(ckpt_lib.CheckpointError) as e:
    ckpt.save(1, state)
  assert str(e.value) == (
    f"checkpoint save (step 1) in {ckpt.directory} failed: "
    "No space left on device (/x/ocdbt)"
  )
  with pytest.raises(ckpt_lib.CheckpointError, match="No space left"):
    ckpt.close()  # the background thread's failure: raised once, cleanly


# ----------------------------------------------------------------------------
# predict inputs and outputs
# ----------------------------------------------------------------------------


def test_09_broken_and_looping_symlinks_get_a_row(tmp_path):
  (tmp_path / "ok.mp4").write_bytes(b"x")
  os.symlink(tmp_path / "gone.avi", tmp_path / "broken.mp4")
  os.symlink(tmp_path / "loop.mp4", tmp_path / "loop.mp4")
  found = predict.find_videos([tmp_path])
  assert [n for n, _ in found] == ["broken.mp4", "loop.mp4", "ok.mp4"]
  from preprocessing import faces as faces_lib

  options = predict.PredictOptions(image_size=32, clip_len=1, dynamic=False)
  results = predict.predict_videos(
    found,
    extract=lambda p: faces_lib.extract_video_faces(p, None),
    forward=lambda x: {},
    options=options,
    progress=False,
  )
  assert len(results) == 3
  for r in results:
    assert r.score == options.fallback and r.reason, r


def test_10_heatmap_names_are_unique():
  taken = set()
  names = [
    predict.heatmap_name(f, taken) for f in ("sub/x.mp4", "sub__x.mp4", "y.mp4")
  ]
  assert names == ["sub__x.png", "sub__x-2.png", "y.png"]


# ----------------------------------------------------------------------------
# convert
# ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_dict():
  torchvision = pytest.importorskip("torchvision")
  return torchvision.models.mobilenet_v3_small().state_dict()


def _convert(weights, out):
  from asrid_jax import convert

  return convert.main([f"--torchvision_weights={weights}", f"--out={out}"])


def test_21_convert_says_what_the_file_is_not(tmp_path, state_dict, capsys):
  import torch

  (tmp_path / "random.pth").write_bytes(np.random.default_rng(0).bytes(4096))
  (tmp_path / "empty.pth").write_bytes(b"")
  for name, want in (("random", "not a torch file"), ("empty", "empty file")):
    assert _convert(tmp_path / f"{name}.pth", tmp_path / name) == 1
    err = capsys.readouterr().err
    assert want in err and "weights_only" not in err, err
  bad = dict(state_dict)
  key = "features.0.0.weight"
  bad[key] = bad[key].clone()
  bad[key][0, 0, 0, 0] = float("nan")
  torch.save(bad, tmp_path / "nan.pth")
  assert _convert(tmp_path / "nan.pth", tmp_path / "nan") == 1
  err = capsys.readouterr().err
  assert f"tensor '{key}' has 1 non-finite value" in err
  assert not (tmp_path / "nan").exists()


def test_14_convert_unwritable_output_is_one_line(tmp_path, state_dict, capsys):
  import torch

  torch.save(state_dict, tmp_path / "ok.pth")
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  assert _convert(tmp_path / "ok.pth", blocker / "sub" / "out") == 1
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  assert str(blocker) in err
