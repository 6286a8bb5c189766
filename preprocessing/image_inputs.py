"""Finding labelled face images: deepfake-faces tables, CSVs, REAL/FAKE folders.

Three input forms for `import_faces` (all give `ImageVideo`s: one or more
images of one video, a label and, when known, the original it was made from):

  * a deepfake-faces `metadata.csv` (Kaggle layout: columns `videoname,
    original_width,original_height,label,original`), with one image per video
    at `faces_224/<video stem>.jpg` beside it or in `--images DIR`;
  * a CSV with a header naming `path` (or `file`, `image`) and `label`, and
    optionally `original`, `video` and `split`. Paths are relative to the
    CSV's folder. Rows that share a `video` are the frames of one video, in
    row order; without a `video` column every image is its own video. Then
    `original` names an original's video (with `video`) or its image path;
  * a folder holding `REAL/` and `FAKE/` subfolders (any case): every image
    below each is one video; no originals are known, so groups are single
    images and the caller says that the split cannot keep a fake with its
    original.

Problems never stop discovery: each bad entry (missing file, unknown label,
duplicate name, conflicting rows) becomes an `Issue` naming it and the reason,
and everything usable is returned. Image contents are checked when they are
read (`import_faces`), not here.
"""

import dataclasses
import os
import pathlib

from preprocessing import inputs as inputs_lib
from preprocessing.inputs import Issue, VideoItem

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_PATH_COLUMNS = ("path", "file", "image", "filename")


@dataclasses.dataclass
class ImageVideo:
  """The images of one video: `frames` in order, all of one label."""

  video_id: str
  label: int
  frames: list[pathlib.Path]
  original: str = ""
  split: str | None = None

  def as_video_item(self) -> VideoItem:
    """For grouping and splitting with preprocessing/splits.py."""
    return VideoItem(
      video_id=self.video_id,
      path=self.frames[0],
      label=self.label,
      original=self.original,
      split=self.split,
    )


@dataclasses.dataclass
class ImageInputs:
  """What discovery found: videos, problems, and whether groups are known."""

  videos: list[ImageVideo]
  issues: list[Issue]
  layout: str  # 'deepfake-faces', 'csv' or 'folders'
  groups_known: bool


def discover(
  source: str | os.PathLike, images: str | os.PathLike | None = None
) -> ImageInputs:
  """Dispatches on the input form; see the module docstring."""
  source = pathlib.Path(source)
  if source.is_dir():
    if images is not None:
      raise ValueError("--images goes with a deepfake-faces metadata.csv")
    return _discover_folders(source)
  if not source.is_file():
    raise FileNotFoundError(
      f"{source}: input not found (a metadata.csv, a CSV of images, or a "
      "folder with REAL/ and FAKE/ subfolders)"
    )
  rows, header = _read_rows(source)
  if "videoname" in header:
    return _discover_deepfake_faces(source, rows, header, images)
  if images is not None:
    raise ValueError(
      f"{source}: --images goes with a deepfake-faces metadata.csv "
      "(header with 'videoname'); this CSV names its image paths itself"
    )
  return _discover_csv(source, rows, header)


def _read_rows(csv_path: pathlib.Path) -> tuple[list[list[str]], list[str]]:
  rows = inputs_lib.read_csv_rows(csv_path)
  header = [c.strip().lower() for c in rows[0]]
  if "label" not in header:
    raise ValueError(
      f"{csv_path}: the first row {rows[0]} is not a header with a 'label' "
      "column (import_faces needs a header: path,label[,original][,video]"
      "[,split], or deepfake-faces' videoname,...,label,original)"
    )
  return rows[1:], header


def _cell(row: list[str], header: list[str], key: str) -> str:
  if key not in header:
    return ""
  i = header.index(key)
  return row[i].strip() if i < len(row) else ""


def _label_split(row, header, name, where, issues):
  """(label, split) of a row, or None after noting why it is unusable."""
  try:
    return (
      inputs_lib.parse_label(_cell(row, header, "label")),
      inputs_lib.parse_split(_cell(row, header, "split")),
    )
  except ValueError as e:
    issues.append(Issue(name, f"{where}: {e}"))
    return None


