"""``msunet export-decisions`` as a user runs it: a subprocess over reviewed stores."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np

from napari_msunet.evaluation.missing import KINDS, find_missing
from napari_msunet.evaluation.review_queue import QueueSlide, decide
from napari_msunet.io.annotation_store import AnnotationStore
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.ome_zarr import write_ome_zarr

NAMES = ["Background", "Follicle"]


def msunet(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", *map(str, args)],
        capture_output=True,
        text=True,
    )


def _reviewed(folder, name, decision):
    """A slide's workspace whose store holds one decision about a missing and a wrong one."""
    probs = np.full((2, 100, 100), 5, np.uint8)
    probs[0] = 245
    probs[:, 10:40, 10:50] = np.array([5, 245], np.uint8)[:, None, None]  # missed Follicle
    ann = np.zeros((100, 100), np.uint8)
    ann[60:90, 60:90] = 1  # a Follicle the model calls background
    probabilities = folder / f"{name}-probabilities.ome.zarr"
    write_ome_zarr(probabilities, probs, mpp=1.0, class_names=NAMES, chunk=64)
    workspace = folder / f"{name}.msunet"
    with AnnotationStore.create(workspace / "annotation", ann, (100, 100), classes=NAMES) as store:
        slide = QueueSlide(name, probabilities, store)
        for c in find_missing(probabilities, store, level=0, kinds=KINDS):
            decide(slide, c, decision)
    return workspace


def test_export_decisions_writes_geojson_per_slide_and_a_csv(tmp_path):
    a = _reviewed(tmp_path, "a.svs", "reject")
    b = _reviewed(tmp_path, "b.svs", "edit")
    out = tmp_path / "out"
    proc = msunet("export-decisions", a / "annotation", b, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 4 decisions" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "a.svs.decisions.geojson",
        "b.svs.decisions.geojson",
        "decisions.csv",
    ]
    anns = read_geojson(out / "a.svs.decisions.geojson")
    assert sorted(a.class_name for a in anns) == ["Background", "Follicle"]
    with open(out / "decisions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    got = sorted((r["slide"], r["kind"], r["decision"]) for r in rows)
    assert got == [
        ("a.svs", "missing", "reject"),
        ("a.svs", "wrong", "reject"),
        ("b.svs", "missing", "edit"),
        ("b.svs", "wrong", "edit"),
    ]

    again = msunet("export-decisions", a, "--out", out)  # refused: nothing is replaced
    assert again.returncode == 2
    assert "already exists" in again.stderr
    slide_a = tmp_path / "a.svs"  # the slide file names its workspace beside it
    slide_a.write_bytes(b"not read")
    assert msunet("export-decisions", slide_a, "--out", out, "--overwrite").returncode == 0
    assert len((out / "decisions.csv").read_text().splitlines()) == 3  # header + a's two

    bad = msunet("export-decisions", tmp_path / "out", "--out", tmp_path / "x")
    assert bad.returncode == 2
    assert f"{tmp_path / 'out'}: is neither an annotation store" in bad.stderr
    assert "Traceback" not in bad.stderr
