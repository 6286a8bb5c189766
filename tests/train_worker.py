"""Subprocess entry for tests/train_test.py (not collected: no _test suffix).

  python tests/train_worker.py single WORKDIR DATA_DIR TOTAL_STEPS
  python tests/train_worker.py multi WORKDIR DATA_DIR TOTAL_STEPS PORT PID OUT

'single' trains the tiny test config on 8 CPU devices (used with the SIGKILL
fault injection); 'multi' is one of two processes on localhost (2 CPU devices
each, gloo collectives) and writes its final parameters to OUT (.npz).
"""

import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


# Adam's first updates are lr * g / (|g| + eps): with the default eps a
# parameter whose gradient is ~0 moves by +-lr depending on float noise in
# the all-reduce order, so the 1- vs 2-process comparison uses a larger eps
# (updates then depend smoothly on the gradients).
MULTI_ADAM_EPS = 1e-3


def tiny_config(data_dir: str, total_steps: int):
  """dyn_mix:runlocal shrunk further for tests: 32x32, grouped depthwise."""
  from configs import common

  c = common.base_config("dyn_mix", "runlocal")
  c.data.dir = str(data_dir)
  c.data.image_size = 32
  c.data.augment = False
  c.model.depthwise_impl = "grouped"  # smaller program: faster compiles
  c.total_steps = total_steps
  c.log_every = 2
  c.eval_every = 0
  c.checkpoint_every = 2
  c.log_data_order = True
  c.async_checkpoints = True
  return c


def main(argv):
  mode, workdir, data_dir, total = argv[1], argv[2], argv[3], int(argv[4])
  ndev = 8 if mode == "single" else 2
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={ndev}"
  import jax

  jax.config.update("jax_num_cpu_devices", ndev)
  jax.config.update("jax_disable_most_optimizations", True)
  if os.environ.get("ASRID_TEST_CACHE"):
    jax.config.update(
      "jax_compilation_cache_dir", os.environ["ASRID_TEST_CACHE"]
    )
  from absl import logging

  logging.set_verbosity(logging.INFO)
  config = tiny_config(data_dir, total)
  if mode == "multi":
    config.optim.eps = MULTI_ADAM_EPS
    port, pid, out = argv[5], int(argv[6]), argv[7]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
      f"127.0.0.1:{port}", num_processes=2, process_id=pid
    )
    assert jax.device_count() == 4, jax.devices()
  from asrid_jax import train

  result = train.train_and_evaluate(config, workdir)
  if mode == "multi":
    import numpy as np

    params = {
      k: np.asarray(v.addressable_data(0))
      for k, v in result["state"]["params"].items()
    }
    np.savez(out, **params)
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv)
