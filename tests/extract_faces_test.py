"""End-to-end tests of `python -m preprocessing.extract_faces` (real MTCNN).

Clips are tiny (160x120, a head from skimage's astronaut photo) and only 4
frames per video are sampled, so a full run over ~20 clips takes seconds.
"""

import collections
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from preprocessing_clips import face_clip, frames, no_face_clip, write_clip

from asrid_jax.data import records
from preprocessing import extract_faces, output
from preprocessing import faces as faces_lib
from preprocessing.detect import MTCNNDetector

REPO = pathlib.Path(__file__).resolve().parents[1]
FAST = [
  "--frame_step", "10", "--max_frames", "4", "--min_frames", "3",
  "--image_size", "64", "--records_per_shard", "6",
]  # fmt: skip


def _args(src, out, *extra):
  return extract_faces.build_parser().parse_args(
    ["--input", str(src), "--output", str(out), *FAST, *extra]
  )


def read_all(out) -> list[tuple[str, records.FaceRecord]]:
  """(split, record) for every record of every complete shard."""
  result = []
  for split in records.SPLITS:
    for shard in records.list_shards(out, split):
      reader = records.ShardReader(shard)
      data = [reader[i] for i in range(len(reader))]
      assert data == list(records.iter_records(shard))
      result += [(split, records.FaceRecord.from_bytes(d)) for d in data]
  return result


def keys(recs):
  return collections.Counter(
    (r.video_id, r.frame_index, r.face_index) for _, r in recs
  )


