"""bench/step_profile.py: busy-thread accounting, op kinds, and a real run."""

import json

import jax
import jax.numpy as jnp
import pytest

from bench import step_profile


def _op(name, tid, ts, dur):
  return {"name": name, "tid": tid, "ts": ts, "dur": dur}


def test_busy_profile_counts_threads_and_solo_time():
  # Window [0, 100]. Thread 1: a [0, 40], b [50, 90]; thread 2: c [20, 60].
  ops = [_op("a", 1, 0, 40), _op("b", 1, 50, 40), _op("c", 2, 20, 40)]
  busy, solo = step_profile.busy_profile(ops, 0, 100)
  # 2 busy: [20, 40] and [50, 60]; 1 busy: [0, 20], [40, 50], [60, 90].
  assert busy == {1: 60, 2: 30, 0: 10}
  assert solo == {"a": 20, "c": 10, "b": 30}
  assert sum(busy.values()) == 100


def test_busy_profile_merges_nested_events_and_clips_to_the_window():
  # A while loop's event encloses its body's on the same thread: one busy
  # thread, not two. The op straddling the window end is cut there.
  ops = [_op("while", 1, 10, 50), _op("body", 1, 20, 10), _op("d", 2, 80, 40)]
  busy, solo = step_profile.busy_profile(ops, 0, 100)
  assert busy == {0: 30, 1: 70}
  assert solo["while"] == 50 and solo["body"] == 10 and solo["d"] == 20


def test_op_kinds_reads_compiled_hlo():
  def f(x, w, k):
    y = jnp.tanh(x @ w)
    z = jax.lax.conv_general_dilated(
      y[None, :, :, None], k, (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip
    return z.sum(), y * 2

  x = jnp.ones((64, 64))
  k = jnp.ones((3, 3, 1, 1))
  hlo = jax.jit(f).lower(x, x, k).compile().as_text()
  kinds = step_profile.op_kinds(hlo)
  found = {kind for kind, _ in kinds.values()}
  assert {"GEMM", "convolution", "reduction"} <= found
  assert all(shape for _, shape in kinds.values())


@pytest.mark.slow
def test_main_profiles_a_real_train_step(tmp_path):
  out = tmp_path / "profile.json"
  result = step_profile.main(
    ["--size", "32", "--clips", "8", "--clip_len", "2", "--steps", "2",
     "--top", "5", "--out", str(out)]
  )  # fmt: skip
  assert json.loads(out.read_text()) == json.loads(json.dumps(result))
  assert result["steps"] == 2
  busy = sum(result["threads_busy_ms"].values())
  assert busy == pytest.approx(result["step_ms"], rel=1e-6)
  assert result["threads_busy_ms"].get("1", 0.0) > 0.0
  assert sum(r["ms"] for r in result["by_kind"].values()) > 0.0
  assert len(result["top_ops"]) == 5
  assert {"GEMM", "convolution"} & set(result["by_kind"])
