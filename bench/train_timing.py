"""Timing one train step: the JAX Trainer and the PyTorch twin, alone or
alternating, in this process or a fresh one (bench/train_bench.py's parts).

  run, info = jax_runner(variant, size)   # run(n): n steps, then wait
  rates = interleaved_rates({"jax": run}, frames, steps, rounds, warmup)
  rate("torch", variant, size, steps)     # one framework alone
  child("jax", variant, size, steps)      # `rate` in a fresh process
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

CLIPS, CLIP_LEN = 2, 4  # 8 frames a step on CPU


def _config(
  variant: str, size: int, batch: int, clip_len: int, dtype: str = "float32"
):
  from configs import common

  c = common.base_config(variant)
  c.data.image_size = size
  c.data.clip_len = clip_len
  c.batch_size = batch
  c.total_steps = 1000
  c.model.dtype = dtype
  return c


def jax_trainer(
  variant: str, size: int, batch: int, clip_len: int, dtype: str = "float32"
):
  """(trainer, state, batch, key): a Trainer on all devices, random clips."""
  import jax
  import numpy as np

  from asrid_jax import sharding
  from asrid_jax import step as step_lib

  jax.config.update("jax_threefry_partitionable", True)
  config = _config(variant, size, batch, clip_len, dtype)
  mesh = sharding.make_mesh([("data", -1)])
  trainer = step_lib.Trainer(config, mesh, 0)
  state = trainer.init_state()
  rng = np.random.default_rng(0)
  local = {
    "image": rng.integers(0, 255, (batch, clip_len, size, size, 3), np.uint8),
    "label": rng.integers(0, 2, (batch,), np.int32),
  }
  return trainer, state, sharding.global_batch(local, mesh), jax.random.key(0)


def jax_runner(
  variant: str,
  size: int,
  batch: int = CLIPS,
  clip_len: int = CLIP_LEN,
  dtype: str = "float32",
) -> tuple[Callable[[int], None], dict]:
  """(run, info): run(n) takes n jitted train steps and waits for the last.

  The first call compiles; info["compile_s"] is its time.
  """
  import jax

  trainer, state, batch_arr, key = jax_trainer(
    variant, size, batch, clip_len, dtype
  )

  def run(n: int) -> None:
    nonlocal state
    for _ in range(n):
      state, _ = trainer.train_step(state, batch_arr, key)
    jax.block_until_ready(state)

  t0 = time.perf_counter()
  run(1)
  info = {
    "compile_s": time.perf_counter() - t0,
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
  }
  return run, info


def jax_peak_bytes() -> int | None:
  """The process peak so far (no reset in JAX): later rows include earlier."""
  import jax

  return (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")


def torch_runner(
  variant: str,
  size: int,
  batch: int = CLIPS,
  clip_len: int = CLIP_LEN,
  dtype: str = "float32",
) -> tuple[Callable[[int], None], dict]:
  """(run, info): run(n) takes n twin AdamW steps and waits for the last."""
  import torch

  from bench import torch_twin

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  cuda = device.type == "cuda"
  sync = torch.cuda.synchronize if cuda else lambda: None
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  torch.manual_seed(0)
  model = torch_twin.ASRIDTwin(variant).to(device)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
  images = torch.randint(
    0, 255, (batch, clip_len, 3, size, size), dtype=torch.uint8, device=device
  )
  labels = torch.randint(0, 2, (batch,), device=device)

  def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(
      device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"
    ):
      out = model(images)
    loss = torch_twin.asrid_loss({k: v.float() for k, v in out.items()}, labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  def run(n: int) -> None:
    for _ in range(n):
      step()
    sync()

  info = {
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
    "device": torch.cuda.get_device_name(0) if cuda else "cpu",
  }
  return run, info


def torch_peak_bytes() -> int | None:
  """CUDA's peak since the last torch_runner; None on a CPU."""
  import torch

  return (
    torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
  )


def interleaved_rates(
  runs: dict[str, Callable[[int], None]],
  frames: int,
  steps: int,
  rounds: int,
  warmup: int,
  pause_s: float = 1.0,
) -> dict[str, list[float]]:
  """Frames/s of each run in `rounds` alternating rounds of `steps` steps.

  Every run first takes `warmup` untimed steps (allocators, caches and
  thread pools settle over the first few: a single warm-up step left both
  frameworks 10-30% slow in the first timed round). Alternating the rounds
  exposes both to the same machine load, so their per-round ratio is
  steadier than either rate. Each round starts after a `pause_s` pause:
  the thread pool of the run before spins for a while after its last step
  (torch's OpenMP workers cost the next JAX step on 2 cores about 450 ms
  without the pause, 1 s after it nothing).
  """
  for run in runs.values():
    run(warmup)
  rates = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      if len(runs) > 1:
        time.sleep(pause_s)
      t0 = time.perf_counter()
      run(steps)
      rates[name].append(frames * steps / (time.perf_counter() - t0))
  return rates


def summary(rates: list[float], frames: int) -> dict:
  fps = statistics.median(rates)
  return {"frames_per_s": fps, "step_s": frames / fps, "rounds": rates}


def rate(
  framework: str,
  variant: str,
  size: int,
  steps: int,
  batch: int = CLIPS,
  clip_len: int = CLIP_LEN,
  dtype: str = "float32",
  rounds: int = 3,
  warmup: int = 3,
) -> dict:
  """One framework alone ("jax" or "torch"): the median frames/s over
  `rounds` rounds of `steps` steps, after `warmup` steps."""
  runner, peak = {
    "jax": (jax_runner, jax_peak_bytes),
    "torch": (torch_runner, torch_peak_bytes),
  }[framework]
  run, info = runner(variant, size, batch, clip_len, dtype)
  frames = batch * clip_len
  rates = interleaved_rates({framework: run}, frames, steps, rounds, warmup)
  return {**summary(rates[framework], frames), **info, "peak_bytes": peak()}


def child(
  framework: str, variant: str, size: int, steps: int, devices: int = 0, **kw
) -> dict:
  """`rate` in a fresh process; for JAX with `devices` XLA CPU devices."""
  env = dict(os.environ)
  setup = ""
  if devices:
    env["JAX_PLATFORMS"] = "cpu"
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    setup = f"import jax; jax.config.update('jax_num_cpu_devices', {devices});"
  code = (
    f"import json; {setup}"
    "from bench import train_timing as b;"
    f"print('RESULT', json.dumps(b.rate({framework!r}, {variant!r}, {size}, "
    f"{steps}, **{kw!r})))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
    check=False,
    cwd=pathlib.Path(__file__).parents[1],
  )
  lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
  if out.returncode or not lines:
    raise RuntimeError(
      f"{framework} child ({variant}, {size} px) exited with "
      f"{out.returncode}:\n{out.stderr[-3000:]}"
    )
  line = lines[-1]
  return json.loads(line[len("RESULT ") :])