class SpyDetector:
  """The real MTCNN detector, noting which video each call was made for."""

  def __init__(self):
    self.inner = MTCNNDetector(batch_size=8)
    self.current = None
    self.videos = []

  def detect(self, frames_):
    self.videos.append(self.current)
    return self.inner.detect(frames_)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
  """A DFDC-style tree with good clips, box-reuse cases and bad inputs."""
  root = tmp_path_factory.mktemp("dfdc")
  part = root / "part_0"
  meta = {}

  def add(name, label, original=None, split=None):
    meta[name] = {"label": label, "original": original, "split": split}

  for i, (x, y) in enumerate([(50, 25), (30, 40), (80, 20), (60, 50)]):
    base = frames(faces=((x, y),))
    write_clip(part / f"real_{i}.mp4", base)
    add(f"real_{i}.mp4", "REAL", split="train")
    # A fake: same geometry, face tinted, as a face swap would change it.
    fake = [f.copy() for f in base]
    for f in fake:
      f[y : y + 64, x : x + 64, 0] //= 2
    write_clip(part / f"fake_{i}.mp4", fake)
    add(f"fake_{i}.mp4", "FAKE", f"real_{i}.mp4", split="test")
  # Same original, other geometry: frame size, then frame count.
  face_clip(part / "fake_0_size.mp4", width=176, height=128)
  add("fake_0_size.mp4", "FAKE", "real_0.mp4")
  face_clip(part / "fake_0_len.mp4", num_frames=50)
  add("fake_0_len.mp4", "FAKE", "real_0.mp4")
  face_clip(part / "two.mp4", width=192, faces=((10, 30), (110, 30)))
  add("two.mp4", "REAL")
  face_clip(part / "orphan.mp4")
  add("orphan.mp4", "FAKE", "missing_original.mp4")
  # Bad inputs.
  (part / "zero.mp4").write_bytes(b"")
  add("zero.mp4", "REAL")
  good = (part / "real_0.mp4").read_bytes()
  (part / "cut.mp4").write_bytes(good[: len(good) // 3])
  add("cut.mp4", "REAL")
  (part / "text.mp4").write_text("not a video\n" * 100)
  add("text.mp4", "FAKE", "real_1.mp4")
  no_face_clip(part / "noface.mp4")
  add("noface.mp4", "REAL")
  face_clip(part / "short.mp4", num_frames=15)
  add("short.mp4", "REAL")
  add("listed_missing.mp4", "REAL")
  (part / "metadata.json").write_text(json.dumps(meta))
  odd = root / "odd dir ü"
  face_clip(odd / "vidéo 1 (copy).mp4", faces=((40, 30),))
  (odd / "metadata.json").write_text(
    json.dumps({"vidéo 1 (copy).mp4": {"label": "REAL"}})
  )
  (root / "broken").mkdir()
  (root / "broken" / "metadata.json").write_text('{"a.mp4": {"label": ')
  return root


@pytest.fixture(scope="module")
def clean_run(tree, tmp_path_factory):
  """One uninterrupted run over the tree; detector calls recorded."""
  out = tmp_path_factory.mktemp("clean")
  spy = SpyDetector()
  original = faces_lib.extract_video_faces

  def tracked(path, detector, *a, **k):
    spy.current = pathlib.Path(path).name
    return original(path, detector, *a, **k)

  mp = pytest.MonkeyPatch()
  mp.setattr(faces_lib, "extract_video_faces", tracked)
  try:
    summary = extract_faces.run(_args(tree, out), detector=spy)
  finally:
    mp.undo()
  return out, summary, spy, read_all(out)


GOOD = {f"part_0/{n}.mp4" for n in ("two", "orphan", "fake_0_size")} | {
  f"part_0/{k}_{i}.mp4" for k in ("real", "fake") for i in range(4)
}
GOOD |= {"part_0/fake_0_len.mp4", "odd dir ü/vidéo 1 (copy).mp4"}


def test_records_written_and_read_back(clean_run):
  out, summary, _, recs = clean_run
  assert {r.video_id for _, r in recs} == GOOD
  assert summary.processed == len(GOOD) and summary.faces == len(recs)
  assert max(keys(recs).values()) == 1  # no duplicate
  info = records.read_dataset_info(out)
  assert info["num_records"] == len(recs) and info["num_videos"] == len(GOOD)
  for split, counts in info["splits"].items():
    mine = [r for s, r in recs if s == split]
    for name, label in (("REAL", 0), ("FAKE", 1)):
      assert counts["records"][name] == sum(r.label == label for r in mine)
  by_video = collections.defaultdict(list)
  order = []
  for _, r in recs:
    if not order or order[-1] != r.video_id:
      order.append(r.video_id)
    by_video[r.video_id].append(r)
  assert len(order) == len(set(order))  # each video's records contiguous
  for vid, rs in by_video.items():
    assert [(r.frame_order, r.face_index) for r in rs] == sorted(
      (r.frame_order, r.face_index) for r in rs
    )
    for r in rs:
      assert r.frame_index == 10 * r.frame_order
      assert r.label == (1 if "fake" in vid or "orphan" in vid else 0)
      img = r.decode_image()
      assert img.shape == (64, 64, 3) == (r.height, r.width, 3)
      assert r.score > 0.75
      x1, y1, x2, y2 = r.box
      assert 0 <= x1 < x2 <= 192 and 0 <= y1 < y2 <= 128
      # Landmarks in crop pixels: inside the crop, eyes above the mouth.
      assert (r.landmarks >= 0).all() and (r.landmarks < 64).all()
      assert r.landmarks[:2, 1].max() < r.landmarks[3:, 1].min()
  fake = by_video["part_0/fake_2.mp4"][0]
  assert fake.original == "part_0/real_2.mp4"
  two = by_video["part_0/two.mp4"]
  assert sorted({r.face_index for r in two}) == [0, 1]


def test_box_reuse_only_when_geometry_matches(clean_run):
  _, _, spy, recs = clean_run
  detected = set(spy.videos)
  for i in range(4):
    assert f"real_{i}.mp4" in detected
    assert f"fake_{i}.mp4" not in detected
  assert {"fake_0_size.mp4", "fake_0_len.mp4", "orphan.mp4"} <= detected
  # Originals are detected once, before their fakes.
  assert spy.videos.index("real_0.mp4") < spy.videos.index("fake_0_size.mp4")
  boxes = collections.defaultdict(list)
  for _, r in recs:
    boxes[r.video_id].append((r.frame_index, r.face_index, r.box.tolist()))
  for i in range(4):
    assert boxes[f"part_0/fake_{i}.mp4"] == boxes[f"part_0/real_{i}.mp4"]
  # The bigger fake found its own (shifted) face.
  assert boxes["part_0/fake_0_size.mp4"] != boxes["part_0/real_0.mp4"]


def test_bad_inputs_reported_by_name_and_run_goes_on(clean_run):
  out, _, _, _ = clean_run
  info = records.read_dataset_info(out)
  reasons = {s["video"]: s["reason"] for s in info["skipped"]}
  expected = {
    "part_0/zero.mp4": "empty file",
    "part_0/cut.mp4": "",
    "part_0/text.mp4": "cannot open",
    "part_0/noface.mp4": "no face",
    "part_0/short.mp4": "too short",
    "part_0/listed_missing.mp4": "file is missing",
    "broken/metadata.json": "malformed metadata.json",
  }
  assert set(reasons) == set(expected)
  for name, reason in expected.items():
    assert reason in reasons[name], (name, reasons[name])
  notes = {n["video"]: n["reason"] for n in info["notes"]}
  assert "missing_original.mp4 is missing" in notes["part_0/orphan.mp4"]
  # The given splits are ignored by default: each group sits in one split.
  split_of = {}
  for split, r in read_all(out):
    group = r.original or r.video_id
    assert split_of.setdefault(group, split) == split


def test_all_bad_input_fails_clearly(tmp_path, capsys):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "zero.mp4").write_bytes(b"")
  (tmp_path / "in" / "text.mp4").write_text("nope")
  (tmp_path / "in" / "metadata.json").write_text(
    json.dumps({n: {"label": "REAL"} for n in ("zero.mp4", "text.mp4")})
  )
  rc = extract_faces.main(
    ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), *FAST]
  )
  err = capsys.readouterr().err
  assert rc == 1
  assert "none of the 2 videos" in err and "gave a face crop" in err
  # The message points at dataset_info.json: it exists and has the reasons.
  info = records.read_dataset_info(tmp_path / "o")
  assert {s["video"] for s in info["skipped"]} == {"zero.mp4", "text.mp4"}
  (tmp_path / "in" / "metadata.json").write_text("[1, 2")
  assert extract_faces.main(["--input", str(tmp_path / "in"), "--output",
                             str(tmp_path / "o2")]) == 1  # fmt: skip
  err = capsys.readouterr().err
  assert "no usable video" in err and "malformed metadata.json" in err
  bad_flag = ["--input", str(tmp_path), "--output", str(tmp_path / "o3")]
  assert extract_faces.main([*bad_flag, "--min_frames", "31"]) == 1
  assert "--min_frames must be between" in capsys.readouterr().err


