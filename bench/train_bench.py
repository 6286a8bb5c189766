"""Training throughput: the JAX train step vs a PyTorch twin, and CPU scaling.

  python -m bench.train_bench [--sizes 380,128] [--steps 5] [--scaling]

Rows: variant (dyn_mix, sta_new) x image size; training frames/s of
  * JAX: asrid_jax.step.Trainer's jitted step (AdamW, clipping, the full
    ASRID loss) on one device, random uint8 clips, compile excluded;
  * PyTorch: bench/torch_twin.py (torchvision MobileNetV3-Small + the same
    heads), AdamW step, same batch, torch's intra-op threads = all cores;
and the ratio JAX/PyTorch. `--scaling` adds dyn_mix at the small size over
1, 2, 4, 8 XLA CPU devices (one subprocess each; a fixed global batch split
over the 'data' axis). On a CPU the devices share the same cores, so this
measures the data-parallel overhead, not a speed-up. Writes
bench/results/train_bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

RESULTS = pathlib.Path(__file__).parent / "results" / "train_bench.json"
CLIPS, CLIP_LEN = 2, 4  # 8 frames a step on CPU


def _config(variant: str, size: int, batch: int):
  from configs import common

  c = common.base_config(variant)
  c.data.image_size = size
  c.data.clip_len = CLIP_LEN
  c.batch_size = batch
  c.total_steps = 1000
  return c


def jax_rate(variant: str, size: int, steps: int, batch: int = CLIPS) -> dict:
  import jax
  import numpy as np

  from asrid_jax import sharding
  from asrid_jax import step as step_lib

  jax.config.update("jax_threefry_partitionable", True)
  config = _config(variant, size, batch)
  mesh = sharding.make_mesh([("data", -1)])
  trainer = step_lib.Trainer(config, mesh, 0)
  state = trainer.init_state()
  rng = np.random.default_rng(0)
  local = {
    "image": rng.integers(0, 255, (batch, CLIP_LEN, size, size, 3), np.uint8),
    "label": rng.integers(0, 2, (batch,), np.int32),
  }
  batch_arr = sharding.global_batch(local, mesh)
  key = jax.random.key(0)
  t0 = time.perf_counter()
  state, m = trainer.train_step(state, batch_arr, key)
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = trainer.train_step(state, batch_arr, key)
  jax.block_until_ready(m)
  dt = (time.perf_counter() - t0) / steps
  return {
    "frames_per_s": batch * CLIP_LEN / dt,
    "step_s": dt,
    "compile_s": compile_s,
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
  }


def torch_rate(variant: str, size: int, steps: int) -> dict:
  import torch

  from bench import torch_twin

  torch.manual_seed(0)
  model = torch_twin.ASRIDTwin(variant)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
  images = torch.randint(
    0, 255, (CLIPS, CLIP_LEN, 3, size, size), dtype=torch.uint8
  )
  labels = torch.randint(0, 2, (CLIPS,))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = torch_twin.asrid_loss(model(images), labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()

  step()  # warm-up
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  dt = (time.perf_counter() - t0) / steps
  return {
    "frames_per_s": CLIPS * CLIP_LEN / dt,
    "step_s": dt,
    "threads": torch.get_num_threads(),
    "torch": torch.__version__,
  }


def _scaling_child(devices: int, size: int, steps: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  code = (
    "import json, jax;"
    f"jax.config.update('jax_num_cpu_devices', {devices});"
    "from bench import train_bench as b;"
    f"print('RESULT', json.dumps(b.jax_rate('dyn_mix', {size}, {steps}, 8)))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    env=env,
    capture_output=True,
    text=True,
    timeout=1800,
    check=True,
    cwd=pathlib.Path(__file__).parents[1],
  )
  line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT ") :])


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="380,128")
  parser.add_argument("--variants", default="dyn_mix,sta_new")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--scaling", action="store_true")
  parser.add_argument("--scaling_size", type=int, default=64)
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args(argv)
  rows = []
  for variant in args.variants.split(","):
    for size in (int(s) for s in args.sizes.split(",")):
      row = {"variant": variant, "size": size, "clips": CLIPS, "T": CLIP_LEN}
      row["jax"] = jax_rate(variant, size, args.steps)
      if not args.no_torch:
        row["torch"] = torch_rate(variant, size, args.steps)
        row["ratio"] = row["jax"]["frames_per_s"] / row["torch"]["frames_per_s"]
      rows.append(row)
      print(json.dumps(row), flush=True)
  scaling = []
  if args.scaling:
    for devices in (1, 2, 4, 8):
      r = _scaling_child(devices, args.scaling_size, args.steps)
      scaling.append({"devices": devices, **r})
      print(json.dumps(scaling[-1]), flush=True)
  print(
    f"\nTraining frames/s ({platform.processor() or platform.machine()}, "
    f"{os.cpu_count()} cores), batch {CLIPS} clips x {CLIP_LEN} frames"
  )
  print(
    f"{'variant':<9}{'size':>6}{'JAX':>10}{'PyTorch':>10}{'JAX/PT':>8}"
    f"{'compile s':>11}"
  )
  for r in rows:
    pt = r.get("torch", {}).get("frames_per_s", float("nan"))
    print(
      f"{r['variant']:<9}{r['size']:>6}{r['jax']['frames_per_s']:>10.1f}"
      f"{pt:>10.1f}{r.get('ratio', float('nan')):>8.2f}"
      f"{r['jax']['compile_s']:>11.1f}"
    )
  if scaling:
    print(f"\nScaling, dyn_mix {args.scaling_size}px, global batch 8 clips")
    print(f"{'devices':>8}{'frames/s':>10}{'vs 1':>7}")
    for s in scaling:
      print(
        f"{s['devices']:>8}{s['frames_per_s']:>10.1f}"
        f"{s['frames_per_s'] / scaling[0]['frames_per_s']:>7.2f}"
      )
  result = {
    "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
    "rows": rows,
    "scaling": scaling,
  }
  RESULTS.parent.mkdir(parents=True, exist_ok=True)
  RESULTS.write_text(json.dumps(result, indent=2))
  print(f"\nwrote {RESULTS}")
  return result


if __name__ == "__main__":
  main()
