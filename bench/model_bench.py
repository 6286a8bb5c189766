"""Backbone speed: Flax MobileNetV3-Small vs torchvision's, same run.

Usage:
  python -m bench.model_bench [--batch 8] [--sizes 380,224]
      [--dtypes float32,bfloat16] [--impls grouped,shifted,shifted_vjp] [--reps 5]
      [--out FILE]  (--impls: default every form in depthwise.IMPLS)

For each input size and dtype it times, in frames/s (batch / median time):
  * inference (eval mode, jitted forward) and
  * one training step (train mode, forward + backward of a cross-entropy
    loss: JAX a jitted `nnx.value_and_grad` w.r.t. nnx.Param, PyTorch
    `loss.backward()`),
for the Flax backbone with each depthwise implementation and for
torchvision's `mobilenet_v3_small` (bf16: Flax compute dtype bf16 with f32
params; PyTorch `torch.autocast(bfloat16)`, the same mixed precision), plus
the full ASRID dyn_mix forward (B=1 clip of T=8 frames) when
`asrid_jax.models.asrid` is importable. Devices are chosen automatically:
JAX's default backend, torch on CUDA when available. Each measurement is
warmed up (compilation excluded), synchronised (`block_until_ready`,
`torch.cuda.synchronize`) and reported as the median of `--reps` runs. On
CPU, torch uses as many threads as XLA's CPU client (all cores).

For the Flax backbone rows it also counts the bytes each compiled program
moves (XLA's cost analysis of the executable that is timed: 'bytes accessed',
summed over its fused kernels' operands and results, an estimate of HBM
traffic) and reports the achieved bandwidth, bytes / median time, and its
fraction of the card's peak memory bandwidth (PEAK_BANDWIDTH, by
device_kind; null for a device not in the table, CPUs included). JSON row
keys: {infer,train}_{s,fps,ratio,bytes,flops,gbps,bw_frac}.

Prints a table with JAX/PyTorch ratios (>1: JAX faster) and writes
bench/results/model_bench.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from asrid_jax import hostmem
from asrid_jax.models import depthwise
from asrid_jax.models import mobilenet_v3 as mv
from bench import common

RESULTS = pathlib.Path(__file__).parent / "results" / "model_bench.json"


def _median_seconds(fn: Callable[[], Any], warmup: int, reps: int) -> float:
  return statistics.median(common.run_times(fn, warmup, reps))


# ---------------------------------------------------------------- JAX side


@nnx.jit
def _jax_infer(model, x):
  return model(x)["logits"]


@nnx.jit
def _jax_train_step(model, x, labels):
  def loss_fn(m):
    logits = m(x)["logits"]
    return optax.softmax_cross_entropy_with_integer_labels(
      logits, labels
    ).mean()

  grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))
  return grad_fn(model)


def build_jax_model(seed: int = 0) -> mv.MobileNetV3Small:
  # Jitted construction: one compile instead of one per kernel shape.
  return nnx.jit(lambda key: mv.MobileNetV3Small(rngs=nnx.Rngs(key)))(
    jax.random.key(seed)
  )


# Peak memory bandwidth in bytes/s by jax device_kind substring (first match
# wins, so the specific names come before the generic ones). Datasheets.
PEAK_BANDWIDTH: tuple[tuple[str, float], ...] = (
  ("H200", 4.8e12),
  ("H100 PCIe", 2.0e12),
  ("H100 NVL", 3.9e12),
  ("H100", 3.35e12),  # SXM5 (device_kind 'NVIDIA H100 80GB HBM3')
  ("GH200", 4.0e12),
  ("A100-SXM4-40GB", 1.555e12),
  ("A100 80GB PCIe", 1.935e12),
  ("A100-PCIE-40GB", 1.555e12),
  ("A100", 2.039e12),  # SXM4 80GB
  ("L40S", 8.64e11),
  ("L4", 3.0e11),
  ("A10G", 6.0e11),
  ("V100", 9.0e11),
  ("T4", 3.2e11),
)


def peak_bandwidth(device_kind: str) -> float | None:
  """The card's peak memory bandwidth (B/s), None when not in the table."""
  for name, value in PEAK_BANDWIDTH:
    if name.lower() in device_kind.lower():
      return value
  return None


