"""Rasterising annotations: pixel-centre convention, levels, overlaps, laziness."""

from __future__ import annotations

import pickle
import time
import warnings

import dask
import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon

from napari_msunet.io.annotations import Annotation, AnnotationSet, AnnotationWarning
from napari_msunet.io.rasterise import Rasteriser, rasterise, rasterise_array


def brute_force(annotations: AnnotationSet, shape, d, labels=None) -> np.ndarray:
    """Reference: test every pixel centre with shapely, painting in order."""
    labels = labels or annotations.class_to_label
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    out = np.zeros(shape, dtype=np.uint8)
    for a in annotations:
        inside = shapely.contains_xy(a.geometry, (cols + 0.5) * d, (rows + 0.5) * d)
        out[inside] = labels[a.class_name]
    return out


def random_annotations(rng: np.random.Generator, n: int, extent: float) -> AnnotationSet:
    """Star-shaped polygons, some with holes, some multipolygons, overlapping freely."""
    anns = []
    for k in range(n):
        centre = rng.uniform(0, extent, 2)
        radius = rng.uniform(extent / 40, extent / 4)
        m = int(rng.integers(3, 40))
        angle = np.sort(rng.uniform(0, 2 * np.pi, m))
        r = radius * rng.uniform(0.3, 1.0, m)
        geom = Polygon(np.c_[centre[0] + r * np.cos(angle), centre[1] + r * np.sin(angle)])
        geom = shapely.make_valid(geom)
        if k % 3 == 1:
            geom = geom.difference(shapely.Point(*centre).buffer(radius / 5))
        if k % 4 == 2:
            geom = geom.union(shapely.box(*(centre + radius * 1.5), *(centre + radius * 1.8)))
        geom = geom if isinstance(geom, Polygon | MultiPolygon) else None
        if geom is not None and not geom.is_empty:
            anns.append(Annotation(geom, "ABC"[k % 3]))
    return AnnotationSet.from_annotations(anns)


def test_pixel_centre_convention_at_level_0():
    # a square with vertices on pixel edges covers exactly its pixels
    square = AnnotationSet.from_annotations([Annotation(shapely.box(2, 3, 6, 8), "A")])
    mask = rasterise_array(square, (10, 10))
    expected = np.zeros((10, 10), np.uint8)
    expected[3:8, 2:6] = 1
    np.testing.assert_array_equal(mask, expected)
    # centres exactly on an outline: inside on the left/top edge, outside on the right/bottom
    half = AnnotationSet.from_annotations([Annotation(shapely.box(2.5, 3.5, 5.5, 7.5), "A")])
    expected = np.zeros((10, 10), np.uint8)
    expected[3:7, 2:5] = 1
    np.testing.assert_array_equal(rasterise_array(half, (10, 10)), expected)


def test_hole_stays_empty_and_multipolygon_parts_filled():
    outer = shapely.box(0, 0, 40, 40).difference(shapely.box(10, 10, 30, 30))
    multi = MultiPolygon([shapely.box(50, 0, 60, 10), shapely.box(70, 20, 80, 30)])
    anns = AnnotationSet.from_annotations([Annotation(outer, "A"), Annotation(multi, "B")])
    mask = rasterise_array(anns, (40, 80))
    assert (mask[10:30, 10:30] == 0).all()
    assert (mask[0:10, 0:40] == 1).all()
    assert (mask[0:10, 50:60] == 2).all()
    assert (mask[20:30, 70:80] == 2).all()
    assert mask.sum() == (40 * 40 - 20 * 20) + 2 * 2 * 100


@pytest.mark.parametrize("d", [1, 2, 4, 2.5, 3.7, 0.5])
def test_matches_a_brute_force_centre_test(d):
    anns = random_annotations(np.random.default_rng(int(d * 10)), 12, 300)
    shape = (int(np.ceil(300 / d)), int(np.ceil(320 / d)))
    np.testing.assert_array_equal(rasterise_array(anns, (300, 320), d), brute_force(anns, shape, d))


