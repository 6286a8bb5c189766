"""bench/step_profile.py: thread accounting, op kinds, and a real run."""

import json
import re

import jax
import jax.numpy as jnp
import pytest

from bench import step_profile

START = step_profile._REGION_START
STOP = step_profile._REGION_STOP


def _ev(name, tid, ts, dur=0.0):
  return {"name": name, "tid": tid, "ts": ts, "dur": dur}


def test_two_threads_busy_and_solo_time():
  # Window [0, 100]. Thread 1: a [0, 40], b [50, 90]; thread 2: c [20, 60].
  ops = [_ev("a", 1, 0, 40), _ev("b", 1, 50, 40), _ev("c", 2, 20, 40)]
  r = step_profile.thread_activity(ops, 0, 100)
  # 2 busy: [20, 40] and [50, 60]; 1 busy: [0, 20], [40, 50], [60, 90].
  assert r["busy"] == {1: 60, 2: 30, 0: 10}
  assert r["self"] == {"a": 40, "b": 40, "c": 40}
  assert r["solo"] == {"a": 20, "c": 10, "b": 30}
  assert r["helped"] == {"a": 0, "b": 0, "c": 0}


def test_nested_events_own_the_thread_innermost_first():
  # A while loop's event holds its body's on the same thread: one busy
  # thread, and the body's time is not the loop's too. The op straddling
  # the window's end is cut there.
  ops = [_ev("while", 1, 10, 50), _ev("body", 1, 20, 10), _ev("d", 2, 80, 40)]
  r = step_profile.thread_activity(ops, 0, 100)
  assert r["busy"] == {0: 30, 1: 70}
  assert r["self"] == {"while": 40, "body": 10, "d": 20}
  assert r["solo"] == r["self"]


def test_pool_workers_help_the_op_that_runs_or_waits():
  # Thread 1 runs x [0, 100]; worker 2 is in a pool closure [20, 60] with
  # no op of its own: it helps x. Then y [100, 200] waits for its workers
  # [120, 180] while worker 2 works [110, 190]: the wait is not busy, the
  # help is y's.
  events = [
    _ev("x", 1, 0, 100),
    _ev(START, 2, 20),
    _ev(STOP, 2, 60),
    _ev("y", 1, 100, 100),
    _ev("SlinkyThreadPool::Await", 1, 120, 60),
    _ev(START, 2, 110),
    _ev(STOP, 2, 190),
  ]
  r = step_profile.thread_activity(events, 0, 200)
  # 1 busy: [0, 20], [60, 110] and [190, 200] one op, [120, 180] the
  # worker alone; 2 busy: [20, 60], [110, 120], [180, 190].
  assert r["busy"] == {1: 20 + 50 + 10 + 60, 2: 40 + 10 + 10}
  assert r["self"] == {"x": 100, "y": 40}
  assert r["helped"] == {"x": 40, "y": 80}
  assert r["solo"] == {"x": 60, "y": 20}
  assert r["unattributed"] == 0


def test_an_op_in_flight_gets_the_help_until_its_end_event():
  # XLA's Eigen convolution: its event only launches the work ([0, 10]);
  # two pool workers do it until "end: conv" at 50, while no op runs.
  events = [
    _ev("ThunkExecutor::Execute", 1, 0, 12),
    _ev("conv", 1, 0, 10),
    _ev(START, 1, 12),
    _ev(START, 2, 10),
    _ev(STOP, 1, 50),
    _ev(STOP, 2, 50),
    _ev("end: conv", 2, 50, 0.1),
    _ev("next", 2, 50, 10),
  ]
  r = step_profile.thread_activity(events, 0, 60)
  # 1 busy: conv's launch, then next; 2: the executor and a worker, then
  # both workers.
  assert r["busy"] == {1: 10 + 10, 2: 2 + 38}
  assert r["self"] == {"conv": 10, "next": 10}
  assert r["helped"]["conv"] == pytest.approx(2 + 2 * 38)
  assert r["executor"] == pytest.approx(2)
  assert r["unattributed"] == 0


def test_a_closure_open_before_the_window_counts_from_its_start():
  # Worker 2's closure began before the window (its Start is outside the
  # events given) and helps x until its Stop at 30.
  events = [_ev("x", 1, 0, 50), _ev(STOP, 2, 30)]
  r = step_profile.thread_activity(events, 0, 50)
  assert r["busy"] == {2: 30, 1: 20}
  assert r["helped"] == {"x": 30}
  # Help with no op anywhere to give it to is reported, not dropped.
  r = step_profile.thread_activity([_ev(START, 2, 10), _ev(STOP, 2, 30)], 0, 50)
  assert r["busy"] == {0: 30, 1: 20}
  assert r["unattributed"] == 20 and r["self"] == {}


