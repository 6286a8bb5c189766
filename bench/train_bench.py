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

from asrid_jax import hostmem
from bench import train_timing as timing

RESULTS = pathlib.Path(__file__).parent / "results" / "train_bench.json"


def _scaling_child(devices: int, size: int, steps: int) -> dict:
  return timing.child("jax", "dyn_mix", size, steps, devices=devices, batch=8)


def _ratios(row: dict, jax_rates: list, torch_rates: list) -> dict:
  ratios = [j / t for j, t in zip(jax_rates, torch_rates, strict=True)]
  return {**row, "ratio": statistics.median(ratios), "ratios": ratios}


def _in_process(variant: str, size: int, dtype: str, args) -> dict:
  """Both frameworks in this process, rounds alternating: the ratio per round."""
  shape = dict(batch=args.clips, clip_len=args.clip_len, dtype=dtype)
  frames = args.clips * args.clip_len
  runs = {}
  runs["jax"], jax_info = timing.jax_runner(variant, size, **shape)
  if not args.no_torch:
    runs["torch"], torch_info = timing.torch_runner(variant, size, **shape)
  rates = timing.interleaved_rates(
    runs, frames, args.steps, args.rounds, args.warmup
  )
  row = {
    "timing": f"{args.rounds} alternating rounds in one process",
    "jax": {
      **timing.summary(rates["jax"], frames),
      **jax_info,
      "peak_bytes": timing.jax_peak_bytes(),
    },
  }
  if args.no_torch:
    return row
  row["torch"] = {
    **timing.summary(rates["torch"], frames),
    **torch_info,
    "peak_bytes": timing.torch_peak_bytes(),
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
      runs[name].append(timing.child(name, variant, size, args.steps, **kw))
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
  parser.add_argument("--clips", type=int, default=timing.CLIPS)
  parser.add_argument("--clip_len", type=int, default=timing.CLIP_LEN)
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
            **timing.child(
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
