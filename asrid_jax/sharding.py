"""Device mesh, NamedShardings and multi-host helpers.

The mesh comes from `config.mesh`, a list of (axis name, size) pairs in which
one size may be -1 ("all remaining devices"), e.g. [('data', -1), ('model', 1)].
Batches are sharded on their leading dim over the data-parallel axes ('data'
and, when present, 'fsdp'); parameters are replicated unless an 'fsdp' axis of
size > 1 exists (then each large parameter is split along its biggest
divisible dim, big_vision's fsdp strategy) or an explicit regex rule in
`config.sharding_rules` places it. Everything runs under `jax.jit` with these
shardings: no pmap, and batch norm sees the global batch.

Multi-host: `maybe_initialize_distributed` must run before anything touches
the JAX backend. Each process feeds its own disjoint slice of every global
batch (`local_batch_size`), and `global_batch` assembles the process-local
numpy arrays into global `jax.Array`s laid out on the data axes.
"""

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXES = ("data", "fsdp")

# Environment variables that make a launch explicitly multi-process (read by
# `maybe_initialize_distributed` when no flag is given).
ENV_COORDINATOR = "ASRID_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "ASRID_NUM_PROCESSES"
ENV_PROCESS_ID = "ASRID_PROCESS_ID"


def _cluster_detected() -> str | None:
  """Names the multi-process cluster environment JAX can auto-detect."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
    return "SLURM"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "Open MPI"
  if int(env.get("PMI_SIZE", "1")) > 1 and "MPICH" in "".join(env):
    return "MPICH"
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if env.get("TPU_WORKER_HOSTNAMES", "localhost") not in ("", "localhost"):
    return "Cloud TPU"
  return None


def maybe_initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Calls `jax.distributed.initialize` when the launch is multi-process.

  Explicit arguments win, then the ASRID_* environment variables, then JAX's
  own cluster auto-detection (SLURM, Open MPI, Cloud TPU, ...). A plain
  single-process launch does nothing. Returns True when it initialised.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get(ENV_COORDINATOR)
  if num_processes is None and env.get(ENV_NUM_PROCESSES):
    num_processes = int(env[ENV_NUM_PROCESSES])
  if process_id is None and env.get(ENV_PROCESS_ID):
    process_id = int(env[ENV_PROCESS_ID])
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(
        "a coordinator address needs num_processes and process_id "
        f"(flags or ${ENV_NUM_PROCESSES} / ${ENV_PROCESS_ID})"
      )
    logging.info(
      "jax.distributed.initialize(%s, num_processes=%d, process_id=%d)",
      coordinator_address,
      num_processes,
      process_id,
    )
    jax.distributed.initialize(
      coordinator_address, num_processes=num_processes, process_id=process_id
    )
    return True
  cluster = _cluster_detected()
  if cluster is None:
    return False
  logging.info("multi-process launch detected (%s): auto-initialising", cluster)
  jax.distributed.initialize()
  return True


def mesh_shape(
  spec: Sequence[Sequence[Any]], num_devices: int
) -> tuple[tuple[str, ...], tuple[int, ...]]:
  """Resolves config.mesh (one size may be -1) for `num_devices` devices."""
  names = tuple(str(n) for n, _ in spec)
  sizes = [int(s) for _, s in spec]
  if len(set(names)) != len(names):
    raise ValueError(f"config.mesh has a repeated axis name: {names}")
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {spec}")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if free:
    if num_devices % fixed:
      raise ValueError(
        f"config.mesh {list(spec)}: {num_devices} devices are not divisible "
        f"by the fixed axes' product {fixed}"
      )
    sizes[free[0]] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(
      f"config.mesh {list(spec)} needs {int(np.prod(sizes))} devices, "
      f"there are {num_devices}"
    )
  return names, tuple(sizes)


def make_mesh(
  spec: Sequence[Sequence[Any]], devices: Sequence[Any] | None = None
) -> Mesh:
  """The global device mesh described by config.mesh."""
  devices = list(jax.devices() if devices is None else devices)
  names, sizes = mesh_shape(spec, len(devices))
  return jax.make_mesh(
    sizes,
    names,
    axis_types=(jax.sharding.AxisType.Auto,) * len(names),
    devices=devices,
  )


def data_axes(mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes a batch's leading dim is split over."""
  return tuple(a for a in DATA_AXES if a in mesh.axis_names)


def data_parallel_size(mesh: Mesh) -> int:
  return int(np.prod([mesh.shape[a] for a in data_axes(mesh)]))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim over the data axes, the rest replicated."""
  return NamedSharding(mesh, P(data_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _fsdp_spec(shape: Sequence[int], size: int, min_size: int) -> P:
  """Split the largest dim divisible by `size` over 'fsdp' (big_vision)."""
  if size <= 1 or int(np.prod(shape)) < min_size:
    return P()
  for dim in np.argsort(shape)[::-1]:
    if shape[dim] % size == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def param_shardings(
  shapes: Mapping[str, Any],
  mesh: Mesh,
  rules: Sequence[Sequence[Any]] = (),
  *,
  fsdp_min_size: int = 2**14,
) -> dict[str, NamedSharding]:
  """Shardings for a flat {path: ShapeDtypeStruct} parameter dict.

  Args:
    shapes: flat dict of arrays or ShapeDtypeStructs keyed by '/'-paths.
    mesh: the mesh.
    rules: (regex, spec) pairs, first match wins; spec is a tuple of axis
      names / None per dim, e.g. ('.*head.*/kernel', (None, 'model')).
    fsdp_min_size: parameters smaller than this stay replicated on 'fsdp'.
  """
  fsdp = mesh.shape.get("fsdp", 1)
  compiled = [(re.compile(r), tuple(s)) for r, s in rules]
  out = {}
  for key, x in shapes.items():
    spec = None
    for regex, s in compiled:
      if regex.fullmatch(key):
        if len(s) != len(x.shape):
          raise ValueError(
            f"sharding rule {regex.pattern!r} -> {s} does not fit "
            f"{key} of shape {tuple(x.shape)}"
          )
        spec = P(*s)
        break
    if spec is None:
      spec = _fsdp_spec(tuple(x.shape), fsdp, fsdp_min_size)
    out[key] = NamedSharding(mesh, spec)
  return out


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """This process's share of a global batch (checked to split evenly)."""
  count = jax.process_count()
  dp = data_parallel_size(mesh)
  if global_batch_size % dp:
    raise ValueError(
      f"global batch {global_batch_size} is not divisible by the "
      f"data-parallel size {dp} (mesh {dict(mesh.shape)})"
    )
  if global_batch_size % count:
    raise ValueError(
      f"global batch {global_batch_size} is not divisible by the "
      f"{count} processes"
    )
  return global_batch_size // count


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict:
  """Process-local numpy batch parts -> global jax.Arrays on the data axes.

  Every process passes its own disjoint rows; the global batch is their
  concatenation in process order (the layout jax's process-local API uses).
  """
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
    for k, v in local.items()
  }
