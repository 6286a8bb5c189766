r"""The number to beat: plain torchvision MobileNetV3-Small on the same shards.

  python -m bench.plain_mnv3 --data_dir data/dfdc_faces [--epochs 8 --res 128]

Trains torchvision's `mobilenet_v3_small(num_classes=1)` from scratch on the
train split of face shards (import_faces / extract_faces output), one-cycle
AdamW, horizontal flips only, then scores the test split with the same
metrics as `asrid_jax.evaluate` (frame level: LogLoss, accuracy, ROC AUC, AP,
EER, beside the constant prior = the train fake fraction). Every frame of the
split is one example (for imported crops: one per video). Prints the
learning curve and a table; writes bench/results/plain_mnv3.json.

This is the reference recipe of issue 9 (about 0.81 frame AUC on DFDC crops
at 128 px); it reads the shards through asrid_jax.data.records so both models
see exactly the same images and split.
"""

import argparse
import json
import pathlib
import time

import numpy as np
import torch
import torchvision
from tqdm import tqdm

from asrid_jax import metrics
from asrid_jax.data import records
from asrid_jax.data.source import resize_square

RESULTS = pathlib.Path(__file__).parent / "results"


def load_split(data_dir, split: str, res: int) -> tuple[np.ndarray, np.ndarray]:
  """(N, res, res, 3) uint8 images and (N,) labels of every record."""
  images, labels = [], []
  shards = records.list_shards(data_dir, split)
  if not shards:
    raise FileNotFoundError(f"{data_dir}: no {split} shards")
  for shard in tqdm(shards, desc=f"load {split}", unit="shard"):
    for data in records.iter_records(shard):
      rec = records.FaceRecord.from_bytes(data)
      images.append(resize_square(rec.decode_image(), res))
      labels.append(rec.label)
  return np.stack(images), np.asarray(labels, np.float32)


def to_tensor(batch: np.ndarray) -> torch.Tensor:
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
  x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
  return (x - mean) / std


@torch.no_grad()
def predict(model, images: np.ndarray, batch: int = 256) -> np.ndarray:
  model.eval()
  out = []
  for i in range(0, len(images), batch):
    out.append(torch.sigmoid(model(to_tensor(images[i : i + batch]))[:, 0]))
  return torch.cat(out).numpy().astype(np.float64)


def frame_metrics(labels, scores, prior) -> dict:
  result = metrics.binary_metrics(labels, scores)
  result["prior"] = metrics.prior_baseline(labels, prior)
  return result


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m bench.plain_mnv3")
  p.add_argument("--data_dir", required=True)
  p.add_argument("--epochs", type=int, default=8)
  p.add_argument("--res", type=int, default=128)
  p.add_argument("--batch_size", type=int, default=64)
  p.add_argument("--lr", type=float, default=2e-3)
  p.add_argument("--weight_decay", type=float, default=0.01)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--limit", type=int, default=0, help="train images (0: all)")
  p.add_argument("--out", default=str(RESULTS / "plain_mnv3.json"))
  args = p.parse_args(argv)
  torch.manual_seed(args.seed)
  rng = np.random.default_rng(args.seed)
  t0 = time.perf_counter()
  x_train, y_train = load_split(args.data_dir, "train", args.res)
  if args.limit:
    x_train, y_train = x_train[: args.limit], y_train[: args.limit]
  x_val, y_val = load_split(args.data_dir, "val", args.res)
  x_test, y_test = load_split(args.data_dir, "test", args.res)
  load_s = time.perf_counter() - t0
  prior = float(y_train.mean())

  model = torchvision.models.mobilenet_v3_small(num_classes=1)
  steps_per_epoch = len(x_train) // args.batch_size
  opt = torch.optim.AdamW(
    model.parameters(), lr=args.lr, weight_decay=args.weight_decay
  )
  sched = torch.optim.lr_scheduler.OneCycleLR(
    opt, max_lr=args.lr, total_steps=args.epochs * steps_per_epoch
  )
  loss_fn = torch.nn.BCEWithLogitsLoss()
  curve = []
  t_train = time.perf_counter()
  for epoch in range(args.epochs):
    model.train()
    order = rng.permutation(len(x_train))
    losses = []
    bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}", unit="step")
    for s in bar:
      idx = order[s * args.batch_size : (s + 1) * args.batch_size]
      batch = x_train[idx]
      flip = rng.random(len(idx)) < 0.5
      batch = np.where(flip[:, None, None, None], batch[:, :, ::-1], batch)
      logits = model(to_tensor(np.ascontiguousarray(batch)))[:, 0]
      loss = loss_fn(logits, torch.from_numpy(y_train[idx]))
      opt.zero_grad()
      loss.backward()
      opt.step()
      sched.step()
      losses.append(float(loss))
      if s % 20 == 0:
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    val = metrics.binary_metrics(y_val, predict(model, x_val))
    curve.append(
      {
        "epoch": epoch + 1,
        "train_loss": float(np.mean(losses)),
        "val_log_loss": val["log_loss"],
        "val_auc": val["roc_auc"],
      }
    )
    print(json.dumps(curve[-1]))
  train_s = time.perf_counter() - t_train
  test = frame_metrics(y_test, predict(model, x_test), prior)
  result = {
    "model": "torchvision mobilenet_v3_small, from scratch",
    "recipe": vars(args),
    "train_images": len(x_train),
    "images_per_s": args.epochs * steps_per_epoch * args.batch_size / train_s,
    "load_s": load_s,
    "train_s": train_s,
    "torch_threads": torch.get_num_threads(),
    "curve": curve,
    "test_frame": test,
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(
    "| model | test LogLoss | prior | accuracy | AUC | AP | EER | train s |\n"
    "|---|---|---|---|---|---|---|---|\n"
    f"| plain MobileNetV3-Small {args.res}px | {test['log_loss']:.3f} | "
    f"{test['prior']['log_loss']:.3f} | {test['accuracy']:.3f} | "
    f"{test['roc_auc']:.3f} | {test['average_precision']:.3f} | "
    f"{test['eer']:.3f} | {train_s:.0f} |"
  )
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
