r"""A short real training run: training frames/s and peak device memory, JSON.

  python -m bench.train_report --config=configs/dfdc_faces.py:steps=2000 \
      --workdir=OUT/train_real --config.data.dir=.gpu_data/dfdc_faces_128 \
      --report=OUT/train_real.json [--time_budget_s=90]

Runs `asrid_jax.train.train_and_evaluate` in this process (the trainer's own
input pipeline, step, logging, validation and checkpoints), so the device's
memory statistics afterwards are the run's: `peak_bytes_in_use` of
`jax.local_devices()[0].memory_stats()` (null on CPU, which keeps none).
--time_budget_s stops the run the trainer's own way, a SIGTERM to this
process (it saves and stops at the next step) once that many seconds have
passed since the first step (compiled in its dispatch), so a GPU run of
unknown speed fits its slot; the step count is then an upper bound.

frames/s comes from what the trainer writes, the `train/frames_per_s`
scalars of its TensorBoard events (one per log interval, read with the
project's TFRecord reader and tensorboardX's Event proto): `frames_per_s` is
the frame-weighted rate over every interval after the first (the first holds
the compilation), or the first alone when there is only one; every interval
is in `intervals`.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import time

import jax
from absl import app, flags

from asrid_jax import hostmem, reporting
from asrid_jax import train as train_lib
from asrid_jax.data import records

_REPORT = flags.DEFINE_string("report", None, "Where the JSON report goes.")
_BUDGET = flags.DEFINE_float(
  "time_budget_s", 0.0, "Stop (SIGTERM, checkpoint) after this long; 0: off."
)
RATE_TAG = "train/frames_per_s"


def read_scalars(workdir: os.PathLike | str) -> dict[str, list]:
  """tag -> [(step, value)] from every event file under WORKDIR/tensorboard."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top

  out: dict[str, list] = {}
  folder = pathlib.Path(workdir) / "tensorboard"
  for path in sorted(folder.glob("events.out.tfevents.*")):
    for data in records.iter_records(path):
      event = event_pb2.Event.FromString(data)
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  for values in out.values():
    values.sort()
  return out


def steady_rate(
  points: list[tuple[int, float]], frames_per_step: int, start: int = 0
) -> tuple[float | None, list[dict]]:
  """(frames/s over intervals after the first, every interval)."""
  intervals, prev = [], start
  for step, rate in points:
    frames = (step - prev) * frames_per_step
    if frames > 0 and rate > 0:
      intervals.append(
        {"to_step": step, "frames": frames, "frames_per_s": rate}
      )
    prev = step
  steady = intervals[1:] or intervals
  if not steady:
    return None, intervals
  seconds = sum(i["frames"] / i["frames_per_s"] for i in steady)
  return sum(i["frames"] for i in steady) / seconds, intervals


def device_memory() -> dict:
  device = jax.local_devices()[0]
  try:
    stats = device.memory_stats() or {}
  except Exception:  # pylint: disable=broad-except  (backend without stats)
    stats = {}
  return {
    "device": f"{device.platform}:{device.device_kind}",
    "peak_bytes_in_use": stats.get("peak_bytes_in_use"),
    "bytes_limit": stats.get("bytes_limit"),
  }


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  reporting.quiet_library_logs()
  config, workdir = flags.FLAGS.config, pathlib.Path(flags.FLAGS.workdir)
  budget = _BUDGET.value
  t0 = time.perf_counter()
  first, sent = [], []

  def on_step(step: int) -> None:
    # The clock starts after the first step: its dispatch holds the compile.
    now = time.perf_counter()
    if not first:
      first.append(now)
    if budget > 0 and not sent and now - first[0] > budget:
      sent.append(step)
      os.kill(os.getpid(), signal.SIGTERM)  # the trainer saves and stops

  result = train_lib.train_and_evaluate(config, workdir, on_step=on_step)
  wall = time.perf_counter() - t0
  picture = config.data.sampling == "picture"
  frames_per_step = config.batch_size * (1 if picture else config.data.clip_len)
  scalars = read_scalars(workdir)
  rate, intervals = steady_rate(scalars.get(RATE_TAG, []), frames_per_step)
  report = {
    "frames_per_s": rate,
    "intervals": intervals,
    "steps": result["step"],
    "stopped": result["stopped"],
    "time_budget_hit_at_step": sent[0] if sent else None,
    "wall_s": wall,
    "start_s": (first[0] - t0) if first else None,  # until step 1 dispatched
    "frames_per_step": frames_per_step,
    "batch_size": config.batch_size,
    "image_size": config.data.image_size,
    "variant": config.model.variant,
    "dtype": config.model.dtype,
    "data_dir": config.data.dir,
    "worker_count": config.data.worker_count,
    "val": result["val"],
    "jax_version": jax.__version__,
    **device_memory(),
  }
  text = json.dumps(report, indent=2)
  print(text)
  if _REPORT.value:
    pathlib.Path(_REPORT.value).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(_REPORT.value).write_text(text + "\n")
  if rate is None:
    print("train_report: no frames/s logged", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  hostmem.ensure_hugepage_malloc()  # before any work: it may re-execute
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
