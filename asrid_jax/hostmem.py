"""Host memory: glibc's malloc on transparent huge pages for XLA:CPU.

XLA:CPU allocates an executable's temporaries as one buffer each time it
runs and frees it afterwards (385 MB for a dyn_mix train step at 380 px on
2 clips x 4 frames). glibc serves a request that large with a fresh mmap,
so every step faults all of its pages in again, 4 KiB at a time: 95k page
faults and about 165 ms of kernel time per 390 ms step on 2 cores. glibc's
`glibc.malloc.hugetlb=1` tunable (glibc 2.35 and later; older ones ignore
it) has malloc advise its mappings for transparent huge pages, so the same
buffer takes about 500 faults of 2 MiB and the step about 340 ms.

glibc reads tunables only when a process starts, so the command-line entry
points call `ensure_hugepage_malloc()` first: it re-executes the command once
with the tunable added to GLIBC_TUNABLES, and does nothing where it cannot
help (not Linux with glibc, transparent huge pages not in `madvise` mode) or
where it is already set. `ASRID_HUGEPAGES=0` turns it off.
"""

from __future__ import annotations

import os
import pathlib
import platform
import re
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "ASRID_HUGEPAGES"
THP_ENABLED = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: pathlib.Path = THP_ENABLED) -> str | None:
  """The kernel's transparent huge page mode ("always", "madvise", "never")."""
  try:
    match = re.search(r"\[(\w+)\]", path.read_text())
  except OSError:
    return None
  return match.group(1) if match else None


def hugepage_env(
  environ: Mapping[str, str], thp: str | None, libc: str
) -> dict[str, str] | None:
  """The environment to re-execute with, or None to run as is.

  Only `madvise` mode gains: under `always` every large mapping already gets
  huge pages, under `never` none can.
  """
  if environ.get(OPT_OUT, "1") == "0" or libc != "glibc" or thp != "madvise":
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))
  return env


def ensure_hugepage_malloc() -> None:
  """Re-executes this command with glibc's malloc on huge pages, if it helps.

  Call it first thing under `if __name__ == "__main__":`; the process keeps
  its id, arguments and the rest of its environment.
  """
  if not sys.platform.startswith("linux"):
    return
  env = hugepage_env(os.environ, thp_mode(), platform.libc_ver()[0])
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
