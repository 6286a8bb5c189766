"""A bounded, process-wide pool of read-only shard file descriptors.

`records.ShardReader` reads shards with `os.pread` on descriptors from one
pool per process (`records.DESCRIPTORS`), so any number of readers can
exist without running out of descriptors.
"""

from __future__ import annotations

import os
import threading

# Open shard descriptors are bounded per process: a DFDC-sized split has
# thousands of shards, every grain worker reads all of them, and a common
# `ulimit -n` is 1024. The pool keeps at most MAX_OPEN_SHARDS descriptors
# (least recently used closed first); a descriptor in use by a thread is
# never closed under it.
MAX_OPEN_SHARDS = 128


def raise_open_file_limit() -> tuple[int, int]:
  """Raises this process's soft RLIMIT_NOFILE to the hard limit; (soft, hard).

  Harmless where the soft limit already equals the hard one or where the
  resource module is missing (non-POSIX).
  """
  try:
    import resource  # pylint: disable=g-import-not-at-top
  except ImportError:
    return (-1, -1)
  soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
  if hard != resource.RLIM_INFINITY and soft < hard:
    try:
      resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
      soft = hard
    except (ValueError, OSError):
      pass
  return soft, hard


class DescriptorPool:
  """A process-wide LRU of read-only descriptors with in-use counts."""

  def __init__(self):
    self._lock = threading.Lock()
    self._fds: dict[str, int] = {}  # path -> fd, in LRU order (oldest first)
    self._busy: dict[int, int] = {}  # fd -> threads using it
    self._pid = -1
    self._cap = MAX_OPEN_SHARDS
    self.opened = 0  # descriptors opened (tests and benchmarks read it)

  def _reset_after_fork(self) -> None:
    # A forked child inherits the parent's descriptors but not its threads,
    # so none is in use here: close them and start over.
    if self._pid != -1:
      for fd in set(self._fds.values()) | set(self._busy):
        try:
          os.close(fd)
        except OSError:
          pass
    self._fds, self._busy, self._pid = {}, {}, os.getpid()
    soft, _ = raise_open_file_limit()
    if soft > 0:
      # Leave most of the limit to everything else the process opens.
      self._cap = max(1, min(MAX_OPEN_SHARDS, soft // 4))

  @property
  def cap(self) -> int:
    return self._cap

  def acquire(self, path: str) -> int:
    with self._lock:
      if self._pid != os.getpid():
        self._reset_after_fork()
      fd = self._fds.pop(path, None)
      if fd is None:
        self._evict(self._cap - 1)
        fd = os.open(path, os.O_RDONLY)
        self.opened += 1
      self._fds[path] = fd  # most recently used last
      self._busy[fd] = self._busy.get(fd, 0) + 1
      return fd

  def release(self, fd: int) -> None:
    with self._lock:
      n = self._busy.get(fd, 0) - 1
      if n > 0:
        self._busy[fd] = n
        return
      self._busy.pop(fd, None)
      if fd not in self._fds.values():  # evicted while in use: close now
        os.close(fd)
      else:
        self._evict(self._cap)

  def _evict(self, keep: int) -> None:
    for path in list(self._fds):
      if len(self._fds) <= keep:
        return
      fd = self._fds[path]
      del self._fds[path]
      if not self._busy.get(fd):
        os.close(fd)
      # A busy fd leaves the table now and is closed by its last release.

  def num_open(self) -> int:
    with self._lock:
      return len(self._fds) + sum(
        1 for fd in self._busy if fd not in self._fds.values()
      )

  def close_path(self, path: str) -> None:
    with self._lock:
      fd = self._fds.pop(path, None)
      if fd is not None and not self._busy.get(fd):
        os.close(fd)
