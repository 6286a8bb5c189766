"""Where a JAX train step's time goes on the XLA:CPU threads, op by op.

  python -m bench.step_profile [--variant dyn_mix] [--size 380]
      [--clips 2 --clip_len 4] [--steps 5] [--top 25] [--out FILE]

Traces `--steps` jitted train steps (bench/train_bench.py's Trainer on
random clips, compile excluded) with `jax.profiler` and reads the ops XLA
ran on its intra-op threads. For each step window it measures how long 0,
1, 2, ... of those threads were busy, and for every op how much of its time
ran while it was the only busy one ("solo": time on the critical path that a
second core did not share). Ops are grouped by what XLA compiled them into
(GEMM, convolution, reduction, elementwise/copy loop, loop control), read
from the compiled HLO. Prints per-kind and top-op tables (ms per step) and
writes bench/results/step_profile.json.

CPU only (on a GPU the ops run on the device, not on these threads). The
same op times sum to more than the step when two threads overlap and
to less when threads wait; the busy-thread table says which. It depends on
the profiler's trace format (TensorBoard trace.json.gz) and XLA's op names.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile
from typing import Any

RESULTS = pathlib.Path(__file__).parent / "results" / "step_profile.json"
STEP_NAME = "step_profile_train_step"
# XLA:CPU's intra-op pool threads, where the compiled ops run.
_OP_THREAD = re.compile(r"XLAEigen")
# Executor bookkeeping and waits (a multi-device step's rendezvous): not work.
_NOT_OPS = re.compile(
  r"Execute|Await|ThreadpoolListener|^end: |Rendezvous|^Wait"
)


def _union(intervals: list[tuple[float, float]]) -> list[list[float]]:
  merged: list[list[float]] = []
  for start, end in sorted(intervals):
    if merged and start <= merged[-1][1]:
      merged[-1][1] = max(merged[-1][1], end)
    else:
      merged.append([start, end])
  return merged


def busy_profile(
  ops: list[dict[str, Any]], start: float, end: float
) -> tuple[dict[int, float], dict[str, float]]:
  """Time with k threads busy in [start, end], and each op's solo time.

  `ops` are trace events (ts, dur in us, tid, name). Returns
  ({k: us with exactly k threads busy}, {op name: us it ran while no other
  thread was busy}).
  """
  per_thread: dict[Any, list[tuple[float, float]]] = collections.defaultdict(
    list
  )
  for e in ops:
    a, b = max(e["ts"], start), min(e["ts"] + e["dur"], end)
    if b > a:
      per_thread[e["tid"]].append((a, b))
  edges = []
  for intervals in per_thread.values():
    for a, b in _union(intervals):
      edges += [(a, 1), (b, -1)]
  edges.sort()
  busy: dict[int, float] = collections.Counter()
  solo_spans: list[tuple[float, float]] = []
  level, last = 0, start
  for t, delta in edges:
    if t > last:
      busy[level] += t - last
      if level == 1:
        solo_spans.append((last, t))
    level, last = level + delta, t
  if end > last:
    busy[level] += end - last
  solo: dict[str, float] = collections.Counter()
  for e in ops:
    a, b = e["ts"], e["ts"] + e["dur"]
    for s, t in solo_spans:  # few thousand spans and ops: quadratic is fine
      if s >= b:
        break
      overlap = min(b, t) - max(a, s)
      if overlap > 0:
        solo[e["name"]] += overlap
  return dict(busy), dict(solo)


def op_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (kind, result shape)} from compiled HLO text."""
  bodies: dict[str, str] = {}
  for match in re.finditer(r"^(?:%)?([\w.\-]+) .*?\{\n(.*?)\n\}", hlo_text,
                           re.M | re.S):  # fmt: skip
    bodies[match.group(1)] = match.group(2)
  kinds = {}
  for match in re.finditer(
    r"^\s+(?:ROOT )?%([\w.\-]+) = (\S+) (\w[\w\-]*)\((.*)$", hlo_text, re.M
  ):
    name, shape, opcode, rest = match.groups()
    body = opcode
    if opcode == "fusion":
      called = re.search(r"calls=%([\w.\-]+)", rest)
      body = bodies.get(called.group(1), "") if called else ""
    if re.search(r"\b(dot|custom-call)\(", body) or opcode == "dot":
      kind = "GEMM"
    elif re.search(r"\bconvolution\(", body) or opcode == "convolution":
      kind = "convolution"
    elif re.search(r"\breduce(-window)?\(", body) or opcode == "reduce":
      kind = "reduction"
    elif opcode in ("while", "conditional", "call"):
      kind = "loop control"
    else:
      kind = "elementwise/copy"
    kinds[name] = (kind, shape)
  return kinds


def _load_trace(directory: pathlib.Path) -> list[dict[str, Any]]:
  files = sorted(directory.glob("**/*.trace.json.gz"))
  if not files:
    raise FileNotFoundError(
      f"jax.profiler wrote no *.trace.json.gz under {directory}"
    )
  with gzip.open(files[-1]) as f:
    trace = json.load(f)
  events = trace["traceEvents"]
  names = {
    (e["pid"], e["tid"]): e["args"]["name"]
    for e in events
    if e.get("ph") == "M" and e.get("name") == "thread_name"
  }
  for e in events:
    e["thread"] = names.get((e.get("pid"), e.get("tid")), "")
  return events


