"""bench/gpu_check.sh --smoke runs on CPU, so the GPU script cannot rot."""

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).parents[1]


def test_gpu_check_smoke_writes_summary_and_tables(tmp_path):
  env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "HOME": str(tmp_path)}
  env["TMPDIR"] = str(tmp_path)
  out = tmp_path / "out"
  proc = subprocess.run(
    ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--smoke", str(out)],
    env=env,
    capture_output=True,
    text=True,
    timeout=400,
    check=False,
  )
  summary = (out / "summary.txt").read_text()
  assert proc.returncode == 0, summary + proc.stdout[-2000:]
  lines = summary.splitlines()
  steps = [line.split()[1] for line in lines if line.split()[0] != "total"]
  assert steps == ["env", "parity", "model_bench", "gpu_data", "train_real"]
  assert all(line.startswith(("ok ", "total ")) for line in lines), summary

  rows = json.loads((out / "model_bench.json").read_text())["rows"]
  impls = {row["impl"] for row in rows}
  assert impls == {
    "torchvision",
    "jax-grouped",
    "jax-shifted",
    "jax-shifted_vjp",
  }
  assert all(row["train_s"] > 0 for row in rows)
  # Bytes moved, from XLA's cost analysis, for every Flax backbone row; on
  # a CPU there is no peak bandwidth to compare with.
  jax_rows = [row for row in rows if row["impl"].startswith("jax-")]
  for row in jax_rows:
    assert row["train_bytes"] > 0 and row["infer_bytes"] > 0, row
    assert row["train_gbps"] > 0, row
    assert row["train_bw_frac"] is None, row

  report = json.loads((out / "train_real.json").read_text())
  assert report["frames_per_s"] > 0, report
  assert report["steps"] == 3 and report["stopped"] == "done", report
  assert report["peak_bytes_in_use"] is None  # CPU keeps no statistics
  assert report["device"].startswith("cpu")
  # The scratch folder (synthetic shards, the training workdir) is removed.
  assert not list(tmp_path.glob("gpu_check.*"))
