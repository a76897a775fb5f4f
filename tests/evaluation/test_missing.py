"""Suspected missing annotations on a constructed prediction whose answer is known."""

from __future__ import annotations

import json
import tracemalloc

import dask.array as da
import numpy as np
import pytest
import shapely

from napari_msunet.evaluation.missing import (
    accept_candidate,
    bootstrap_confidence,
    find_missing,
    is_rejected,
)
from napari_msunet.io.annotation_store import AnnotationStore
from napari_msunet.io.masks import open_mask
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.training.losses import bootstrap_weight

SLIDE = (1200, 1600)  # level 0 at 0.5 µm/px
PRED = (600, 800)  # prediction at 1 µm/px: downsample 2
NAMES = ["Background", "Gland"]
# prediction pixels (y0, y1, x0, x1) and foreground probability * 255
MISSED = (100, 200, 100, 300)  # confident, not annotated: the big candidate
ANNOTATED = (300, 400, 400, 700)  # confident and annotated: no candidate
UNSURE = (450, 500, 50, 100)  # p = 0.59: below the threshold
SMALL = (500, 520, 600, 620)  # confident, not annotated, small
HALF = (200, 260, 500, 560)  # confident, left half annotated


def _probabilities():
    fg = np.full(PRED, 25, np.uint8)
    for (y0, y1, x0, x1), v in [
        (MISSED, 250),
        (ANNOTATED, 240),
        (UNSURE, 150),
        (SMALL, 250),
        (HALF, 245),
    ]:
        fg[y0:y1, x0:x1] = v
    return np.stack([255 - fg, fg])


def _annotation():
    ann = np.zeros(PRED, np.uint8)
    y0, y1, x0, x1 = ANNOTATED
    ann[y0:y1, x0:x1] = 1
    y0, y1, x0, x1 = HALF
    ann[y0:y1, x0 : (x0 + x1) // 2] = 1
    return ann


@pytest.fixture(scope="module")
def prediction(tmp_path_factory):
    root = tmp_path_factory.mktemp("pred")
    probs = _probabilities()
    write_ome_zarr(root / "probabilities.ome.zarr", probs, mpp=1.0, class_names=NAMES, chunk=64)
    labels = (probs[1] > 127).astype(np.uint8)
    write_ome_zarr(root / "labels.ome.zarr", labels, mpp=1.0, class_names=NAMES, chunk=64)
    write_ome_zarr(root / "annotation.ome.zarr", _annotation(), mpp=1.0, class_names=NAMES)
    return root


def _box(region):
    y0, y1, x0, x1 = region
    return 2 * y0, 2 * x0, 2 * (y1 - y0), 2 * (x1 - x0)  # level-0 (y, x, h, w)


def test_confidence_is_the_papers_bootstrap_weight():
    import torch

    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, size=(1, 200))
    probs = np.round(np.concatenate([1 - p, p]) * 255).astype(np.uint8)[:, None]
    cls, w = bootstrap_confidence(probs)
    q = probs.astype(np.float64) / 255
    np.testing.assert_allclose(w[0], 2 * np.abs(0.5 - q[1, 0]), atol=1e-6)  # eq. 2
    logits = torch.log(torch.from_numpy(q).clamp_min(1e-9))[None]
    np.testing.assert_allclose(w, bootstrap_weight(logits)[0].numpy(), atol=1e-5)
    np.testing.assert_array_equal(cls, np.argmax(probs, axis=0))


@pytest.mark.parametrize("window", [64, 1024])  # many windows (joined regions) or one
def test_finds_exactly_the_confident_unannotated_regions(prediction, window):
    found = find_missing(
        prediction / "probabilities.ome.zarr",
        prediction / "annotation.ome.zarr",
        slide_shape=SLIDE,
        slide_mpp=0.5,
        level=0,
        window=window,
    )
    assert [c.bbox for c in found] == [
        _box(MISSED),
        _box((200, 260, 530, 560)),  # the unannotated half
        _box(SMALL),
    ]
    big = found[0]
    assert big.label == 1
    assert big.class_name == "Gland"
    assert big.area_px == 100 * 200 * 4
    assert big.area_um2 == pytest.approx(100 * 200)  # 1 µm² per prediction pixel
    assert big.confidence == pytest.approx((250 / 255 - 0.5) / 0.5, rel=1e-5)
    assert big.polygon.equals(shapely.box(200, 200, 600, 400))  # x0, y0, x1, y1 level-0
    assert big.score > found[1].score > found[2].score


def test_the_same_from_a_geojson_annotation_and_a_store(prediction, tmp_path):
    ann = _annotation()
    store = AnnotationStore.create(tmp_path / "store", ann, SLIDE, slide_mpp=0.5, mpp=1.0)
    from napari_msunet.io.vectorise import export_mask

    gj = export_mask(ann, tmp_path / "a.geojson", {"Gland": 1}, downsample=2)
    for annotation in (store, gj):
        found = find_missing(
            prediction / "probabilities.ome.zarr",
            annotation,
            slide_shape=SLIDE,
            slide_mpp=0.5,
            level=0,
        )
        assert [c.bbox for c in found] == [_box(MISSED), _box((200, 260, 530, 560)), _box(SMALL)]


