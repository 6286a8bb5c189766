"""bench/train_timing.py's timing rounds and bench/train_bench.py's rows, on a
fake clock.

The real runners compile the full train step (tens of seconds); here each
fake run advances a fake clock by a fixed time a step, so every rate and
ratio is exact.
"""

import json
import os
import subprocess
import types

import pytest

from bench import train_bench, train_timing


class FakeClock:
  def __init__(self):
    self.now = 0.0
    self.log = []

  def perf_counter(self):
    return self.now

  def sleep(self, seconds):
    self.log.append(("sleep", seconds))
    self.now += seconds

  def runner(self, name, seconds_per_step):
    def run(n):
      self.log.append((name, n))
      self.now += n * seconds_per_step

    return run


@pytest.fixture
def clock(monkeypatch):
  fake = FakeClock()
  # Only train_bench's view of `time`, not the module everyone shares.
  monkeypatch.setattr(
    train_timing,
    "time",
    types.SimpleNamespace(perf_counter=fake.perf_counter, sleep=fake.sleep),
  )
  return fake


def test_interleaved_rates_warm_up_then_alternate_with_pauses(clock):
  runs = {
    "jax": clock.runner("jax", 0.25),
    "torch": clock.runner("torch", 0.5),
  }
  rates = train_timing.interleaved_rates(
    runs, frames=8, steps=4, rounds=2, warmup=3, pause_s=1.5
  )
  assert rates == {"jax": [32.0, 32.0], "torch": [16.0, 16.0]}
  round_ = [("sleep", 1.5), ("jax", 4), ("sleep", 1.5), ("torch", 4)]
  assert clock.log == [("jax", 3), ("torch", 3), *round_, *round_]


def test_interleaved_rates_one_run_has_no_pauses(clock):
  rates = train_timing.interleaved_rates(
    {"jax": clock.runner("jax", 0.1)}, frames=8, steps=5, rounds=3, warmup=1
  )
  assert rates["jax"] == pytest.approx([80.0] * 3)
  assert clock.log == [("jax", 1)] + [("jax", 5)] * 3


def test_main_rows_take_medians_and_per_round_ratios(
  clock, monkeypatch, tmp_path
):
  # JAX's rounds take 0.5, 0.25, 0.25 s a step; torch's 0.5, 0.5, 1.0:
  # per-round ratios 1, 2, 4; the medians are 32 and 16 frames/s, ratio 2.
  jax_steps = iter([0.0, 0.5, 0.25, 0.25])  # the first: the warm-up
  torch_steps = iter([0.0, 0.5, 0.5, 1.0])

  def make(name, steps, info):
    def run(n):
      clock.log.append((name, n))
      clock.now += n * next(steps)

    return run, info

  monkeypatch.setattr(
    train_timing,
    "jax_runner",
    lambda *a, **k: make("jax", jax_steps, {"compile_s": 2.0}),
  )
  monkeypatch.setattr(
    train_timing,
    "torch_runner",
    lambda *a, **k: make("torch", torch_steps, {"threads": 2}),
  )
  monkeypatch.setattr(train_timing, "jax_peak_bytes", lambda: None)
  monkeypatch.setattr(train_timing, "torch_peak_bytes", lambda: None)
  out = tmp_path / "tb.json"
  result = train_bench.main(
    [
      "--sizes=64",
      "--variants=dyn_mix",
      "--steps=2",
      "--rounds=3",
      "--warmup=1",
      "--processes=0",
      f"--out={out}",
    ]
  )
  (row,) = result["rows"]
  assert row["jax"]["rounds"] == [16.0, 32.0, 32.0]
  assert row["torch"]["rounds"] == [16.0, 16.0, 8.0]
  assert row["jax"]["frames_per_s"] == 32.0
  assert row["jax"]["step_s"] == 0.25
  assert row["torch"]["frames_per_s"] == 16.0
  assert row["ratios"] == [1.0, 2.0, 4.0]
  assert row["ratio"] == 2.0
  assert row["jax"]["compile_s"] == 2.0 and row["torch"]["threads"] == 2
  written = json.loads(out.read_text())
  assert written["complete"] and written["rows"] == result["rows"]


def test_main_in_fresh_processes_pairs_them_in_order(monkeypatch, tmp_path):
  # Each call is one fresh process; JAX at 20, 30, 24 frames/s, torch at
  # 20, 10, 16: ratios per pair 1, 3, 1.5; medians 24 and 16, ratio 1.5.
  rates = {"jax": iter([20.0, 30.0, 24.0]), "torch": iter([20.0, 10.0, 16.0])}
  calls = []

  def child(framework, variant, size, steps, devices=0, **kw):
    calls.append((framework, variant, size, steps, devices, kw))
    fps = next(rates[framework])
    return {"frames_per_s": fps, "rounds": [fps], "compile_s": 1.0}

  monkeypatch.setattr(train_timing, "child", child)
  out = tmp_path / "tb.json"
  result = train_bench.main(
    [
      "--sizes=64",
      "--variants=dyn_mix",
      "--processes=3",
      "--steps=4",
      "--rounds=2",
      "--warmup=1",
      f"--out={out}",
    ]
  )
  (row,) = result["rows"]
  assert [c[0] for c in calls] == ["jax", "torch"] * 3
  kw = dict(batch=2, clip_len=4, dtype="float32", rounds=2, warmup=1)
  assert calls[0] == ("jax", "dyn_mix", 64, 4, 0, kw)
  assert row["jax"]["processes"] == [20.0, 30.0, 24.0]
  assert row["jax"]["frames_per_s"] == 24.0
  assert row["jax"]["step_s"] == 8 / 24.0
  assert row["torch"]["frames_per_s"] == 16.0
  assert row["ratios"] == [1.0, 3.0, 1.5]
  assert row["ratio"] == 1.5


def test_child_runs_rate_in_a_fresh_python_and_reads_its_result(
  monkeypatch, capsys
):
  # The command line child builds, run here in-process against a stub
  # `rate`: it must call rate with the arguments given and print its result.
  seen = {}

  def fake_run(cmd, env, **kw):
    seen["env"] = env
    assert cmd[1] == "-c"
    exec(cmd[2], {})
    return subprocess.CompletedProcess(cmd, 0, capsys.readouterr().out, "")

  def fake_rate(*args, **kw):
    seen["call"] = (args, kw)
    return {"frames_per_s": 12.5}

  monkeypatch.setattr(train_timing.subprocess, "run", fake_run)
  monkeypatch.setattr(train_timing, "rate", fake_rate)
  got = train_timing.child(
    "torch", "dyn_mix", 64, 3, rounds=2, dtype="bfloat16"
  )
  assert got == {"frames_per_s": 12.5}
  assert seen["call"] == (
    ("torch", "dyn_mix", 64, 3),
    {"rounds": 2, "dtype": "bfloat16"},
  )
  assert seen["env"] == dict(os.environ)  # devices=0: the parent's own


def test_child_failure_names_the_child_and_shows_its_stderr(monkeypatch):
  def fake_run(cmd, **kw):
    return subprocess.CompletedProcess(cmd, 1, "", "ImportError: no torch")

  monkeypatch.setattr(train_timing.subprocess, "run", fake_run)
  with pytest.raises(
    RuntimeError, match="(?s)torch child.*exited with 1.*no torch"
  ):
    train_timing.child("torch", "dyn_mix", 64, 3)


@pytest.mark.parametrize("flag", ["--steps=0", "--rounds=0", "--warmup=-1"])
def test_main_rejects_counts_below_one(flag):
  with pytest.raises(SystemExit):
    train_bench.main([flag, "--no_torch"])