def test_crash_then_rerun_loses_and_duplicates_nothing(
  tree, clean_run, tmp_path, monkeypatch
):
  out = tmp_path / "out"
  calls = {"n": 0}
  real_add = output.ShardSink.add_video

  def crashing(self, split, meta, data):
    calls["n"] += 1
    if calls["n"] == 9:
      raise KeyboardInterrupt("simulated kill")
    return real_add(self, split, meta, data)

  monkeypatch.setattr(output.ShardSink, "add_video", crashing)
  detector = MTCNNDetector()
  with pytest.raises(KeyboardInterrupt):
    extract_faces.run(_args(tree, out), detector=detector)
  partial = read_all(out)
  assert 0 < len({r.video_id for _, r in partial}) < len(GOOD)
  assert not list(out.rglob("*.tmp-*"))  # aborted shards left no temp file
  monkeypatch.setattr(output.ShardSink, "add_video", real_add)
  summary = extract_faces.run(_args(tree, out), detector=detector)
  assert summary.already_done > 0
  assert keys(read_all(out)) == keys(clean_run[3])
  # A third run has nothing to do and changes nothing.
  again = extract_faces.run(_args(tree, out), detector=detector)
  assert again.processed == 0 and again.skipped == 0
  assert keys(read_all(out)) == keys(clean_run[3])


@pytest.mark.slow
def test_sigkill_then_rerun(tree, clean_run, tmp_path):
  out = tmp_path / "out"
  cmd = [sys.executable, "-m", "preprocessing.extract_faces"]
  cmd += ["--input", str(tree), "--output", str(out), *FAST]
  cmd[-1] = "1"  # --records_per_shard 1: a shard per video
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  proc = subprocess.Popen(
    cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
  )
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if len(list(out.glob("*/*.tfrecord"))) >= 3:
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
  assert 0 < len({r.video_id for _, r in read_all(out)}) < len(GOOD)
  done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "already done" in done.stdout
  assert keys(read_all(out)) == keys(clean_run[3])
  assert not list(out.rglob("*.tmp-*"))


def test_workers_partition_and_merge(tree, clean_run, tmp_path):
  out = tmp_path / "out"
  detector = MTCNNDetector()
  owners = {}
  for w in range(3):
    extract_faces.run(
      _args(tree, out, "--num_workers", "3", "--worker_index", str(w)),
      detector=detector,
    )
    info = records.read_dataset_info(out)
    assert info["workers"]["finished"] == list(range(w + 1))
    assert info["workers"]["complete"] == (w == 2)
    for m in output.OutputDir(out).manifests():
      for v in m["videos"]:
        owners.setdefault(v["video_id"], m["shard"].split("/")[1][:12])
  recs = read_all(out)
  assert keys(recs) == keys(clean_run[3])
  assert len(set(owners.values())) == 3  # everyone wrote something
  # Fakes are processed by their original's worker (boxes reused).
  for i in range(4):
    assert owners[f"part_0/fake_{i}.mp4"] == owners[f"part_0/real_{i}.mp4"]
  skipped = {s["video"] for s in info["skipped"]}
  assert "part_0/noface.mp4" in skipped and "part_0/zero.mp4" in skipped


