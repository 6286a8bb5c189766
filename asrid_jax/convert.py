"""torchvision MobileNetV3-Small state_dict -> Flax params for our backbone.

Usage:
  python -m asrid_jax.convert --torchvision_weights mobilenet_v3_small.pth \
      --out weights/mnv3s [--drop_classifier] [--overwrite]

The output directory holds `params/` (an Orbax checkpoint of the backbone's
parameters and batch-norm statistics as a nested dict with string keys, the
paths of `asrid_jax.models.mobilenet_v3`) and `conversion.json` (source file,
its sha256, number of classes, tensor count). It is written to a temporary
sibling and renamed into place, so a crash never leaves a half-written DIR.
`mobilenet_v3.load_pretrained(backbone, DIR)` reads it (`config.model_init`).

Torch is imported only inside `load_torch_state_dict`, so importing this
module (as `load_pretrained` does) never needs torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from asrid_jax.models import mobilenet_v3

FORMAT_VERSION = 1
PARAMS_DIR = "params"
INFO_FILE = "conversion.json"
CLASSIFIER_PREFIX = "classifier/"

# Flax leaf name -> torch leaf name.
_LEAF_TO_TORCH = {
  "kernel": "weight",
  "scale": "weight",
  "bias": "bias",
  "mean": "running_mean",
  "var": "running_var",
}


class ConversionError(ValueError):
  """A state_dict or converted directory does not match the backbone."""


def flat_str_dict(tree: Mapping[Any, Any], prefix: str = "") -> dict[str, Any]:
  """Flattens a nested dict into {'a/0/b': leaf} with string keys."""
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      flat.update(flat_str_dict(value, name + "/"))
    else:
      flat[name] = value
  return flat


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def torch_key(flax_key: str) -> str:
  """'features/4/block/1/0/kernel' -> 'features.4.block.1.0.weight'."""
  *parents, leaf = flax_key.split("/")
  return ".".join(parents + [_LEAF_TO_TORCH[leaf]])


def _is_se_linear(flax_key: str) -> bool:
  # SE fc1/fc2 are 1x1 Conv2d in torch, (O, I, 1, 1), but linears here.
  return flax_key.split("/")[-2] in ("fc1", "fc2")


def expected_torch_shape(flax_key: str, shape: tuple[int, ...]) -> tuple:
  """The torch tensor shape that converts to a Flax leaf of `shape`."""
  if flax_key.endswith("/kernel"):
    if len(shape) == 4:  # HWIO <- OIHW (depthwise: (k,k,1,C) <- (C,1,k,k))
      return (shape[3], shape[2], shape[0], shape[1])
    if _is_se_linear(flax_key):
      return (shape[1], shape[0], 1, 1)
    return (shape[1], shape[0])
  return tuple(shape)


def _to_flax(flax_key: str, array: np.ndarray) -> np.ndarray:
  if flax_key.endswith("/kernel"):
    if array.ndim == 4 and not _is_se_linear(flax_key):
      return np.transpose(array, (2, 3, 1, 0))
    return np.transpose(array.reshape(array.shape[0], array.shape[1]))
  return array


def backbone_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
  """Flat Flax key -> shape of every backbone variable (no computation)."""
  abstract = nnx.eval_shape(
    lambda: mobilenet_v3.MobileNetV3Small(
      num_classes=num_classes, depthwise_impl="grouped", rngs=nnx.Rngs(0)
    )
  )
  pure = nnx.to_pure_dict(nnx.state(abstract, mobilenet_v3.WEIGHTS))
  return {k: tuple(v.shape) for k, v in flat_str_dict(pure).items()}


def _strip_wrappers(state_dict: Mapping[str, Any]) -> Mapping[str, Any]:
  for wrapper in ("state_dict", "model"):
    if wrapper in state_dict and isinstance(state_dict[wrapper], Mapping):
      state_dict = state_dict[wrapper]
  if state_dict and all(k.startswith("module.") for k in state_dict):
    state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
  return state_dict


def convert_state_dict(
  state_dict: Mapping[str, Any],
  *,
  keep_classifier: bool = True,
  source: str = "<state_dict>",
) -> tuple[dict[str, np.ndarray], int]:
  """Maps a torchvision mobilenet_v3_small state_dict to flat Flax params.

  Args:
    state_dict: torch key -> array-like (numpy or CPU tensors converted).
    keep_classifier: convert `classifier.*` too; otherwise they are dropped
      and the result is for `MobileNetV3Small(num_classes=0)`.
    source: file name used in error messages.

  Returns:
    ({flax_key: float32 array}, num_classes) with num_classes 0 when the
    classifier was dropped.

  Raises:
    ConversionError: listing every missing, unexpected and mis-shaped key.
  """
  state_dict = _strip_wrappers(state_dict)
  tensors = {
    k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
  }
  num_classes = 0
  if keep_classifier:
    head = tensors.get("classifier.3.weight")
    num_classes = int(np.shape(head)[0]) if head is not None else 1000
  else:
    tensors = {
      k: v for k, v in tensors.items() if not k.startswith("classifier.")
    }
  shapes = backbone_shapes(num_classes)
  expected = {torch_key(k): k for k in shapes}
  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  misshaped = []
  params: dict[str, np.ndarray] = {}
  for tkey, fkey in expected.items():
    if tkey not in tensors:
      continue
    array = np.asarray(tensors[tkey], dtype=np.float32)
    want = expected_torch_shape(fkey, shapes[fkey])
    if tuple(array.shape) != want:
      misshaped.append(f"{tkey}: shape {tuple(array.shape)}, expected {want}")
      continue
    params[fkey] = _to_flax(fkey, array)
  if missing or unexpected or misshaped:
    lines = [f"{source} is not a torchvision mobilenet_v3_small state_dict:"]
    if missing:
      lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      lines.append(
        f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}"
      )
    if misshaped:
      lines.append(f"  mis-shaped keys ({len(misshaped)}):")
      lines.extend(f"    {m}" for m in misshaped)
    raise ConversionError("\n".join(lines))
  return params, num_classes


def load_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a .pth safely (`weights_only=True`) into numpy arrays."""
  import torch  # pylint: disable=g-import-not-at-top

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such weights file")
  if path.stat().st_size == 0:
    raise ConversionError(f"{path}: empty file (0 bytes), not a torch file")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises several unrelated types here.
    # Never pass on torch's advice to retry with weights_only=False: that
    # runs whatever code a pickle carries.
    raise ConversionError(f"{path}: {_not_loadable(path)}") from e
  if not isinstance(obj, Mapping):
    raise ConversionError(
      f"{path}: expected a state_dict (a mapping), got {type(obj).__name__}"
    )
  obj = _strip_wrappers(obj)
  out = {}
  for key, value in obj.items():
    if not isinstance(value, torch.Tensor):
      raise ConversionError(f"{path}: entry {key!r} is not a tensor")
    out[key] = value.detach().to(torch.float32).numpy()
    if not np.isfinite(out[key]).all():
      bad = int((~np.isfinite(out[key])).sum())
      raise ConversionError(
        f"{path}: tensor {key!r} has {bad} non-finite value(s) (NaN/inf) "
        f"of {out[key].size}; refusing to convert damaged weights"
      )
  return out


