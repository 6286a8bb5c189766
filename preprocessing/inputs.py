"""Finding labelled videos: DFDC folder trees and CSV lists.

Two input forms:
  * a folder: every `metadata.json` below it, at any depth, is a DFDC-style
    table `{file: {"label": "FAKE"|"REAL", "original": file|null,
    "split": ...}}` for the videos in its own folder;
  * a CSV file with a header naming `path` (or `file`), `label` and optionally
    `original` and `split` columns, or no header and the columns
    path,label[,original[,split]]. Paths are relative to the CSV's folder or
    absolute; labels FAKE/REAL or 1/0.

Problems never stop discovery: each bad entry becomes an `Issue` (name +
reason) that the caller reports, and everything usable is returned.
"""

import csv
import dataclasses
import json
import os
import pathlib

from asrid_jax.data import records

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg")
_LABELS = {
  "fake": records.LABEL_FAKE,
  "1": records.LABEL_FAKE,
  "real": records.LABEL_REAL,
  "0": records.LABEL_REAL,
}
_SPLIT_NAMES = {
  "train": "train",
  "training": "train",
  "val": "val",
  "valid": "val",
  "validation": "val",
  "dev": "val",
  "test": "test",
  "testing": "test",
}


@dataclasses.dataclass(frozen=True)
class VideoItem:
  """One labelled video to process.

  Attributes:
    video_id: unique name in the dataset: the path relative to the input
      folder (or to the CSV's folder; the absolute path when outside it).
    path: where the file is (may not exist: reading it reports that).
    label: records.LABEL_FAKE or records.LABEL_REAL.
    original: video_id of the original a fake was made from, '' if none.
    original_path: its file, or None.
    split: an assignment given by the input ('train'/'val'/'test') or None.
  """

  video_id: str
  path: pathlib.Path
  label: int
  original: str = ""
  original_path: pathlib.Path | None = None
  split: str | None = None


@dataclasses.dataclass(frozen=True)
class Issue:
  """A problem with one input: `name` (file or entry) and `reason`."""

  name: str
  reason: str

  def as_dict(self) -> dict[str, str]:
    return {"video": self.name, "reason": self.reason}


def parse_label(value) -> int:
  """FAKE/REAL/1/0 (any case) -> records label; ValueError otherwise."""
  key = str(value).strip().lower()
  if key not in _LABELS:
    raise ValueError(f"label {value!r} is not FAKE, REAL, 1 or 0")
  return _LABELS[key]


def parse_split(value) -> str | None:
  """A split name, None when absent; ValueError for an unknown name."""
  if value is None or str(value).strip() == "":
    return None
  key = str(value).strip().lower()
  if key not in _SPLIT_NAMES:
    raise ValueError(f"split {value!r} is not train, val or test")
  return _SPLIT_NAMES[key]


def _video_id(path: pathlib.Path, root: pathlib.Path) -> str:
  # Lexically normalised ('a/../b' -> 'b'), symlinks kept: an id names the
  # file as the user listed it, and one spelling per file.
  path = pathlib.Path(os.path.normpath(os.path.abspath(path)))
  try:
    return path.relative_to(root).as_posix()
  except ValueError:
    return path.as_posix()


def discover(source: str | os.PathLike) -> tuple[list[VideoItem], list[Issue]]:
  """Videos and input problems from a folder tree or a CSV file."""
  source = pathlib.Path(source)
  if source.is_dir():
    items, issues = discover_dfdc(source)
  elif source.is_file():
    items, issues = read_csv(source)
  else:
    raise FileNotFoundError(f"{source}: input not found (folder or CSV)")
  return _dedupe(items, issues)


def _file_key(path: pathlib.Path):
  """One key per file however it is spelled (.., absolute, symlinks)."""
  try:
    st = path.stat()
    return (st.st_dev, st.st_ino)
  except OSError:
    return str(path.resolve())


def _dedupe(items, issues):
  """Keeps the first entry of each FILE; one issue per repeated file.

  Two spellings of one file (`../in/x.mp4`, `/abs/in/x.mp4`) would otherwise
  become two videos, possibly in different splits: a video leak.
  """
  seen: dict[object, VideoItem] = {}
  repeats: dict[object, list[str]] = {}
  for item in items:
    key = _file_key(item.path)
    if key in seen:
      repeats.setdefault(key, []).append(item.video_id)
      continue
    seen[key] = item
  for key, names in repeats.items():
    kept = seen[key].video_id
    others = sorted(set(names) - {kept})
    also = f" (also as {', '.join(others)})" if others else ""
    issues.append(
      Issue(
        kept,
        f"listed {len(names) + 1} times{also}; first entry kept",
      )
    )
  return sorted(seen.values(), key=lambda v: v.video_id), issues


