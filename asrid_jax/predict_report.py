"""predict's outputs: the DFDC submission CSV, the details CSV, the table.

Split from predict.py to keep it to the scoring itself.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from asrid_jax import reporting

if TYPE_CHECKING:
  from asrid_jax.predict import VideoPrediction

SUBMISSION_HEADER = ("filename", "label")
DETAIL_HEADER = (
  "filename",
  "label",
  "call",
  "reason",
  "tracks",
  "faces",
  "units",
  "track_scores",
  "decode_s",
  "detect_s",
  "crop_s",
  "model_s",
  "total_s",
  "path",
)


def write_outputs(
  results: Sequence[VideoPrediction], out_dir: pathlib.Path
) -> dict[str, pathlib.Path]:
  """predictions.csv (DFDC submission) and predictions_details.csv."""
  submission = reporting.write_csv(
    out_dir / "predictions.csv",
    SUBMISSION_HEADER,
    [(r.filename, float(r.score)) for r in results],
  )
  details = reporting.write_csv(
    out_dir / "predictions_details.csv",
    DETAIL_HEADER,
    [_detail_row(r) for r in results],
  )
  return {"submission": submission, "details": details}


def _call(r: VideoPrediction) -> str:
  """FAKE/REAL at 0.5, or '-' for a fallback score (the model never saw it)."""
  if r.reason:
    return "-"
  return "FAKE" if r.score >= 0.5 else "REAL"


def _detail_row(r: VideoPrediction) -> list[Any]:
  t = r.timings
  return [
    r.filename,
    float(r.score),
    _call(r),
    r.reason,
    len(r.track_scores),
    r.faces,
    r.units,
    " ".join(f"{s:.4f}" for s in r.track_scores),
    *(
      float(t.get(k, 0.0))
      for k in ("decode", "detect", "crop", "model", "total")
    ),
    str(r.path),
  ]


def format_results(results: Sequence[VideoPrediction]) -> str:
  """The console table plus the mean time split per scored video."""
  header = [
    "video",
    "P(FAKE)",
    "call",
    "faces",
    "tracks",
    "decode s",
    "detect s",
    "model s",
    "reason",
  ]
  rows = []
  for r in results:
    t = r.timings
    rows.append(
      [
        r.filename if len(r.filename) <= 32 else "..." + r.filename[-29:],
        float(r.score),
        _call(r),
        r.faces,
        len(r.track_scores),
        t.get("decode"),
        t.get("detect"),
        t.get("model"),
        r.reason[:60],
      ]
    )
  table = reporting.format_table(header, rows, digits=3)
  scored = [r for r in results if not r.fallback]
  if scored:
    mean = {
      k: float(np.mean([r.timings.get(k, 0.0) for r in scored]))
      for k in ("decode", "detect", "crop", "model", "total")
    }
    table += (
      f"\n{len(scored)} scored, {len(results) - len(scored)} fallback; "
      f"mean s/video: decode {mean['decode']:.2f}, detect {mean['detect']:.2f}"
      f", crop {mean['crop']:.2f}, model {mean['model']:.2f}, total "
      f"{mean['total']:.2f}"
    )
  return table
