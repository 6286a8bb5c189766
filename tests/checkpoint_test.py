"""Tests for asrid_jax.checkpoint: retention (last k + best), state round trip."""

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from asrid_jax import checkpoint as ckpt_lib


def _state(v: float):
  return {
    "params": {"head/w": jnp.full((3,), v), "backbone/k": jnp.full((2, 2), v)},
    "model_state": {"backbone/bn/mean": jnp.zeros((2,))},
    "opt": {"mu": {"head/w": jnp.full((3,), -v)}, "count": jnp.int32(7)},
    "step": jnp.int32(int(v)),
  }


def _abstract(state):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)


def test_keeps_last_k_and_best_and_restores_everything(tmp_path):
  it = iter(grain.MapDataset.range(50).shuffle(seed=3).to_iter_dataset())
  config = ml_collections.ConfigDict({"model": {"variant": "dyn"}, "lr": 0.1})
  ckpt = ckpt_lib.Checkpointer(tmp_path, keep=2, async_save=True)
  losses = {1: 0.9, 2: 0.3, 3: 0.5, 4: None, 5: 0.6, 6: None}
  for step, loss in losses.items():
    next(it)
    metrics = None if loss is None else {ckpt_lib.METRIC: loss}
    ckpt.save(step, _state(step), data_iter=it, config=config, metrics=metrics)
  # Consumed while the async save of step 6 may still be writing: the saved
  # iterator state must be the one at the save call.
  [next(it) for _ in range(3)]
  ckpt.close()

  ckpt = ckpt_lib.Checkpointer(tmp_path, read_only=True)
  assert ckpt.all_steps() == [2, 5, 6]  # last 2 + the best (step 2)
  assert ckpt.best_step() == 2
  assert ckpt.resolve("best") == 2 and ckpt.resolve("latest") == 6
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 3"):
    ckpt.resolve(3)
  assert ckpt.config(6).model.variant == "dyn"
  ckpt.close()

  ckpt = ckpt_lib.Checkpointer(tmp_path, keep=2)
  fresh = iter(grain.MapDataset.range(50).shuffle(seed=3).to_iter_dataset())
  state = ckpt.restore(2, _abstract(_state(0)), fresh)
  np.testing.assert_array_equal(state["params"]["head/w"], [2.0] * 3)
  np.testing.assert_array_equal(state["opt"]["mu"]["head/w"], [-2.0] * 3)
  assert int(state["step"]) == 2 and int(state["opt"]["count"]) == 7
  ref = list(grain.MapDataset.range(50).shuffle(seed=3))
  # The iterator continues right after the 2 elements consumed by step 2.
  assert next(fresh) == ref[2]
  fresh = iter(grain.MapDataset.range(50).shuffle(seed=3).to_iter_dataset())
  ckpt.restore(6, _abstract(_state(0)), fresh)
  assert next(fresh) == ref[6]
  ckpt.close()


def test_empty_workdir_is_reported_clearly(tmp_path):
  ckpt = ckpt_lib.Checkpointer(tmp_path, read_only=True)
  assert ckpt.latest_step() is None and ckpt.best_step() is None
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    ckpt.resolve("latest")


def test_find_incomplete(tmp_path):
  d = tmp_path / "checkpoints"
  (d / "4.orbax-checkpoint-tmp-123").mkdir(parents=True)
  (d / "2").mkdir()
  assert [p.name for p in ckpt_lib.find_incomplete(d)] == [
    "4.orbax-checkpoint-tmp-123"
  ]
  assert ckpt_lib.find_incomplete(tmp_path / "nothing") == []
