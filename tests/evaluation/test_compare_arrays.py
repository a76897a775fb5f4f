"""iter_compare(): label pyramids as arrays (what napari layers hold), aligned by shape or µm."""

from __future__ import annotations

import threading
import warnings

import dask.array as da
import numpy as np
import pytest
import shapely

from napari_msunet.errors import MsunetError
from napari_msunet.evaluation import (
    FN,
    FP,
    TP,
    EvaluationWarning,
    LabelPyramid,
    compare,
    iter_compare,
)
from napari_msunet.io.annotations import Annotation, AnnotationSet
from napari_msunet.io.geojson import write_geojson
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.progress import Progress

H, W = 300, 400  # prediction grid, 1 µm/px


def _pred() -> np.ndarray:
    p = np.zeros((H, W), np.uint8)
    p[50:150, 50:150] = 1  # GC: 100 x 100
    p[200:250, 200:300] = 2  # Sinus: 50 x 100
    return p


def _truth_fine() -> np.ndarray:
    """The truth at 0.5 µm/px (twice as fine): GC shifted by 20 µm, Sinus as predicted."""
    t = np.zeros((2 * H, 2 * W), np.uint8)
    t[140:340, 140:340] = 2  # GC, labelled 2 here: matched by name
    t[400:500, 400:600] = 1  # Sinus
    return t


PRED_NAMES = {1: "GC", 2: "Sinus"}
TRUTH_NAMES = {1: "Sinus", 2: "GC"}


def _pyramid(arr: np.ndarray, levels: int = 2) -> list[np.ndarray]:
    return [arr[:: 2**k, :: 2**k] for k in range(levels)]


def test_equal_shapes_count_exactly_and_overlay_is_lazy():
    pred = LabelPyramid(_pyramid(_pred()), 1.0, PRED_NAMES, "pred")
    truth_arr = np.zeros((H, W), np.uint8)
    truth_arr[70:170, 70:170] = 2  # GC shifted by 20 px
    truth_arr[200:250, 200:300] = 1
    truth = LabelPyramid(_pyramid(truth_arr), 1.0, TRUTH_NAMES, "truth")
    records = []
    gen = iter_compare(pred, truth)
    while True:
        try:
            records.append(next(gen))
        except StopIteration as done:
            result = done.value
            break
    assert records
    assert all(isinstance(r, Progress) for r in records)
    assert records[-1].done == records[-1].total
    gc, sinus = result.metrics["GC"], result.metrics["Sinus"]
    assert (gc.tp, gc.fp, gc.fn) == (80 * 80, 10000 - 6400, 10000 - 6400)
    assert gc.iou == pytest.approx(6400 / (20000 - 6400))
    assert (sinus.tp, sinus.fp, sinus.fn) == (5000, 0, 0)
    assert result.overlay_label is None  # two classes: any foreground
    assert isinstance(result.overlay_levels[0], da.Array)
    level0 = result.overlay_levels[0].compute()
    assert level0[60, 60] == FP
    assert level0[100, 100] == TP
    assert level0[160, 160] == FN
    assert level0[0, 0] == 0
    gc_only = result.overlay(1)[0].compute()
    assert gc_only[225, 250] == 0  # Sinus is not shown in the GC map
    assert result.truth_details["how"] == "equal shape"


def test_finer_truth_is_sampled_by_um():
    pred = LabelPyramid(_pyramid(_pred()), 1.0, PRED_NAMES, "pred")
    fine = _truth_fine()
    # an SVS-like pyramid (levels /4): no level has the prediction's shape
    truth = LabelPyramid([fine, fine[::4, ::4]], 0.5, TRUTH_NAMES, "truth")
    result = compare(pred, truth)
    gc = result.metrics["GC"]
    # truth GC covers prediction pixels 70..169: overlap 80 x 80
    assert (gc.tp, gc.fp, gc.fn) == (6400, 3600, 3600)
    assert result.metrics["Sinus"].iou == 1.0
    assert result.truth_details["how"] == "sampled by µm"
    assert result.truth_details["level"] == 0
    # the coarse overlay levels come from coarse truth levels, and agree with level 0
    levels = [lv.compute() for lv in result.overlay_levels]
    assert levels[1].shape == (150, 200)
    np.testing.assert_array_equal(levels[1], levels[0][::2, ::2])


