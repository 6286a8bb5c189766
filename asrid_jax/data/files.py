"""Files that appear whole or not at all: fsync, umask, atomic JSON writes."""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import threading
from typing import Any


def fsync_dir(path: pathlib.Path) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


_UMASK_LOCK = threading.Lock()


def honour_umask(fd: int) -> None:
  """Gives a mkstemp file (always 0600) the mode open() would: 0666 & ~umask.

  Without it another user's reader (predict, a shared cluster folder) gets
  PermissionError on files whose shards beside them are readable.
  """
  with _UMASK_LOCK:  # umask can only be read by setting it
    mask = os.umask(0o022)
    os.umask(mask)
  os.fchmod(fd, 0o666 & ~mask)


def write_json_atomic(path: os.PathLike | str, obj: Any) -> None:
  """Writes JSON to a temp file in the same folder, then renames it."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", dir=path.parent)
  try:
    honour_umask(fd)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, sort_keys=True, ensure_ascii=False)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