def test_overwrite_settings_and_given_splits(tree, tmp_path):
  csv = tmp_path / "list.csv"
  part = tree / "part_0"
  csv.write_text(
    "path,label,original,split\n"
    f"{part / 'real_1.mp4'},REAL,,val\n"
    f"{part / 'fake_1.mp4'},FAKE,{part / 'real_1.mp4'},val\n"
    f"{part / 'real_2.mp4'},0,,test\n"
  )
  out = tmp_path / "out"
  detector = MTCNNDetector()
  extract_faces.run(_args(csv, out), detector=detector)
  # The decoder gives the same frames: not a setting a resume must repeat.
  again = extract_faces.run(
    _args(csv, out, "--decoder", "opencv"), detector=detector
  )
  assert again.processed == 0 and again.already_done == 3
  info = json.loads((out / "dataset_info.json").read_text())
  assert "decoder" not in info["settings"]
  with pytest.raises(output.SettingsMismatchError, match="splits_from"):
    extract_faces.run(
      _args(csv, out, "--splits_from", "input"), detector=detector
    )
  summary = extract_faces.run(
    _args(csv, out, "--splits_from", "input", "--overwrite"),
    detector=detector,
  )
  assert summary.processed == 3 and summary.already_done == 0
  splits = {r.video_id.rsplit("/", 1)[1]: s for s, r in read_all(out)}
  assert splits == {"real_1.mp4": "val", "fake_1.mp4": "val",
                    "real_2.mp4": "test"}  # fmt: skip
  assert max(keys(read_all(out)).values()) == 1


def test_extract_video_faces_for_prediction(tree):
  """The path predict uses: no shards, crops in memory, reusable boxes."""
  detector = MTCNNDetector()
  settings = faces_lib.FaceSettings(max_frames=4, min_frames=3, image_size=48)
  two = faces_lib.extract_video_faces(
    tree / "part_0" / "two.mp4", detector, settings
  )
  assert (
    two.ok and len(two.tracks) == 2 and two.frame_indices == [0, 10, 20, 30]
  )
  left, right = two.tracks
  assert left.crops.shape == (4, 48, 48, 3) and left.crops.dtype == np.uint8
  assert left.frame_orders.tolist() == [0, 1, 2, 3]
  assert left.boxes[0, 0] < 100 < right.boxes[0, 0]
  ref = faces_lib.extract_video_faces(
    tree / "part_0" / "real_3.mp4", detector, settings
  ).reference("real_3")
  fake = faces_lib.extract_video_faces(
    tree / "part_0" / "fake_3.mp4", None, settings, reference=ref
  )
  assert fake.boxes_from == "real_3" and fake.num_faces == 4
  bad = faces_lib.extract_video_faces(tree / "part_0" / "zero.mp4", None)
  assert not bad.ok and "empty file" in bad.skip_reason


@pytest.mark.slow
def test_make_sample_end_to_end(tmp_path):
  from preprocessing import make_sample

  make_sample.make_sample(
    tmp_path / "videos",
    make_sample.SampleSettings(
      num_originals=4, fakes_per_original=1, frames=40
    ),  # fmt: skip
    progress=False,
  )
  rc = extract_faces.main(
    [
      "--input",
      str(tmp_path / "videos"),
      "--output",
      str(tmp_path / "out"),
      "--min_frames",
      "4",
      "--image_size",
      "96",
    ]  # fmt: skip
  )
  assert rc == 0
  recs = read_all(tmp_path / "out")
  info = records.read_dataset_info(tmp_path / "out")
  assert info["num_videos"] == 8 and not info["skipped"]
  assert info["num_records"] == len(recs) >= 8 * 4
  boxes = collections.defaultdict(list)
  for _, r in recs:
    assert r.decode_image().shape == (96, 96, 3)
    boxes[r.video_id].append((r.frame_index, r.box.tolist()))
  for vid in boxes:
    if "fake" in vid:
      (orig,) = {r.original for _, r in recs if r.video_id == vid}
      assert boxes[vid] == boxes[orig]
  assert {r.label for _, r in recs} == {0, 1}


@pytest.mark.slow
@pytest.mark.real_samples
def test_real_sample_videos(real_samples, tmp_path):
  out = tmp_path / "out"
  rc = extract_faces.main(
    [
      "--input",
      str(real_samples / "videos"),
      "--output",
      str(out),
      "--frame_step",
      "5",
      "--max_frames",
      "4",
      "--min_frames",
      "3",
      "--image_size",
      "64",
    ]  # fmt: skip
  )
  assert rc == 0
  info = records.read_dataset_info(out)
  recs = read_all(out)
  meta = json.loads((real_samples / "videos" / "metadata.json").read_text())
  assert {r.video_id for _, r in recs} == set(meta)  # faces in every clip
  assert not info["skipped"]
  two = {
    r.face_index for _, r in recs if r.video_id == "short_hamilton_clip.mp4"
  }
  assert two == {0, 1}
  notes = {n["video"]: n["reason"] for n in info["notes"]}
  missing = {k for k, v in meta.items() if v["original"]}
  assert set(notes) == missing
  for name in missing:
    assert f"original {meta[name]['original']} is missing" in notes[name]
