"""bench/gpu_check.sh --smoke runs on CPU, so the GPU script cannot rot."""

import json
import pathlib
import subprocess
import sys

from asrid_jax.models import depthwise

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

  bench = json.loads((out / "model_bench.json").read_text())
  assert bench["info"]["complete"] is True
  rows = bench["rows"]
  impls = {row["impl"] for row in rows}
  assert impls == {"torchvision"} | {f"jax-{i}" for i in depthwise.IMPLS}
  assert {"jax-grouped", "jax-shifted", "jax-shifted_vjp"} <= impls
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


def test_make_gpu_data_keeps_the_label_ratio_and_resizes(tmp_path):
  from asrid_jax.data import index, records, synthetic
  from bench import make_gpu_data

  src, out = tmp_path / "src", tmp_path / "out"
  synthetic.write_synthetic_shards(
    src,
    videos_per_split={"train": 20, "val": 6},
    frames=(1, 1),
    max_faces=1,
    image_size=96,
  )
  info = make_gpu_data.build(src, out, {"train": 10, "val": 4}, size=48)
  assert records.read_dataset_info(out)["splits"] == info["splits"]
  train = info["splits"]["train"]
  assert (
    train["num_records"] == 10 and info["splits"]["val"]["num_records"] == 4
  )
  src_fake = index.label_counts(src, "train")[records.LABEL_FAKE] / 20
  assert abs(train["records"]["FAKE"] / 10 - src_fake) <= 0.1
  assert min(train["records"].values()) >= 1  # both labels kept
  assert info["image_size"] == 48 and info["settings"]["subset_of"] == str(src)

  source = {}
  for shard in records.list_shards(src, "train"):
    for data in records.iter_records(shard):
      rec = records.FaceRecord.from_bytes(data)
      source[rec.video_id] = rec
  (shard,) = records.list_shards(out, "train")
  for data in records.iter_records(shard):
    rec = records.FaceRecord.from_bytes(data)
    assert rec.decode_image().shape == (48, 48, 3)
    assert rec.height == rec.width == 48
    orig = source[rec.video_id]
    assert rec.label == orig.label
    assert abs(rec.landmarks - orig.landmarks / 2).max() < 1e-4
  assert len(index.load_split_index(out, "train").video) == 10


def test_train_report_rate_skips_the_compiling_interval():
  from bench import train_report

  rate, intervals = train_report.steady_rate(
    [(2, 1.0), (4, 100.0), (6, 50.0)], frames_per_step=16
  )
  assert len(intervals) == 3
  # 64 frames in 32/100 + 32/50 s: the first (compile) interval is left out.
  assert abs(rate - 64 / (0.32 + 0.64)) < 1e-9
  assert train_report.steady_rate([(3, 7.0)], 16)[0] == 7.0
  assert train_report.steady_rate([], 16) == (None, [])
