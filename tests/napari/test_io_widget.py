"""Import / export widget in a real viewer with real workers: GeoJSON in and out, OME files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import shapely
from napari.utils.notifications import notification_manager

from napari_msunet._napari._io_widget import FORMATS, ImportExportWidget
from napari_msunet._napari._layer_info import Kind, LayerClass, LayerInfo, layer_info
from napari_msunet._napari._reader import mask_layer, slide_layer
from napari_msunet.errors import AnnotationError
from napari_msunet.io.annotations import Annotation, AnnotationSet
from napari_msunet.io.geojson import write_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

SPEC = SyntheticSlideSpec(1024, 1536, seed=4, mpp=0.5)
GEOJSON, ZARR, TIFF = list(FORMATS)


def _expected_level0() -> np.ndarray:
    t = np.zeros(SPEC.shape, np.uint8)
    t[100:300, 200:500] = 1  # GC (label 1: first class in the file)
    t[150:250, 300:400] = 0  # a hole
    t[600:700, 800:1000] = 2  # Sinus
    return t


def _prediction() -> np.ndarray:
    p = np.zeros((512, 768), np.uint8)
    p[50:150, 100:250] = 1
    p[300:350, 400:600] = 2
    return p


@pytest.fixture
def files(tmp_path):
    slide = write_synthetic_slide(tmp_path / "case.svs", SPEC, "svs", tile=256)
    gc = shapely.box(200, 100, 500, 300).difference(shapely.box(300, 150, 400, 250))
    anns = AnnotationSet.from_annotations(
        [Annotation(gc, "GC"), Annotation(shapely.box(800, 600, 1000, 700), "Sinus")]
    )
    geojson = write_geojson(anns, tmp_path / "annotation.geojson")
    pred = write_ome_zarr(
        tmp_path / "pred" / "labels.ome.zarr",
        _prediction(),
        kind="labels",
        mpp=1.0,
        chunk=128,
        class_names=["background", "GC", "Sinus"],
        class_colors=[[0, 0, 0, 0], [0, 200, 0, 255], [200, 0, 200, 255]],
    )
    bad = tmp_path / "broken.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [')
    other = write_geojson(
        AnnotationSet.from_annotations([Annotation(shapely.box(4000, 3000, 4500, 3500), "GC")]),
        tmp_path / "other_slide.geojson",
    )
    return {"slide": slide, "geojson": geojson, "pred": pred, "bad": bad, "other": other}


@pytest.fixture
def viewer_and_widget(make_napari_viewer, qtbot, files):
    viewer = make_napari_viewer()
    with open_slide(files["slide"]) as slide:
        data, kwargs, _ = slide_layer(slide)
    viewer.add_image(data, **kwargs)
    widget = ImportExportWidget(viewer)
    qtbot.addWidget(widget)
    return viewer, widget


def _click(qtbot, bar):
    bar.button.click()
    task = bar.task
    assert task is not None
    qtbot.waitUntil(lambda: task.done, timeout=60_000)
    return task


def _import(qtbot, widget, path):
    before = len(widget.imported)
    widget.import_path.edit.setText(str(path))
    task = _click(qtbot, widget.import_bar)
    assert task.error is None, task.error
    assert len(widget.imported) == before + 1
    return widget.imported[-1]


def _add_prediction(viewer, files):
    data, kwargs, _ = mask_layer(files["pred"])
    kwargs["name"] = "prediction"
    info = LayerInfo.from_metadata(kwargs["metadata"])
    kwargs["metadata"] = replace(info, kind=Kind.PREDICTION, slide=files["slide"]).as_metadata()
    return viewer.add_labels(data, **kwargs)


def test_import_puts_labels_exactly_on_the_slide(viewer_and_widget, qtbot, files):
    viewer, widget = viewer_and_widget
    slide_l = viewer.layers[0]
    assert widget.import_slide.current_layer() is slide_l
    layer = _import(qtbot, widget, files["geojson"])
    assert layer in viewer.layers
    assert layer.multiscale
    assert [lv.shape for lv in layer.data] == [lv.shape[:2] for lv in slide_l.data]
    assert tuple(layer.scale) == tuple(slide_l.scale)
    np.testing.assert_array_equal(np.asarray(layer.data[0]), _expected_level0())
    info = layer_info(layer)
    assert info.kind is Kind.ANNOTATION
    assert info.slide == files["slide"]
    assert [c.name for c in info.classes] == ["GC", "Sinus"]


@pytest.mark.parametrize("which", ["bad", "other"])
def test_bad_geojson_shows_an_error_naming_the_file(viewer_and_widget, qtbot, files, which):
    viewer, widget = viewer_and_widget
    layers_before = list(viewer.layers)
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    widget.import_path.edit.setText(str(files[which]))
    task = _click(qtbot, widget.import_bar)
    assert isinstance(task.error, AnnotationError)
    name = files[which].name
    assert name in widget.import_bar.status.text()
    assert any(name in str(n.message) and n.severity == "error" for n in seen)
    assert list(viewer.layers) == layers_before  # nothing added, nothing lost
    # the widget still works afterwards
    assert _import(qtbot, widget, files["geojson"]) in viewer.layers


def test_export_geojson_round_trip(viewer_and_widget, qtbot, files):
    _viewer, widget = viewer_and_widget
    layer = _import(qtbot, widget, files["geojson"])
    widget.export_layer.set_layer(layer)
    widget.export_format.setCurrentText(GEOJSON)
    target = widget.default_path()
    assert target.parent == files["slide"].with_name("case.svs.msunet") / "exports"
    assert target.name == "annotation.geojson"
    task = _click(qtbot, widget.export_bar)
    assert task.error is None, task.error
    assert widget.exported == [target]
    assert json.loads(target.read_text())["type"] == "FeatureCollection"
    again = _import(qtbot, widget, target)
    np.testing.assert_array_equal(np.asarray(again.data[0]), np.asarray(layer.data[0]))
    # a second export of the same layer is refused, never a silent duplicate ("-2")
    assert widget.default_path() == target
    before = target.read_bytes()
    first = widget.export_bar.task
    widget.export_bar.button.click()  # refused before any work: no new task
    assert widget.export_bar.task in (None, first)
    assert "already exists" in widget.export_bar.status.text()
    assert "Replace" in widget.export_bar.status.text()
    assert sorted(p.name for p in target.parent.iterdir()) == ["annotation.geojson"]
    assert target.read_bytes() == before
    widget.replace.setChecked(True)  # the user asks for it: replaced in place
    task = _click(qtbot, widget.export_bar)
    assert task.error is None, task.error
    assert sorted(p.name for p in target.parent.iterdir()) == ["annotation.geojson"]


def test_prediction_exports_to_geojson_in_level0_pixels(viewer_and_widget, qtbot, files):
    viewer, widget = viewer_and_widget
    pred = _add_prediction(viewer, files)
    widget.export_layer.set_layer(pred)
    widget.export_format.setCurrentText(GEOJSON)
    assert widget.export_slide.current_layer() is viewer.layers[0]
    task = _click(qtbot, widget.export_bar)
    assert task.error is None, task.error
    layer = _import(qtbot, widget, widget.exported[-1])
    # prediction pixels are 2 x 2 slide pixels: the GeoJSON is in level-0 coordinates
    expected = np.kron(_prediction(), np.ones((2, 2), np.uint8))
    np.testing.assert_array_equal(np.asarray(layer.data[0]), expected)


@pytest.mark.parametrize("fmt", [ZARR, TIFF])
def test_prediction_exports_to_ome_files_readable_by_open_mask(
    viewer_and_widget, qtbot, files, fmt
):
    viewer, widget = viewer_and_widget
    pred = _add_prediction(viewer, files)
    widget.export_layer.set_layer(pred)
    widget.export_format.setCurrentText(fmt)
    task = _click(qtbot, widget.export_bar)
    assert task.error is None, task.error
    written = widget.exported[-1]
    assert written.name == "prediction" + FORMATS[fmt][1]
    mask = open_mask(written)
    np.testing.assert_array_equal(np.asarray(mask.levels[0]), _prediction())
    assert mask.mpp == pytest.approx(1.0)
    assert [(c.name, c.label, c.color) for c in mask.classes] == [
        ("GC", 1, (0, 200, 0)),
        ("Sinus", 2, (200, 0, 200)),
    ]


def test_existing_file_is_never_replaced_silently(viewer_and_widget, qtbot, files, tmp_path):
    viewer, widget = viewer_and_widget
    pred = _add_prediction(viewer, files)
    widget.export_layer.set_layer(pred)
    widget.export_format.setCurrentText(TIFF)
    target = tmp_path / "mine.ome.tif"
    target.write_bytes(b"the user's own file")
    widget.export_path.edit.setText(str(target))
    widget.export_path.edit.textEdited.emit(str(target))  # as when the user types it
    seen = []
    notification_manager.notification_ready.connect(seen.append)
    widget.export_bar.button.click()
    assert widget.export_bar.task is None
    assert str(target) in widget.export_bar.status.text()
    assert any(str(target) in str(n.message) for n in seen)
    assert target.read_bytes() == b"the user's own file"
    # asked explicitly: replaced, atomically
    widget.replace.setChecked(True)
    task = _click(qtbot, widget.export_bar)
    assert task.error is None, task.error
    np.testing.assert_array_equal(np.asarray(open_mask(target).levels[0]), _prediction())


def test_changing_the_format_follows_the_suffix(viewer_and_widget, files):
    viewer, widget = viewer_and_widget
    _add_prediction(viewer, files)
    widget.export_format.setCurrentText(ZARR)
    assert widget.export_path.edit.text().endswith("prediction.ome.zarr")
    widget.export_format.setCurrentText(GEOJSON)
    assert widget.export_path.edit.text().endswith("prediction.geojson")


def test_a_window_layer_exports_at_its_place_on_the_slide(viewer_and_widget, qtbot, files):
    viewer, widget = viewer_and_widget
    s0 = float(viewer.layers[0].scale[-1])
    d, origin = 2.0, (150, 200)  # a 100 x 120 window of 2 x 2 slide pixels at (300, 400)
    window = np.zeros((100, 120), np.uint8)
    window[10:30, 20:60] = 1
    layer = viewer.add_labels(
        window,
        name="edited region",
        scale=(d * s0, d * s0),
        # the review widget's rule: the window's origin plus the centre of a d x d block
        translate=tuple((o * d + (d - 1) / 2) * s0 for o in origin),
        metadata=LayerInfo(
            kind=Kind.ANNOTATION_EDIT, classes=(LayerClass(1, "GC", (0, 200, 0)),)
        ).as_metadata(),
    )
    widget.export_layer.set_layer(layer)
    widget.export_format.setCurrentText(GEOJSON)
    widget.export_slide.set_layer(viewer.layers[0])
    task = _click(qtbot, widget.export_bar)
    assert task.error is None, task.error
    back = np.asarray(_import(qtbot, widget, widget.exported[-1]).data[0])
    expected = np.zeros(SPEC.shape, np.uint8)
    expected[300 + 20 : 300 + 60, 400 + 40 : 400 + 120] = 1
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize("fmt", [ZARR, TIFF, GEOJSON])
def test_cancel_stops_a_long_export_and_publishes_nothing(viewer_and_widget, qtbot, tmp_path, fmt):
    import dask.array as da

    viewer, widget = viewer_and_widget
    side = 32768  # 1 GiB of lazy labels: seconds to write, nothing held in memory
    levels = [da.zeros((side >> k, side >> k), dtype=np.uint8, chunks=2048) for k in range(7)]
    layer = viewer.add_labels(levels, name="big", metadata={})
    widget.export_layer.set_layer(layer)
    widget.export_format.setCurrentText(fmt)
    target = tmp_path / f"big{FORMATS[fmt][1]}"
    widget.export_path.edit.setText(str(target))
    widget.export_path.edit.textEdited.emit(str(target))
    widget.export_bar.button.click()
    task = widget.export_bar.task
    qtbot.waitUntil(lambda: task.last is not None, timeout=60_000)
    widget.export_bar.button.click()  # Cancel
    qtbot.waitUntil(lambda: task.done, timeout=60_000)
    assert task.cancelled
    assert task.error is None
    assert task.result is None
    assert not target.exists()
    assert not list(tmp_path.glob("*big*"))  # no partial store or temporary file left behind
    assert widget.exported == []
    assert widget.export_bar.status.text() == "Cancelled; nothing was written."
