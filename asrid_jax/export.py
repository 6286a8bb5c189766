r"""Export a trained model to ship: weights and config, no optimizer state.

  python -m asrid_jax.export --workdir=RUN [--checkpoint=best|latest|STEP] \
      --out=models/NAME

OUT gets the one chosen checkpoint as Orbax writes it, less the optimizer
state and the data-iterator state (`checkpoints/<step>/{model,config,
metrics}`: parameters, batch statistics, EMA when present, the full config),
the training data's `dataset_info.json` (priors for evaluate, crop
convention for predict) and `config.json`. Every tool that takes a workdir
(`evaluate --workdir=OUT`, `predict --workdir=OUT`) takes OUT. The export is
written beside OUT and renamed into place, then restored and compared with
the source before it is kept: a half-written or unfaithful export never
becomes visible.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys

import jax
import numpy as np
from absl import logging
from flax import nnx

from asrid_jax import checkpoint as checkpoint_lib
from asrid_jax import model_info, reporting
from asrid_jax.data import records

# Items of a checkpoint step that a shipped model keeps.
KEEP = ("model", "config", "metrics", "_CHECKPOINT_METADATA")


def export(
  workdir: str | pathlib.Path, out: str | pathlib.Path, which="best"
) -> int:
  """Writes the export; returns the step exported."""
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  ckpt = checkpoint_lib.Checkpointer(workdir, read_only=True)
  step = ckpt.resolve(checkpoint_lib.parse_which(which))
  config = ckpt.config(step)
  ckpt.close()
  src = workdir / "checkpoints" / str(step)
  tmp = out.with_name(out.name + ".export-tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  dst = tmp / "checkpoints" / str(step)
  dst.mkdir(parents=True)
  for name in KEEP:
    item = src / name
    if item.is_dir():
      shutil.copytree(item, dst / name)
    elif item.is_file():
      shutil.copy2(item, dst / name)
  (dst / "commit_success.txt").write_text("exported\n")
  info = model_info.training_info(workdir, config.data.dir)
  if info is None:
    shutil.rmtree(tmp)
    raise FileNotFoundError(
      f"{workdir}: no training dataset_info.json (neither in the workdir nor "
      f"in {config.data.dir}); a shipped model needs it for its priors and "
      "crop convention"
    )
  records.write_json_atomic(tmp / records.DATASET_INFO, info)
  (tmp / "config.json").write_text(config.to_json(indent=2))
  _check_same(workdir, tmp, step)
  if out.exists():
    old = out.with_name(out.name + ".export-old")
    shutil.rmtree(old, ignore_errors=True)
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old)
  else:
    tmp.rename(out)
  return step


def _check_same(workdir, exported, step) -> None:
  """Restores both and compares every array (parameters and statistics)."""
  _, a, _ = checkpoint_lib.restore_for_eval(workdir, step)
  _, b, _ = checkpoint_lib.restore_for_eval(exported, step)
  sa, sb = jax.device_get(nnx.state(a)), jax.device_get(nnx.state(b))
  la, lb = jax.tree.leaves(sa), jax.tree.leaves(sb)
  if len(la) != len(lb) or any(
    not np.array_equal(x, y) for x, y in zip(la, lb, strict=True)
  ):
    raise RuntimeError(f"{exported}: restored model differs from {workdir}")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m asrid_jax.export")
  p.add_argument("--workdir", required=True)
  p.add_argument("--checkpoint", default="best")
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  reporting.quiet_library_logs()
  try:
    step = export(args.workdir, args.out, args.checkpoint)
  except (FileNotFoundError, ValueError, checkpoint_lib.CheckpointError) as e:
    print(f"export: error: {e}", file=sys.stderr)
    return 1
  size = sum(f.stat().st_size for f in pathlib.Path(args.out).rglob("*"))
  print(
    f"export: step {step} of {args.workdir} -> {args.out} ({size / 1e6:.1f} MB)"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