def test_summarize_averages_steps_and_ignores_the_client_threads_closure():
  pool, client = "tf_XLAEigen/1", "tf_XLAPjRtCpuClient/2"

  def ev(name, tid, thread, ts, dur=0.0):
    return {**_ev(name, tid, ts, dur), "ph": "X", "thread": thread}

  events = []
  for step, t0 in enumerate((0, 1000)):
    events += [
      ev(step_profile.STEP_NAME, 9, "python", t0, 100),
      # The client thread's closure spans the step: that is not help.
      ev(START, 2, client, t0 + 1),
      ev("small", 2, client, t0 + 2, 8),
      ev(
        "ThunkExecutor::Execute (wait for completion)", 2, client, t0 + 10, 90
      ),
      ev("big", 1, pool, t0 + 10, 40 * (step + 1)),
      ev(STOP, 2, client, t0 + 99),
    ]
  kinds = {"big": ("GEMM", "f32[8,8]{1,0}"), "small": ("reduction", "f32[]")}
  r = step_profile.summarize(events, kinds, top=5)
  assert r["steps"] == 2 and r["step_ms"] == pytest.approx(0.1)
  assert r["threads_busy_ms"] == pytest.approx(
    {"0": (92 - 40 + 92 - 80) / 2e3, "1": (48 + 88) / 2e3}
  )
  assert [row["op"] for row in r["top_ops"]] == ["big", "small"]
  assert r["top_ops"][0]["ms"] == pytest.approx(0.06)
  assert r["top_ops"][0]["shape"] == "f32[8,8]{1,0}"
  assert r["by_kind"]["reduction"]["ms"] == pytest.approx(0.008)
  assert r["top_ops"][0]["helped_ms"] == 0
  with pytest.raises(RuntimeError, match="no XLA ops"):
    step_profile.summarize(events[:1], kinds)


def _computation_bodies(hlo):
  """An independent reading of the HLO text: {computation: its lines}."""
  bodies, name = {}, None
  for line in hlo.splitlines():
    if name is None and line.endswith("{") and not line.startswith(" "):
      if not line.startswith("HloModule"):
        name = line.removeprefix("ENTRY ").lstrip("%").split(" ")[0]
        bodies[name] = []
    elif line == "}":
      name = None
    elif name is not None:
      bodies[name].append(line)
  return bodies


def test_op_kinds_reads_compiled_hlo_fusions_and_loops():
  def f(x, w, k):
    y = jax.lax.fori_loop(0, 3, lambda i, c: jnp.tanh(c @ w) + i, x)
    z = jax.lax.conv_general_dilated(
      y[None, :, :, None], k, (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip
    return z.sum(), y * 2

  x = jnp.ones((64, 64))
  k = jnp.ones((3, 3, 1, 1))
  hlo = jax.jit(f).lower(x, x, k).compile().as_text()
  kinds = step_profile.op_kinds(hlo)
  bodies = _computation_bodies(hlo)
  checked = 0
  for lines in bodies.values():
    for line in lines:
      match = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = .* fusion\(.*calls=%([\w.\-]+)", line)  # fmt: skip
      if match and any(" dot(" in body for body in bodies[match.group(2)]):
        assert kinds[match.group(1)][0] == "GEMM", line
        checked += 1
      if re.search(r"\) while\(", line):
        name = re.match(r"\s+(?:ROOT )?%([\w.\-]+)", line).group(1)
        kind, shape = kinds[name]
        assert kind == "loop control" and shape.startswith("(s32[]"), line
        checked += 1
  assert checked >= 2  # the loop and its matmul
  found = {kind for kind, _ in kinds.values()}
  assert {"GEMM", "convolution", "reduction", "loop control"} <= found


@pytest.mark.slow
def test_main_profiles_a_real_train_step(tmp_path):
  out = tmp_path / "profile.json"
  result = step_profile.main(
    ["--size", "32", "--clips", "8", "--clip_len", "2", "--steps", "2",
     "--top", "5", "--out", str(out)]
  )  # fmt: skip
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  assert result["steps"] == 2
  busy = result["threads_busy_ms"]
  thread_ms = sum(int(k) * v for k, v in busy.items())
  assert busy.get("1", 0.0) > 0.0
  kinds = result["by_kind"]
  op_ms = sum(row["ms"] + row["helped_ms"] for row in kinds.values())
  # Every busy thread-millisecond is an op's, its helpers', the executor's
  # or reported as unattributed; and the trace's op names are the
  # compiled HLO's (the rest is PjRt's own work, a little).
  assert op_ms + result["executor_ms"] + result["unattributed_help_ms"] == (
    pytest.approx(thread_ms, rel=1e-6)
  )
  runtime = kinds.get(step_profile.RUNTIME, {"ms": 0.0})["ms"]
  assert runtime < 0.1 * op_ms
  assert {"GEMM", "convolution", "loop control"} <= set(kinds)
  assert len(result["top_ops"]) == 5
