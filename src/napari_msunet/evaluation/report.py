"""Per-slide evaluation reports: JSON (everything) and CSV (one row per class).

The JSON report is the record of an evaluation: which files were compared, how their classes
were matched, every count and score, the confusion matrix and the pixel size, the package
version and the date, so that a number in a paper can be traced back to its inputs. Scores
that are undefined (a class absent from both sides) are ``null``, never 0 or 1.

The CSV has one row per class (background included) and a last ``foreground`` row with an
empty label, and repeats the file paths on each row, so the CSVs of many slides concatenate
into one table. Undefined scores are empty cells.

Both are written atomically (temporary file, then rename) and never over an existing file
unless ``overwrite`` is set.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from napari_msunet import __version__
from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.evaluation.matching import ClassMatch
from napari_msunet.evaluation.metrics import ClassMetrics, SegmentationMetrics

__all__ = [
    "CSV_COLUMNS",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "build_report",
    "write_csv_report",
    "write_json_report",
]

REPORT_FORMAT = "napari-msunet evaluation report"
#: Bumped when a field changes meaning or disappears (adding fields does not bump it).
REPORT_VERSION = 1

CSV_COLUMNS = (
    "slide",
    "prediction",
    "truth",
    "label",
    "name",
    "tp",
    "fp",
    "fn",
    "tn",
    "truth_pixels",
    "pred_pixels",
    "iou",
    "dice",
    "precision",
    "recall",
    "truth_area_mm2",
    "pred_area_mm2",
)


def _area_mm2(pixels: int, mpp: float | None) -> float | None:
    return None if mpp is None else pixels * mpp * mpp / 1e6


def _class_entry(c: ClassMetrics, mpp: float | None) -> dict[str, Any]:
    return c.to_dict() | {
        "truth_area_mm2": _area_mm2(c.truth_pixels, mpp),
        "pred_area_mm2": _area_mm2(c.pred_pixels, mpp),
    }


def _path(p: str | os.PathLike[str] | None) -> str | None:
    return None if p is None else str(Path(p))


def build_report(
    metrics: SegmentationMetrics,
    *,
    prediction: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    slide: str | os.PathLike[str] | None = None,
    matching: ClassMatch | None = None,
    shape: tuple[int, int] | None = None,
    mpp: float | None = None,
    ignore_label: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the JSON report of one slide.

    Parameters
    ----------
    metrics
        The slide's metrics.
    prediction, truth, slide
        The files compared (and the slide they belong to, when known).
    matching
        How truth classes were matched to prediction classes.
    shape
        ``(height, width)`` of the level evaluated (the prediction's level 0).
    mpp
        µm per pixel of that level, when known; areas in mm² are added with it.
    ignore_label
        The truth value left out of the counts.
    extra
        More top-level fields (inputs' details, output names).
    """
    counted = metrics.counted_pixels
    total = None if shape is None else int(shape[0]) * int(shape[1])
    body = metrics.to_dict()
    report: dict[str, Any] = {
        "format": REPORT_FORMAT,
        "format_version": REPORT_VERSION,
        "package": "napari-msunet",
        "package_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "slide": _path(slide),
        "prediction": _path(prediction),
        "truth": _path(truth),
        "shape": None if shape is None else [int(shape[0]), int(shape[1])],
        "mpp": mpp,
        "pixel_area_um2": None if mpp is None else mpp * mpp,
        "ignore_label": ignore_label,
        "class_matching": None if matching is None else matching.to_dict(),
        "pixels": {
            "total": total,
            "counted": counted,
            "excluded": metrics.excluded_pixels,
        },
        "classes": [_class_entry(c, mpp) for c in metrics.classes],
        "foreground": _class_entry(metrics.foreground, mpp),
        "mean_iou": body["mean_iou"],
        "mean_dice": body["mean_dice"],
        "pixel_accuracy": body["pixel_accuracy"],
        "confusion_matrix": body["confusion_matrix"],
    }
    if extra:
        report.update(extra)
    return report


def _json_safe(value: Any) -> Any:
    """Replace NaN/inf floats by None (strict JSON has no NaN) and paths by strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json_report(
    report: Mapping[str, Any], path: str | os.PathLike[str], *, overwrite: bool = False
) -> Path:
    """Write a report dict as indented, strict JSON (NaN as ``null``), atomically.

    Raises
    ------
    WriterError
        The file exists and ``overwrite`` is false, or it cannot be written.
    """
    text = json.dumps(_json_safe(report), indent=2, allow_nan=False, ensure_ascii=False)
    return atomic_write_bytes(path, (text + "\n").encode("utf-8"), overwrite=overwrite)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value


def write_csv_report(
    metrics: SegmentationMetrics,
    path: str | os.PathLike[str],
    *,
    prediction: str | os.PathLike[str] | None = None,
    truth: str | os.PathLike[str] | None = None,
    slide: str | os.PathLike[str] | None = None,
    mpp: float | None = None,
    overwrite: bool = False,
) -> Path:
    """Write one CSV row per class plus a ``foreground`` row, atomically.

    Columns are :data:`CSV_COLUMNS`; undefined scores and unknown areas are empty cells.

    Raises
    ------
    WriterError
        The file exists and ``overwrite`` is false, or it cannot be written.
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    context = {"slide": _path(slide), "prediction": _path(prediction), "truth": _path(truth)}
    for c in (*metrics.classes, metrics.foreground):
        row = context | _class_entry(c, mpp)
        writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})
    return atomic_write_bytes(path, buf.getvalue().encode("utf-8"), overwrite=overwrite)