def test_level_0_and_downsample_4_agree():
    # vertices on multiples of 4: each level-2 pixel is exactly a 4x4 block of level 0
    rng = np.random.default_rng(3)
    anns = []
    for k in range(10):
        x0, y0 = rng.integers(0, 60, 2) * 4
        x1, y1 = x0 + rng.integers(1, 30) * 4, y0 + rng.integers(1, 30) * 4
        anns.append(Annotation(shapely.box(x0, y0, x1, y1), "AB"[k % 2]))
    anns = AnnotationSet.from_annotations(anns)
    level0 = rasterise_array(anns, (400, 400))
    level2 = rasterise_array(anns, (400, 400), 4)
    assert level2.shape == (100, 100)
    np.testing.assert_array_equal(level0, np.kron(level2, np.ones((4, 4), np.uint8)))
    # free-form regions: the two levels agree up to the outline pixels
    free = AnnotationSet.from_annotations(
        [Annotation(shapely.Point(*rng.uniform(50, 350, 2)).buffer(40), "A") for _ in range(6)]
    )
    fine = rasterise_array(free, (400, 400)) > 0
    coarse = np.kron(rasterise_array(free, (400, 400), 4), np.ones((4, 4), np.uint8)) > 0
    assert (fine & coarse).sum() / (fine | coarse).sum() > 0.95


@pytest.mark.parametrize(("d", "chunks"), [(1, 64), (2.5, 37), (4, (50, 23))])
def test_chunked_equals_eager(d, chunks):
    anns = random_annotations(np.random.default_rng(7), 15, 500)
    eager = rasterise_array(anns, (500, 450), d)
    lazy = rasterise(anns, (500, 450), d, chunks=chunks)
    assert lazy.shape == eager.shape
    assert lazy.dtype == eager.dtype
    np.testing.assert_array_equal(lazy.compute(), eager)


def test_later_annotations_are_painted_on_top():
    tissue = Annotation(shapely.box(0, 0, 20, 20), "Tissue")
    tumour = Annotation(shapely.box(5, 5, 15, 15), "Tumour")
    anns = AnnotationSet.from_annotations([tissue, tumour])
    mask = rasterise_array(anns, (20, 20))
    assert (mask[5:15, 5:15] == 2).all()
    assert (mask == 1).sum() == 400 - 100
    reversed_ = AnnotationSet.from_annotations([tumour, tissue], anns.classes)
    assert (rasterise_array(reversed_, (20, 20)) == 1).all()
    # a class mapped to 0 erases what lies below it
    erased = rasterise_array(anns, (20, 20), labels={"Tissue": 1, "Tumour": 0})
    assert (erased[5:15, 5:15] == 0).all()
    assert (erased == 1).sum() == 300


def test_label_mapping_dtype_and_missing_classes():
    anns = AnnotationSet.from_annotations(
        [Annotation(shapely.box(0, 0, 4, 4), "A"), Annotation(shapely.box(4, 0, 8, 4), "B")]
    )
    mask = rasterise_array(anns, (4, 8), labels={"A": 300, "B": 7})
    assert mask.dtype == np.uint16
    assert (mask[:, :4] == 300).all()
    assert (mask[:, 4:] == 7).all()
    with pytest.warns(AnnotationWarning, match=r"\['B'\]"):
        only_a = rasterise_array(anns, (4, 8), labels={"A": 1})
    assert only_a.dtype == np.uint8
    assert only_a[:, 4:].max() == 0
    with pytest.raises(ValueError, match="cannot hold"):
        rasterise_array(anns, (4, 8), labels={"A": 300, "B": 1}, dtype=np.uint8)


def test_empty_outside_and_level_shape():
    assert rasterise_array(AnnotationSet(), (10, 12)).sum() == 0
    outside = AnnotationSet.from_annotations([Annotation(shapely.box(-50, -50, -10, -10), "A")])
    assert rasterise_array(outside, (10, 12)).sum() == 0
    anns = AnnotationSet.from_annotations([Annotation(shapely.box(-5, -5, 200, 200), "A")])
    # a pyramid that rounds level sizes down: 101 / 2 -> 50
    mask = rasterise_array(anns, (101, 101), 2, level_shape=(50, 50))
    assert mask.shape == (50, 50)
    assert mask.all()
    assert rasterise(anns, (101, 101), 2).shape == (51, 51)
    with pytest.raises(ValueError, match="downsample"):
        rasterise(anns, (10, 10), 0)