def discover_dfdc(root: pathlib.Path) -> tuple[list[VideoItem], list[Issue]]:
  """All metadata.json tables below `root` (sorted, any depth)."""
  root = root.resolve()
  items: list[VideoItem] = []
  issues: list[Issue] = []
  listed: set[pathlib.Path] = set()
  metas = sorted(root.rglob("metadata.json"))
  for meta in metas:
    name = _video_id(meta, root)
    try:
      table = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
      issues.append(Issue(name, f"malformed metadata.json: {e}"))
      continue
    if not isinstance(table, dict):
      issues.append(
        Issue(name, "malformed metadata.json: top level is not an object")
      )
      continue
    if not table:
      issues.append(Issue(name, "metadata.json lists no videos ({})"))
      continue
    for file_name, entry in sorted(table.items()):
      path = meta.parent / file_name
      listed.add(path)
      vid = _video_id(path, root)
      try:
        item = _dfdc_item(vid, path, entry, root)
      except ValueError as e:
        issues.append(Issue(vid, f"bad metadata.json entry: {e}"))
        continue
      if not path.is_file():
        issues.append(Issue(vid, f"listed in {name} but the file is missing"))
        continue
      items.append(item)
  if not metas:
    issues.append(Issue(str(root), "no metadata.json found below the folder"))
  # Videos no table labels cannot be used; say so rather than drop silently.
  for path in sorted(root.rglob("*")):
    if path.suffix.lower() in VIDEO_SUFFIXES and path not in listed:
      issues.append(
        Issue(_video_id(path, root), "not listed in any metadata.json")
      )
  return items, issues


def _dfdc_item(vid: str, path: pathlib.Path, entry, root) -> VideoItem:
  if not isinstance(entry, dict):
    raise ValueError(f"entry is {type(entry).__name__}, not an object")
  if "label" not in entry:
    raise ValueError("no 'label'")
  label = parse_label(entry["label"])
  original = entry.get("original")
  if original is not None and not isinstance(original, str):
    raise ValueError(f"'original' is {original!r}, not a file name")
  original_path = path.parent / original if original else None
  return VideoItem(
    video_id=vid,
    path=path,
    label=label,
    original=_video_id(original_path, root) if original_path else "",
    original_path=original_path,
    split=parse_split(entry.get("split")),
  )


_PATH_COLUMNS = ("path", "file", "filename", "video")


def cell_at(row: list[str], i: int) -> str:
  return row[i].strip() if i < len(row) else ""


def _is_label(value: str) -> bool:
  return value.strip().lower() in _LABELS


def read_csv_rows(csv_path: pathlib.Path) -> list[list[str]]:
  """The non-blank rows of a CSV (BOM tolerated); ValueError naming the
  file when it cannot be read or has no row."""
  try:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
      rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise ValueError(f"{csv_path}: cannot read CSV: {e}") from None
  if not rows:
    raise ValueError(f"{csv_path}: empty CSV")
  return rows


def read_csv(csv_path: pathlib.Path) -> tuple[list[VideoItem], list[Issue]]:
  """A CSV of path,label[,original[,split]] rows (header optional)."""
  base = csv_path.resolve().parent
  items: list[VideoItem] = []
  issues: list[Issue] = []
  rows = read_csv_rows(csv_path)
  header = [c.strip().lower() for c in rows[0]]
  named = [c for c in header if c in (*_PATH_COLUMNS, "original", "split")]
  if "label" not in header and named and not _is_label(cell_at(rows[0], 1)):
    raise ValueError(
      f"{csv_path}: header {rows[0]} has no 'label' column (columns: "
      f"{', '.join(_PATH_COLUMNS)}, label[, original][, split])"
    )
  if "label" in header:
    path_col = next((c for c in _PATH_COLUMNS if c in header), None)
    if path_col is None:
      raise ValueError(
        f"{csv_path}: header {rows[0]} has no path column "
        f"(one of {', '.join(_PATH_COLUMNS)})"
      )
    cols = {
      "path": header.index(path_col),
      "label": header.index("label"),
      "original": header.index("original") if "original" in header else None,
      "split": header.index("split") if "split" in header else None,
    }
    body, first_line = rows[1:], 2
  else:
    cols = {"path": 0, "label": 1, "original": 2, "split": 3}
    body, first_line = rows, 1

  def cell(row, key):
    i = cols[key]
    return row[i].strip() if i is not None and i < len(row) else ""

  for line, row in enumerate(body, start=first_line):
    where = f"{csv_path.name}:{line}"
    rel = cell(row, "path")
    if not rel:
      issues.append(Issue(where, "row has no path"))
      continue
    path = base / rel
    vid = _video_id(path, base)
    try:
      label = parse_label(cell(row, "label"))
      split = parse_split(cell(row, "split"))
    except ValueError as e:
      issues.append(Issue(vid, f"{where}: {e}"))
      continue
    if not path.is_file():
      issues.append(Issue(vid, f"{where}: file is missing"))
      continue
    original = cell(row, "original")
    original_path = base / original if original else None
    items.append(
      VideoItem(
        video_id=vid,
        path=path,
        label=label,
        original=_video_id(original_path, base) if original_path else "",
        original_path=original_path,
        split=split,
      )
    )
  return items, issues
