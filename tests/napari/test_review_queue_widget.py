"""The Review widget's queue over two open slides, in a real viewer with real workers:
candidates of both slides ranked together, Accept on a wrong annotation, Reject on the other
slide, the decisions written beside each store and exported."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import shapely
from qtpy.QtCore import Qt

from napari_msunet._napari._layer_info import Kind, LayerInfo
from napari_msunet._napari._reader import geojson_layers, mask_layer, slide_layer
from napari_msunet._napari._review import ReviewWidget
from napari_msunet._napari._workspace import workspace_dir
from napari_msunet.io.annotation_store import AnnotationStore
from napari_msunet.io.annotations import Annotation, AnnotationSet
from napari_msunet.io.decisions import read_decisions
from napari_msunet.io.geojson import read_geojson, write_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

SLIDE_MPP = 0.5
NAMES = ["Background", "Germinal centre", "Sinus"]
# predictions at 1 µm/px (384 x 512), prediction pixels (y0, y1, x0, x1) -> class
A_PRED = {(40, 90, 40, 120): 2, (150, 200, 200, 260): 1}  # a missed Sinus, an annotated GC
A_SINUS = (250, 300, 50, 150)  # annotated Sinus the model calls background: wrong
B_PRED = {(100, 200, 200, 400): 2}  # a large missed Sinus: first in the cohort


def _prediction(folder, regions):
    probs = np.zeros((3, 384, 512), np.uint8)
    probs[0] = 245
    probs[1:] = 5
    for (y0, y1, x0, x1), c in regions.items():
        probs[:, y0:y1, x0:x1] = 5
        probs[c, y0:y1, x0:x1] = 245
    write_ome_zarr(folder / "probabilities.ome.zarr", probs, mpp=1.0, class_names=NAMES, chunk=64)
    labels = probs.argmax(0).astype(np.uint8)
    write_ome_zarr(folder / "labels.ome.zarr", labels, mpp=1.0, class_names=NAMES)
    return folder


def _add_prediction(viewer, folder, slide):
    data, kwargs, _ = mask_layer(folder / "labels.ome.zarr")
    kwargs["metadata"] = replace(
        LayerInfo.from_metadata(kwargs["metadata"]),
        kind=Kind.PREDICTION,
        probabilities=folder / "probabilities.ome.zarr",
        prediction_dir=folder,
        slide=slide,
        mpp=1.0,
    ).as_metadata()
    kwargs["name"] = f"{slide.name} — prediction"
    return viewer.add_labels(data, **kwargs)


def _add_slide(viewer, path):
    with open_slide(path) as slide:
        data, kwargs, _ = slide_layer(slide)
    return viewer.add_image(data, **kwargs)


@pytest.fixture
def two_slides(tmp_path, make_napari_viewer):
    a = write_synthetic_slide(
        tmp_path / "case_a.svs", SyntheticSlideSpec(768, 1024, seed=5, mpp=SLIDE_MPP), "svs"
    )
    b = write_synthetic_slide(
        tmp_path / "case_b.svs", SyntheticSlideSpec(768, 1024, seed=6, mpp=SLIDE_MPP), "svs"
    )
    y0, y1, x0, x1 = A_SINUS
    anns = AnnotationSet.from_annotations(
        [
            Annotation(shapely.box(400, 300, 520, 400), "Germinal centre"),  # level-0 x, y
            Annotation(shapely.box(2 * x0, 2 * y0, 2 * x1, 2 * y1), "Sinus"),
        ]
    )
    geojson = write_geojson(anns, tmp_path / "case_a.geojson")
    pred_a = _prediction(tmp_path / "pred_a", A_PRED)
    pred_b = _prediction(tmp_path / "pred_b", B_PRED)
    # slide b was reviewed before: its store waits in its workspace (empty annotation)
    with open_slide(b) as slide:
        AnnotationStore.create(
            workspace_dir(b) / "annotation", None, slide, mpp=1.0, classes=NAMES
        ).close()

    viewer = make_napari_viewer()
    _add_slide(viewer, b)
    _add_prediction(viewer, pred_b, b)
    layer_a = _add_slide(viewer, a)
    for data, kwargs, _ in geojson_layers(geojson):
        viewer.add_labels(data, **kwargs)
    _add_prediction(viewer, pred_a, a)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.slide_combo.set_layer(layer_a)
    return viewer, widget, a, b


def _wait(qtbot, task, timeout=60_000):
    assert task is not None
    qtbot.waitUntil(lambda: task.done, timeout=timeout)
    assert task.error is None, task.error
    return task.result


def test_queue_over_two_slides_accept_reject_export(two_slides, qtbot, tmp_path):
    viewer, widget, a, b = two_slides
    _wait(qtbot, widget.start_review())
    store_a = widget.store
    assert store_a.root == workspace_dir(a) / "annotation"

    found = _wait(qtbot, widget.find_queue())
    assert {c.slide for c in found} == {"case_a.svs", "case_b.svs"}
    assert [c.score for c in found] == sorted((c.score for c in found), reverse=True)
    assert (found[0].slide, found[0].kind, found[0].class_name) == (
        "case_b.svs",
        "missing",
        "Sinus",
    )
    wrong = [c for c in found if c.kind == "wrong"]
    assert [(c.slide, c.annotated_name, c.class_name) for c in wrong] == [
        ("case_a.svs", "Sinus", "Background")
    ]
    n = len(found)
    assert widget.candidate_list.count() == n
    row = found.index(wrong[0])
    text = widget.candidate_list.item(row).text()
    assert text.startswith(f"{row + 1}. wrong: Sinus → Background · ")
    assert text.endswith(" · case_a.svs")
    assert widget.missing.counter.text() == f"{n} candidates"

    widget.candidate_list.setCurrentRow(row)  # the outlines follow the selected slide
    assert widget.missing.counter.text() == f"{row + 1} of {n}"
    assert widget.candidate_layer.name == "review queue — case_a.svs"
    # a box around each suspect of the slide and, inside it, the model's proposed outline
    types = widget.candidate_layer.shape_type
    on_a = [c for c in found if c.slide == "case_a.svs"]
    assert types.count("rectangle") == len(on_a)
    assert types.count("polygon") >= len(on_a)
    outline = widget.candidate_layer.data[types.index("polygon")]
    by0, bx0, bh0, bw0 = on_a[0].bbox  # inside its box (level-0 pixel corners)
    assert outline[:, 0].min() >= by0 - 1
    assert outline[:, 0].max() <= by0 + bh0 + 1
    assert outline[:, 1].min() >= bx0 - 1
    assert outline[:, 1].max() <= bx0 + bw0 + 1
    by, bx, bh, bw = wrong[0].bbox  # centred on it, on its slide
    center = viewer.scene.camera.center[-2:]
    np.testing.assert_allclose(center, ((by + bh / 2 - 0.5) * 0.5, (bx + bw / 2 - 0.5) * 0.5))

    _wait(qtbot, widget.accept_candidate())  # the wrong Sinus is removed from a's store
    assert widget.candidate_list.currentRow() == -1  # the view stays on what changed...
    qtbot.waitUntil(lambda: widget.candidate_list.currentRow() >= 0, timeout=5000)  # a moment
    assert "µm" in widget.status.text() or "px" in widget.status.text()
    y0, y1, x0, x1 = A_SINUS
    mask_a = np.asarray(open_mask(store_a.mask_path).levels[0])
    assert not (mask_a[y0:y1, x0:x1] == 2).any()
    assert widget.candidate_list.count() == n - 1

    widget.candidate_list.setCurrentRow(0)  # b's missing Sinus: rejected, on b's store
    widget.reject_candidate()
    assert widget.candidate_list.count() == n - 2
    root_b = workspace_dir(b) / "annotation"
    assert [(d.slide, d.kind, d.decision) for d in read_decisions(root_b)] == [
        ("case_b.svs", "missing", "reject")
    ]
    assert [(d.kind, d.decision) for d in store_a.decisions()] == [("wrong", "accept")]

    widget.candidate_list.setCurrentRow(0)  # a's missing Sinus: painted in by hand
    (last,) = widget.candidates
    _wait(qtbot, widget.edit_candidate())
    data = np.array(widget.edit_layer.data)
    data[data.shape[0] // 2, :] = 2
    widget.edit_layer.data = data
    _wait(qtbot, widget.apply())
    assert widget.candidate_list.count() == 0
    assert [(d.kind, d.decision) for d in store_a.decisions()] == [
        ("wrong", "accept"),
        ("missing", "edit"),
    ]
    assert store_a.decisions()[-1].bbox == last.bbox

    out = tmp_path / "export"
    files = _wait(qtbot, widget.export_decisions(out))
    assert [f.name for f in files] == [
        "case_a.svs.decisions.geojson",
        "case_b.svs.decisions.geojson",
        "decisions.csv",
    ]
    assert len(read_geojson(files[0])) == 2
    with open(files[-1], newline="", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == 3

    again = _wait(qtbot, widget.find_queue())  # decided ones are not suggested again
    assert again == []
    widget.queue.close()


def test_queue_is_worked_through_by_keyboard(two_slides, qtbot):
    """N / P move through the queue, R rejects, A accepts; the counter follows."""
    viewer, widget, _a, _b = two_slides
    _wait(qtbot, widget.start_review())
    found = _wait(qtbot, widget.find_queue())
    n = len(found)
    assert n >= 3
    panel = widget.missing
    widget.show()
    panel.list.setFocus()
    qtbot.keyClick(panel.list, Qt.Key.Key_N)  # nothing selected yet: the first
    assert panel.counter.text() == f"1 of {n}"
    # the view shows the suspect with its surroundings, never beyond the scan's resolution
    zoom = viewer.scene.camera.zoom
    assert zoom <= 1 / 0.5 + 1e-9  # one screen pixel per level-0 pixel (0.5 µm) at most
    assert min(viewer.canvas.size) / zoom >= 400 - 1e-6  # at least 400 µm across
    qtbot.keyClick(panel.list, Qt.Key.Key_N)
    assert panel.counter.text() == f"2 of {n}"
    qtbot.keyClick(panel.list, Qt.Key.Key_P)
    assert panel.counter.text() == f"1 of {n}"
    first = widget.candidates[0]
    qtbot.keyClick(panel.list, Qt.Key.Key_R)  # rejected: gone, the next one selected
    assert widget.candidate_list.count() == n - 1
    assert first not in widget.candidates
    assert panel.counter.text() == f"1 of {n - 1}"
    qtbot.keyClick(panel.list, Qt.Key.Key_A)  # accepted (a task: the store is written)
    qtbot.waitUntil(lambda: widget.candidate_list.count() == n - 2, timeout=60_000)
    widget.queue.close()
