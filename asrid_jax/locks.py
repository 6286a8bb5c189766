"""Exclusive per-owner locks on output folders (shards, training workdirs).

Two `extract_faces` workers with the same index, or two trainers on one
workdir, would otherwise delete each other's temporary files and race on
Orbax's checkpoint cleanup. An flock is tied to the open file: the kernel
releases it when the process dies (kill -9 included), so a lock file left
behind never blocks a rerun.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pathlib
from typing import IO


class BusyError(RuntimeError):
  """Another live process holds the lock."""


def take_lock(path: os.PathLike | str, what: str) -> IO[str]:
  """An exclusive, non-blocking lock on `path`; keep the returned file open.

  Args:
    path: the lock file (created, with its folder, when missing).
    what: what the lock protects, for the error message.

  Raises:
    BusyError: another process holds it; the message names its pid.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held by the caller)
  try:
    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    f.seek(0)
    owner = f.read().strip() or "another process"
    f.close()
    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise BusyError(
        f"{path}: {what} is in use by {owner}; wait for it to finish (or "
        "stop it) before starting another run on it"
      ) from None
    raise
  f.seek(0)
  f.truncate()
  f.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
  f.flush()
  return f
