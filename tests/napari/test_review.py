"""Review widget in a real viewer with real workers: edit/apply/undo a region exactly, and
accept or reject a suspected missing annotation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import shapely

from napari_msunet._napari._layer_info import Kind, LayerInfo, layer_info
from napari_msunet._napari._reader import geojson_layers, mask_layer, slide_layer
from napari_msunet._napari._review import ReviewWidget
from napari_msunet.io.annotations import Annotation, AnnotationSet
from napari_msunet.io.geojson import read_geojson, write_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.io.rasterise import rasterise_array
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

SLIDE_MPP = 0.5
SPEC = SyntheticSlideSpec(768, 1024, seed=5, mpp=SLIDE_MPP, n_regions=4)
NAMES = ["Background", "Germinal centre", "Sinus"]
# prediction at 1 µm/px (384 x 512), prediction pixels (y0, y1, x0, x1):
MISSED = (40, 90, 40, 120)  # confident Sinus, not annotated: to accept
OTHER = (250, 290, 380, 440)  # confident Sinus, not annotated: to reject
GC = (150, 200, 200, 260)  # confident GC, annotated


@pytest.fixture
def files(tmp_path):
    slide = write_synthetic_slide(tmp_path / "case.svs", SPEC, "svs", tile=256)
    anns = AnnotationSet.from_annotations(
        [
            Annotation(shapely.box(400, 300, 520, 400), "Germinal centre"),  # level-0 x, y
            Annotation(shapely.box(100, 500, 300, 600), "Sinus"),
        ]
    )
    geojson = write_geojson(anns, tmp_path / "case.geojson")
    fg = np.zeros((3, 384, 512), np.uint8)
    fg[0] = 245
    fg[1:] = 5
    for (y0, y1, x0, x1), c in ((MISSED, 2), (OTHER, 2), (GC, 1)):
        fg[:, y0:y1, x0:x1] = 5
        fg[c, y0:y1, x0:x1] = 245
    pred = tmp_path / "pred"
    write_ome_zarr(pred / "probabilities.ome.zarr", fg, mpp=1.0, class_names=NAMES, chunk=64)
    write_ome_zarr(
        pred / "labels.ome.zarr", fg.argmax(0).astype(np.uint8), mpp=1.0, class_names=NAMES
    )
    return {"slide": slide, "geojson": geojson, "pred": pred}


def _viewer(make_napari_viewer, files):
    viewer = make_napari_viewer()
    with open_slide(files["slide"]) as slide:
        data, kwargs, _ = slide_layer(slide)
    viewer.add_image(data, **kwargs)
    for data, kwargs, _ in geojson_layers(files["geojson"]):
        viewer.add_labels(data, **kwargs)
    data, kwargs, _ = mask_layer(files["pred"] / "labels.ome.zarr")
    kwargs["metadata"] = replace(
        LayerInfo.from_metadata(kwargs["metadata"]),
        kind=Kind.PREDICTION,
        probabilities=files["pred"] / "probabilities.ome.zarr",
        prediction_dir=files["pred"],
        slide=files["slide"],
        mpp=1.0,
    ).as_metadata()
    kwargs["name"] = "prediction"
    viewer.add_labels(data, **kwargs)
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def _wait(qtbot, task, timeout=60_000):
    assert task is not None
    qtbot.waitUntil(lambda: task.done, timeout=timeout)
    assert task.error is None, task.error
    return task.result


def _shown(widget):
    layer = widget.store_layer
    return np.asarray(layer.data[0] if layer.multiscale else layer.data)


def _mask(store):
    return np.asarray(open_mask(store.mask_path).levels[0])


def _start(qtbot, widget):
    _wait(qtbot, widget.start_review())
    return widget.store


def test_edit_apply_and_undo_change_exactly_the_region(make_napari_viewer, qtbot, files):
    _, widget = _viewer(make_napari_viewer, files)
    store = _start(qtbot, widget)
    assert store.downsample == 2  # the prediction's 1 µm/px on a 0.5 µm/px slide
    info = layer_info(widget.store_layer)
    assert info.kind is Kind.ANNOTATION
    assert info.path == store.mask_path
    assert info.regions == store.regions_path
    assert info.store == store.root
    assert info.slide == files["slide"]
    assert info.mpp == store.mpp
    assert store.root.parent.name == "case.svs.msunet"
    ann = read_geojson(files["geojson"])
    labels = {c.name: NAMES.index(c.name) for c in ann.classes}
    before = rasterise_array(ann, SPEC.shape, 2, labels=labels)
    np.testing.assert_array_equal(_mask(store), before)

    widget.draw_rectangle()
    widget.rect_layer.add_rectangles(np.array([[[200, 300], [330, 470]]], float))
    _wait(qtbot, widget.open_region())
    layer = widget.edit_layer
    assert not layer.multiscale
    assert layer.data.shape == (65, 85)  # store px 100..165 x 150..235
    np.testing.assert_allclose(layer.scale, (1.0, 1.0))
    np.testing.assert_allclose(layer.translate, (100.25, 150.25))  # centres on the slide
    data = np.array(layer.data)
    data[5:15, 10:30] = 2
    data[40:45, 0:5] = 0  # erase (background stays background)
    layer.data = data

    edit = _wait(qtbot, widget.apply())
    assert edit.region == (200, 300, 130, 170)
    expected = before.copy()
    expected[105:115, 160:180] = 2
    after = _mask(store)
    np.testing.assert_array_equal(after, expected)  # changed there and nowhere else
    assert widget.edit_layer is None
    np.testing.assert_array_equal(_shown(widget), after)
    assert [a.geometry.bounds for a in read_geojson(store.regions_path)] == [(300, 200, 470, 330)]

    _wait(qtbot, widget.undo())
    np.testing.assert_array_equal(_mask(store), before)
    np.testing.assert_array_equal(_shown(widget), before)
    assert store.regions() == []


def test_accept_and_reject_suspected_missing_annotations(make_napari_viewer, qtbot, files):
    viewer, widget = _viewer(make_napari_viewer, files)
    store = _start(qtbot, widget)
    before = _mask(store)
    found = _wait(qtbot, widget.find_missing())
    assert [c.class_name for c in found] == ["Sinus", "Sinus"]  # GC is annotated
    assert widget.candidate_list.count() == 2
    assert widget.candidate_layer is not None
    big = found[0]
    y0, y1, x0, x1 = MISSED
    by, bx, bh, bw = big.bbox
    assert 2 * y0 <= by < 2 * y0 + 16  # searched at 8 µm/px: 16 level-0 px per pixel
    assert 2 * x0 <= bx < 2 * x0 + 16

    widget.candidate_list.setCurrentRow(0)  # clicking centres the view on it
    center = viewer.scene.camera.center[-2:]
    np.testing.assert_allclose(center, ((by + bh / 2 - 0.5) * 0.5, (bx + bw / 2 - 0.5) * 0.5))

    edit = _wait(qtbot, widget.accept_candidate())
    expected = before.copy()
    expected[y0:y1, x0:x1] = 2  # the prediction's own region, at store resolution
    np.testing.assert_array_equal(_mask(store), expected)
    assert store.regions() == [edit.region]
    gy, gx, gh, gw = edit.region
    assert gy <= 2 * y0
    assert gx <= 2 * x0
    assert gy + gh >= 2 * y1
    assert gx + gw >= 2 * x1
    assert len(read_geojson(store.regions_path)) == 1
    np.testing.assert_array_equal(_shown(widget), expected)
    assert widget.candidate_list.count() == 1

    widget.candidate_list.setCurrentRow(0)
    widget.reject_candidate()
    assert widget.candidate_list.count() == 0
    assert len(store.rejected()) == 1
    again = _wait(qtbot, widget.find_missing())  # accepted and rejected: none left
    assert again == []


def test_edit_a_candidate_opens_it_for_painting(make_napari_viewer, qtbot, files):
    viewer, widget = _viewer(make_napari_viewer, files)
    _start(qtbot, widget)
    _wait(qtbot, widget.find_missing())
    widget.candidate_list.setCurrentRow(1)
    _wait(qtbot, widget.edit_candidate())
    y, x, h, w = layer_info(widget.edit_layer).region
    cy, cx, ch, cw = widget.candidates[1].bbox
    assert y < cy
    assert x < cx
    assert y + h > cy + ch
    assert x + w > cx + cw
    widget.discard()
    assert widget.edit_layer is None
    # no rectangle drawn: "Edit region" takes the current view
    from napari_msunet._napari._segment import visible_region

    view = visible_region(viewer, widget.slide_combo.current_layer())
    _wait(qtbot, widget.open_region())
    y, x, h, w = layer_info(widget.edit_layer).region
    assert y <= view[0] < y + 2  # the view in whole store pixels (2 level-0 px)
    assert x <= view[1] < x + 2
    assert h >= view[2]
    assert w >= view[3]
    widget.discard()
    # a later session reopens the same store with its corrections
    widget2 = ReviewWidget(viewer)
    _wait(qtbot, widget2.start_review())
    assert widget2.store.root == widget.store.root


def test_without_a_prediction_the_store_is_at_the_bundled_models_resolution(
    make_napari_viewer, qtbot, files
):
    _, widget = _viewer(make_napari_viewer, files)
    widget.prediction_combo.set_extra("(none)")
    widget.set_annotation_file(files["geojson"])  # a file instead of a layer
    store = _start(qtbot, widget)
    assert store.downsample == 2  # the bundled model works at 1 µm/px: half the 0.5 µm/px slide
    before = _mask(store)
    layer = widget.store_layer
    assert not layer.editable
    _wait(qtbot, widget.open_region((20, 40, 60, 80)))  # level-0 y, x, h, w
    assert widget.edit_layer.data.shape == (30, 40)  # store px 10..40 x 20..60
    widget.edit_layer.data = np.full((30, 40), 1, np.uint8)
    _wait(qtbot, widget.apply())
    expected = before.copy()
    expected[10:40, 20:60] = 1
    layer = widget.store_layer
    levels = layer.data if layer.multiscale else [layer.data]
    for k, level in enumerate(levels):  # a display pyramid, if any, is in sync
        np.testing.assert_array_equal(np.asarray(level), expected[:: 2**k, :: 2**k])


def test_a_store_another_program_edits_is_refused_with_its_name(make_napari_viewer, qtbot, files):
    import subprocess
    import sys
    from pathlib import Path

    _, widget = _viewer(make_napari_viewer, files)
    store = _start(qtbot, widget)
    root = store.root
    store.close()
    widget.store = None
    holder = Path(__file__).parents[1] / "io" / "hold_store.py"  # a second program
    other = subprocess.Popen(
        [sys.executable, str(holder), str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "holding"
        task = widget.start_review()
        qtbot.waitUntil(lambda: task.done, timeout=60_000)
        assert task.error is not None
        text = widget.status.text()
        assert "being edited by another program" in text
        assert f"process {other.pid}" in text
        assert widget.store is None
    finally:
        other.communicate("\n", timeout=60)
    assert _start(qtbot, widget).root == root  # free again once the other program closed


def test_rectangle_outlines_stay_visible_at_any_zoom(make_napari_viewer, qtbot, files):
    from napari_msunet._napari._review_layers import EDGE_SCREEN_PX, _camera

    viewer, widget = _viewer(make_napari_viewer, files)
    _start(qtbot, widget)
    widget.draw_rectangle()
    layer = widget.rect_layer
    camera = _camera(viewer)

    def on_screen(width):  # data units -> screen pixels
        return width * camera.zoom * layer.scale[-1]

    camera.zoom = 4.0
    assert on_screen(layer.current_edge_width) == pytest.approx(EDGE_SCREEN_PX)
    layer.add_rectangles(np.array([[[200, 300], [330, 470]]], float))
    camera.zoom = 0.05  # the whole slide and more
    assert on_screen(layer.edge_width[0]) == pytest.approx(EDGE_SCREEN_PX)
    viewer.layers.remove(layer)
    camera.zoom = 1.0  # a removed layer is left alone (and its handler gone)
