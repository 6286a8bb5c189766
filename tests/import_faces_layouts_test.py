"""Tests of `preprocessing.import_faces` on its other layouts and its CLI.

deepfake-faces metadata.csv (splits by original, images dir, given splits),
REAL/FAKE folders, crop margins, resume after a kill, the console summary,
and real MTCNN on real photos ($ASRID_REAL_SAMPLES/photos). The CSV layout
is in import_faces_test.py; the helpers in import_faces_helpers.py.
"""

import collections
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from import_faces_helpers import (
  REPO,
  SIZE,
  BlobDetector,
  args_for,
  keys,
  read_all,
  write_image,
)

from asrid_jax.data import records
from preprocessing import import_faces, output


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
