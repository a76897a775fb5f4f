"""Slide-level confusion matrices and the metrics derived from them."""

from __future__ import annotations

import json
import math

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_msunet.evaluation.metrics import (
    MAX_CLASSES,
    LabelValueError,
    block_confusion,
    compute_metrics,
    confusion_matrix,
    merge_confusion,
)

RNG = np.random.default_rng(11)


def eager(pred, truth, k=None, valid=None, ignore=None):
    """Reference: count every counted pixel with np.add.at."""
    p, t = np.asarray(pred).astype(np.int64), np.asarray(truth).astype(np.int64)
    keep = np.ones(p.shape, bool) if valid is None else np.asarray(valid) != 0
    if ignore is not None:
        keep &= t != ignore
    k = k or int(max(p[keep].max(initial=0), t[keep].max(initial=0))) + 1
    out = np.zeros((k, k), np.int64)
    np.add.at(out, (t[keep], p[keep]), 1)
    return out


def squares():
    """Two 10 x 10 squares in a 20 x 20 image, overlapping in a 5 x 5 corner."""
    pred = np.zeros((20, 20), np.uint8)
    truth = np.zeros((20, 20), np.uint8)
    pred[0:10, 0:10] = 1
    truth[5:15, 5:15] = 1
    return pred, truth


def test_two_overlapping_squares_exact_numbers():
    pred, truth = squares()
    c = confusion_matrix(pred, truth)
    # rows truth, columns prediction: TN 225, FP 75, FN 75, TP 25
    np.testing.assert_array_equal(c, [[225, 75], [75, 25]])
    m = compute_metrics(c, {1: "GC"})
    gc = m["GC"]
    assert (gc.tp, gc.fp, gc.fn, gc.tn) == (25, 75, 75, 225)
    assert gc.iou == 25 / 175 == pytest.approx(1 / 7)
    assert gc.dice == 50 / 200 == 0.25
    assert gc.precision == gc.recall == 0.25
    assert m.pixel_accuracy == 250 / 400
    assert m.foreground.iou == gc.iou
    assert m.foreground.dice == gc.dice
    assert m.mean_iou == gc.iou
    bg = m[0]
    assert bg.name == "background"
    assert bg.iou == 225 / 375


def test_three_classes_hand_counted():
    # one row per truth pixel run: truth / prediction
    truth = np.array([[0, 0, 1, 1, 1, 2, 2, 2, 2, 0]], np.uint8)
    pred = np.array([[0, 1, 1, 1, 2, 2, 2, 0, 0, 0]], np.uint8)
    c = confusion_matrix(pred, truth)
    np.testing.assert_array_equal(c, [[2, 1, 0], [0, 2, 1], [2, 0, 2]])
    m = compute_metrics(c, {1: "A", 2: "B"})
    assert (m["A"].tp, m["A"].fp, m["A"].fn) == (2, 1, 1)
    assert m["A"].iou == 2 / 4
    assert m["A"].dice == 4 / 6
    assert (m["B"].tp, m["B"].fp, m["B"].fn) == (2, 1, 2)
    assert m["B"].iou == 2 / 5
    assert m["B"].dice == 4 / 7
    assert m.mean_iou == pytest.approx((2 / 4 + 2 / 5) / 2)
    # foreground: truth != 0 vs prediction != 0
    assert (m.foreground.tp, m.foreground.fp, m.foreground.fn, m.foreground.tn) == (5, 1, 2, 2)
    assert m.pixel_accuracy == 6 / 10


@pytest.mark.parametrize("k", [3, 14, 15, 40])
@pytest.mark.parametrize("workers", [1, 2])
def test_chunked_equals_eager_on_random_masks(k, workers):
    pred = RNG.integers(0, k, (1001, 777), dtype=np.uint16 if k > 14 else np.uint8)
    truth = RNG.integers(0, k, (1001, 777), dtype=np.uint8)
    ref = eager(pred, truth, k)
    # odd, different chunks on each side; windows follow the prediction's chunks
    p = da.from_array(pred, chunks=(97, 131))
    t = da.from_array(truth, chunks=(50, 77))
    np.testing.assert_array_equal(confusion_matrix(p, t, workers=workers), ref)
    np.testing.assert_array_equal(confusion_matrix(pred, truth, window=(37, 53)), ref)
    z = zarr.create_array(
        zarr.storage.MemoryStore(), shape=truth.shape, chunks=(64, 100), dtype=truth.dtype
    )
    z[:] = truth
    np.testing.assert_array_equal(confusion_matrix(p, z, workers=workers), ref)


def test_block_confusion_handles_odd_sizes_bool_and_signed():
    for shape in [(1, 1), (3, 5), (7, 1), (0, 4)]:
        p = RNG.integers(0, 2, shape).astype(bool)
        t = RNG.integers(0, 3, shape).astype(np.int32)
        got = block_confusion(p, t)
        ref = eager(p, t)
        np.testing.assert_array_equal(got[: ref.shape[0], : ref.shape[0]], ref)
        assert got.sum() == p.size