def test_indexing_a_rasteriser():
    anns = random_annotations(np.random.default_rng(11), 6, 100)
    raster = Rasteriser(anns, (100, 100))
    full = raster[:, :]
    np.testing.assert_array_equal(raster[10:40, 5:60], full[10:40, 5:60])
    np.testing.assert_array_equal(raster[7], full[7])
    np.testing.assert_array_equal(raster[-3, 2:90:3], full[-3, 2:90:3])
    np.testing.assert_array_equal(raster[50:10], full[50:10])
    with pytest.raises(IndexError):
        raster[..., 3]
    with pytest.raises(IndexError):
        raster[100]


def test_rasteriser_pickles_for_distributed_workers():
    anns = random_annotations(np.random.default_rng(5), 6, 100)
    raster = Rasteriser(anns, (100, 100), 1.5)
    clone = pickle.loads(pickle.dumps(raster))
    np.testing.assert_array_equal(clone.region(0, 0, 67, 67), raster.region(0, 0, 67, 67))


def test_whole_slide_mask_is_lazy_and_chunks_are_independent(monkeypatch):
    # a 100k x 100k slide with a few large regions and many small ones
    rng = np.random.default_rng(0)
    anns = [Annotation(shapely.Point(50_000, 50_000).buffer(30_000, 64), "Tissue")]
    for x, y in rng.uniform(0, 100_000, (2000, 2)):
        anns.append(Annotation(shapely.Point(x, y).buffer(40, 8), "Cell"))
    anns = AnnotationSet.from_annotations(anns)
    calls: list[tuple[int, int, int, int]] = []
    region = Rasteriser.region

    def spy(self, y, x, height, width):
        calls.append((y, x, height, width))
        return region(self, y, x, height, width)

    monkeypatch.setattr(Rasteriser, "region", spy)
    start = time.perf_counter()
    mask = rasterise(anns, (100_000, 100_000), chunks=1024)
    assert time.perf_counter() - start < 1.0
    assert mask.shape == (100_000, 100_000)
    assert mask.numblocks == (98, 98)
    assert calls == []  # building the array rasterised nothing
    with dask.config.set(scheduler="synchronous"):
        block = mask.blocks[48, 48].compute()
    assert calls == [(48 * 1024, 48 * 1024, 1024, 1024)]
    assert block.shape == (1024, 1024)
    assert block.dtype == np.uint8
    assert block[512, 512] in (1, 2)  # inside the tissue
    np.testing.assert_array_equal(block, brute_force_window(anns, 48 * 1024, 48 * 1024, 1024))
    # a small window of the lazy array computes only the chunk that holds it
    calls.clear()
    with dask.config.set(scheduler="synchronous"):
        window = mask[70_000:70_010, 1000:1020].compute()
    assert calls == [(68 * 1024, 0, 1024, 1024)]
    np.testing.assert_array_equal(
        window, Rasteriser(anns, (100_000, 100_000))[70_000:70_010, 1000:1020]
    )


def brute_force_window(anns: AnnotationSet, y: int, x: int, size: int) -> np.ndarray:
    rows, cols = np.mgrid[y : y + size, x : x + size]
    out = np.zeros((size, size), np.uint8)
    box = shapely.box(x, y, x + size, y + size)
    for a in anns:
        if a.geometry.intersects(box):
            out[shapely.contains_xy(a.geometry, cols + 0.5, rows + 0.5)] = anns.class_to_label[
                a.class_name
            ]
    return out


def test_no_warnings_for_clean_input():
    anns = random_annotations(np.random.default_rng(9), 10, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rasterise(anns, (200, 200), 2).compute()


def test_overlaps_painted_in_bounded_batches(monkeypatch):
    import napari_msunet.io.rasterise as module

    monkeypatch.setattr(module, "_PAINT_BATCH", 100)  # force many batches
    anns = random_annotations(np.random.default_rng(21), 20, 120)
    np.testing.assert_array_equal(
        rasterise_array(anns, (120, 120)), brute_force(anns, (120, 120), 1)
    )
