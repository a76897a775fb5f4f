"""Report writers: JSON (everything, strict) and CSV (one row per class), atomic."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from napari_msunet import __version__
from napari_msunet.errors import WriterError
from napari_msunet.evaluation.matching import match_classes
from napari_msunet.evaluation.metrics import compute_metrics
from napari_msunet.evaluation.report import (
    CSV_COLUMNS,
    REPORT_FORMAT,
    build_report,
    write_csv_report,
    write_json_report,
)


def _strict(text: str):
    def no_nan(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_nan)


@pytest.fixture
def metrics():
    # GC: TP 25, FP 75, FN 75; Sinus absent from both (NaN scores)
    return compute_metrics(
        np.array([[225, 75], [75, 25]]), {1: "GC", 2: "Sinus"}, excluded_pixels=7
    )


def test_json_report_has_everything(tmp_path, metrics):
    report = build_report(
        metrics,
        prediction=tmp_path / "pred.ome.zarr",
        truth=tmp_path / "truth.geojson",
        slide=tmp_path / "slide.svs",
        matching=match_classes({1: "GC", 2: "Sinus"}, {1: "GC"}),
        shape=(20, 20.0),
        mpp=0.5,
        ignore_label=255,
        extra={"truth_source": {"kind": "geojson"}},
    )
    path = write_json_report(report, tmp_path / "out" / "report.json")
    data = _strict(path.read_text())
    assert data["format"] == REPORT_FORMAT
    assert data["package_version"] == __version__
    assert data["created"].endswith("+00:00")
    assert data["slide"] == str(tmp_path / "slide.svs")
    assert data["prediction"].endswith("pred.ome.zarr")
    assert data["truth"].endswith("truth.geojson")
    assert data["shape"] == [20, 20]
    assert data["mpp"] == 0.5
    assert data["pixel_area_um2"] == 0.25
    assert data["pixels"] == {"total": 400, "counted": 400, "excluded": 7}
    assert data["ignore_label"] == 255
    assert data["class_matching"]["by"] == "name"
    assert data["class_matching"]["unmatched_pred"] == ["Sinus"]
    gc = next(c for c in data["classes"] if c["name"] == "GC")
    assert gc | {"iou": 25 / 175} == gc
    assert (gc["tp"], gc["fp"], gc["fn"], gc["tn"], gc["dice"]) == (25, 75, 75, 225, 0.25)
    assert gc["truth_area_mm2"] == 100 * 0.25 / 1e6
    sinus = next(c for c in data["classes"] if c["name"] == "Sinus")
    assert sinus["iou"] is None
    assert sinus["dice"] is None
    assert data["foreground"]["iou"] == 25 / 175
    assert data["mean_iou"] == 25 / 175
    assert data["confusion_matrix"] == {
        "rows": "truth",
        "columns": "prediction",
        "labels": [0, 1],
        "matrix": [[225, 75], [75, 25]],
    }
    assert data["truth_source"] == {"kind": "geojson"}


def test_json_report_refuses_to_overwrite(tmp_path, metrics):
    report = build_report(metrics, prediction="p.png", truth="t.png")
    path = write_json_report(report, tmp_path / "report.json")
    with pytest.raises(WriterError, match="already exists"):
        write_json_report(report, path)
    write_json_report(report | {"note": "second"}, path, overwrite=True)
    assert _strict(path.read_text())["note"] == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary left
    with pytest.raises(WriterError, match="is a folder"):
        write_json_report(report, tmp_path, overwrite=True)


def test_csv_one_row_per_class(tmp_path, metrics):
    path = write_csv_report(
        metrics, tmp_path / "report.csv", prediction="p.ome.zarr", truth="t.geojson", mpp=None
    )
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert [r["name"] for r in rows] == ["background", "GC", "Sinus", "foreground"]
    gc = rows[1]
    assert gc["label"] == "1"
    assert gc["prediction"] == "p.ome.zarr"
    assert gc["slide"] == ""
    assert (gc["tp"], gc["fp"], gc["fn"], gc["tn"]) == ("25", "75", "75", "225")
    assert float(gc["iou"]) == 25 / 175
    assert float(gc["dice"]) == 0.25
    assert gc["truth_area_mm2"] == ""  # no µm/px, no area
    assert rows[2]["iou"] == ""
    assert rows[2]["tp"] == "0"
    assert rows[3]["label"] == ""
    with pytest.raises(WriterError, match="already exists"):
        write_csv_report(metrics, path)