def _discover_deepfake_faces(csv_path, rows, header, images) -> ImageInputs:
  folder = pathlib.Path(images) if images else csv_path.parent / "faces_224"
  if not folder.is_dir():
    raise FileNotFoundError(
      f"{folder}: image folder not found (deepfake-faces keeps the crops in "
      "faces_224/ beside metadata.csv; give another with --images)"
    )
  videos: dict[str, ImageVideo] = {}
  issues: list[Issue] = []
  for line, row in enumerate(rows, start=2):
    where = f"{csv_path.name}:{line}"
    name = _cell(row, header, "videoname")
    if not name:
      issues.append(Issue(where, "row has no videoname"))
      continue
    parsed = _label_split(row, header, name, where, issues)
    if parsed is None:
      continue
    label, split = parsed
    if name in videos:
      issues.append(Issue(name, f"{where}: listed twice; first entry kept"))
      continue
    stem = pathlib.Path(name).stem
    path = next(
      (
        folder / (stem + s)
        for s in IMAGE_SUFFIXES
        if (folder / (stem + s)).is_file()
      ),
      None,
    )
    if path is None:
      issues.append(Issue(name, f"{where}: no image {folder / stem}.jpg"))
      continue
    original = _cell(row, header, "original")
    videos[name] = ImageVideo(
      name, label, [path], original if original != name else "", split
    )
  return ImageInputs(
    sorted(videos.values(), key=lambda v: v.video_id),
    issues,
    "deepfake-faces",
    groups_known=True,
  )


def _image_id(path: pathlib.Path, base: pathlib.Path) -> str:
  """Path relative to `base` after resolving '..' and links (one file, one
  id, however the CSV spells it)."""
  resolved = path.resolve()
  try:
    return resolved.relative_to(base).as_posix()
  except ValueError:
    return resolved.as_posix()


def _discover_csv(csv_path, rows, header) -> ImageInputs:
  base = csv_path.resolve().parent
  path_col = next((c for c in _PATH_COLUMNS if c in header), None)
  if path_col is None:
    raise ValueError(
      f"{csv_path}: header {header} has no image path column (one of "
      f"{', '.join(_PATH_COLUMNS)})"
    )
  by_video = "video" in header
  videos: dict[str, ImageVideo] = {}
  seen_images: set[str] = set()
  issues: list[Issue] = []
  for line, row in enumerate(rows, start=2):
    where = f"{csv_path.name}:{line}"
    rel = _cell(row, header, path_col)
    if not rel:
      issues.append(Issue(where, "row has no image path"))
      continue
    path = base / rel
    image_id = _image_id(path, base)
    parsed = _label_split(row, header, image_id, where, issues)
    if parsed is None:
      continue
    label, split = parsed
    if image_id in seen_images:
      issues.append(
        Issue(image_id, f"{where}: image listed twice; first entry kept")
      )
      continue
    if not path.is_file():
      issues.append(Issue(image_id, f"{where}: file is missing"))
      continue
    seen_images.add(image_id)
    original = _cell(row, header, "original")
    if original and not by_video:
      original = _image_id(base / original, base)
    vid = _cell(row, header, "video") if by_video else image_id
    vid = vid or image_id
    video = videos.get(vid)
    if video is None:
      videos[vid] = ImageVideo(
        vid, label, [path], original if original != vid else "", split
      )
      continue
    if (label, original or video.original) != (video.label, video.original):
      issues.append(
        Issue(
          image_id,
          f"{where}: label/original disagree with the earlier rows of video "
          f"{vid}; row left out",
        )
      )
      seen_images.discard(image_id)
      continue
    video.frames.append(path)
  return ImageInputs(
    sorted(videos.values(), key=lambda v: v.video_id),
    issues,
    "csv",
    groups_known=by_video or "original" in header,
  )


def _discover_folders(root: pathlib.Path) -> ImageInputs:
  root = root.resolve()
  labels = {}
  for child in sorted(root.iterdir()):
    if child.is_dir() and child.name.lower() in ("real", "fake"):
      labels[child] = inputs_lib.parse_label(child.name)
  if sorted(p.name.lower() for p in labels) != ["fake", "real"]:
    raise ValueError(
      f"{root}: a folder input needs REAL/ and FAKE/ subfolders (found "
      f"{sorted(p.name for p in root.iterdir() if p.is_dir()) or 'none'})"
    )
  videos: list[ImageVideo] = []
  issues: list[Issue] = []
  for folder, label in labels.items():
    for path in sorted(folder.rglob("*")):
      if path.is_dir():
        continue
      rel = path.relative_to(root).as_posix()
      if path.suffix.lower() not in IMAGE_SUFFIXES:
        issues.append(Issue(rel, "not an image file name; left out"))
        continue
      if not path.is_file():  # a broken link
        issues.append(Issue(rel, "file is missing (broken link?)"))
        continue
      videos.append(ImageVideo(rel, label, [path]))
  return ImageInputs(videos, issues, "folders", groups_known=False)
