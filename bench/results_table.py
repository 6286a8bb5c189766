r"""Test-split table of trained runs beside the plain reference (issue 9).

  python -m bench.results_table --split test \
      --run "sta_new=runs/dfdc_sta_new" \
      --run "baseline=runs/dfdc_baseline" \
      --run "sta_new SBI=runs/dfdc_sta_new_sbi@latest" \
      --plain "plain MobileNetV3-Small=bench/results/plain_mnv3.json" \
      --out bench/results/dfdc_faces_table.json

Each --run NAME=WORKDIR[@best|latest|STEP] is evaluated with
`asrid_jax.evaluate` on the split (its outputs land in WORKDIR/eval_<split>_
<step>/); the table shows frame-level LogLoss beside the constant prior,
accuracy, ROC AUC, AP and EER, the checkpoint step and the training wall time
(first to last TensorBoard event, resumed runs included). --plain adds the
result JSON of bench/plain_mnv3.py (same shards, same split).
"""

import argparse
import json
import pathlib

from tensorboardX.proto import event_pb2

from asrid_jax import evaluate as eval_lib
from asrid_jax.data import records


def wall_seconds(workdir) -> float | None:
  times = []
  for path in (pathlib.Path(workdir) / "tensorboard").glob("events.*"):
    for data in records.iter_records(path):
      event = event_pb2.Event.FromString(data)
      if event.summary.value:
        times.append(event.wall_time)
  return max(times) - min(times) if times else None


def _row(name, frame, step, seconds) -> dict:
  return {
    "model": name,
    "step": step,
    "n": frame["n"],
    "log_loss": frame["log_loss"],
    "prior_log_loss": frame["prior"]["log_loss"],
    "accuracy": frame["accuracy"],
    "prior_accuracy": frame["prior"]["accuracy"],
    "roc_auc": frame["roc_auc"],
    "average_precision": frame["average_precision"],
    "eer": frame["eer"],
    "train_minutes": None if seconds is None else seconds / 60,
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.results_table")
  p.add_argument("--run", action="append", default=[])
  p.add_argument("--plain", action="append", default=[])
  p.add_argument("--split", default="test")
  p.add_argument("--data_dir", default=None)
  p.add_argument("--out", default="bench/results/dfdc_faces_table.json")
  args = p.parse_args(argv)
  rows = []
  for spec in args.run:
    name, _, rest = spec.partition("=")
    workdir, _, which = rest.partition("@")
    eval_args = [f"--workdir={workdir}", f"--split={args.split}"]
    eval_args.append(f"--checkpoint={which or 'best'}")
    if args.data_dir:
      eval_args.append(f"--data_dir={args.data_dir}")
    result, _ = eval_lib.run(eval_lib.build_parser().parse_args(eval_args))
    m = result.metrics
    rows.append(_row(name, m["frame"], m["step"], wall_seconds(workdir)))
  for spec in args.plain:
    name, _, path = spec.partition("=")
    plain = json.loads(pathlib.Path(path).read_text())
    rows.append(_row(name, plain["test_frame"], None, plain["train_s"]))
  lines = [
    "| model | step | n | LogLoss | prior LL | acc | prior acc | AUC | AP | "
    "EER | train min |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    minutes = "" if r["train_minutes"] is None else f"{r['train_minutes']:.0f}"
    lines.append(
      f"| {r['model']} | {r['step'] or ''} | {r['n']} | {r['log_loss']:.3f} | "
      f"{r['prior_log_loss']:.3f} | {r['accuracy']:.3f} | "
      f"{r['prior_accuracy']:.3f} | {r['roc_auc']:.3f} | "
      f"{r['average_precision']:.3f} | {r['eer']:.3f} | {minutes} |"
    )
  print("\n".join(lines))
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(rows, indent=2))
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
