"""Where a JAX train step's time goes on the XLA:CPU threads, op by op.

  python -m bench.step_profile [--variant dyn_mix] [--size 380]
      [--clips 2 --clip_len 4] [--steps 5] [--top 25] [--out FILE]

Traces `--steps` jitted train steps (bench/train_timing.py's Trainer on
random clips, compile excluded) with `jax.profiler` and reads what XLA:CPU's
threads did in each step window (see `thread_activity`): which op each
thread ran, when pool workers helped an op (YNNPACK and Eigen split an op's
loops over the pool; the helpers log no op event of their own), and when a
thread waited. It reports how long 0, 1, 2, ... threads were busy, and for
every op its own time, the help it got from other threads, and its "solo"
time, when it ran on the only busy thread (critical-path time a second
core did not share). Ops are grouped by what XLA compiled them into (GEMM,
convolution, reduction, elementwise/copy loop, loop control), read from
the compiled HLO. Prints per-kind and top-op tables (ms per step) and
writes bench/results/step_profile.json.

CPU only (on a GPU the ops run on the device, not on these threads). Help
is attributed by time: when two ops run while a worker helps, each gets
half. It depends on the profiler's trace format (TensorBoard trace.json.gz),
its ThreadpoolListener events and XLA's op names.
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

from asrid_jax import hostmem

RESULTS = pathlib.Path(__file__).parent / "results" / "step_profile.json"
STEP_NAME = "step_profile_train_step"
RUNTIME = "runtime (not in the HLO)"
# The threads that run compiled code: XLA:CPU's intra-op pool, and the
# client thread that starts each execution and runs ops itself.
_OP_THREAD = re.compile(r"XLAEigen|XLAPjRtCpuClient")
_POOL_THREAD = re.compile(r"XLAEigen")
# Executor bookkeeping and waits (a multi-device step's rendezvous): not work.
_NOT_OPS = re.compile(
  r"Execute|Await|ThreadpoolListener|^end: |Rendezvous|^Wait"
)
_END = "end: "
_REGION_START = "ThreadpoolListener::StartRegion"
_REGION_STOP = "ThreadpoolListener::StopRegion"
# A thread blocked on others: an op waiting for its pool workers, the client
# thread waiting for the step, a multi-device rendezvous.
_WAITS = re.compile(r"Await|wait for completion|Rendezvous|^Wait")
# The thunk executor's own closure: it runs ops, and between them it is
# bookkeeping.
_EXECUTOR = re.compile(r"^ThunkExecutor::Execute$")


def thread_activity(
  events: list[dict[str, Any]], start: float, end: float
) -> dict[str, Any]:
  """Who did what on XLA:CPU's threads in [start, end], event by event.

  `events` are one step's trace events (ts, dur in us, tid, name) on the
  threads that run compiled code. Events nest on a thread (a while loop's
  holds its body's ops, an op holds its waits), and the innermost open one
  says what the thread does: an op works, a wait blocks, the thunk executor
  does bookkeeping. A thread in none of them but inside a thread-pool
  closure (ThreadpoolListener's Start/StopRegion) is helping: YNNPACK
  splits one op's loops over the pool, and its workers log no op events. A
  sweep over every start and end gives, in us:

  - `busy`: {k: time with exactly k threads working, helping or in the
    executor};
  - `self`: {op: time it was the innermost op of a thread, waits excluded};
  - `helped`: {op: other threads' help, split evenly between the ops
    working or waiting at the time, or with none of those, between the
    ops in flight (launched, their "end:" event not yet logged)};
  - `solo`: {op: time it worked on the only busy thread};
  - `executor`: thread time in the executor's bookkeeping;
  - `unattributed`: help while no op was working anywhere.
  """
  marks = []  # (time, ends first, tid, what, +1/-1, name)
  regions: dict[Any, int] = collections.Counter()  # open closures
  first_in_window: dict[Any, tuple[float, int]] = {}
  events = sorted(events, key=lambda e: e["ts"])
  ends: dict[str, list[float]] = collections.defaultdict(list)
  for e in events:
    if e["name"].startswith(_END):
      ends[e["name"][len(_END) :]].append(e["ts"])
  next_end: dict[str, int] = collections.Counter()
  for e in events:
    name, tid = e["name"], e["tid"]
    if name in (_REGION_START, _REGION_STOP):
      delta = 1 if name == _REGION_START else -1
      if e["ts"] < start:
        regions[tid] = max(0, regions[tid] + delta)
      elif e["ts"] < end:
        marks.append((e["ts"], int(delta > 0), tid, "region", delta, ""))
        if e["ts"] < first_in_window.get(tid, (end, 0))[0]:
          first_in_window[tid] = (e["ts"], delta)
      continue
    a, b = max(e["ts"], start), min(e["ts"] + e["dur"], end)
    if b <= a:
      continue
    if _WAITS.search(name):
      what = "wait"
    elif _EXECUTOR.search(name):
      what = "executor"
    elif _NOT_OPS.search(name):
      continue
    else:
      what = "op"
      # Its "end: name" event: later than the op's own end when the op only
      # launched work on the pool (XLA's Eigen convolutions), which runs in
      # closures until then.
      done, i = ends[name], next_end[name]
      while i < len(done) and done[i] < e["ts"]:
        i += 1
      if i < len(done):
        next_end[name] = i + 1
        if min(done[i], end) > b:
          marks.append((b, 1, None, "flight", +1, name))
          marks.append((min(done[i], end), 0, None, "flight", -1, name))
    marks.append((a, 1, tid, what, +1, name))
    marks.append((b, 0, tid, what, -1, name))
  marks.sort(key=lambda m: m[:2])
  for tid, (_, delta) in first_in_window.items():
    if delta < 0:  # a closure that began before the events given
      regions[tid] = max(regions[tid], 1)
  stacks: dict[Any, list[tuple[str, str]]] = collections.defaultdict(list)
  in_flight: list[str] = []
  busy: dict[int, float] = collections.Counter()
  own: dict[str, float] = collections.Counter()
  helped: dict[str, float] = collections.Counter()
  solo: dict[str, float] = collections.Counter()
  executor = unattributed = 0.0
  last = start
  for t, _, tid, what, delta, name in [*marks, (end, 0, None, "", 0, "")]:
    if t > last:
      dt = t - last
      working, waiting, helping, in_executor = [], [], 0, 0
      for k in set(stacks) | set(regions):
        stack = stacks[k]
        if stack and stack[-1][0] == "op":
          working.append(stack[-1][1])
        elif stack and stack[-1][0] == "executor":
          in_executor += 1
        elif stack:  # a wait; inside an op, it waits for that op's helpers
          waiting += [name for what, name in stack if what == "op"][-1:]
        elif regions[k] > 0:
          helping += 1
      level = len(working) + helping + in_executor
      busy[level] += dt
      executor += dt * in_executor
      for op in working:
        own[op] += dt
        if level == 1:
          solo[op] += dt
      # Help goes evenly to the ops working or waiting for it; with none, to
      # those in flight.
      candidates = working + waiting or in_flight
      for op in candidates:
        helped[op] += dt * helping / len(candidates)
      if not candidates:
        unattributed += dt * helping
      last = t
    if what == "region":
      regions[tid] = max(0, regions[tid] + delta)
    elif what == "flight":
      if delta > 0:
        in_flight.append(name)
      else:
        in_flight.remove(name)
    elif delta > 0:
      stacks[tid].append((what, name))
    elif what:
      # Close the last open event of that name: tolerant of rounding that
      # lets a child end a hair after its parent.
      stack = stacks[tid]
      for i in range(len(stack) - 1, -1, -1):
        if stack[i] == (what, name):
          del stack[i]
          break
  return {
    "busy": dict(busy),
    "self": dict(own),
    "helped": dict(helped),
    "solo": dict(solo),
    "executor": executor,
    "unattributed": unattributed,
  }


def op_kinds(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (kind, result shape)} from compiled HLO text."""
  bodies: dict[str, str] = {}
  # A computation: a one-line header `[ENTRY ]%name (params) -> shape {`,
  # its instructions, a closing `}` alone on its line.
  for match in re.finditer(
    r"^(?:ENTRY )?%?([\w.\-]+) \([^\n]*\{\n(.*?)\n\}", hlo_text, re.M | re.S
  ):
    bodies[match.group(1)] = match.group(2)
  kinds = {}
  for match in re.finditer(
    # The result shape is a tuple "(s32[], f32[8]{0})" for loops and calls.
    r"^\s+(?:ROOT )?%([\w.\-]+) = (\(.*?\)|\S+) (\w[\w\-]*)\((.*)$",
    hlo_text,
    re.M,
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

  from bench import common, train_timing

  if jax.default_backend() != "cpu":
    raise SystemExit(
      f"step_profile reads XLA:CPU's threads; JAX runs on "
      f"{jax.default_backend()} here (set JAX_PLATFORMS=cpu)"
    )
  trainer, state, batch, key = train_timing.jax_trainer(
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
  result = summarize(events, op_kinds(hlo), args.top)
  return {
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "cpu": common.cpu_name(),
    "variant": args.variant,
    "size": args.size,
    "frames": args.clips * args.clip_len,
    "dtype": args.dtype,
    **result,
  }


def summarize(
  events: list[dict[str, Any]],
  kinds: dict[str, tuple[str, str]],
  top: int = 25,
) -> dict[str, Any]:
  """Per-step means (ms) of thread_activity over the annotated steps."""
  steps = [e for e in events if e.get("ph") == "X" and e["name"] == STEP_NAME]
  on_threads = [
    e
    for e in events
    if e.get("ph") == "X"
    and _OP_THREAD.search(e.get("thread", ""))
    # Only pool workers help; the client thread's closure spans the step.
    and (_POOL_THREAD.search(e["thread"]) or "Region" not in e["name"])
  ]
  if not steps or not any(not _NOT_OPS.search(e["name"]) for e in on_threads):
    raise RuntimeError(
      f"the trace has {len(steps)} step annotations and no XLA ops on "
      "XLAEigen/XLAPjRtCpuClient threads; has the profiler's format changed?"
    )
  totals: dict[str, Any] = collections.defaultdict(collections.Counter)
  executor = unattributed = 0.0
  for step in steps:
    start, end = step["ts"], step["ts"] + step["dur"]
    inside = [e for e in on_threads if start <= e["ts"] < end]
    activity = thread_activity(inside, start, end)
    for field in ("busy", "self", "helped", "solo"):
      totals[field].update(activity[field])
    unattributed += activity["unattributed"]
    executor += activity["executor"]
  ms = 1e-3 / len(steps)  # trace us summed over the steps -> ms per step
  by_kind: dict[str, dict[str, float]] = collections.defaultdict(
    lambda: {"ms": 0.0, "helped_ms": 0.0, "solo_ms": 0.0, "ops": 0}
  )
  rows = []
  for name, own in totals["self"].items():
    # Names not in the HLO are the runtime's (PjRt's buffer handling).
    kind, shape = kinds.get(name, (RUNTIME, ""))
    row = {
      "op": name,
      "kind": kind,
      "shape": shape,
      "ms": own * ms,
      "helped_ms": totals["helped"][name] * ms,
      "solo_ms": totals["solo"][name] * ms,
    }
    rows.append(row)
    for field in ("ms", "helped_ms", "solo_ms"):
      by_kind[kind][field] += row[field]
    by_kind[kind]["ops"] += 1
  rows.sort(key=lambda r: -(r["ms"] + r["helped_ms"]))
  return {
    "steps": len(steps),
    "step_ms": sum(s["dur"] for s in steps) * ms,
    "threads_busy_ms": {
      str(k): v * ms for k, v in sorted(totals["busy"].items())
    },
    "executor_ms": executor * ms,
    "unattributed_help_ms": unattributed * ms,
    "by_kind": dict(
      sorted(by_kind.items(), key=lambda kv: -kv[1]["ms"] - kv[1]["helped_ms"])
    ),
    "top_ops": rows[:top],
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
  print(
    f"\nthunk executor bookkeeping: {result['executor_ms']:.1f} ms; "
    f"helping while no op worked: {result['unattributed_help_ms']:.1f} ms"
    "\n\n| op kind | ms | helped ms | solo ms | ops |\n|---|---|---|---|---|"
  )
  for kind, row in result["by_kind"].items():
    print(
      f"| {kind} | {row['ms']:.1f} | {row['helped_ms']:.1f} "
      f"| {row['solo_ms']:.1f} | {row['ops']} |"
    )
  print("\n| op | kind | result | ms | helped ms | solo ms |")
  print("|---|---|---|---|---|---|")
  for r in result["top_ops"]:
    print(
      f"| {r['op']} | {r['kind']} | {r['shape']} | {r['ms']:.2f} "
      f"| {r['helped_ms']:.2f} | {r['solo_ms']:.2f} |"
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
  hostmem.ensure_hugepage_malloc()  # before any work: it may re-execute
  main()
