"""Where a backbone training step spends its time: per block, JAX vs torch.

  python -m bench.layer_bench [--size 380] [--batch 8] [--dtype float32]
      [--impls shifted,shifted_vjp] [--reps 5]

For each of MobileNetV3-Small's 13 `features[i]` blocks, at the activation
shape it sees for a `--batch` x `--size` px input, it times the forward +
backward of that block alone (train mode: batch statistics; gradients with
respect to its parameters and its input, except the stem's: training
needs no image gradient; a fixed random output cotangent)
in JAX with every depthwise form of `--impls`, and torchvision's same block
in PyTorch (same threads). Inside each block it also times the depthwise
convolution alone (its forward + both gradients) against torch's grouped
`conv2d`, since that is the op XLA handles worst. The sum over blocks is
close to the whole step (the stem and the pooled head are small).

Times are the best of `--reps` runs (the least disturbed on a shared
machine). Prints a table (ms per block, JAX/torch time ratio: >1 means JAX
is slower)
and writes bench/results/layer_bench.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from asrid_jax.models import depthwise
from asrid_jax.models import mobilenet_v3 as mv
from bench import common, model_bench

RESULTS = pathlib.Path(__file__).parent / "results" / "layer_bench.json"


def _best_ms(fn: Callable[[], Any], warmup: int, reps: int) -> float:
  """Best of `reps` in ms: the least disturbed run on a shared machine."""
  return 1e3 * min(common.run_times(fn, warmup, reps))


def block_inputs(model, size: int, batch: int) -> list[tuple[int, ...]]:
  """NHWC input shape of every features[i] for a (batch, size, size) input."""
  shapes, x = [], jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
  for layer in model.features:
    shapes.append(tuple(x.shape))
    x = jax.eval_shape(lambda m, v: m(v), layer, x)
  return shapes


def _describe(index: int) -> str:
  if index == 0:
    return "stem 3x3/2"
  if index == 12:
    return "last 1x1"
  _, k, exp, out, se, act, stride = mv.SMALL_SETTING[index - 1]
  return f"k{k}/{stride} e{exp} o{out}{' se' if se else ''} {act[:4]}"


def _depthwise_spec(index: int) -> tuple[int, int] | None:
  """(kernel, stride) of block `index`'s depthwise conv, None for stem/last."""
  if index in (0, 12):
    return None
  _, k, _, _, _, _, stride = mv.SMALL_SETTING[index - 1]
  return k, stride


def jax_block_ms(
  layer, shape, dtype, impl, warmup, reps, input_grad=True
) -> float:
  layer.set_attributes(dtype=jnp.dtype(dtype), depthwise_impl=impl)
  layer.train()
  x = jax.random.normal(jax.random.key(1), shape, jnp.float32)
  out = jax.eval_shape(lambda m, v: m(v), layer, x)
  ct = jax.random.normal(jax.random.key(2), out.shape, jnp.float32)

  @nnx.jit
  def step(m, v):
    def loss(mod, inp):
      return jnp.vdot(mod(inp).astype(jnp.float32), ct)

    if not input_grad:  # the stem: training needs no image gradient
      return nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(m, v)
    return nnx.grad(loss, argnums=(nnx.DiffState(0, nnx.Param), 1))(m, v)

  return _best_ms(lambda: jax.block_until_ready(step(layer, x)), warmup, reps)


def jax_depthwise_ms(shape, channels, k, stride, dtype, impl, warmup, reps):
  n, h, w, _ = shape
  x = jax.random.normal(jax.random.key(1), (n, h, w, channels), dtype)
  kernel = jax.random.normal(jax.random.key(2), (k, k, 1, channels), dtype)
  out = jax.eval_shape(
    lambda a, b: depthwise.depthwise_conv(a, b, stride, impl), x, kernel
  )
  ct = jax.random.normal(jax.random.key(3), out.shape, dtype)

  @jax.jit
  def step(x, kernel):
    return jax.grad(
      lambda a, b: jnp.vdot(
        depthwise.depthwise_conv(a, b, stride, impl).astype(jnp.float32),
        ct.astype(jnp.float32),
      ),
      argnums=(0, 1),
    )(x, kernel)

  return _best_ms(lambda: jax.block_until_ready(step(x, kernel)), warmup, reps)


def torch_block_ms(block, shape, warmup, reps, input_grad=True) -> float:
  import torch  # pylint: disable=g-import-not-at-top

  n, h, w, c = shape
  torch.manual_seed(0)
  x = torch.randn(n, c, h, w, requires_grad=input_grad)
  block.train()
  with torch.no_grad():
    ct = torch.randn_like(block(x))

  def step():
    block.zero_grad(set_to_none=True)
    x.grad = None
    (block(x) * ct).sum().backward()

  return _best_ms(step, warmup, reps)


