"""Tests of `preprocessing.import_faces` (face images -> shards).

Images are tiny (20-64 px) dark pictures with one bright square standing in
for a face; `BlobDetector` "detects" that square in the stored image, so the
tests know exactly where every box must land. One test runs the real MTCNN
on real photos ($ASRID_REAL_SAMPLES/photos) and skips without them.
"""

import collections
import json
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from asrid_jax.data import pipeline, records
from preprocessing import import_faces, output
from preprocessing.detect import Detections

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32  # --image_size of most runs
# Landmarks as fractions of the blob box (eyes, nose, mouth corners).
MARKS = np.array(
  [[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]],
  np.float32,
)


class BlobDetector:
  """Finds the bright square of a test image; notes every call and box."""

  def __init__(self):
    self.calls = []  # image shapes per detect() call
    self.boxes = []  # every box returned

  def detect(self, frames):
    self.calls.append([f.shape for f in frames])
    result = []
    for f in frames:
      ys, xs = np.nonzero(f.mean(axis=2) > 128)
      if not len(xs):
        result.append(Detections.empty())
        continue
      box = np.array(
        [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32
      )
      self.boxes.append(box)
      wh = box[2:] - box[:2]
      result.append(
        Detections(
          box[None], np.array([0.99], np.float32), (box[:2] + MARKS * wh)[None]
        )
      )
    return result


def write_image(path, w=SIZE, h=SIZE, blob=(8, 8, 24, 24), mode="bgr"):
  """A dark w x h image with a white square `blob` (x1, y1, x2, y2)."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  img = np.full((h, w, 3), 30, np.uint8)
  if blob is not None:
    x1, y1, x2, y2 = blob
    img[y1:y2, x1:x2] = 255
  if mode == "gray":
    img = img[:, :, 0]
  elif mode == "alpha":
    img = np.dstack([img, np.full((h, w), 128, np.uint8)])
  assert cv2.imwrite(str(path), img), path
  return path


def expected_box(w, h, blob, size=SIZE):
  """Where `blob` lands after centring on a black square and resizing."""
  side = max(w, h)
  x0, y0 = round(w / 2 - side / 2), round(h / 2 - side / 2)
  x1, y1, x2, y2 = blob
  s = size / side
  return np.array([(x1 - x0) * s, (y1 - y0) * s, (x2 - x0) * s, (y2 - y0) * s])


def args_for(src, out, *extra):
  return import_faces.build_parser().parse_args(
    ["--input", str(src), "--output", str(out), "--image_size", str(SIZE),
     *extra]
  )  # fmt: skip


def read_all(out):
  """(split, record) of every complete shard, in shard order."""
  result = []
  for split in records.SPLITS:
    for shard in records.list_shards(out, split):
      result += [
        (split, records.FaceRecord.from_bytes(d))
        for d in records.iter_records(shard)
      ]
  return result


def keys(recs):
  return collections.Counter((r.video_id, r.frame_order) for _, r in recs)


# ----------------------------------------------------------------------------
# A CSV with every kind of entry, good and bad.
# ----------------------------------------------------------------------------

ODD = {  # name -> (w, h, blob, mode)
  "wide.png": (64, 32, (40, 4, 56, 20), "bgr"),
  "tall.jpg": (24, 48, (4, 30, 20, 46), "gray"),
  "alpha.png": (40, 40, (0, 0, 20, 20), "alpha"),
  "small.png": (20, 20, (5, 5, 15, 15), "bgr"),
}


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("csv")
  rows = ["path,label,original,video"]
  for i in range(3):
    write_image(root / f"real_{i}.png")
    write_image(root / f"fake_{i}.png", blob=(4, 6, 20, 22))
    rows += [f"real_{i}.png,REAL,,", f"fake_{i}.png,FAKE,real_{i}.png,"]
  for j in range(3):  # two videos of three frames: a REAL and its FAKE
    write_image(root / "clip" / f"a{j}.png", blob=(j, j, 16 + j, 16 + j))
    write_image(root / "clip" / f"b{j}.png")
    rows.append(f"clip/a{j}.png,REAL,,clip_a")
  rows += [f"clip/b{j}.png,FAKE,clip_a,clip_b" for j in range(3)]
  for name, (w, h, blob, mode) in ODD.items():
    write_image(root / name, w, h, blob, mode)
    rows.append(f"{name},REAL,,")
  write_image(root / "noface.png", blob=None)
  write_image(root / "orphan.png")
  (root / "zero.jpg").write_bytes(b"")
  (root / "corrupt.jpg").write_bytes(np.random.default_rng(0).bytes(500))
  write_image(root / "maybe.png")
  rows += [
    "noface.png,REAL,,",
    "orphan.png,FAKE,gone.png,",
    "missing.png,REAL,,",
    "zero.jpg,REAL,,",
    "corrupt.jpg,FAKE,real_1.png,",
    "maybe.png,MAYBE,,",
    "real_0.png,REAL,,",  # listed twice
  ]
  (root / "faces.csv").write_text("\n".join(rows) + "\n")
  out = root / "out"
  det = BlobDetector()
  summary = import_faces.run(
    args_for(root / "faces.csv", out, "--records_per_shard", "3"),
    detector=det,
  )
  return root, out, summary, det, read_all(out)


GOOD_CSV = (
  {f"{k}_{i}.png" for k in ("real", "fake") for i in range(3)}
  | {"clip_a", "clip_b", "noface.png", "orphan.png"}
  | set(ODD)
)


def test_csv_records_and_dataset_info(csv_run):
  _, out, summary, det, recs = csv_run
  assert {r.video_id for _, r in recs} == GOOD_CSV
  assert summary.videos == len(GOOD_CSV) and summary.images == len(recs)
  assert len(recs) == len(GOOD_CSV) - 2 + 6 and max(keys(recs).values()) == 1
  # The detector saw stored images only: all SIZE x SIZE RGB.
  assert {s for call in det.calls for s in call} == {(SIZE, SIZE, 3)}
  info = records.read_dataset_info(out)
  assert info["input_layout"] == "csv" and info["groups_known"]
  assert info["num_records"] == len(recs)
  assert info["num_videos"] == len(GOOD_CSV)
  for split, counts in info["splits"].items():
    mine = [r for s, r in recs if s == split]
    assert counts["num_videos"] == len({r.video_id for r in mine})
    for name, label in (("REAL", 0), ("FAKE", 1)):
      assert counts["records"][name] == sum(r.label == label for r in mine)
      assert counts["videos"][name] == len(
        {r.video_id for r in mine if r.label == label}
      )
  # A video's frames: contiguous records, frame_order 0..n-1, one split.
  order = [r.video_id for _, r in recs]
  for vid in ("clip_a", "clip_b"):
    first = order.index(vid)
    assert order[first : first + 3] == [vid] * 3 and order.count(vid) == 3
    rs = [r for _, r in recs if r.video_id == vid]
    assert [r.frame_order for r in rs] == [0, 1, 2]
    assert [r.frame_index for r in rs] == [0, 1, 2]
  by_id = {r.video_id: (s, r) for s, r in recs}
  assert by_id["clip_b"][1].original == "clip_a"
  assert by_id["fake_2.png"][1].original == "real_2.png"
  for s, r in recs:  # a FAKE sits with its original
    if r.original in by_id:
      assert by_id[r.original][0] == s
  # clip_a frame j has its blob at (j, j, 16 + j, 16 + j).
  clip_a = [r for _, r in recs if r.video_id == "clip_a"]
  for j, r in enumerate(clip_a):
    np.testing.assert_allclose(r.box, [j, j, 16 + j, 16 + j], atol=1)
    assert r.score == pytest.approx(0.99)


def test_csv_bad_inputs_named_with_reasons(csv_run):
  _, out, summary, _, _ = csv_run
  info = records.read_dataset_info(out)
  reasons = collections.defaultdict(str)
  for s in info["skipped"]:
    reasons[s["video"]] += s["reason"]
  expected = {
    "missing.png": "file is missing",
    "zero.jpg": "empty file (0 bytes)",
    "corrupt.jpg": "not a decodable image",
    "maybe.png": "label 'MAYBE' is not FAKE",
    "real_0.png": "listed twice",
  }
  assert set(reasons) == set(expected)
  for name, reason in expected.items():
    assert reason in reasons[name], (name, reasons[name])
  assert summary.input_issues == 3 and summary.skipped == 2
  notes = {n["video"]: n["reason"] for n in info["notes"]}
  assert "original gone.png is not in the input: kept" in notes["orphan.png"]


def test_no_face_keeps_whole_image_box(csv_run):
  _, out, summary, _, recs = csv_run
  (r,) = [r for _, r in recs if r.video_id == "noface.png"]
  np.testing.assert_array_equal(r.box, [0, 0, SIZE, SIZE])
  np.testing.assert_allclose(
    r.landmarks, import_faces.TEMPLATE_LANDMARKS * SIZE
  )
  assert r.score == 0.0
  assert all(r.score > 0 for _, r in recs if r.video_id != "noface.png")
  faces = records.read_dataset_info(out)["faces"]
  assert faces["no_face"] == 1 == summary.no_face
  assert faces["no_face_images"] == ["noface.png:noface.png"]
  assert faces["images"] == len(recs)


@pytest.mark.parametrize("name", sorted(ODD))
def test_other_sizes_stored_square_and_boxes_scaled(csv_run, name):
  root, _, _, _, recs = csv_run
  (r,) = [r for _, r in recs if r.video_id == name]
  img = r.decode_image()
  assert img.shape == (SIZE, SIZE, 3) == (r.height, r.width, 3)
  w, h, blob, _ = ODD[name]
  want = expected_box(w, h, blob)
  # The stored pixels and the recorded box agree with the geometry...
  np.testing.assert_allclose(r.box, want, atol=1.5)
  x1, y1, x2, y2 = np.round(want).astype(int)
  assert img[y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 200
  # ...and landmarks sit in the box as the detector placed them.
  wh = r.box[2:] - r.box[:2]
  np.testing.assert_allclose(r.landmarks, r.box[:2] + MARKS * wh, atol=1e-3)
  # Padding is black (8 px a side here), the background (30) is not.
  pad = img[:, :6] if w < h else img[:6] if w > h else None
  if pad is not None:
    assert pad.max() < 12 and img[SIZE // 2, SIZE // 2 - 8].min() > 20


def test_grain_pipeline_reads_the_shards(csv_run):
  _, out, _, _, recs = csv_run
  cfg = dict(dir=str(out), image_size=SIZE, sampling="picture", read_threads=1)
  split = collections.Counter(s for s, _ in recs).most_common(1)[0][0]
  it = pipeline.make_train_iterator(
    split=split, global_batch_size=2, sharding=None, seed=0, **cfg
  )
  b = next(it)
  assert b["image"].shape == (2, 1, SIZE, SIZE, 3)
  ids = pipeline.video_ids(out, split)
  want = {(r.video_id, r.frame_order): r.label for s, r in recs if s == split}
  seen = {}
  for b in pipeline.make_eval_iterator(
    split=split, global_batch_size=4, sharding=None, **cfg
  ):
    for i in np.flatnonzero(b["_mask"]):
      key = (ids[b["video_idx"][i]], int(b["frame_order"][i, 0]))
      seen[key] = int(b["label"][i])
  assert seen == want


# ----------------------------------------------------------------------------
# deepfake-faces metadata.csv: splits, --images, resume.
# ----------------------------------------------------------------------------


def deepfake_faces(root, n=10, folder="faces_224"):
  """metadata.csv with n originals and n fakes (one each)."""
  rows = ["videoname,original_width,original_height,label,original"]
  for i in range(n):
    write_image(root / folder / f"orig{i:02d}.jpg")
    write_image(root / folder / f"fake{i:02d}.jpg", blob=(2, 2, 30, 30))
    rows += [
      f"orig{i:02d}.mp4,1920,1080,REAL,",
      f"fake{i:02d}.mp4,1920,1080,FAKE,orig{i:02d}.mp4",
    ]
  (root / "metadata.csv").write_text("\n".join(rows) + "\n")
  return root / "metadata.csv"


def test_deepfake_faces_splits_8_1_1_by_original(tmp_path):
  meta = deepfake_faces(tmp_path)
  out = tmp_path / "out"
  summary = import_faces.run(args_for(meta, out, "--no-detect"))
  assert summary.videos == 20 and summary.images == 20
  recs = read_all(out)
  split_of = {}
  for s, r in recs:
    assert split_of.setdefault(r.original or r.video_id, s) == s
    assert r.score == 0.0 and r.box.tolist() == [0, 0, SIZE, SIZE]
  assert sorted(collections.Counter(split_of.values()).values()) == [1, 1, 8]
  info = records.read_dataset_info(out)
  assert info["input_layout"] == "deepfake-faces" and info["groups_known"]
  assert [info["splits"][s]["num_videos"] for s in records.SPLITS] == [
    16,
    2,
    2,
  ]
  assert info["splits"]["train"]["videos"] == {"REAL": 8, "FAKE": 8}
  assert not info["skipped"] and not info["notes"]


def test_deepfake_faces_images_dir_and_given_splits(tmp_path):
  meta = deepfake_faces(tmp_path, n=3, folder="elsewhere")
  text = meta.read_text().splitlines()
  meta.write_text(
    "\n".join([text[0] + ",split"] + [t + ",test" for t in text[1:]]) + "\n"
  )
  out = tmp_path / "out"
  with pytest.raises(FileNotFoundError, match="faces_224"):
    import_faces.run(args_for(meta, out, "--no-detect"))
  summary = import_faces.run(
    args_for(
      meta, out, "--no-detect", "--images", str(tmp_path / "elsewhere"),
      "--splits_from", "input",
    )
  )  # fmt: skip
  assert summary.videos == 6
  assert {s for s, _ in read_all(out)} == {"test"}
  info = records.read_dataset_info(out)
  assert info["splits"]["test"]["num_videos"] == 6
  assert info["splits"]["train"]["num_videos"] == 0
  assert not records.list_shards(out, "train")


def test_resume_kill_and_settings(tmp_path):
  meta = deepfake_faces(tmp_path, n=5)
  out = tmp_path / "out"
  extra = ("--records_per_shard", "2", "--crop_margin", "0.2")
  det = BlobDetector()
  first = import_faces.run(args_for(meta, out, *extra), detector=det)
  assert first.videos == 10 and first.already_done == 0
  before = keys(read_all(out))
  det.calls.clear()
  again = import_faces.run(args_for(meta, out, *extra), detector=det)
  assert again.videos == 0 and again.already_done == 10 and not det.calls
  assert keys(read_all(out)) == before
  # A "killed" run: one finished shard (and its index, manifest) is lost.
  shard = records.list_shards(out, "train")[0]
  manifest = output.manifest_path(shard)
  lost = {v["video_id"] for v in json.loads(manifest.read_text())["videos"]}
  for path in (shard, records.index_path(shard), manifest):
    path.unlink()
  redo = import_faces.run(args_for(meta, out, *extra), detector=det)
  assert redo.videos == len(lost) > 0 and redo.already_done == 10 - len(lost)
  assert sum(len(c) for c in det.calls) == len(lost)
  assert keys(read_all(out)) == before
  assert records.read_dataset_info(out)["num_videos"] == 10
  # Other settings: refused, unless --overwrite. The error is kept (as a
  # caller would): the failed run must still have let go of its lock.
  with pytest.raises(output.SettingsMismatchError, match="image_size") as e:
    import_faces.run(
      args_for(meta, out, *extra, "--image_size", "48"), detector=det
    )
  redone = import_faces.run(
    args_for(meta, out, *extra, "--image_size", "48", "--overwrite"),
    detector=det,
  )
  assert redone.videos == 10 and redone.already_done == 0 and e.value
  assert {r.decode_image().shape for _, r in read_all(out)} == {(48, 48, 3)}


# ----------------------------------------------------------------------------
# REAL/FAKE folders and --crop_margin.
# ----------------------------------------------------------------------------


def folders(root):
  sides = [10, 12, 16, 20, 24]  # blob sides: box side / image side known
  for i, s in enumerate(sides):
    sub = "REAL" if i % 2 else "fake"
    write_image(root / sub / f"p{i}.jpg", blob=(2, 3, 2 + s, 3 + s))
  (root / "REAL" / "notes.txt").write_text("not an image")
  return root


def test_folders_and_crop_margin_estimate(tmp_path):
  src = folders(tmp_path / "in")
  out = tmp_path / "out"
  det = BlobDetector()
  summary = import_faces.run(
    args_for(src, out, "--crop_margin", "estimate"), detector=det
  )
  assert summary.videos == 5
  info = records.read_dataset_info(out)
  assert info["input_layout"] == "folders" and not info["groups_known"]
  assert "no originals known" in info["notes"][0]["reason"]
  assert info["skipped"] == [
    {"video": "REAL/notes.txt", "reason": "not an image file name; left out"}
  ]
  labels = {r.video_id: r.label for _, r in read_all(out)}
  assert labels == {f"{'REAL' if i % 2 else 'fake'}/p{i}.jpg": 1 - i % 2
                    for i in range(5)}  # fmt: skip
  fractions = [max(b[2] - b[0], b[3] - b[1]) / SIZE for b in det.boxes]
  assert len(fractions) == 5
  want = (1 / np.median(fractions) - 1) / 2
  assert info["crop"]["margin"] == pytest.approx(want, abs=6e-5)
  assert info["settings"]["margin"] == info["crop"]["margin"]
  assert "estimated from 5" in info["crop"]["how"]


@pytest.mark.parametrize("margin", ["0.25", "unknown"])
def test_crop_margin_given_or_unknown(tmp_path, margin):
  src = folders(tmp_path / "in")
  import_faces.run(
    args_for(src, tmp_path / "out", "--no-detect", "--crop_margin", margin)
  )
  info = records.read_dataset_info(tmp_path / "out")
  if margin == "unknown":
    assert "margin" not in info["settings"]
    assert info["crop"]["margin"] == "unknown"
  else:
    assert info["settings"]["margin"] == 0.25 == info["crop"]["margin"]
  with pytest.raises(ValueError, match="crop_margin"):
    import_faces.run(args_for(src, tmp_path / "o2", "--crop_margin", "wide"))


# ----------------------------------------------------------------------------
# The command line.
# ----------------------------------------------------------------------------


def cli(*argv):
  return subprocess.run(
    [sys.executable, "-m", "preprocessing.import_faces", *argv],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_cli_summary_and_problems_on_the_console(tmp_path):
  write_image(tmp_path / "a.png")
  write_image(tmp_path / "b.png")
  (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
  (tmp_path / "list.csv").write_text(
    "path,label\na.png,REAL\nb.png,FAKE\nbad.jpg,FAKE\ngone.png,REAL\n"
  )
  done = cli("--input", str(tmp_path / "list.csv"), "--output",
             str(tmp_path / "out"), "--image_size", "32", "--no-detect")  # fmt: skip
  assert done.returncode == 0, done.stderr[-3000:]
  assert "import_faces: 2 images of 2 videos written" in done.stdout
  assert "1 videos and 1 images skipped" in done.stdout
  assert "crop margin: unknown" in done.stdout
  assert "gone.png" in done.stderr and "file is missing" in done.stderr
  assert "bad.jpg" in done.stderr and "not a decodable image" in done.stderr
  (tmp_path / "none.csv").write_text("path,label\ngone.png,REAL\n")
  fail = cli("--input", str(tmp_path / "none.csv"), "--output",
             str(tmp_path / "o2"), "--no-detect")  # fmt: skip
  assert fail.returncode == 1
  assert "no usable image in" in fail.stderr
  assert "gone.png: none.csv:2: file is missing" in fail.stderr


# ----------------------------------------------------------------------------
# The real MTCNN on real photos.
# ----------------------------------------------------------------------------

PHOTOS = (
  "obama_small.jpg",  # 320x240
  "test_images_aligned_angelina_jolie_1.png",  # 160x160, face fills it
  "alex-lacamoire.png",  # RGBA
)


@pytest.mark.real_samples
def test_real_mtcnn_on_real_photos(real_samples, tmp_path):
  src = tmp_path / "in"
  for i, name in enumerate(PHOTOS):
    image = cv2.imread(str(real_samples / "photos" / name), cv2.IMREAD_COLOR)
    assert image is not None, name
    sub = "REAL" if i else "FAKE"
    (src / sub).mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(src / sub / f"{i}.png"), image)
  cv2.imwrite(str(src / "REAL" / "blank.png"), np.zeros((64, 64, 3)))
  summary = import_faces.run(
    import_faces.build_parser().parse_args(
      ["--input", str(src), "--output", str(tmp_path / "out"),
       "--image_size", "128", "--min_face_size", "20"]
    )
  )  # fmt: skip
  assert summary.videos == 4 and summary.no_face == 1
  for _, r in read_all(tmp_path / "out"):
    if r.video_id == "REAL/blank.png":
      assert r.score == 0.0
      continue
    assert r.score > 0.9, r.video_id
    x1, y1, x2, y2 = r.box
    # MTCNN's box may pass the edge of a tight crop; its centre may not.
    assert 0 < (x1 + x2) / 2 < 128 and 0 < (y1 + y2) / 2 < 128
    assert 20 < max(x2 - x1, y2 - y1) < 160
    assert (r.landmarks >= 0).all() and (r.landmarks < 128).all()
    lm = r.landmarks
    assert (lm[:, 0] > x1).all() and (lm[:, 0] < x2).all()
    assert (lm[:, 1] > y1).all() and (lm[:, 1] < y2).all()
    assert lm[:2, 1].max() < lm[3:, 1].min()  # eyes above the mouth
    assert lm[0, 0] < lm[2, 0] < lm[1, 0]  # nose between the eyes
