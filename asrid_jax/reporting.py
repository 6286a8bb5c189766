"""Output helpers shared by evaluate and predict: tables, CSVs, PNG figures.

matplotlib is imported lazily with the Agg backend, so importing this module
(and evaluate/predict) never needs a display and costs nothing until a figure
is drawn.
"""

from __future__ import annotations

import csv
import logging as std_logging
import math
import os
import pathlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from asrid_jax import metrics as metrics_lib


def _pyplot():
  import matplotlib

  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt

  return plt


def format_value(value: Any, digits: int = 4) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return "nan" if math.isnan(value) else f"{value:.{digits}f}"
  return str(value)


def format_table(
  header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 4
) -> str:
  """A plain fixed-width text table (first column left-aligned)."""
  cells = [[format_value(v, digits) for v in row] for row in rows]
  widths = [
    max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
    for i, h in enumerate(header)
  ]

  def line(values: Sequence[str]) -> str:
    first = values[0].ljust(widths[0])
    rest = [v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True)]
    return "  ".join([first, *rest]).rstrip()

  sep = "  ".join("-" * w for w in widths)
  return "\n".join([line(list(header)), sep, *(line(r) for r in cells)])


def write_csv(
  path: os.PathLike | str, header: Sequence[str], rows: Iterable[Sequence]
) -> pathlib.Path:
  """Writes a CSV atomically (temp file then rename): never half a file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for row in rows:
      writer.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])
  os.replace(tmp, path)
  return path


def plot_roc(
  path: os.PathLike | str,
  curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
  title: str = "ROC",
) -> pathlib.Path | None:
  """ROC curves of {name: (labels, scores)}; skips one-class sets.

  Returns the path, or None when no set had both classes.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
  drawn = 0
  for name, (labels, scores) in curves.items():
    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
      continue
    fpr, tpr, _ = metrics_lib.roc_curve(labels, scores)
    auc = metrics_lib.roc_auc(labels, scores)
    ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f}, n={labels.size})")
    drawn += 1
  if not drawn:
    plt.close(fig)
    return None
  ax.plot([0, 1], [0, 1], "k:", lw=1, label="chance")
  ax.set(
    xlabel="false positive rate (REAL called FAKE)",
    ylabel="true positive rate (FAKE caught)",
    title=title,
    xlim=(0, 1),
    ylim=(0, 1.01),
  )
  ax.legend(loc="lower right", fontsize=8)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path)
  plt.close(fig)
  return path


def plot_histograms(
  path: os.PathLike | str,
  panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
  title: str = "P(FAKE) by true label",
) -> pathlib.Path:
  """One panel per {name: (labels, scores)}: REAL and FAKE score histograms."""
  plt = _pyplot()
  n = max(1, len(panels))
  fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), dpi=100, squeeze=False)
  bins = np.linspace(0, 1, 21)
  for ax, (name, (labels, scores)) in zip(
    axes[0], panels.items(), strict=False
  ):
    labels, scores = np.asarray(labels), np.asarray(scores)
    for value, colour, text in (
      (0, "tab:blue", "REAL"),
      (1, "tab:red", "FAKE"),
    ):
      sel = scores[labels == value]
      ax.hist(
        sel, bins=bins, alpha=0.6, color=colour, label=f"{text} ({sel.size})"
      )
    ax.axvline(0.5, color="k", ls=":", lw=1)
    ax.set(title=name, xlabel="P(FAKE)", xlim=(0, 1))
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel("count")
  fig.suptitle(title)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path)
  plt.close(fig)
  return path


# ---------------------------------------------------------------------------
# Console logs
# ---------------------------------------------------------------------------

# Orbax, grain and JAX log every checkpoint step and backend probe at INFO;
# on a console that buries our own progress lines. Their warnings stay,
# except ones that are expected in our use (restoring a subset of a
# checkpoint's items read-only, for evaluation and prediction).
_LIBRARY_PATHS = tuple(
  os.sep + part + os.sep
  for part in ("orbax", "grain", os.path.join("jax", "_src"))
)
_EXPECTED_WARNINGS = (
  "was found in the checkpoint, but could not be restored",
  "Given directory is read only",
  "read_only=True, setting save_interval_steps=0",
)


class _QuietLibraries(std_logging.Filter):
  def filter(self, record: std_logging.LogRecord) -> bool:
    if not any(p in record.pathname for p in _LIBRARY_PATHS):
      return True
    if record.levelno < std_logging.WARNING:
      return False
    message = record.getMessage()
    return not any(w in message for w in _EXPECTED_WARNINGS)


def quiet_library_logs() -> None:
  """Drops library INFO chatter from the console (see above).

  Set ASRID_LIBRARY_LOGS=1 to keep everything, e.g. to debug a checkpoint.
  """
  if os.environ.get("ASRID_LIBRARY_LOGS"):
    return
  quiet = _QuietLibraries()
  # absl's logger (Orbax and grain log through it) and every root handler
  # (JAX logs through Python's logging).
  std_logging.getLogger("absl").addFilter(quiet)
  for handler in std_logging.getLogger().handlers:
    handler.addFilter(quiet)


# ---------------------------------------------------------------------------
# Command-line argument types shared by evaluate and predict
# ---------------------------------------------------------------------------


def clip_arg(text: str) -> tuple[float, float]:
  """'LO,HI' -> (lo, hi) for --clip (argparse type)."""
  import argparse

  lo, sep, hi = text.partition(",")
  if not sep:
    raise argparse.ArgumentTypeError(f"--clip wants LO,HI, got {text!r}")
  return float(lo), float(hi)


def checkpoint_arg(text: str) -> str | int:
  """best | latest | STEP for --checkpoint (argparse type)."""
  import argparse

  from asrid_jax import checkpoint as checkpoint_lib

  try:
    return checkpoint_lib.parse_which(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None
