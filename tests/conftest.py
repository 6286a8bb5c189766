"""Shared pytest set-up: 8 fake CPU devices, tiny fixtures, real-sample paths.

The device count must be fixed before JAX initialises its backend, so it is set
here, at import time of the first conftest, before any test module imports jax.
"""

import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (
    _flags + " --xla_force_host_platform_device_count=8"
  ).strip()

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

NUM_DEVICES = 8


def real_samples_dir() -> pathlib.Path | None:
  """The real-sample folder from $ASRID_REAL_SAMPLES, or None when absent."""
  path = os.environ.get("ASRID_REAL_SAMPLES")
  if not path or not pathlib.Path(path).is_dir():
    return None
  return pathlib.Path(path)


@pytest.fixture
def real_samples() -> pathlib.Path:
  """The real samples, or a clean skip naming the variable to set."""
  path = real_samples_dir()
  if path is None:
    pytest.skip("set ASRID_REAL_SAMPLES to ../shared/real_samples to run this")
  return path


@pytest.fixture(scope="module")
def fast_compiles():
  """Skips XLA's optimisation passes for one test module, then restores them.

  For tests that check behaviour, not speed: their run time is dominated by
  compiling, which this roughly halves. Use it with
  `pytestmark = pytest.mark.usefixtures("fast_compiles")`.
  """
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