def test_ignore_label_is_not_counted():
    pred, truth = squares()
    truth[15:20, :] = 255  # "not annotated" band
    pred[15:20, :] = 1  # whatever the model says there does not count
    c = confusion_matrix(pred, truth, ignore_label=255)
    np.testing.assert_array_equal(c, eager(pred, truth, 2, ignore=255))
    assert c.sum() == 300
    assert c.shape == (2, 2)
    big = RNG.integers(0, 4, (300, 301), dtype=np.uint16)
    big[RNG.random(big.shape) < 0.2] = 65535
    p = RNG.integers(0, 4, big.shape, dtype=np.uint8)
    np.testing.assert_array_equal(
        confusion_matrix(p, big, ignore_label=65535, window=(64, 64)),
        eager(p, big, 4, ignore=65535),
    )


def test_region_mask_same_shape_and_coarser():
    pred = RNG.integers(0, 3, (515, 389), dtype=np.uint8)
    truth = RNG.integers(0, 3, (515, 389), dtype=np.uint8)
    region = RNG.random((515, 389)) < 0.6
    np.testing.assert_array_equal(
        confusion_matrix(pred, truth, region=region, window=(100, 64)),
        eager(pred, truth, 3, valid=region),
    )
    # a pyramid level 4 times coarser: ceil(515 / 4) x ceil(389 / 4)
    coarse = (RNG.random((129, 98)) < 0.5).astype(np.uint8)
    full = np.repeat(np.repeat(coarse, 4, 0), 4, 1)[:515, :389]
    np.testing.assert_array_equal(
        confusion_matrix(pred, truth, region=coarse, window=(96, 80)),
        eager(pred, truth, 3, valid=full),
    )
    # with the ignore label too
    np.testing.assert_array_equal(
        confusion_matrix(pred, truth, region=coarse, ignore_label=2),
        eager(pred, truth, 3, valid=full, ignore=2)[:3, :3],
    )


def test_classes_absent_from_both_are_nan_not_zero_or_one():
    pred, truth = squares()
    c = confusion_matrix(pred, truth, n_classes=4)
    assert c.shape == (4, 4)
    m = compute_metrics(c, {1: "GC", 2: "Sinus", 3: "Other"})
    for name in ("Sinus", "Other"):
        cm = m[name]
        assert (cm.tp, cm.fp, cm.fn) == (0, 0, 0)
        assert not cm.present
        assert all(math.isnan(v) for v in (cm.iou, cm.dice, cm.precision, cm.recall))
        assert cm.to_dict()["iou"] is None
    assert m.mean_iou == m["GC"].iou  # means skip undefined classes
    json.dumps(m.to_dict(), allow_nan=False)  # JSON-ready


def test_class_only_in_prediction_has_iou_zero_and_undefined_recall():
    pred = np.array([[0, 2, 2, 1]], np.uint8)
    truth = np.array([[0, 0, 1, 1]], np.uint8)
    m = compute_metrics(confusion_matrix(pred, truth))
    two = m[2]
    assert two.iou == 0.0
    assert two.dice == 0.0
    assert two.precision == 0.0
    assert math.isnan(two.recall)
    assert two.name == "class 2"


def test_no_foreground_anywhere_gives_nan_means():
    z = np.zeros((8, 8), np.uint8)
    m = compute_metrics(confusion_matrix(z, z))
    assert math.isnan(m.mean_iou)
    assert math.isnan(m.foreground.iou)
    assert m.pixel_accuracy == 1.0
    assert [c.label for c in m.classes] == [0]


def test_everything_excluded_gives_nan_accuracy():
    pred, truth = squares()
    m = compute_metrics(confusion_matrix(pred, truth, region=np.zeros_like(pred)))
    assert m.counted_pixels == 0
    assert math.isnan(m.pixel_accuracy)


def test_merge_confusion_grows():
    a = np.ones((2, 2), np.int64)
    b = np.full((3, 3), 2, np.int64)
    out = merge_confusion(merge_confusion(None, a), b)
    np.testing.assert_array_equal(out, [[3, 3, 2], [3, 3, 2], [2, 2, 2]])


def test_progress_is_reported():
    pred, truth = squares()
    seen = []
    confusion_matrix(pred, truth, window=(8, 8), progress=lambda d, t: seen.append((d, t)))
    assert seen == [(i, 9) for i in range(1, 10)]


def test_bad_arrays_are_refused():
    pred, truth = squares()
    with pytest.raises(ValueError, match=r"\(20, 20\) but the truth is \(20, 19\)"):
        confusion_matrix(pred, truth[:, :19])
    with pytest.raises(ValueError, match="integer labels"):
        confusion_matrix(pred.astype(np.float32), truth)
    with pytest.raises(ValueError, match="2-D"):
        confusion_matrix(pred[None], truth[None])
    with pytest.raises(ValueError, match="must be an array"):
        confusion_matrix([[0, 1]], truth)
    with pytest.raises(LabelValueError, match="negative") as err:
        confusion_matrix(pred.astype(np.int16) - 1, truth)
    assert err.value.which == "prediction"
    big = truth.astype(np.uint16)
    big[0, 0] = MAX_CLASSES
    with pytest.raises(LabelValueError, match="instance mask") as err:
        confusion_matrix(pred, big)
    assert err.value.which == "truth"
    with pytest.raises(ValueError, match="square"):
        compute_metrics(np.zeros((2, 3)))
