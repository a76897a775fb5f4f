"""Suspected wrong annotations, the cohort queue and its decisions, on constructed slides
whose answers are known."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import shapely

from napari_msunet.evaluation.missing import (
    MISSING,
    WRONG,
    find_missing,
    is_rejected,
    reject_candidate,
)
from napari_msunet.evaluation.review_queue import (
    QueueSlide,
    decide,
    iter_review_queue,
    slide_of,
)
from napari_msunet.io.annotation_store import AnnotationStore
from napari_msunet.io.decisions import (
    CSV_COLUMNS,
    DECISIONS_NAME,
    Decision,
    export_decisions,
    read_decisions,
)
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.progress import run_to_end

SLIDE = (400, 400)  # level 0 at 0.5 µm/px
PRED = (200, 200)  # prediction and store at 1 µm/px: downsample 2, 1 µm² per pixel
NAMES = ["Background", "Follicle", "Sinus"]
# (y0, y1, x0, x1) in prediction pixels, annotated class, predicted class
CASE_A = {
    "missing": ((20, 60, 20, 80), 0, 1),  # 2400 µm²
    "to background": ((100, 140, 100, 140), 2, 0),  # 1600 µm²: annotated Sinus, none seen
    "swap": ((150, 180, 20, 70), 1, 2),  # 1500 µm²: annotated Follicle, Sinus seen
}
AGREE = (100, 150, 150, 190)  # annotated Follicle; the model's Follicle is 2 px narrower
CASE_B = {
    "missing": ((10, 60, 100, 180), 0, 2),  # 4000 µm²: first in the cohort
    "swap": ((120, 140, 120, 140), 2, 1),  # 400 µm²: last
}


def _case(root, regions):
    """Probabilities (confident everywhere) and an annotation store for one slide."""
    pred = np.zeros(PRED, np.uint8)
    ann = np.zeros(PRED, np.uint8)
    for (y0, y1, x0, x1), a, p in regions.values():
        ann[y0:y1, x0:x1] = a
        pred[y0:y1, x0:x1] = p
    y0, y1, x0, x1 = AGREE
    ann[y0:y1, x0:x1] = 1
    pred[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = 1  # a boundary disagreement, not a wrong one
    probs = np.full((3, *PRED), 5, np.uint8)
    for c in range(3):
        probs[c][pred == c] = 245
    folder = root / "pred"
    write_ome_zarr(folder / "probabilities.ome.zarr", probs, mpp=1.0, class_names=NAMES, chunk=64)
    write_ome_zarr(folder / "labels.ome.zarr", pred, mpp=1.0, class_names=NAMES, chunk=64)
    store = AnnotationStore.create(
        root / f"{root.name}.msunet" / "annotation",
        ann,
        SLIDE,
        slide_mpp=0.5,
        mpp=1.0,
        classes=NAMES,
    )
    return QueueSlide(
        root.name, folder / "probabilities.ome.zarr", store, folder / "labels.ome.zarr"
    )


@pytest.fixture
def cohort(tmp_path):
    a = _case(tmp_path / "a.svs", CASE_A)
    b = _case(tmp_path / "b.svs", CASE_B)
    yield a, b
    a.store.close()
    b.store.close()


def _box(region):
    y0, y1, x0, x1 = region
    return 2 * y0, 2 * x0, 2 * (y1 - y0), 2 * (x1 - x0)  # level-0 (y, x, h, w)


def _queue(slides, **kw):
    gen = iter_review_queue(slides, level=0, window=64, **kw)
    stages = []
    while True:
        try:
            stages.append(next(gen).stage)
        except StopIteration as end:
            return end.value, stages


def test_both_kinds_are_found_with_their_classes(cohort):
    a, _ = cohort
    found = find_missing(a.probabilities, a.store, level=0, window=64, kinds=(MISSING, WRONG))
    got = [(c.bbox, c.kind, c.annotated_name, c.class_name) for c in found]
    assert got == [
        (_box(CASE_A["missing"][0]), "missing", "Background", "Follicle"),
        (_box(CASE_A["to background"][0]), "wrong", "Sinus", "Background"),
        (_box(CASE_A["swap"][0]), "wrong", "Follicle", "Sinus"),
    ]  # and not the 2-px ring inside the agreed Follicle: a boundary disagreement
    assert [c.area_um2 for c in found] == [2400, 1600, 1500]
    assert (found[1].annotated, found[1].label) == (2, 0)
    # the default is the missing ones only, as before
    only = find_missing(a.probabilities, a.store, level=0, window=64)
    assert [c.kind for c in only] == ["missing"]


def test_queue_ranks_across_slides_one_stage_per_slide(cohort):
    a, b = cohort
    queue, stages = _queue([a, b])
    assert [(c.slide, c.bbox) for c in queue] == [
        ("b.svs", _box(CASE_B["missing"][0])),
        ("a.svs", _box(CASE_A["missing"][0])),
        ("a.svs", _box(CASE_A["to background"][0])),
        ("a.svs", _box(CASE_A["swap"][0])),
        ("b.svs", _box(CASE_B["swap"][0])),
    ]
    assert [c.score for c in queue] == sorted((c.score for c in queue), reverse=True)
    assert list(dict.fromkeys(stages)) == ["a.svs", "b.svs"]
    assert slide_of([a, b], queue[0]) is b
    # stopped during the first slide: what was searched so far, and the second never read
    calls = []
    partial, stages = _queue([a, b], stop=lambda: calls.append(1) or len(calls) > 3)
    assert set(stages) == {"a.svs"}
    assert all(c.slide == "a.svs" for c in partial)
    with pytest.raises(ValueError, match="unique"):
        run_to_end(iter_review_queue([a, a]))


def test_decisions_are_kept_and_rejected_ones_not_suggested_again(cohort):
    a, b = cohort
    queue, _ = _queue([a, b])
    swap_a = next(c for c in queue if c.slide == "a.svs" and c.annotated == 1)
    to_bg = next(c for c in queue if c.slide == "a.svs" and c.label == 0)
    missing_b = queue[0]
    before = np.asarray(open_mask(a.store.mask_path).levels[0])

    edit = decide(a, swap_a, "accept")  # Follicle -> Sinus, through the journalled edit path
    assert edit is not None
    assert "wrong" in edit.label
    assert decide(a, to_bg, "reject") is None
    decide(b, missing_b, "edit")  # corrected by hand elsewhere

    after = np.asarray(open_mask(a.store.mask_path).levels[0])
    expected = before.copy()
    y0, y1, x0, x1 = CASE_A["swap"][0]
    expected[y0:y1, x0:x1] = 2
    np.testing.assert_array_equal(after, expected)
    assert a.store.regions() == [edit.region]

    records = read_decisions(a.store.root)  # from disk, as another program would
    assert [(d.decision, d.kind, d.annotated_class, d.predicted_class) for d in records] == [
        ("accept", "wrong", "Follicle", "Sinus"),
        ("reject", "wrong", "Sinus", "Background"),
    ]
    r = records[1]
    assert r.slide == "a.svs"
    assert r.bbox == to_bg.bbox
    assert r.area_um2 == 1600
    assert r.confidence == pytest.approx(to_bg.confidence)
    assert shapely.geometry.shape(r.outline).equals(to_bg.polygon)
    assert r.time.endswith("Z")
    assert (a.store.root / DECISIONS_NAME).is_file()
    assert a.store.rejected() == [{"bbox": list(to_bg.bbox), "label": 0, "annotated": 2}]
    assert is_rejected(to_bg, a.store.rejected())

    again, _ = _queue([a, b])
    left = [(c.slide, c.bbox) for c in again]
    assert left == [
        ("a.svs", _box(CASE_A["missing"][0])),
        ("b.svs", _box(CASE_B["swap"][0])),
    ]  # accepted (no longer a disagreement), rejected and hand-edited ones are gone


def test_an_accepted_wrong_annotation_of_no_class_is_removed(cohort):
    a, _ = cohort
    found = find_missing(a.probabilities, a.store, level=0, window=64, kinds=(WRONG,))
    to_bg = next(c for c in found if c.label == 0)
    decide(a, to_bg, "accept")
    mask = np.asarray(open_mask(a.store.mask_path).levels[0])
    y0, y1, x0, x1 = CASE_A["to background"][0]
    assert not mask[y0:y1, x0:x1].any()
    assert mask[CASE_A["swap"][0][0], CASE_A["swap"][0][2]] == 1  # the other one untouched


def test_an_older_store_rejection_still_counts(cohort):
    a, _ = cohort
    found = find_missing(a.probabilities, a.store, level=0, window=64)
    (a.store.root / "rejected.json").write_text(
        json.dumps([{"bbox": list(found[0].bbox), "label": 1}])
    )
    assert (
        find_missing(a.probabilities, a.store, level=0, window=64, rejected=a.store.rejected())
        == []
    )
    a.store.reject((1, 2, 3, 4), 2, annotated=1)  # from a bbox alone
    (d,) = a.store.decisions()
    assert (d.kind, d.decision, d.annotated_class, d.predicted_class) == (
        "wrong",
        "reject",
        "Follicle",
        "Sinus",
    )
    assert d.outline is None
    assert d.geometry().equals(shapely.box(2, 1, 6, 4))  # x0, y0, x1, y1


def test_export_round_trips_through_the_geojson_reader(cohort, tmp_path):
    a, b = cohort
    queue, _ = _queue([a, b])
    decided = {}
    for c, what in zip(queue, ["edit", "accept", "reject", "accept", "reject"], strict=True):
        decide(slide_of([a, b], c), c, what)
        decided[(c.slide, c.bbox)] = (c, what)

    out = tmp_path / "export"
    files = export_decisions([a.store.root, b.store.root.parent], out)  # a store, a workspace
    assert [f.name for f in files] == [
        "a.svs.decisions.geojson",
        "b.svs.decisions.geojson",
        "decisions.csv",
    ]
    for f, slide in zip(files[:2], ["a.svs", "b.svs"], strict=True):
        anns = read_geojson(f)  # the project's own reader
        raw = json.loads(f.read_text())["features"]
        mine = {k: v for k, v in decided.items() if k[0] == slide}
        assert len(anns) == len(raw) == len(mine)
        for ann, feature in zip(anns, raw, strict=True):
            props = feature["properties"]
            c, what = next(v for k, v in mine.items() if ann.geometry.equals(v[0].polygon))
            assert ann.class_name == c.class_name
            assert props["kind"] == c.kind
            assert props["decision"] == what
            assert props["annotated_class"] == c.annotated_name
            assert props["predicted_class"] == c.class_name
            assert props["slide"] == slide
            assert props["measurements"]["area µm²"] == c.area_um2

    with open(files[-1], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 5
    row = next(r for r in rows if r["decision"] == "edit")
    c = queue[0]
    assert (row["slide"], row["kind"], row["annotated_class"], row["predicted_class"]) == (
        "b.svs",
        "missing",
        "Background",
        "Sinus",
    )
    assert [int(row[k]) for k in ("y", "x", "height", "width")] == list(c.bbox)
    assert float(row["area_um2"]) == c.area_um2

    with pytest.raises(Exception, match="already exists"):
        export_decisions([a.store.root], out)
    assert export_decisions([a.store.root], out, overwrite=True)[-1] == out / "decisions.csv"


def test_a_decision_file_with_a_bad_line_names_it(tmp_path):
    from napari_msunet.errors import AnnotationError

    good = Decision("s", "missing", 0, "Background", 1, "A", "reject", (0, 0, 1, 1))
    (tmp_path / DECISIONS_NAME).write_text(json.dumps(good.as_json()) + "\n{not json\n")
    with pytest.raises(AnnotationError, match="line 2"):
        read_decisions(tmp_path)
    with pytest.raises(ValueError, match="decision"):
        Decision("s", "missing", 0, "Background", 1, "A", "maybe", (0, 0, 1, 1))


def test_reject_candidate_records_the_whole_candidate(cohort):
    a, _ = cohort
    (c,) = find_missing(a.probabilities, a.store, level=0, window=64)
    reject_candidate(a.store, c)
    (d,) = a.store.decisions()
    assert (d.kind, d.decision, d.area_px) == ("missing", "reject", c.area_px)


def test_a_stopped_or_closed_export_writes_nothing(cohort, tmp_path):
    from napari_msunet.io.decisions import iter_export_decisions

    a, b = cohort
    for c in find_missing(a.probabilities, a.store, level=0, window=64):
        reject_candidate(a.store, c)
    out = tmp_path / "export"
    assert run_to_end(iter_export_decisions([a.store.root], out, stop=lambda: True)) is None
    gen = iter_export_decisions([a.store.root, b.store.root], out)
    assert next(gen).stage == "read"
    gen.close()
    assert not out.exists()


def test_a_geojson_annotation_is_matched_to_the_model_classes_by_name(cohort, tmp_path):
    from napari_msunet.io.vectorise import export_mask

    a, _ = cohort
    mask = np.asarray(open_mask(a.store.mask_path).levels[0])
    kw = {"level": 0, "window": 64, "kinds": (MISSING, WRONG), "slide_shape": SLIDE}
    expected = [
        (c.bbox, c.kind, c.annotated, c.label) for c in find_missing(a.probabilities, mask, **kw)
    ]
    gj = export_mask(mask, tmp_path / "a.geojson", {"sinus": 2, "Follicle": 1}, downsample=2)
    got = [(c.bbox, c.kind, c.annotated, c.label) for c in find_missing(a.probabilities, gj, **kw)]
    assert got == expected  # "sinus" is the model's "Sinus"
    assert [k for _, k, _, _ in got] == ["missing", "wrong", "wrong"]
    # a class the model does not know is annotated (hides a missing region), never wrong
    odd = export_mask(mask, tmp_path / "b.geojson", {"Vessel": 2, "Follicle": 1}, downsample=2)
    got = [(c.kind, c.annotated) for c in find_missing(a.probabilities, odd, **kw)]
    assert got == [("missing", 0), ("wrong", 1)]
