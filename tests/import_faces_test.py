"""Tests of `preprocessing.import_faces` (face images -> shards).

Images are tiny (20-64 px) dark pictures with one bright square standing in
for a face; `BlobDetector` "detects" that square in the stored image, so the
tests know exactly where every box must land. This file covers the CSV
layout; import_faces_layouts_test.py the other layouts, the CLI and real
MTCNN on real photos; import_faces_helpers.py holds what both use.
"""

import collections

import numpy as np
import pytest
from import_faces_helpers import (
  MARKS,
  SIZE,
  BlobDetector,
  args_for,
  expected_box,
  keys,
  read_all,
  write_image,
)

from asrid_jax.data import pipeline, records
from preprocessing import import_faces

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
