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
    "image": rng.integers(0, 255, (8, cfg.data.clip_len, 32, 32, 3), dtype=np.uint8),
    "label": np.arange(8, dtype=np.int32) % 2,
  }
  batch = jax.device_put(batch, trainer.batch_sharding)
  state, metrics = trainer.train_step(state, batch, jax.random.key(0))
  assert float(metrics["opt"]["grad_norm"]) == 0.0
  after = jax.device_get(state["params"])
  for k, v in before.items():
    np.testing.assert_array_equal(after[k], v, err_msg=k)
