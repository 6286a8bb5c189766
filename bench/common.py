"""What the benchmarks share: timing runs and naming the machine."""

from __future__ import annotations

import pathlib
import platform
import time
from collections.abc import Callable
from typing import Any


def run_times(fn: Callable[[], Any], warmup: int, reps: int) -> list[float]:
  """Seconds of each of `reps` calls of `fn`, after `warmup` untimed ones."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (platform's guess elsewhere)."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"
