"""Tests for asrid_jax.sharding: mesh resolution, shardings, batch assembly."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from asrid_jax import sharding


def test_mesh_shape_fills_minus_one():
  assert sharding.mesh_shape([("data", -1), ("model", 1)], 8) == (
    ("data", "model"),
    (8, 1),
  )
  assert sharding.mesh_shape([("data", -1), ("fsdp", 2)], 8)[1] == (4, 2)
  with pytest.raises(ValueError, match="not divisible"):
    sharding.mesh_shape([("data", -1), ("model", 3)], 8)
  with pytest.raises(ValueError, match="at most one axis"):
    sharding.mesh_shape([("data", -1), ("model", -1)], 8)
  with pytest.raises(ValueError, match="needs 4 devices, there are 8"):
    sharding.mesh_shape([("data", 4)], 8)


def test_batch_and_param_shardings():
  mesh = sharding.make_mesh([("data", -1), ("fsdp", 2)])
  assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
  assert sharding.batch_sharding(mesh).spec == P(("data", "fsdp"))
  assert sharding.data_parallel_size(mesh) == 8
  shapes = {
    "backbone/conv/kernel": jax.ShapeDtypeStruct((3, 3, 96, 576), "float32"),
    "head/bias": jax.ShapeDtypeStruct((5,), "float32"),
    "head/fc/kernel": jax.ShapeDtypeStruct((128, 64), "float32"),
  }
  out = sharding.param_shardings(
    shapes, mesh, rules=[("head/fc/kernel", (None, "fsdp"))]
  )
  # fsdp splits the largest divisible dim; small params stay replicated.
  assert out["backbone/conv/kernel"].spec == P(None, None, None, "fsdp")
  assert out["head/bias"].spec == P()
  assert out["head/fc/kernel"].spec == P(None, "fsdp")
  with pytest.raises(ValueError, match="does not fit head/bias"):
    sharding.param_shardings(shapes, mesh, rules=[("head/bias", (None, None))])


def test_default_params_are_replicated():
  mesh = sharding.make_mesh([("data", -1), ("model", 1)])
  shapes = {"w": jax.ShapeDtypeStruct((1024, 1024), "float32")}
  assert sharding.param_shardings(shapes, mesh)["w"].spec == P()


def test_global_batch_from_local_parts():
  mesh = sharding.make_mesh([("data", -1)])
  assert sharding.local_batch_size(16, mesh) == 16  # one process
  with pytest.raises(ValueError, match="data-parallel size 8"):
    sharding.local_batch_size(12, mesh)
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  batch = sharding.global_batch({"x": x}, mesh)
  assert batch["x"].shape == (16, 3)
  assert len(batch["x"].addressable_shards) == 8
  assert batch["x"].addressable_shards[1].data.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(batch["x"]), x)


def test_distributed_init_only_when_multiprocess(monkeypatch):
  for var in (
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "JAX_COORDINATOR_ADDRESS",
    sharding.ENV_COORDINATOR,
    sharding.ENV_NUM_PROCESSES,
    sharding.ENV_PROCESS_ID,
  ):
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(
    jax.distributed, "initialize", lambda *a, **k: calls.append((a, k))
  )
  assert not sharding.maybe_initialize_distributed()
  assert calls == []
  with pytest.raises(ValueError, match="needs num_processes and process_id"):
    sharding.maybe_initialize_distributed("10.0.0.1:1234")
  monkeypatch.setenv(sharding.ENV_COORDINATOR, "10.0.0.1:1234")
  monkeypatch.setenv(sharding.ENV_NUM_PROCESSES, "4")
  monkeypatch.setenv(sharding.ENV_PROCESS_ID, "3")
  assert sharding.maybe_initialize_distributed()
  assert calls[-1] == (
    ("10.0.0.1:1234",),
    {"num_processes": 4, "process_id": 3},
  )
  monkeypatch.delenv(sharding.ENV_COORDINATOR)
  monkeypatch.setenv("SLURM_NTASKS", "2")
  monkeypatch.setenv("SLURM_JOB_ID", "77")
  assert sharding.maybe_initialize_distributed()
  assert calls[-1] == ((), {})