def profile(args) -> dict[str, Any]:
  import jax

  from bench import common, train_bench

  if jax.default_backend() != "cpu":
    raise SystemExit(
      f"step_profile reads XLA:CPU's threads; JAX runs on "
      f"{jax.default_backend()} here (set JAX_PLATFORMS=cpu)"
    )
  trainer, state, batch, key = train_bench.jax_trainer(
    args.variant, args.size, args.clips, args.clip_len, args.dtype
  )
  # Compiled once, so the HLO read is the one that runs.
  step = trainer.train_step.lower(state, batch, key).compile()
  hlo = step.as_text()
  state, metrics = step(state, batch, key)  # warm-up
  jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(args.steps):
        with jax.profiler.TraceAnnotation(STEP_NAME):
          state, metrics = step(state, batch, key)
          jax.block_until_ready(metrics)
    events = _load_trace(pathlib.Path(tmp))
  steps = [e for e in events if e.get("ph") == "X" and e["name"] == STEP_NAME]
  ops = [
    e
    for e in events
    if e.get("ph") == "X"
    and _OP_THREAD.search(e["thread"])
    and not _NOT_OPS.search(e["name"])
  ]
  if not steps or not ops:
    raise RuntimeError(
      f"the trace has {len(steps)} step annotations and {len(ops)} XLA ops "
      "on XLAEigen threads; has the profiler's format changed?"
    )
  kinds = op_kinds(hlo)
  n = len(steps)
  busy_total: dict[int, float] = collections.Counter()
  solo_total: dict[str, float] = collections.Counter()
  op_total: dict[str, float] = collections.Counter()
  op_threads: dict[str, int] = collections.Counter()
  for step in steps:
    start, end = step["ts"], step["ts"] + step["dur"]
    inside = [e for e in ops if start <= e["ts"] < end]
    busy, solo = busy_profile(inside, start, end)
    for k, v in busy.items():
      busy_total[k] += v
    for k, v in solo.items():
      solo_total[k] += v
    threads_in_step: dict[str, set] = collections.defaultdict(set)
    for e in inside:
      op_total[e["name"]] += e["dur"]
      threads_in_step[e["name"]].add(e["tid"])
    for name, tids in threads_in_step.items():
      op_threads[name] = max(op_threads[name], len(tids))
  ms = 1e-3 / n  # trace us summed over n steps -> ms per step
  by_kind: dict[str, dict[str, float]] = collections.defaultdict(
    lambda: {"ms": 0.0, "solo_ms": 0.0, "ops": 0}
  )
  top = []
  for name, total in op_total.items():
    kind, shape = kinds.get(name, ("other", ""))
    by_kind[kind]["ms"] += total * ms
    by_kind[kind]["solo_ms"] += solo_total.get(name, 0.0) * ms
    by_kind[kind]["ops"] += 1
    top.append(
      {
        "op": name,
        "kind": kind,
        "shape": shape,
        "ms": total * ms,
        "solo_ms": solo_total.get(name, 0.0) * ms,
        # Most threads it ran on within one step (1: never split).
        "threads": op_threads[name],
      }
    )
  top.sort(key=lambda r: -r["ms"])
  return {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "cpu": common.cpu_name(),
    "variant": args.variant,
    "size": args.size,
    "frames": args.clips * args.clip_len,
    "dtype": args.dtype,
    "steps": n,
    "step_ms": sum(s["dur"] for s in steps) * ms,
    "threads_busy_ms": {str(k): v * ms for k, v in sorted(busy_total.items())},
    "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["ms"])),
    "top_ops": top[: args.top],
  }


def print_tables(result: dict[str, Any]) -> None:
  print(
    f"\n{result['variant']} {result['size']} px, {result['frames']} frames, "
    f"{result['dtype']}, {result['cpu']}: step {result['step_ms']:.1f} ms "
    f"(mean of {result['steps']})"
  )
  print("\n| threads busy | ms per step |\n|---|---|")
  for k, v in result["threads_busy_ms"].items():
    print(f"| {k} | {v:.1f} |")
  print("\n| op kind | ms | solo ms | ops |\n|---|---|---|---|")
  for kind, row in result["by_kind"].items():
    print(f"| {kind} | {row['ms']:.1f} | {row['solo_ms']:.1f} | {row['ops']} |")
  print("\n| op | kind | result | ms | solo ms | threads |")
  print("|---|---|---|---|---|---|")
  for r in result["top_ops"]:
    print(
      f"| {r['op']} | {r['kind']} | {r['shape']} | {r['ms']:.2f} "
      f"| {r['solo_ms']:.2f} | {r['threads']} |"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", default="dyn_mix")
  parser.add_argument("--size", type=int, default=380)
  parser.add_argument("--clips", type=int, default=2)
  parser.add_argument("--clip_len", type=int, default=4)
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--top", type=int, default=25)
  parser.add_argument("--out", default=str(RESULTS))
  args = parser.parse_args(argv)
  result = profile(args)
  print_tables(result)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2))
  print(f"wrote {out}")
  return result


if __name__ == "__main__":
  main()
