"""asrid_jax.hostmem: when the entry points re-execute with huge-page malloc."""

import os
import pathlib
import platform
import subprocess
import sys

import pytest

from asrid_jax import hostmem

ROOT = pathlib.Path(__file__).parents[1]
SET = f"{hostmem.TUNABLE}=1"


@pytest.mark.parametrize(
  "environ, thp, libc, version, want",
  [
    ({}, "madvise", "glibc", "2.36", SET),
    ({}, "madvise", "glibc", "2.35", SET),
    (
      {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
      "madvise",
      "glibc",
      "2.39",
      f"glibc.malloc.arena_max=2:{SET}",
    ),
    ({}, "madvise", "glibc", "2.34", None),  # no such tunable
    ({}, "madvise", "glibc", "2.9", None),
    (
      {"GLIBC_TUNABLES": f"{hostmem.TUNABLE}=0"},
      "madvise",
      "glibc",
      "2.36",
      None,
    ),
    ({hostmem.OPT_OUT: "0"}, "madvise", "glibc", "2.36", None),
    ({hostmem._DONE: "1"}, "madvise", "glibc", "2.36", None),  # no loop
    ({}, "always", "glibc", "2.36", None),
    ({}, "never", "glibc", "2.36", None),
    ({}, None, "glibc", "2.36", None),
    ({}, "madvise", "", "", None),
  ],
)
def test_hugepage_env(environ, thp, libc, version, want):
  env = hostmem.hugepage_env({"HOME": "/h", **environ}, thp, libc, version)
  if want is None:
    assert env is None
  else:
    assert env["GLIBC_TUNABLES"] == want
    assert env[hostmem._DONE] == "1"
    assert env["HOME"] == "/h"  # the rest of the environment is kept


def test_thp_mode(tmp_path):
  path = tmp_path / "enabled"
  path.write_text("always [madvise] never\n")
  assert hostmem.thp_mode(path) == "madvise"
  path.write_text("[always] madvise never\n")
  assert hostmem.thp_mode(path) == "always"
  assert hostmem.thp_mode(tmp_path / "missing") is None


# The child pretends the kernel is in madvise mode, so the re-execution runs
# on any Linux with glibc; after it, the tunable is set and it runs on.
_CHILD = """
import os, sys
from asrid_jax import hostmem
hostmem.thp_mode = lambda: "madvise"
print("start")  # stdout is a pipe: only the exec's flush shows it
hostmem.ensure_hugepage_malloc()
print("args", sys.argv[1:], "tunables", os.environ.get("GLIBC_TUNABLES", ""))
"""


def _child(**env) -> list[str]:
  environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  environ.pop(hostmem.OPT_OUT, None)
  environ.pop(hostmem._DONE, None)
  out = subprocess.run(
    [sys.executable, "-c", _CHILD, "--flag", "two words"],
    env={**environ, "PYTHONPATH": str(ROOT), **env},
    capture_output=True,
    text=True,
    check=True,
    timeout=120,
  )
  return out.stdout.splitlines()


@pytest.mark.skipif(
  not sys.platform.startswith("linux")
  or hostmem.hugepage_env({}, "madvise", *platform.libc_ver()) is None,
  reason="re-executes only on Linux with glibc 2.35+",
)
def test_reexecutes_once_with_the_tunable_and_the_same_arguments():
  lines = _child()
  # "start" twice: before the exec and again in the new image; then once on.
  assert lines == [
    "start",
    "start",
    f"args ['--flag', 'two words'] tunables {SET}",
  ]
  assert _child(**{hostmem.OPT_OUT: "0"}) == [
    "start",
    "args ['--flag', 'two words'] tunables ",
  ]
