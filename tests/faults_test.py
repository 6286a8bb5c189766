"""Issue 10: every fault gets a clear answer and nothing is silently lost.

One test (or a few) per item of the issue, numbered as there. Preprocessing
cases use a fake detector (a fixed box where the clips draw the face), so
they run in milliseconds; training cases use the tiny 32x32 config of
tests/train_worker.py on synthetic shards; CLI behaviour is checked through
the module's main() (in-process, stderr captured) or a subprocess where the
process boundary is the point (locks, tracebacks, exit codes).
"""

import csv
import errno
import json
import os
import pathlib
import stat
import subprocess
import sys

import numpy as np
import pytest
from preprocessing_clips import face_clip, no_face_clip

from asrid_jax.data import records
from preprocessing import extract_faces, inputs, output
from preprocessing.detect import Detections

REPO = pathlib.Path(__file__).resolve().parents[1]
FAST = [
  "--frame_step", "10", "--max_frames", "4", "--min_frames", "3",
  "--image_size", "32", "--records_per_shard", "100",
]  # fmt: skip


class BoxDetector:
  """Finds the one head preprocessing_clips draws at (50, 25), 64 px."""

  def detect(self, frames):
    box = np.array([[50, 25, 114, 89]], np.float32)
    marks = np.array(
      [[[70, 50], [95, 50], [82, 62], [72, 75], [92, 75]]], np.float32
    )
    out = []
    for f in frames:
      if float(np.std(f)) < 30:  # the no-face clips are smooth noise
        out.append(Detections.empty())
      else:
        out.append(Detections(box, np.array([0.99], np.float32), marks))
    return out


@pytest.fixture
def fake_detector(monkeypatch):
  monkeypatch.setattr(extract_faces, "make_detector", lambda a: BoxDetector())


def _extract(src, out, *extra):
  return extract_faces.main(
    ["--input", str(src), "--output", str(out), *FAST, *extra]
  )


def _error_lines(err: str) -> list[str]:
  """stderr without tqdm's bar: the lines a user reads as the answer."""
  assert "Traceback" not in err, err
  return [x for x in err.splitlines() if "error" in x.lower()]


def _write_csv(path, rows, header=("path", "label", "original")):
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    if header:
      w.writerow(header)
    w.writerows(rows)
  return path


# ----------------------------------------------------------------------------
# extract_faces and its inputs
# ----------------------------------------------------------------------------


def test_01_all_videos_bad_writes_dataset_info_with_reasons(
  tmp_path, fake_detector, capsys
):
  src = tmp_path / "in"
  no_face_clip(src / "a.mp4")
  (src / "b.mp4").write_bytes(b"")
  (src / "metadata.json").write_text(
    json.dumps({"a.mp4": {"label": "REAL"}, "b.mp4": {"label": "FAKE"}})
  )
  out = tmp_path / "out"
  assert _extract(src, out) == 1
  err = capsys.readouterr().err
  info_path = out / records.DATASET_INFO
  assert str(info_path) in err
  info = records.read_dataset_info(out)  # the file the message points at
  reasons = {s["video"]: s["reason"] for s in info["skipped"]}
  assert set(reasons) == {"a.mp4", "b.mp4"}
  assert all(reasons.values())
  assert "a.mp4: " in err and "b.mp4: " in err  # reasons in the message too
  assert info["num_videos"] == 0


def test_02_one_file_spelled_three_ways_is_one_video(tmp_path, fake_detector):
  src = tmp_path / "in"
  face_clip(src / "x.mp4")
  lists = tmp_path / "lists"
  (lists / "vids").mkdir(parents=True)
  table = _write_csv(
    lists / "list.csv",
    [
      ["../in/x.mp4", "REAL", ""],
      [str(src / "x.mp4"), "REAL", ""],
      ["vids/../../in/x.mp4", "REAL", ""],
    ],
  )
  items, issues = inputs.discover(table)
  assert len(items) == 1
  assert len(issues) == 1 and "listed 3 times" in issues[0].reason
  out = tmp_path / "out"
  assert _extract(table, out) == 0
  info = records.read_dataset_info(out)
  assert info["num_videos"] == 1
  # A symlink to the same file is the same video, too.
  os.symlink(src / "x.mp4", src / "link.mp4")
  _write_csv(table, [["../in/x.mp4", "REAL", ""], ["../in/link.mp4", "0", ""]])
  items, issues = inputs.discover(table)
  assert [i.video_id for i in items] == [str(src / "x.mp4")]
  assert "also as" in issues[0].reason