def test_coarser_truth_is_sampled_too():
    # truth at 2 µm/px: each truth pixel covers 2 x 2 prediction pixels
    truth_arr = np.zeros((H // 2, W // 2), np.uint8)
    truth_arr[25:75, 25:75] = 1
    pred = LabelPyramid([_pred()], 1.0, PRED_NAMES, "pred")
    truth = LabelPyramid([truth_arr], 2.0, {1: "GC"}, "truth")
    result = compare(pred, truth)
    assert result.metrics["GC"].iou == 1.0


def test_region_restricts_counts():
    pred = LabelPyramid([_pred()], 1.0, PRED_NAMES, "pred")
    truth = LabelPyramid([np.zeros((H, W), np.uint8)], 1.0, PRED_NAMES, "truth")
    region = np.zeros((H // 10, W // 10), bool)  # a coarse tissue mask: left half
    region[:, : W // 20] = True
    result = compare(pred, truth, region=region)
    # GC (x 50..149) lies in the left half (x < 200); Sinus (x 200..299) outside
    assert result.metrics["GC"].fp == 10000
    assert result.metrics["Sinus"].fp == 0
    assert result.metrics.excluded_pixels == H * W // 2


def test_geojson_file_truth_is_rasterised_on_the_prediction_grid(tmp_path):
    anns = AnnotationSet.from_annotations(
        [
            Annotation(shapely.box(140, 140, 340, 340), "GC"),  # level-0 (0.5 µm) pixels
            Annotation(shapely.box(400, 400, 600, 500), "Sinus"),
        ]
    )
    path = write_geojson(anns, tmp_path / "truth.geojson")
    from napari_msunet.io.slide import open_slide
    from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

    slide_path = write_synthetic_slide(
        tmp_path / "s.svs", SyntheticSlideSpec(2 * H, 2 * W, mpp=0.5), "ome-tiff"
    )
    pred = LabelPyramid([_pred()], 1.0, PRED_NAMES, "pred")
    with open_slide(slide_path) as slide:
        result = compare(pred, path, slide=slide)
    assert (result.metrics["GC"].tp, result.metrics["GC"].fp) == (6400, 3600)
    assert result.truth_details["kind"] == "geojson"


def test_mask_file_truth(tmp_path):
    path = write_ome_zarr(
        tmp_path / "t.ome.zarr",
        _truth_fine(),
        kind="labels",
        mpp=0.5,
        chunk=128,
        class_names=["background", "Sinus", "GC"],
    )
    result = compare(LabelPyramid([_pred()], 1.0, PRED_NAMES, "pred"), path)
    assert result.metrics["GC"].tp == 6400


def test_stop_returns_none():
    stop = threading.Event()
    stop.set()
    pred = LabelPyramid([_pred()], 1.0, PRED_NAMES, "pred")
    assert compare(pred, LabelPyramid([_pred()], 1.0, PRED_NAMES, "t"), stop=stop) is None


def test_unknown_scale_and_different_shapes_is_an_error_naming_both():
    pred = LabelPyramid([_pred()], None, PRED_NAMES, "my prediction")
    truth = LabelPyramid([_truth_fine()], 0.5, TRUTH_NAMES, "my annotation")
    with pytest.raises(MsunetError, match=r"my annotation.*my prediction.*unknown"):
        compare(pred, truth)


def test_other_slide_is_refused():
    pred = LabelPyramid([_pred()], 1.0, PRED_NAMES, "pred")
    truth = LabelPyramid([np.zeros((500, 500), np.uint8)], 0.5, TRUTH_NAMES, "other")
    with pytest.raises(MsunetError, match="same slide"):
        compare(pred, truth)


def test_single_classes_are_paired_with_a_warning():
    pred = LabelPyramid([_pred() == 1], 1.0, {1: "Gland"}, "pred")
    truth = LabelPyramid([(_pred() == 1).astype(np.uint8)], 1.0, {1: "Tumour"}, "truth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compare(pred, truth)
    assert any(issubclass(w.category, EvaluationWarning) for w in caught)
    assert result.overlay_label == 1
    assert result.metrics.foreground.iou == 1.0


def test_bad_levels_are_refused():
    with pytest.raises(MsunetError, match="float"):
        LabelPyramid([np.zeros((4, 4), np.float32)], name="probs")
    with pytest.raises(MsunetError, match="µm/px"):
        LabelPyramid([np.zeros((4, 4), np.uint8)], mpp=-1)
