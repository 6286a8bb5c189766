"""Host memory: glibc's malloc on transparent huge pages for XLA:CPU.

XLA:CPU allocates an executable's temporaries as one buffer each time it
runs and frees it afterwards (385 MB for a dyn_mix train step at 380 px on
2 clips x 4 frames). glibc serves a request that large with a fresh mmap,
so every step faults all of its pages in again, 4 KiB at a time: 95k page
faults and 170-190 ms of kernel time in a 437 ms step on 2 cores. glibc's
`glibc.malloc.hugetlb=1` tunable (glibc 2.35 and later) has malloc advise
its mappings for transparent huge pages, so the same buffer takes about 500
faults of 2 MiB and the step 381 ms.

glibc reads tunables only when a process starts, so the command-line entry
points call `ensure_hugepage_malloc()` first: it re-executes the command once
with the tunable added to GLIBC_TUNABLES, and does nothing where it cannot
help (not Linux with glibc 2.35+, transparent huge pages not in `madvise`
mode), where it is already set, in an interactive interpreter (IPython,
Jupyter, `python -i`), and if the exec fails. `ASRID_HUGEPAGES=0` turns it
off.
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
# Set in the re-executed process: it never re-executes again, even where
# glibc drops GLIBC_TUNABLES (a privileged, AT_SECURE interpreter).
_DONE = "ASRID_HUGEPAGES_REEXECUTED"
MIN_GLIBC = (2, 35)
THP_ENABLED = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def thp_mode(path: pathlib.Path = THP_ENABLED) -> str | None:
  """The kernel's transparent huge page mode ("always", "madvise", "never")."""
  try:
    match = re.search(r"\[(\w+)\]", path.read_text())
  except OSError:
    return None
  return match.group(1) if match else None


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def hugepage_env(
  environ: Mapping[str, str], thp: str | None, libc: str, libc_version: str
) -> dict[str, str] | None:
  """The environment to re-execute with, or None to run as is.

  Only `madvise` mode gains: under `always` every large mapping already gets
  huge pages, under `never` none can. glibc before 2.35 has no such tunable.
  """
  if (
    environ.get(OPT_OUT, "1") == "0"
    or environ.get(_DONE)
    or libc != "glibc"
    or _version(libc_version) < MIN_GLIBC
    or thp != "madvise"
  ):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE in tunables:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, f"{TUNABLE}=1"]))
  env[_DONE] = "1"
  return env


def ensure_hugepage_malloc() -> None:
  """Re-executes this command with glibc's malloc on huge pages, if it helps.

  Call it first thing under `if __name__ == "__main__":`; the process keeps
  its id, arguments and the rest of its environment.
  """
  interactive = sys.flags.interactive or "IPython" in sys.modules
  if not sys.platform.startswith("linux") or interactive or not sys.executable:
    return
  env = hugepage_env(os.environ, thp_mode(), *platform.libc_ver())
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
  except OSError:
    return  # run on as is