def _cost(compiled) -> dict[str, float]:
  """'bytes accessed' and 'flops' of a compiled program (0 if unknown)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (backend without it)
    cost = None
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per module
    cost = cost[0] if cost else None
  cost = cost or {}
  return {
    "bytes": float(cost.get("bytes accessed", 0.0)),
    "flops": float(cost.get("flops", 0.0)),
  }


def bench_jax(
  model: mv.MobileNetV3Small,
  dtype: str,
  impl: str,
  size: int,
  batch: int,
  warmup: int,
  reps: int,
  peak_bw: float | None = None,
  modes: tuple[str, ...] = ("infer", "train"),
) -> dict[str, float]:
  # Same float32 weights for every row: only the compute dtype and the
  # depthwise implementation (static attributes, so jit retraces) change.
  model.set_attributes(dtype=jnp.dtype(dtype), depthwise_impl=impl)
  x = jax.random.normal(jax.random.key(1), (batch, size, size, 3))
  labels = jax.random.randint(jax.random.key(2), (batch,), 0, 1000)
  out: dict[str, float] = {}
  costs = {}
  # Compiled once, explicitly: the executable timed is the one costed.
  if "infer" in modes:
    model.eval()
    infer = _jax_infer.lower(model, x).compile()
    out["infer_s"] = _median_seconds(
      lambda: infer(model, x).block_until_ready(), warmup, reps
    )
    costs["infer"] = _cost(infer)
  if "train" in modes:
    model.train()
    train = _jax_train_step.lower(model, x, labels).compile()
    out["train_s"] = _median_seconds(
      lambda: jax.block_until_ready(train(model, x, labels)), warmup, reps
    )
    costs["train"] = _cost(train)
  for mode, cost in costs.items():
    seconds = out[f"{mode}_s"]
    out[f"{mode}_bytes"] = cost["bytes"]
    out[f"{mode}_flops"] = cost["flops"]
    achieved = cost["bytes"] / seconds if cost["bytes"] else None
    out[f"{mode}_gbps"] = achieved / 1e9 if achieved else None
    out[f"{mode}_bw_frac"] = (
      achieved / peak_bw if achieved and peak_bw else None
    )
  return out


def bench_asrid(
  dtype: str, size: int, frames: int, warmup: int, reps: int
) -> dict[str, float] | str:
  """Full ASRID dyn_mix eval forward on one clip of `frames` frames."""
  try:
    from asrid_jax.models.asrid import ASRID  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return f"asrid_jax.models.asrid not importable ({e})"
  model = nnx.jit(
    lambda key: ASRID(variant="dyn_mix", dtype=dtype, rngs=nnx.Rngs(key))
  )(jax.random.key(0))
  model.eval()
  images = jax.random.randint(
    jax.random.key(1), (1, frames, size, size, 3), 0, 256
  ).astype(jnp.uint8)
  forward = nnx.jit(lambda m, x: m(x)["clip_logit"])
  return {
    "infer_s": _median_seconds(
      lambda: forward(model, images).block_until_ready(), warmup, reps
    )
  }


# ------------------------------------------------------------ PyTorch side


def bench_torch(
  dtype: str, size: int, batch: int, warmup: int, reps: int
) -> dict[str, float]:
  import torch  # pylint: disable=g-import-not-at-top
  import torchvision  # pylint: disable=g-import-not-at-top

  device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
  sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
  torch.manual_seed(0)
  model = torchvision.models.mobilenet_v3_small(weights=None).to(device)
  x = torch.randn(batch, 3, size, size, device=device)
  labels = torch.randint(0, 1000, (batch,), device=device)
  autocast = lambda: torch.autocast(
    device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"
  )

  def infer():
    with torch.no_grad(), autocast():
      model(x)
    sync()

  def train():
    model.zero_grad(set_to_none=True)
    with autocast():
      loss = torch.nn.functional.cross_entropy(model(x).float(), labels)
    loss.backward()
    sync()

  model.eval()
  infer_s = _median_seconds(infer, warmup, reps)
  model.train()
  train_s = _median_seconds(train, warmup, reps)
  return {"infer_s": infer_s, "train_s": train_s}


def _torch_info(threads: int) -> dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(threads)
  cuda = torch.cuda.is_available()
  return {
    "torch_version": torch.__version__,
    "torch_device": torch.cuda.get_device_name(0) if cuda else "cpu",
    "torch_threads": torch.get_num_threads(),
  }


# -------------------------------------------------------------------- main


def _bf16_supported() -> bool:
  try:
    y = jnp.ones((2, 2), jnp.bfloat16) @ jnp.ones((2, 2), jnp.bfloat16)
    return bool(y[0, 0] == 2)
  except Exception:  # pylint: disable=broad-except
    return False


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(prog="python -m bench.model_bench")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--sizes", default="380,224")
  parser.add_argument("--dtypes", default="float32,bfloat16")
  # Every depthwise form the model has (a new one is benchmarked too).
  parser.add_argument("--impls", default=",".join(depthwise.IMPLS))
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--asrid_frames", type=int, default=8)
  parser.add_argument("--out", default=str(RESULTS))
  args = parser.parse_args(argv)

  device = jax.devices()[0]
  backend = jax.default_backend()
  # XLA:CPU runs on all cores; give torch the same number of threads.
  threads = os.cpu_count() or 1
  info: dict[str, Any] = {
    "jax_version": jax.__version__,
    "jax_backend": backend,
    "jax_device": f"{device.platform}:{device.device_kind}",
    "cpu": common.cpu_name(),
    "cpu_count": os.cpu_count(),
    "machine": platform.platform(),
    "batch": args.batch,
    "reps": args.reps,
    "warmup": args.warmup,
  }
  info.update(_torch_info(threads))
  peak_bw = peak_bandwidth(device.device_kind)
  info["peak_bandwidth_bytes_per_s"] = peak_bw
  dtypes = args.dtypes.split(",")
  if "bfloat16" in dtypes and not _bf16_supported():
    print(f"bfloat16 not supported on {info['jax_device']}: skipped")
    dtypes.remove("bfloat16")
  rows: list[dict[str, Any]] = []
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)

  def add(row: dict[str, Any], complete: bool = False) -> None:
    """Appends a row (with frames/s) and rewrites the JSON: a run cut short
    by a timeout (bench/gpu_check.sh) keeps the rows it finished."""
    if row:
      frames = (
        args.asrid_frames if row["impl"].endswith("dyn_mix") else args.batch
      )
      for mode in ("infer", "train"):
        if f"{mode}_s" in row:
          row[f"{mode}_fps"] = frames / row[f"{mode}_s"]
      rows.append(row)
    info["complete"] = complete
    out.write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")

  model = build_jax_model()
  for size in (int(s) for s in args.sizes.split(",")):
    for dtype in dtypes:
      ref = bench_torch(dtype, size, args.batch, args.warmup, args.reps)
      add(dict(size=size, dtype=dtype, impl="torchvision", **ref))
      print(_format_row(rows[-1], args.batch), flush=True)
      impls = args.impls.split(",")

      # Every form's inference before any training step: a training step's
      # large temporaries slow the inference measured after it (seen on
      # XLA:CPU: 42 ms before, 73 ms after), which would favour the first.
      def run(impl: str, mode: str, dtype=dtype, size=size) -> dict:
        return bench_jax(
          model,
          dtype,
          impl,
          size,
          args.batch,
          args.warmup,
          args.reps,
          peak_bw,
          modes=(mode,),
        )

      inference = {impl: run(impl, "infer") for impl in impls}
      for impl in impls:
        res = inference[impl] | run(impl, "train")
        res.update(
          infer_ratio=ref["infer_s"] / res["infer_s"],
          train_ratio=ref["train_s"] / res["train_s"],
        )
        add(dict(size=size, dtype=dtype, impl=f"jax-{impl}", **res))
        print(_format_row(rows[-1], args.batch), flush=True)
      asrid = (
        bench_asrid(dtype, size, args.asrid_frames, args.warmup, args.reps)
        if args.asrid_frames > 0
        else "--asrid_frames 0"
      )
      if isinstance(asrid, str):
        print(f"ASRID dyn_mix row skipped: {asrid}")
        info["asrid_skipped"] = asrid
      else:
        add(dict(size=size, dtype=dtype, impl="jax-asrid-dyn_mix", **asrid))
  _print_table(info, rows, args)
  add({}, complete=True)
  print(f"wrote {out}")
  return {"info": info, "rows": rows}


def _format_row(row: dict[str, Any], frames: int) -> str:
  cells = [f"{row['size']:>4}", f"{row['dtype']:<8}", f"{row['impl']:<18}"]
  for mode in ("infer", "train"):
    seconds = row.get(f"{mode}_s")
    if seconds is None:
      cells += [f"{'-':>8}", f"{'-':>7}", f"{'-':>6}"]
      continue
    ratio = row.get(f"{mode}_ratio")
    ratio_s = f"{ratio:6.2f}" if ratio is not None else f"{'':>6}"
    cells += [f"{seconds * 1e3:8.1f}", f"{frames / seconds:7.1f}", ratio_s]
  # Achieved memory bandwidth (GB/s) and its fraction of the card's peak.
  for key, width, scale in (
    ("infer_gbps", 8, 1.0),
    ("train_gbps", 8, 1.0),
    ("infer_bw_frac", 5, 100.0),
    ("train_bw_frac", 5, 100.0),
  ):
    value = row.get(key)
    cells.append(
      f"{value * scale:{width}.1f}" if value is not None else f"{'-':>{width}}"
    )
  return " | ".join(cells)


def _peak_text(peak: float | None) -> str:
  return f"{peak / 1e9:.0f} GB/s" if peak else "(unknown device: none)"


def _print_table(
  info: dict[str, Any], rows: list[dict[str, Any]], args: argparse.Namespace
) -> None:
  print()
  print(
    f"JAX {info['jax_version']} on {info['jax_device']} ({info['cpu']}, "
    f"{info['cpu_count']} cores), torch "
    f"{info['torch_version']} on {info['torch_device']} "
    f"({info['torch_threads']} threads); batch {args.batch}, median of "
    f"{args.reps} after {args.warmup} warm-up runs; ratio = JAX fps / "
    "torch fps; GB/s = XLA 'bytes accessed' / time, bw% of the peak "
    f"{_peak_text(info['peak_bandwidth_bytes_per_s'])}"
  )
  header = (
    "size | dtype    | impl               | inf ms   | inf f/s | ratio "
    "| train ms | trn f/s | ratio | inf GB/s | trn GB/s | inf%  | trn% "
  )
  print(header)
  print("-" * len(header))
  for row in rows:
    frames = (
      args.asrid_frames if row["impl"].endswith("dyn_mix") else args.batch
    )
    print(_format_row(row, frames))


if __name__ == "__main__":
  hostmem.ensure_hugepage_malloc()  # before any work: it may re-execute
  main()
