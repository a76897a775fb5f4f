"""Compare widget in a real viewer with real workers: known TP/FP/FN, overlay values, table."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import shapely

from napari_msunet._napari._compare import GEOJSON_ENTRY, CompareWidget
from napari_msunet._napari._layer_info import Kind, LayerClass, LayerInfo, kind_of, layer_info
from napari_msunet._napari._overlay_style import OUTLINE_PX
from napari_msunet._napari._reader import geojson_layers, mask_layer, slide_layer
from napari_msunet.evaluation import FN, FP, TP
from napari_msunet.io.annotations import Annotation, AnnotationSet
from napari_msunet.io.geojson import write_geojson
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

SLIDE_MPP, PRED_MPP = 0.5, 1.0
SPEC = SyntheticSlideSpec(1024, 1536, seed=3, mpp=SLIDE_MPP)
CLASSES = ["background", "GC", "Sinus"]

# Prediction (1 µm/px, 512 x 768): GC 100 x 100, Sinus 50 x 200.
# Annotation (level-0 slide pixels, 0.5 µm): GC shifted by 20 prediction pixels, Sinus half.
#   GC:    TP 80 * 80 = 6400, FP 3600, FN 3600 -> IoU 6400 / 13600, Dice 12800 / 20000
#   Sinus: TP 5000, FP 5000, FN 0             -> IoU 0.5, Dice 10000 / 15000
EXPECTED = {
    "GC": (6400 / 13600, 12800 / 20000),
    "Sinus": (0.5, 10000 / 15000),
    "All classes (foreground)": (11400 / 23600, 22800 / 35000),
}
PIXELS = {(150, 150): TP, (105, 105): FP, (210, 210): FN, (325, 450): TP, (325, 550): FP}


def _prediction() -> np.ndarray:
    p = np.zeros((512, 768), np.uint8)
    p[100:200, 100:200] = 1
    p[300:350, 400:600] = 2
    return p


def _annotation_level0() -> np.ndarray:
    t = np.zeros(SPEC.shape, np.uint8)
    t[240:440, 240:440] = 1
    t[600:700, 800:1000] = 2
    return t


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    slide = write_synthetic_slide(root / "case.svs", SPEC, "svs", tile=256)
    pred = write_ome_zarr(
        root / "pred" / "labels.ome.zarr",
        _prediction(),
        kind="labels",
        mpp=PRED_MPP,
        chunk=128,
        class_names=CLASSES,
    )
    anns = AnnotationSet.from_annotations(
        [
            Annotation(shapely.box(240, 240, 440, 440), "GC"),
            Annotation(shapely.box(800, 600, 1000, 700), "Sinus"),
        ]
    )
    geojson = write_geojson(anns, root / "case.geojson")
    return {"slide": slide, "pred": pred, "geojson": geojson}


def _viewer_with_slide_and_prediction(make_napari_viewer, files):
    viewer = make_napari_viewer()
    with open_slide(files["slide"]) as slide:
        data, kwargs, _ = slide_layer(slide)
    slide_l = viewer.add_image(data, **kwargs)
    data, kwargs, _ = mask_layer(files["pred"])
    kwargs["name"] = "prediction"
    info = LayerInfo.from_metadata(kwargs["metadata"])
    kwargs["metadata"] = replace(info, kind=Kind.PREDICTION, slide=files["slide"]).as_metadata()
    pred_l = viewer.add_labels(data, **kwargs)
    return viewer, slide_l, pred_l


def _run(qtbot, widget):
    widget.run_bar.button.click()
    task = widget.run_bar.task
    assert task is not None
    qtbot.waitUntil(lambda: task.done, timeout=60_000)
    assert task.error is None, task.error
    return task


def _table(widget) -> dict[str, tuple[str, str]]:
    t = widget.table
    return {
        t.item(r, 0).text(): (t.item(r, 1).text(), t.item(r, 2).text()) for r in range(t.rowCount())
    }


def _check_result(widget, viewer, pred_layer):
    overlay = widget.overlay_layer
    assert overlay is not None
    assert overlay in viewer.layers
    info = layer_info(overlay)
    assert info.kind is Kind.OVERLAY
    assert overlay.contour == OUTLINE_PX  # TP/FP/FN as outlines: the tissue shows through
    assert pred_layer.contour == OUTLINE_PX
    assert info.compared == (pred_layer.name, widget._annotation_name)
    assert info.details["prediction"] == str(layer_info(pred_layer).path)
    # on the prediction's grid, in µm: exactly where the prediction lies on the slide
    assert tuple(overlay.scale) == pytest.approx((PRED_MPP, PRED_MPP))
    assert tuple(overlay.translate) == tuple(pred_layer.translate)
    assert str(overlay.units[0]) == "micrometer"
    assert overlay.multiscale
    level0 = overlay.data[0]
    assert level0.shape == (512, 768)
    for (y, x), code in PIXELS.items():
        assert int(np.asarray(level0[y, x])) == code, (y, x)
    assert int(np.asarray(level0[0, 0])) == 0
    # the colour-blind-safe colours (blue, orange, reddish purple), as the legend shows them
    colors = overlay.colormap.map(np.array([TP, FP, FN]))
    expected = [widget.colours[c] for c in (TP, FP, FN)]
    np.testing.assert_allclose(colors[:, :3] * 255, expected, atol=0.5)
    assert expected == [(0, 114, 178), (230, 159, 0), (204, 121, 167)]
    # the table at slide level
    table = _table(widget)
    assert set(table) == set(EXPECTED)
    for name, (iou, dice) in EXPECTED.items():
        assert table[name] == (f"{iou:.3f}", f"{dice:.3f}"), name
    gc = widget.comparison.metrics["GC"]
    assert (gc.tp, gc.fp, gc.fn) == (6400, 3600, 3600)
    assert info.details["metrics"]["foreground"]["tp"] == 11400


def test_compare_with_annotation_layer_from_geojson(make_napari_viewer, qtbot, files):
    viewer, slide_l, pred_l = _viewer_with_slide_and_prediction(make_napari_viewer, files)
    (data, kwargs, kind) = geojson_layers(files["geojson"])[0]
    assert kind == "labels"
    viewer.add_labels(data, **kwargs)
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.prediction.current_layer() is pred_l
    assert widget.annotation.current_layer().name == "case.geojson"
    assert widget.slide.current_layer() is slide_l  # the prediction's own slide
    _run(qtbot, widget)
    _check_result(widget, viewer, pred_l)
    # the GeoJSON behind the layer was rasterised straight onto the prediction's grid
    assert widget.comparison.truth_details["kind"] == "geojson"

    # the map can show one class: Sinus pixels vanish from the GC map
    widget.show_class.setCurrentIndex(widget.show_class.findText("GC"))
    overlay = widget.overlay_layer
    assert layer_info(overlay).details["shows"] == "GC"
    assert int(np.asarray(overlay.data[0][325, 450])) == 0
    assert int(np.asarray(overlay.data[0][150, 150])) == TP
    assert sum(kind_of(ly) is Kind.OVERLAY for ly in viewer.layers) == 1

    # running again replaces the overlay instead of stacking another one
    _run(qtbot, widget)
    kinds = [kind_of(ly) for ly in viewer.layers]
    assert kinds.count(Kind.OVERLAY) == 1


def test_compare_with_painted_labels_layer_at_slide_resolution(make_napari_viewer, qtbot, files):
    viewer, _slide_l, pred_l = _viewer_with_slide_and_prediction(make_napari_viewer, files)
    painted = viewer.add_labels(
        _annotation_level0(),
        name="my annotation",
        scale=(SLIDE_MPP, SLIDE_MPP),
        units=("um", "um"),
        metadata=LayerInfo(
            kind=Kind.LABELS, classes=(LayerClass(1, "GC"), LayerClass(2, "Sinus"))
        ).as_metadata(),
    )
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    widget.annotation.set_layer(painted)
    _run(qtbot, widget)
    _check_result(widget, viewer, pred_l)
    assert widget.comparison.truth_details["how"] == "sampled by µm"


def test_compare_with_geojson_file_chosen_by_path(make_napari_viewer, qtbot, files):
    viewer, _slide_l, pred_l = _viewer_with_slide_and_prediction(make_napari_viewer, files)
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.annotation.current_extra() == GEOJSON_ENTRY  # no annotation layer yet
    widget.geojson_path.setText(str(files["geojson"]))
    _run(qtbot, widget)
    _check_result(widget, viewer, pred_l)


def test_tissue_only_leaves_glass_out(make_napari_viewer, qtbot, files):
    viewer, _slide_l, _pred_l = _viewer_with_slide_and_prediction(make_napari_viewer, files)
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    widget.geojson_path.setText(str(files["geojson"]))
    widget.tissue_only.setChecked(True)
    _run(qtbot, widget)
    assert widget.comparison.metrics.excluded_pixels > 0
    assert "left out" in widget.summary.text()


def test_missing_inputs_are_refused_without_a_task(make_napari_viewer, qtbot, files):
    viewer = make_napari_viewer()
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    widget.run_bar.button.click()
    assert widget.run_bar.task is None
    assert "prediction" in widget.run_bar.status.text()
    data, kwargs, _ = mask_layer(files["pred"])
    viewer.add_labels(data, **kwargs)
    widget.geojson_path.setText(str(files["geojson"].with_name("nothing.geojson")))
    widget.run_bar.button.click()
    assert widget.run_bar.task is None
    assert "nothing.geojson" in widget.run_bar.status.text()


def test_a_failing_comparison_reports_the_problem(make_napari_viewer, qtbot, files):
    viewer, _slide_l, _pred_l = _viewer_with_slide_and_prediction(make_napari_viewer, files)
    viewer.add_labels(np.zeros((100, 100), np.uint8), name="tiny", metadata={})
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    widget.annotation.set_layer(viewer.layers["tiny"])
    widget.run_bar.button.click()
    task = widget.run_bar.task
    qtbot.waitUntil(lambda: task.done, timeout=60_000)
    assert task.error is not None
    assert "tiny" in widget.run_bar.status.text()
    assert widget.overlay_layer is None


def test_cancel_stops_the_comparison_and_adds_nothing(make_napari_viewer, qtbot):
    import dask.array as da

    viewer = make_napari_viewer()
    side = 32768  # 256 windows of 2048 x 2048 (lazy zeros: nothing held in memory)
    levels = [da.zeros((side >> k, side >> k), dtype=np.uint8, chunks=2048) for k in range(7)]
    labels = LayerInfo(kind=Kind.LABELS, classes=(LayerClass(1, "GC"),)).as_metadata()
    viewer.add_labels(levels, name="big prediction", metadata=labels)
    viewer.add_labels(levels, name="big annotation", metadata=labels)
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.prediction.current_layer().name == "big annotation"  # newest first
    widget.annotation.set_layer(viewer.layers["big prediction"])
    widget.run_bar.button.click()
    task = widget.run_bar.task
    qtbot.waitUntil(lambda: task.last is not None, timeout=60_000)
    widget.run_bar.button.click()  # Cancel
    qtbot.waitUntil(lambda: task.done, timeout=60_000)
    assert task.cancelled
    assert task.error is None
    assert task.result is None
    assert task.last.done < task.last.total
    assert widget.overlay_layer is None
    assert "Cancelled" in widget.run_bar.status.text()
    assert widget.table.rowCount() == 0


def test_tp_colour_moves_off_a_class_colour_and_the_scheme_is_a_setting(
    make_napari_viewer, qtbot, files
):
    """A class coloured like TP gets another TP colour; Colours switches scheme in place."""
    from napari_msunet._napari._layer_info import set_layer_info
    from napari_msunet.palette import COMPARISON_SCHEMES, MIN_DISTANCE, PAPER, colour_distance

    viewer, _slide_l, pred_l = _viewer_with_slide_and_prediction(make_napari_viewer, files)
    info = layer_info(pred_l)
    safe_tp = COMPARISON_SCHEMES[widget_default := "colour-blind safe"]["TP"]
    clashing = tuple(c._replace(color=safe_tp) if c.name == "GC" else c for c in info.classes)
    set_layer_info(pred_l, replace(info, classes=clashing))
    viewer.open(str(files["geojson"]), plugin="napari-msunet")
    widget = CompareWidget(viewer)
    qtbot.addWidget(widget)
    assert widget.colours_combo.currentText() == widget_default
    _run(qtbot, widget)
    tp = widget.overlay_layer.colormap.map(np.array([TP]))[0][:3] * 255
    assert colour_distance(tp.round(), safe_tp) >= MIN_DISTANCE  # moved off the class colour
    assert tuple(int(v) for v in tp.round()) == widget.colours[TP]

    before = dict(widget.colours)
    widget.colours_combo.setCurrentText(PAPER)  # recoloured in place, no new comparison
    assert widget.colours != before
    shown = widget.overlay_layer.colormap.map(np.array([TP, FP, FN]))[:, :3] * 255
    assert [tuple(int(v) for v in c) for c in shown.round()] == [
        widget.colours[c] for c in (TP, FP, FN)
    ]
    # the paper's colours where no class colour is near (its red FP meets the default
    # class colour (230, 25, 75) and is replaced)
    assert widget.colours[FN] == COMPARISON_SCHEMES[PAPER]["FN"]
