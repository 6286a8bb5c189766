r"""Learning curves of training runs (and the plain reference) in one PNG.

  python -m bench.learning_curves --run sta_new=runs/dfdc_sta_new \
      --run baseline=runs/dfdc_baseline --plain plain=bench/results/plain_mnv3.json \
      --steps_per_epoch 400 --out models/dfdc_faces/learning_curves.png

Reads each workdir's TensorBoard event files (TFRecord-framed Event protos:
asrid_jax.data.records reads the framing, tensorboardX ships the proto) and
plots training loss and validation LogLoss (with the constant prior) against
epochs; `--plain` adds the validation curve that bench/plain_mnv3.py wrote.
Also writes the curves as JSON beside the PNG.
"""

import argparse
import collections
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402

from asrid_jax.data import records  # noqa: E402


def read_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """tag -> [(step, value)] from WORKDIR/tensorboard/events.*, step-sorted."""
  out = collections.defaultdict(dict)
  files = sorted((pathlib.Path(workdir) / "tensorboard").glob("events.*"))
  if not files:
    raise FileNotFoundError(f"{workdir}: no tensorboard/events.* files")
  for path in files:
    for data in records.iter_records(path):
      event = event_pb2.Event.FromString(data)
      for v in event.summary.value:
        out[v.tag][event.step] = v.simple_value  # a resumed step: last wins
  return {k: sorted(v.items()) for k, v in out.items()}


def _named(text: str) -> tuple[str, str]:
  name, sep, path = text.partition("=")
  if not sep:
    raise argparse.ArgumentTypeError(f"want NAME=PATH, got {text!r}")
  return name, path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.learning_curves")
  p.add_argument("--run", type=_named, action="append", default=[])
  p.add_argument("--plain", type=_named, action="append", default=[])
  p.add_argument("--steps_per_epoch", type=float, default=400)
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
  curves = {}
  prior = None
  for name, workdir in args.run:
    tags = read_scalars(workdir)
    spe = args.steps_per_epoch
    train = tags.get("train/total", [])
    val = tags.get("val/log_loss", [])
    curves[name] = {"train_total": train, "val_log_loss": val}
    if "val/auc" in tags:
      curves[name]["val_auc"] = tags["val/auc"]
    (line,) = ax_train.plot([s / spe for s, _ in train], [v for _, v in train])
    line.set_label(name)
    ax_val.plot(
      [s / spe for s, _ in val], [v for _, v in val], "o-", label=name
    )
    if tags.get("val/prior_log_loss"):
      prior = tags["val/prior_log_loss"][-1][1]
  for name, path in args.plain:
    result = json.loads(pathlib.Path(path).read_text())
    curve = result["curve"]
    curves[name] = curve
    ax_train.plot(
      [c["epoch"] for c in curve],
      [c["train_loss"] for c in curve],
      "--",
      label=name,
    )
    ax_val.plot(
      [c["epoch"] for c in curve],
      [c["val_log_loss"] for c in curve],
      "s--",
      label=name,
    )
  if prior is not None:
    ax_val.axhline(prior, color="grey", ls=":", label=f"prior {prior:.3f}")
  ax_train.set(xlabel="epoch", ylabel="training loss (BCE)", title="train")
  ax_val.set(xlabel="epoch", ylabel="LogLoss", title="validation (frame)")
  for ax in (ax_train, ax_val):
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=100)
  out.with_suffix(".json").write_text(json.dumps(curves, indent=1))
  print(f"wrote {out} and {out.with_suffix('.json')}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
