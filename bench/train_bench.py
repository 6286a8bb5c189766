"""Training throughput: the JAX train step vs a PyTorch twin, and CPU scaling.

  python -m bench.train_bench [--sizes 380,128] [--processes 2] [--steps 5]
      [--rounds 3] [--warmup 3] [--scaling] [--dtypes float32,bfloat16]
      [--clips 24 --clip_len 8] [--out FILE] [--cpu_devices N]

Rows: variant (dyn_mix, sta_new) x image size x compute dtype; training
frames/s of
  * JAX: asrid_jax.step.Trainer's jitted step (AdamW, clipping, the full
    ASRID loss) on one device, random uint8 clips, compile excluded;
    bfloat16 = the config's model.dtype (bf16 compute, f32 parameters);
  * PyTorch: bench/torch_twin.py (torchvision MobileNetV3-Small + the same
    heads), AdamW step, same batch, on CUDA when available (else torch's
    intra-op threads = all cores); bfloat16 = torch.autocast(bfloat16),
    the same mixed precision;
each the median of --rounds rounds of --steps steps after --warmup untimed
steps, and the ratio JAX/PyTorch. By default (--processes N) each framework
runs alone in N fresh processes, JAX and PyTorch alternating, and the ratio
is the median over the N pairs: in one process, alternating with torch,
JAX ran at 17-35% fewer frames/s on the 2-core machine (torch less), which
a user training with one of them never sees. --processes 0 runs both in this
process, rounds alternating, the ratio per round (bench/gpu_check.sh, where
compiling anew for every process would not fit its time); on a
CPU also `JAX xN`: the same step with the
batch split over N XLA CPU devices (`--cpu_devices N`, -1 one per core;
XLA:CPU runs most fusions on one thread each, and the devices run side by
side), in a subprocess. A step is --clips clips x
--clip_len frames
(default 2 x 4 = 8 frames for CPU; the paper's batch is 24 x 8 = 192 frames
at 380 px, what bench/gpu_check.sh runs). `--scaling` adds dyn_mix at the
small size over 1, 2, 4, 8 XLA CPU devices (one subprocess each; a fixed
global batch split over the 'data' axis). On a CPU the devices share the
same cores, so this measures the data-parallel overhead, not a speed-up.
Writes bench/results/train_bench.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from asrid_jax import hostmem

RESULTS = pathlib.Path(__file__).parent / "results" / "train_bench.json"
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


def _summary(rates: list[float], frames: int) -> dict:
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
  return {**_summary(rates[framework], frames), **info, "peak_bytes": peak()}


def _child(
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
    "from bench import train_bench as b;"
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


def _scaling_child(devices: int, size: int, steps: int) -> dict:
  return _child("jax", "dyn_mix", size, steps, devices=devices, batch=8)


def _ratios(row: dict, jax_rates: list, torch_rates: list) -> dict:
  ratios = [j / t for j, t in zip(jax_rates, torch_rates, strict=True)]
  return {**row, "ratio": statistics.median(ratios), "ratios": ratios}


def _in_process(variant: str, size: int, dtype: str, args) -> dict:
  """Both frameworks in this process, rounds alternating: the ratio per round."""
  shape = dict(batch=args.clips, clip_len=args.clip_len, dtype=dtype)
  frames = args.clips * args.clip_len
  runs = {}
  runs["jax"], jax_info = jax_runner(variant, size, **shape)
  if not args.no_torch:
    runs["torch"], torch_info = torch_runner(variant, size, **shape)
  rates = interleaved_rates(runs, frames, args.steps, args.rounds, args.warmup)
  row = {
    "timing": f"{args.rounds} alternating rounds in one process",
    "jax": {
      **_summary(rates["jax"], frames),
      **jax_info,
      "peak_bytes": jax_peak_bytes(),
    },
  }
  if args.no_torch:
    return row
  row["torch"] = {
    **_summary(rates["torch"], frames),
    **torch_info,
    "peak_bytes": torch_peak_bytes(),
  }
  return _ratios(row, rates["jax"], rates["torch"])


def _in_processes(variant: str, size: int, dtype: str, args) -> dict:
  """Each framework in its own fresh processes, alternating: the ratio per
  pair of processes."""
  kw = dict(
    batch=args.clips,
    clip_len=args.clip_len,
    dtype=dtype,
    rounds=args.rounds,
    warmup=args.warmup,
  )
  frameworks = ["jax"] + ([] if args.no_torch else ["torch"])
  runs = {name: [] for name in frameworks}
  for _ in range(args.processes):
    for name in frameworks:
      runs[name].append(_child(name, variant, size, args.steps, **kw))
  row = {"timing": f"{args.processes} alternating processes each"}
  for name, results in runs.items():
    rates = [r["frames_per_s"] for r in results]
    fps = statistics.median(rates)
    row[name] = {
      **results[0],
      "frames_per_s": fps,
      "step_s": args.clips * args.clip_len / fps,
      "processes": rates,
      "rounds": [r["rounds"] for r in results],
    }
  if args.no_torch:
    return row
  return _ratios(row, row["jax"]["processes"], row["torch"]["processes"])


def _write(path: pathlib.Path, result: dict) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(result, indent=2))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="380,128")
  parser.add_argument("--variants", default="dyn_mix,sta_new")
  parser.add_argument("--dtypes", default="float32")
  parser.add_argument("--clips", type=int, default=CLIPS)
  parser.add_argument("--clip_len", type=int, default=CLIP_LEN)
  parser.add_argument(
    "--steps", type=int, default=5, help="timed steps a round"
  )
  parser.add_argument(
    "--rounds",
    type=int,
    default=3,
    help="timed rounds in each process (alternating JAX and PyTorch with "
    "--processes 0); medians are reported",
  )
  parser.add_argument(
    "--warmup", type=int, default=3, help="untimed steps before the rounds"
  )
  parser.add_argument(
    "--processes",
    type=int,
    default=2,
    help="N > 0: JAX and PyTorch each in N fresh processes, alternating, "
    "the ratio per pair; 0: both in this process, rounds alternating",
  )
  parser.add_argument("--scaling", action="store_true")
  parser.add_argument("--scaling_size", type=int, default=64)
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument(
    "--cpu_devices",
    type=int,
    default=0,
    help="on CPU, also time JAX with the batch split over this many XLA "
    "CPU devices (-1: one per core; 0: off)",
  )
  parser.add_argument("--out", default=str(RESULTS))
  args = parser.parse_args(argv)
  for name, low in (
    ("steps", 1),
    ("rounds", 1),
    ("warmup", 0),
    ("processes", 0),
  ):
    if getattr(args, name) < low:
      parser.error(f"--{name} must be at least {low}")
  shape = dict(batch=args.clips, clip_len=args.clip_len)
  out = pathlib.Path(args.out)
  from bench import common

  # Only --cpu_devices needs the backend here: in --processes mode this
  # process must not hold a GPU (its client would keep memory the children
  # need).
  if args.cpu_devices:
    import jax

    if jax.default_backend() != "cpu":
      args.cpu_devices = 0
  if args.cpu_devices < 0:
    args.cpu_devices = os.cpu_count() or 1
  if args.cpu_devices > 1 and args.clips % args.cpu_devices:
    print(
      f"--cpu_devices {args.cpu_devices}: {args.clips} clips do not split "
      "evenly over them; not timed"
    )
    args.cpu_devices = 0
  rows = []
  for variant in args.variants.split(","):
    for size in (int(s) for s in args.sizes.split(",")):
      for dtype in args.dtypes.split(","):
        row = {
          "variant": variant,
          "size": size,
          "dtype": dtype,
          "clips": args.clips,
          "T": args.clip_len,
        }
        measure = _in_processes if args.processes else _in_process
        row.update(measure(variant, size, dtype, args))
        if args.cpu_devices > 1:
          # One XLA CPU device per core: XLA:CPU runs most fusions on one
          # thread each, devices run side by side.
          row["jax_devices"] = {
            "devices": args.cpu_devices,
            **_child(
              "jax",
              variant,
              size,
              args.steps,
              devices=args.cpu_devices,
              dtype=dtype,
              rounds=args.rounds,
              warmup=args.warmup,
              **shape,
            ),
          }
          if "torch" in row:
            row["ratio_devices"] = (
              row["jax_devices"]["frames_per_s"] / row["torch"]["frames_per_s"]
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
        # Rewritten after every row: a run cut short keeps what it finished.
        _write(out, {"rows": rows, "complete": False})
  scaling = []
  if args.scaling:
    for devices in (1, 2, 4, 8):
      r = _scaling_child(devices, args.scaling_size, args.steps)
      scaling.append({"devices": devices, **r})
      print(json.dumps(scaling[-1]), flush=True)
  print(
    f"\nTraining frames/s ({common.cpu_name()}, {os.cpu_count()} cores), "
    f"batch {args.clips} clips x {args.clip_len} frames;\n"
    + (
      f"medians of {args.processes} fresh processes each, alternating "
      "(JAX/PT: the median of the ratios per pair, range: theirs), each "
      "the median of "
      if args.processes
      else "both in one process, medians of "
    )
    + f"{args.rounds} rounds of {args.steps} steps after {args.warmup} "
    "warm-up steps"
    + ("" if args.processes else " (JAX/PT and range: the ratio per round)")
  )
  devices_label = f"JAX x{args.cpu_devices}"
  print(
    f"{'variant':<9}{'size':>6} {'dtype':<9}{'JAX':>10}{'PyTorch':>10}"
    f"{'JAX/PT':>8}{'range':>12}{'compile s':>11}{'JAX peak GiB':>14}"
    + (f"{devices_label:>10}{'/PT':>7}" if args.cpu_devices > 1 else "")
  )
  for r in rows:
    pt = r.get("torch", {}).get("frames_per_s", float("nan"))
    peak = r["jax"].get("peak_bytes")
    peak_s = f"{peak / 2**30:>14.2f}" if peak else f"{'-':>14}"
    ratios = r.get("ratios")
    range_s = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
    print(
      f"{r['variant']:<9}{r['size']:>6} {r['dtype']:<9}"
      f"{r['jax']['frames_per_s']:>10.1f}{pt:>10.1f}"
      f"{r.get('ratio', float('nan')):>8.2f}{range_s:>12}"
      f"{r['jax']['compile_s']:>11.1f}{peak_s}"
      + (
        f"{r['jax_devices']['frames_per_s']:>10.1f}"
        f"{r.get('ratio_devices', float('nan')):>7.2f}"
        if "jax_devices" in r
        else ""
      )
    )
  if args.cpu_devices > 1:
    print(
      f"JAX x{args.cpu_devices}: the batch split over {args.cpu_devices} "
      "XLA CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count)"
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
  _write(out, {**result, "complete": True})
  print(f"\nwrote {out}")
  return result


if __name__ == "__main__":
  hostmem.ensure_hugepage_malloc()  # before any work: it may re-execute
  main()