def test_coarse_level_and_slide_from_the_manifest(prediction):
    (prediction / "prediction.json").write_text(
        json.dumps(
            {
                "format": "napari-msunet-prediction",
                "labels": "labels.ome.zarr",
                "slide": {"shape": list(SLIDE), "mpp": 0.5},
                "output": {"shape": list(PRED), "level0_downsample": [2.0, 2.0]},
            }
        )
    )
    try:
        found = find_missing(
            prediction / "probabilities.ome.zarr",
            prediction / "annotation.ome.zarr",
            coarse_mpp=8.0,
            min_area_um2=2000,
        )
    finally:
        (prediction / "prediction.json").unlink()
    assert len(found) == 1  # the small ones fall under 2000 µm²
    (c,) = found
    assert c.level == 3  # 8 µm/px
    y, x, h, w = c.bbox
    by, bx, bh, bw = _box(MISSED)
    # a coarse pixel is 16 level-0 px; mean-downsampled edges count only when fully inside
    assert by <= y <= by + 16
    assert bx <= x <= bx + 16
    assert bh - 32 <= h <= bh
    assert bw - 32 <= w <= bw


def test_threshold_and_rejections(prediction):
    path = prediction / "probabilities.ome.zarr"
    kw = {"slide_shape": SLIDE, "slide_mpp": 0.5, "level": 0}
    found = find_missing(path, prediction / "annotation.ome.zarr", threshold=0.1, **kw)
    assert _box(UNSURE) in [c.bbox for c in found]  # w_bs 0.18 passes a 0.1 threshold
    rejected = [{"bbox": list(_box(MISSED)), "label": 1}]
    assert is_rejected(found[0], rejected)
    kept = find_missing(path, prediction / "annotation.ome.zarr", rejected=rejected, **kw)
    assert _box(MISSED) not in [c.bbox for c in kept]
    assert len(kept) == 2


def test_accept_adds_the_predicted_region_and_records_it(prediction, tmp_path):
    store = AnnotationStore.create(
        tmp_path / "store", _annotation(), SLIDE, slide_mpp=0.5, mpp=1.0, classes=NAMES
    )
    before = np.asarray(open_mask(store.mask_path).levels[0])
    found = find_missing(prediction / "probabilities.ome.zarr", store, level=3, min_area_um2=2000)
    edit = accept_candidate(store, found[0], prediction / "labels.ome.zarr")
    after = np.asarray(open_mask(store.mask_path).levels[0])
    expected = before.copy()
    y0, y1, x0, x1 = MISSED
    expected[y0:y1, x0:x1] = 1  # the prediction's own boundary, not the coarse one
    np.testing.assert_array_equal(after, expected)
    ry, rx, rh, rw = edit.region
    by, bx, bh, bw = _box(MISSED)
    assert ry <= by
    assert rx <= bx
    assert ry + rh >= by + bh
    assert rx + rw >= bx + bw
    assert store.regions() == [edit.region]
    # accepted: it is no longer missing
    again = find_missing(prediction / "probabilities.ome.zarr", store, level=0)
    assert _box(MISSED) not in [c.bbox for c in again]


def _big_prediction(root, side):
    fg = da.full((side, side), 20, dtype=np.uint8, chunks=512)
    fg[side // 4 : side // 2, side // 4 : side // 2] = 250
    probs = da.stack([(255 - fg).astype(np.uint8), fg])
    path = root / f"p{side}.ome.zarr"
    write_ome_zarr(path, probs, mpp=1.0, class_names=NAMES, chunk=512)
    return path


def test_memory_does_not_grow_with_the_slide(tmp_path):
    peaks = []
    for side in (2048, 4096):
        path = _big_prediction(tmp_path, side)
        empty = da.zeros((side, side), np.uint8, chunks=512)
        tracemalloc.start()
        try:
            found = find_missing(path, empty, level=0, window=512)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert len(found) == 1
        assert found[0].area_px == (side // 4) ** 2
    assert peaks[1] < 1.5 * peaks[0]  # 4x the area, about the same memory


def test_slivers_along_the_annotation_are_boundary_disagreements(tmp_path):
    fg = np.full((200, 200), 20, np.uint8)
    fg[48:112, 48:112] = 250  # the model's region is 2 px wider than the annotated one
    fg[150:190, 120:180] = 250  # a missed region touching an annotated one on one side
    path = tmp_path / "p.ome.zarr"
    write_ome_zarr(path, np.stack([255 - fg, fg]), mpp=1.0, class_names=NAMES, chunk=64)
    ann = np.zeros((200, 200), np.uint8)
    ann[50:110, 50:110] = 1
    ann[150:190, 100:120] = 1
    kw = {"level": 0, "window": 64}
    assert [c.bbox for c in find_missing(path, ann, **kw)] == [(150, 120, 40, 60)]
    loose = find_missing(path, ann, max_edge_fraction=1.0, **kw)
    assert (48, 48, 64, 64) in [c.bbox for c in loose]  # the ring, when asked for
