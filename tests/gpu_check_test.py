"""bench/gpu_check.sh --smoke runs on CPU, so the GPU script cannot rot."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]


def test_gpu_check_smoke_writes_summary_and_tables(tmp_path):
  env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "HOME": str(tmp_path)}
  proc = subprocess.run(
    ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  summary = (tmp_path / "summary.txt").read_text()
  assert proc.returncode == 0, summary + proc.stdout[-2000:]
  assert [line.split()[1] for line in summary.splitlines()] == [
    "env",
    "parity",
    "model_bench",
  ]
  rows = json.loads((tmp_path / "model_bench.json").read_text())["rows"]
  impls = {row["impl"] for row in rows}
  assert impls == {
    "torchvision",
    "jax-grouped",
    "jax-shifted",
    "jax-shifted_vjp",
  }
  assert all(row["train_s"] > 0 for row in rows)