def torch_depthwise_ms(shape, channels, k, stride, warmup, reps) -> float:
  import torch  # pylint: disable=g-import-not-at-top

  conv = torch.nn.Conv2d(
    channels, channels, k, stride, (k - 1) // 2, groups=channels, bias=False
  )
  return torch_block_ms(conv, shape, warmup, reps)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=380)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--impls", default="shifted,shifted_vjp")
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--no_torch", action="store_true")
  parser.add_argument("--out", default=str(RESULTS))
  args = parser.parse_args(argv)
  impls = args.impls.split(",")
  model = model_bench.build_jax_model()
  shapes = block_inputs(model, args.size, args.batch)
  torch_blocks = None
  if not args.no_torch:
    import torchvision  # pylint: disable=g-import-not-at-top

    model_bench._torch_info(_threads())  # torch threads = all cores
    torch_blocks = torchvision.models.mobilenet_v3_small(weights=None).features
  rows = []
  # All JAX timings first, then all torch ones: torch's OpenMP threads keep
  # spinning after its ops return, which would slow a JAX op timed next.
  for index, layer in enumerate(model.features):
    shape = shapes[index]
    row: dict[str, Any] = {
      "block": index,
      "what": _describe(index),
      "input": list(shape),
      "jax_ms": {},
      "dw_jax_ms": {},
    }
    for impl in impls:
      row["jax_ms"][impl] = jax_block_ms(
        layer, shape, args.dtype, impl, args.warmup, args.reps, index > 0
      )
    spec = _depthwise_spec(index)
    if spec is not None:
      k, stride = spec
      _, _, expanded, *_ = mv.SMALL_SETTING[index - 1]
      # The depthwise conv runs after the expansion (same spatial size).
      row["depthwise"] = {"k": k, "stride": stride, "channels": expanded}
      for impl in impls:
        row["dw_jax_ms"][impl] = jax_depthwise_ms(
          _dw_shape(shape, expanded),
          expanded,
          k,
          stride,
          args.dtype,
          impl,
          args.warmup,
          args.reps,
        )
    rows.append(row)
    print(json.dumps(row), flush=True)
  for row, block in zip(rows, torch_blocks or (), strict=False):
    shape, index = tuple(row["input"]), row["block"]
    row["torch_ms"] = torch_block_ms(
      block, shape, args.warmup, args.reps, index > 0
    )
    if "depthwise" in row:
      dw = row["depthwise"]
      row["dw_torch_ms"] = torch_depthwise_ms(
        _dw_shape(shape, dw["channels"]),
        dw["channels"],
        dw["k"],
        dw["stride"],
        args.warmup,
        args.reps,
      )
    print(json.dumps(row), flush=True)
  _print_table(rows, impls, args)
  result = {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "cpu": common.cpu_name(),
    "size": args.size,
    "batch": args.batch,
    "dtype": args.dtype,
    "impls": impls,
    "rows": rows,
    "totals": _totals(rows, impls),
  }
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")
  return result


def _dw_shape(shape, channels: int) -> tuple[int, ...]:
  return (shape[0], shape[1], shape[2], channels)


def _threads() -> int:
  import os  # pylint: disable=g-import-not-at-top

  return len(os.sched_getaffinity(0))


def _totals(rows, impls) -> dict[str, float]:
  totals = {f"jax_{i}": sum(r["jax_ms"][i] for r in rows) for i in impls}
  totals.update(
    {
      f"dw_jax_{i}": sum(r["dw_jax_ms"].get(i, 0.0) for r in rows)
      for i in impls
    }
  )
  if all("torch_ms" in r for r in rows):
    totals["torch"] = sum(r["torch_ms"] for r in rows)
    totals["dw_torch"] = sum(r.get("dw_torch_ms", 0.0) for r in rows)
  return totals


def _print_table(rows, impls, args) -> None:
  print(
    f"\nfwd+bwd per block, {args.batch} x {args.size} px, {args.dtype}, "
    f"{jax.default_backend()} ({common.cpu_name()}); ms, "
    "x = JAX time / torch time"
  )
  head = f"{'#':>2} {'block':<26}{'torch':>8}"
  for impl in impls:
    head += f"{impl:>13}{'x':>6}"
  head += f" | {'dw torch':>8}"
  for impl in impls:
    head += f"{'dw ' + impl:>16}"
  print(head)
  for r in rows:
    t = r.get("torch_ms", float("nan"))
    line = f"{r['block']:>2} {r['what']:<26}{t:>8.1f}"
    for impl in impls:
      line += f"{r['jax_ms'][impl]:>13.1f}{r['jax_ms'][impl] / t:>6.2f}"
    dt = r.get("dw_torch_ms", float("nan"))
    line += f" | {dt:>8.1f}"
    for impl in impls:
      line += f"{r['dw_jax_ms'].get(impl, float('nan')):>16.1f}"
    print(line)
  tot = _totals(rows, impls)
  t = tot.get("torch", float("nan"))
  line = f"{'':>2} {'sum':<26}{t:>8.1f}"
  for impl in impls:
    line += f"{tot[f'jax_{impl}']:>13.1f}{tot[f'jax_{impl}'] / t:>6.2f}"
  line += f" | {tot.get('dw_torch', float('nan')):>8.1f}"
  for impl in impls:
    line += f"{tot[f'dw_jax_{impl}']:>16.1f}"
  print(line)


if __name__ == "__main__":
  np.set_printoptions(precision=3)
  main()