def test_03_json_files_honour_the_umask(tmp_path, fake_detector):
  src = tmp_path / "in"
  face_clip(src / "a.mp4")
  (src / "metadata.json").write_text(json.dumps({"a.mp4": {"label": "REAL"}}))
  out = tmp_path / "out"
  old = os.umask(0o002)
  try:
    assert _extract(src, out) == 0
  finally:
    os.umask(old)
  written = [
    p
    for p in out.rglob("*")
    if p.is_file() and p.name.endswith((".json", ".npz", ".tfrecord"))
  ]
  names = {p.name for p in written}
  assert "dataset_info.json" in names and "settings.json" in names
  assert any(n.endswith(".videos.json") for n in names)
  assert any(n.endswith(".finished.json") for n in names)
  for p in written:
    assert stat.S_IMODE(p.stat().st_mode) == 0o664, p
  # The index cache beside a shard, written by the data reader.
  from asrid_jax.data import index

  shard = records.list_shards(out, "train") or records.list_shards(out, "val")
  shard = shard or records.list_shards(out, "test")
  for p in out.rglob("*" + index.META_SUFFIX):
    p.unlink()  # written again below, under another umask
  os.umask(0o022)
  try:
    index.load_shard_meta(shard[0])
  finally:
    os.umask(old)
  meta = next(out.rglob("*" + index.META_SUFFIX))
  assert stat.S_IMODE(meta.stat().st_mode) == 0o644


def test_11_repaired_skipped_file_is_retried(tmp_path, fake_detector, capsys):
  src = tmp_path / "in"
  face_clip(src / "good.mp4")
  (src / "bad.mp4").write_bytes(b"broken")
  (src / "metadata.json").write_text(
    json.dumps({"good.mp4": {"label": "REAL"}, "bad.mp4": {"label": "FAKE"}})
  )
  out = tmp_path / "out"
  assert _extract(src, out) == 0
  assert "1 skipped" in capsys.readouterr().out
  # A rerun on the unchanged file does not retry it...
  assert _extract(src, out) == 0
  assert "0 skipped, 2 already done" in capsys.readouterr().out
  # ...a repaired one is.
  face_clip(src / "bad.mp4")
  assert _extract(src, out) == 0
  assert "1 videos processed" in capsys.readouterr().out
  info = records.read_dataset_info(out)
  assert info["num_videos"] == 2 and info["skipped"] == []


def test_12_empty_metadata_names_the_reason(tmp_path, capsys):
  src = tmp_path / "in"
  src.mkdir()
  (src / "metadata.json").write_text("{}")
  assert _extract(src, tmp_path / "out") == 1
  err = capsys.readouterr().err
  assert "1 problem(s)" in err
  assert "metadata.json: metadata.json lists no videos" in err


def test_13_csv_header_without_label_is_refused(tmp_path, capsys):
  table = _write_csv(
    tmp_path / "list.csv", [["a.mp4", "x.mp4"]], header=("path", "original")
  )
  assert _extract(table, tmp_path / "out") == 1
  err = capsys.readouterr().err
  assert "has no 'label' column" in err and "list.csv" in err
  # A header-less CSV still works (first row is data).
  face_clip(tmp_path / "a.mp4")
  _write_csv(table, [["a.mp4", "REAL"]], header=None)
  items, issues = inputs.discover(table)
  assert [i.video_id for i in items] == ["a.mp4"] and not issues


def test_14_full_disk_one_line_naming_the_file(
  tmp_path, fake_detector, monkeypatch, capsys
):
  src = tmp_path / "in"
  face_clip(src / "a.mp4")
  (src / "metadata.json").write_text(json.dumps({"a.mp4": {"label": "REAL"}}))

  def full(self, data):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(records.ShardWriter, "write", full)
  out = tmp_path / "out"
  assert _extract(src, out) == 1
  err = capsys.readouterr().err
  assert len(_error_lines(err)) == 1, err
  assert "No space left on device" in err
  assert ".tfrecord" in err and str(out) in err and "kept" in err
  assert not [p for p in out.rglob("*") if ".tmp-" in p.name]


def test_14_output_is_a_file_one_line(tmp_path, fake_detector, capsys):
  src = tmp_path / "in"
  face_clip(src / "a.mp4")
  (src / "metadata.json").write_text(json.dumps({"a.mp4": {"label": "REAL"}}))
  blocker = tmp_path / "out"
  blocker.write_text("a file where the output folder should be")
  assert _extract(src, blocker) == 1
  err = capsys.readouterr().err
  assert len(_error_lines(err)) == 1 and str(blocker) in err, err


def test_15_second_owner_of_an_output_is_refused(tmp_path, fake_detector):
  src = tmp_path / "in"
  face_clip(src / "a.mp4")
  (src / "metadata.json").write_text(json.dumps({"a.mp4": {"label": "REAL"}}))
  out = tmp_path / "out"
  first = output.OutputDir(out, 2, 0)
  first.lock()
  try:
    with pytest.raises(output.OutputBusyError, match="in use by pid"):
      output.OutputDir(out, 2, 0).lock()
    # Another worker index is another owner: allowed.
    other = output.OutputDir(out, 2, 1)
    other.lock()
    other.unlock()
    code = subprocess.run(
      [
        sys.executable,
        "-m",
        "preprocessing.extract_faces",
        "--input",
        str(src),
        "--output",
        str(out),
        "--num_workers=2",
        "--worker_index=0",
        *FAST,
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
    )
  finally:
    first.unlock()
  assert code.returncode == 1, code.stderr[-2000:]
  last = code.stderr.strip().splitlines()[-1]
  assert last.startswith("extract_faces: error:") and "in use by" in last
  assert "Traceback" not in code.stderr