def _not_loadable(path: pathlib.Path) -> str:
  """What a file that torch's safe loader refused is, for the message."""
  import zipfile  # pylint: disable=g-import-not-at-top

  with open(path, "rb") as f:
    head = f.read(2)
  if zipfile.is_zipfile(path):
    return (
      "a zip file but not a torch.save state_dict of tensors (or one holding "
      "other objects, which the safe loader does not run); not converted"
    )
  if head[:1] == b"\x80":
    return (
      "a pickle holding more than tensors; it is not loaded, because "
      "unpickling it could run arbitrary code. Save a plain state_dict "
      "(torch.save(model.state_dict(), path)) and convert that"
    )
  return (
    "not a torch file (neither torch.save's zip format nor a pickle); "
    "expected a torchvision mobilenet_v3_small state_dict (.pth)"
  )


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def save_converted(
  params: Mapping[str, np.ndarray],
  out_dir: str | os.PathLike,
  info: Mapping[str, Any],
  *,
  overwrite: bool = False,
) -> pathlib.Path:
  """Writes params + conversion.json to `out_dir` atomically."""
  out = pathlib.Path(out_dir).resolve()
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  try:
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / PARAMS_DIR, _nest(params))
    checkpointer.wait_until_finished()
    checkpointer.close()
    full_info = dict(info, format_version=FORMAT_VERSION, tensors=len(params))
    (tmp / INFO_FILE).write_text(json.dumps(full_info, indent=2) + "\n")
    if out.exists():
      old = out.parent / f".{out.name}.old-{os.getpid()}"
      out.rename(old)
      tmp.rename(out)
      shutil.rmtree(old)
    else:
      tmp.rename(out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return out


def read_converted(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a directory written by `save_converted` into {flax_key: array}."""
  path = pathlib.Path(path).resolve()
  info_file = path / INFO_FILE
  if not info_file.is_file() or not (path / PARAMS_DIR).is_dir():
    raise ConversionError(
      f"{path}: not a converted-weights directory (needs {INFO_FILE} and "
      f"{PARAMS_DIR}/ written by `python -m asrid_jax.convert`)"
    )
  info = json.loads(info_file.read_text())
  if info.get("format_version") != FORMAT_VERSION:
    raise ConversionError(
      f"{info_file}: format_version {info.get('format_version')!r}, this "
      f"code reads {FORMAT_VERSION}"
    )
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.restore(path / PARAMS_DIR)
  checkpointer.close()
  return {k: np.asarray(v) for k, v in flat_str_dict(tree).items()}


def match_params(
  target: Mapping[str, Any], saved: Mapping[str, np.ndarray], *, source: str
) -> tuple[dict[str, np.ndarray], list[str]]:
  """Pairs saved arrays with a backbone's flat variables.

  Every non-classifier variable must be present with the same shape. The
  classifier is taken only when every one of its tensors matches in shape.

  Returns:
    (updates {flax_key: array}, names of target classifier tensors kept as
    initialised).
  """
  body = {k for k in target if not k.startswith(CLASSIFIER_PREFIX)}
  saved_body = {k for k in saved if not k.startswith(CLASSIFIER_PREFIX)}
  problems = [f"missing {k}" for k in sorted(body - saved_body)]
  problems += [f"unexpected {k}" for k in sorted(saved_body - body)]
  problems += [
    f"{k}: saved shape {saved[k].shape}, model shape {tuple(target[k].shape)}"
    for k in sorted(body & saved_body)
    if tuple(saved[k].shape) != tuple(target[k].shape)
  ]
  if problems:
    raise ConversionError(
      f"{source}: converted weights do not fit this backbone:\n  "
      + "\n  ".join(problems)
    )
  updates = {k: saved[k] for k in body}
  head = [k for k in target if k.startswith(CLASSIFIER_PREFIX)]
  if head and all(
    k in saved and tuple(saved[k].shape) == tuple(target[k].shape) for k in head
  ):
    updates.update({k: saved[k] for k in head})
    head = []
  return updates, head


def convert_file(
  weights: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  keep_classifier: bool = True,
  overwrite: bool = False,
) -> pathlib.Path:
  """The CLI code path: .pth -> converted directory."""
  weights = pathlib.Path(weights)
  out = pathlib.Path(out_dir)
  if out.exists() and not overwrite:
    raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
  state_dict = load_torch_state_dict(weights)
  params, num_classes = convert_state_dict(
    state_dict, keep_classifier=keep_classifier, source=str(weights)
  )
  info = {
    "source": str(weights.resolve()),
    "source_sha256": _sha256(weights),
    "architecture": "torchvision.models.mobilenet_v3_small",
    "num_classes": num_classes,
    "classifier_kept": keep_classifier,
    "jax_version": jax.__version__,
  }
  written = save_converted(params, out, info, overwrite=overwrite)
  logging.info(
    "converted %d tensors from %s to %s", len(params), weights, written
  )
  return written


def main(argv: list[str] | None = None) -> int:
  # argparse, not absl flags: load_pretrained imports this module inside the
  # trainer, and module-level flag definitions would pollute its flags.
  parser = argparse.ArgumentParser(
    prog="python -m asrid_jax.convert", description=__doc__.split("\n")[0]
  )
  parser.add_argument("--torchvision_weights", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument(
    "--drop_classifier",
    action="store_true",
    help="drop the 1000-class classifier (for num_classes=0 backbones)",
  )
  parser.add_argument("--overwrite", action="store_true")
  args = parser.parse_args(argv)
  try:
    out = convert_file(
      args.torchvision_weights,
      args.out,
      keep_classifier=not args.drop_classifier,
      overwrite=args.overwrite,
    )
  except (ConversionError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except OSError as e:
    # Read-only, immutable or full output folder: one line, not a traceback.
    # save_converted writes to a temp sibling, so nothing half-written stays.
    print(
      f"error: {e.filename or args.out}: {e.strerror or e}; {args.out} was "
      "not written (an existing one is kept as it was)",
      file=sys.stderr,
    )
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
