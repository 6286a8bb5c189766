"""Tests for asrid_jax.step: which parameters train, and what |g| counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asrid_jax import sharding
from asrid_jax import step as step_lib
from configs import common

pytestmark = pytest.mark.usefixtures("fast_compiles")


def test_liveness_finds_inputs_the_output_never_reads():
  @jax.jit
  def inner(a, b):
    return a * 2.0, b + 1.0  # second output is dropped by the caller

  def loss(p, x):
    used, _ = inner(p["a"], p["b"])
    aux = p["c"] * x  # returned, but not output 0
    return jnp.sum(used * x), aux

  params = {"a": jnp.ones(2), "b": jnp.ones(2), "c": jnp.ones(2)}
  got = step_lib.params_without_gradient(loss, params, jnp.ones(2))
  assert got == {"b", "c"}


def test_non_mix_variant_stride32_stage_gets_no_decay():
  # sta_new reads the stride-16 and stride-8 taps only: the last backbone
  # stages feed nothing but their own BatchNorm statistics.
  cfg = common.base_config("sta_new", "runlocal")
  cfg.data.image_size = 32
  trainer = step_lib.Trainer(cfg, sharding.make_mesh([("data", -1)]), 0)
  dead = trainer.no_gradient
  stages = {k.split("/")[2] for k in dead if k.startswith("backbone/")}
  assert stages == {"9", "10", "11", "12"}  # the stride-32 stage and conv
  assert all(k.startswith("backbone/") for k in dead)
  assert "backbone/features/12/0/kernel" in dead
  assert not any(k.startswith("static_head/") for k in dead)
  assert "backbone/features/0/0/kernel" in trainer.trainable
  mix = common.base_config("sta_new_mix", "runlocal")
  mix.data.image_size = 32
  trainer = step_lib.Trainer(mix, sharding.make_mesh([("data", -1)]), 0)
  assert not trainer.no_gradient  # Mix pools the last map: all reached


def test_frozen_parameters_do_not_count_in_grad_norm():
  cfg = common.base_config("baseline", "runlocal")
  cfg.data.image_size = 32
  cfg.model.depthwise_impl = "grouped"
  cfg.optim.clip_norm = 1.0
  cfg.optim.freeze = ["^backbone/", "^static_head/"]  # every parameter
  mesh = sharding.make_mesh([("data", -1)])
  trainer = step_lib.Trainer(cfg, mesh, 0)
  assert not trainer.trainable
  state = trainer.init_state()
  before = jax.device_get(state["params"])
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.integers(
      0, 255, (8, cfg.data.clip_len, 32, 32, 3), dtype=np.uint8
    ),
    "label": np.arange(8, dtype=np.int32) % 2,
  }
  batch = jax.device_put(batch, trainer.batch_sharding)
  state, metrics = trainer.train_step(state, batch, jax.random.key(0))
  assert float(metrics["opt"]["grad_norm"]) == 0.0
  after = jax.device_get(state["params"])
  for k, v in before.items():
    np.testing.assert_array_equal(after[k], v, err_msg=k)


def test_ema_keeps_batch_statistics_for_its_weights():
  cfg = common.base_config("baseline", "runlocal")
  cfg.data.image_size = 32
  cfg.model.depthwise_impl = "grouped"
  cfg.model.frozen_bn = False  # BatchNorm statistics that move
  cfg.ema_decay = 0.99
  mesh = sharding.make_mesh([("data", -1)])
  trainer = step_lib.Trainer(cfg, mesh, 0)
  state = trainer.init_state()
  init_stats = jax.device_get(state["model_state"])
  rng = np.random.default_rng(1)
  batch = {
    "image": rng.integers(0, 255, (8, cfg.data.clip_len, 32, 32, 3), np.uint8),
    "label": np.arange(8, dtype=np.int32) % 2,
  }
  batch = jax.device_put(batch, trainer.batch_sharding)
  state, _ = trainer.train_step(state, batch, jax.random.key(0))
  raw = jax.device_get(state["model_state"])
  ema = jax.device_get(state["ema_stats"])
  key = next(k for k in raw if k.endswith("/mean") and k.startswith("backbone"))
  assert not np.allclose(raw[key], init_stats[key])  # the batch moved them
  # Step 0: decay min(0.99, 1/10) = 0.1 -> 0.1 * init + 0.9 * new.
  np.testing.assert_allclose(
    ema[key], 0.1 * init_stats[key] + 0.9 * raw[key], rtol=1e-5, atol=1e-6
  )
  # Evaluation pairs the EMA weights with the EMA statistics.
  model = trainer.eval_model(state)
  _, rest = trainer.spec.split(model)
  np.testing.assert_allclose(np.asarray(rest[key]), ema[key])


def test_checkpoint_without_ema_stats_resumes_with_raw_statistics(tmp_path):
  from asrid_jax import checkpoint as ckpt_lib

  old = {
    "params": {"head/w": jnp.ones((3,))},
    "model_state": {"bn/mean": jnp.full((2,), 0.25)},
    "ema": {"head/w": jnp.full((3,), 0.5)},
    "opt": {"count": jnp.int32(1)},
    "step": jnp.int32(3),
  }  # as saved before EMA batch statistics existed
  ckpt = ckpt_lib.Checkpointer(tmp_path, async_save=False)
  ckpt.save(3, old, force=True)
  ckpt.close()
  target = dict(old, ema_stats=old["model_state"])
  target = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target
  )
  ckpt = ckpt_lib.Checkpointer(tmp_path)
  assert not ckpt.has_item(3, "ema_stats") and ckpt.has_ema(3)
  state = ckpt.restore(3, target)
  ckpt.close()
  np.testing.assert_array_equal(state["ema_stats"]["bn/mean"], [0.25, 0.25])
  np.testing.assert_array_equal(state["ema"]["head/w"], [0.5] * 3)
  # A current checkpoint restores its own EMA statistics.
  new = dict(old, ema_stats={"bn/mean": jnp.full((2,), 0.75)})
  ckpt = ckpt_lib.Checkpointer(tmp_path / "new", async_save=False)
  ckpt.save(4, new, force=True)
  ckpt.close()
  ckpt = ckpt_lib.Checkpointer(tmp_path / "new", read_only=True)
  assert ckpt.has_item(4, "ema_stats") and ckpt.has_ema(4)
  state = ckpt.restore(4, target)
  ckpt.close()
  np.testing.assert_array_equal(state["ema_stats"]["bn/mean"], [0.75, 0.75])
