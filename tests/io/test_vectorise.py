"""Label masks -> annotations and QuPath GeoJSON: exact outlines, round trips, chunking."""

from __future__ import annotations

import json
import warnings

import dask.array as da
import numpy as np
import pytest
import shapely
import zarr

from napari_msunet.errors import WriterError
from napari_msunet.io.annotations import AnnotationSet, AnnotationWarning, ClassInfo
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.rasterise import rasterise, rasterise_array
from napari_msunet.io.vectorise import export_mask, vectorise

CLASSES = (
    ClassInfo("Germinal centre", 1, (0, 200, 0)),
    ClassInfo("Sinus", 2, (0, 0, 200)),
    ClassInfo("Other", 3, (200, 0, 0)),
)
LABELS = {c.name: c.label for c in CLASSES}


def back_to_mask(annotations: AnnotationSet, shape, d=1.0) -> np.ndarray:
    slide = (int(np.ceil(shape[0] * d)), int(np.ceil(shape[1] * d)))
    return rasterise_array(annotations, slide, d, labels=LABELS, level_shape=shape)


def blobs(shape, n, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    mask = np.zeros(shape, np.uint8)
    for _ in range(n):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        r = rng.uniform(3, min(shape) / 4)
        mask[(rows - cy) ** 2 + (cols - cx) ** 2 < r * r] = rng.integers(1, 4)
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_noise_masks_round_trip_exactly(seed):
    # random noise is the worst case: many saddles, holes and diagonal contacts
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 50, 2))
    mask = rng.integers(0, 4, shape).astype(np.uint8)
    d = [1.0, 4.0, 2.5, 3.3, 0.5, 1.0][seed]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = vectorise(mask, CLASSES, d, block=int(rng.integers(2, 30)))
    assert all(a.geometry.is_valid for a in result)
    np.testing.assert_array_equal(back_to_mask(result, shape, d), mask)


def test_regions_are_4_connected_polygons_with_holes():
    mask = np.zeros((12, 12), np.uint8)
    mask[1:9, 1:9] = 1
    mask[3:6, 3:6] = 0  # a hole
    mask[4, 4] = 2  # an island of another class in the hole
    mask[9, 9] = 1  # touches the big region only at a corner: a separate region
    result = vectorise(mask, CLASSES)
    assert [a.class_name for a in result] == ["Germinal centre", "Germinal centre", "Sinus"]
    big, corner, island = (a.geometry for a in result)
    assert big.geom_type == "Polygon"
    assert len(big.interiors) == 1
    assert big.area == 64 - 9
    assert corner.equals(shapely.box(9, 9, 10, 10))
    assert island.equals(shapely.box(4, 4, 5, 5))
    assert len(big.exterior.coords) == 5  # straight runs are single edges
    assert all(a.object_type == "annotation" for a in result)
    assert result.classes == CLASSES
    assert result[0].color == (0, 200, 0)


def test_self_touching_outline_is_valid():
    # one region around a hole that it touches only at a corner (a saddle at (2, 2))
    mask = np.array([[0, 1, 1, 1], [0, 1, 0, 1], [1, 0, 1, 1], [0, 0, 0, 0]], np.uint8)
    result = vectorise(mask, CLASSES)
    assert len(result) == 2  # the loop and the pixel touching it diagonally at (1, 2)
    loop = result[0].geometry
    assert loop.is_valid
    assert len(loop.interiors) == 1
    assert loop.area == 7
    np.testing.assert_array_equal(back_to_mask(result, mask.shape), mask)


@pytest.mark.parametrize("block", [7, 32, 4096])
def test_regions_crossing_block_borders_merge(block):
    mask = blobs((150, 130), 25, seed=1)
    whole = vectorise(mask, CLASSES)
    blocked = vectorise(mask, CLASSES, block=block)
    assert len(blocked) == len(whole)
    for a, b in zip(whole, blocked, strict=True):
        assert a.class_name == b.class_name
        assert a.geometry.equals(b.geometry)
    np.testing.assert_array_equal(back_to_mask(blocked, mask.shape), mask)


def test_dask_and_zarr_masks():
    mask = blobs((200, 170), 30, seed=2)
    expected = vectorise(mask, CLASSES)
    lazy = da.from_array(mask, chunks=(64, 50))
    z = zarr.create_array(store={}, shape=mask.shape, chunks=(48, 48), dtype="uint8")
    z[:] = mask
    for source in (lazy, z):
        result = vectorise(source, CLASSES, 2.0, block=50)
        assert len(result) == len(expected)
        np.testing.assert_array_equal(back_to_mask(result, mask.shape, 2.0), mask)


def test_qupath_round_trip(tmp_path):
    # QuPath export -> rasterise at level 2 -> export -> QuPath -> rasterise: the same mask
    rng = np.random.default_rng(4)
    features = []
    for k in range(30):
        centre = rng.uniform(200, 3800, 2)
        ring = shapely.Point(*centre).buffer(rng.uniform(40, 400), 16)
        if k % 5 == 0:
            ring = ring.difference(shapely.Point(*centre).buffer(30))
        features.append(
            {
                "type": "Feature",
                "id": f"id-{k}",
                "geometry": json.loads(shapely.to_geojson(ring)),
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": CLASSES[k % 3].name, "color": [9, 9, 9]},
                },
            }
        )
    source = tmp_path / "slide.svs.geojson"
    source.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    slide_shape, d = (4000, 4100), 4.0
    first = rasterise(read_geojson(source), slide_shape, d, labels=LABELS).compute()
    exported = export_mask(first, tmp_path / "export.geojson", CLASSES, d)
    raw = json.loads(exported.read_text())
    props = raw["features"][0]["properties"]
    assert props["objectType"] == "annotation"
    assert props["classification"]["name"] in LABELS
    assert all(f["geometry"]["type"] == "Polygon" for f in raw["features"])
    coords = np.array(raw["features"][0]["geometry"]["coordinates"][0])
    assert (coords % 4 == 0).all()  # level-0 pixels: multiples of the downsample
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = rasterise(read_geojson(exported), slide_shape, d, labels=LABELS).compute()
    union = (first > 0) | (second > 0)
    assert ((first == second) & union).sum() / union.sum() >= 0.99
    np.testing.assert_array_equal(second, first)  # in fact exact


def test_export_never_overwrites_and_writes_atomically(tmp_path):
    mask = blobs((40, 40), 5, seed=3)
    path = tmp_path / "out.geojson"
    path.write_text("keep me")
    with pytest.raises(WriterError, match="already exists") as info:
        export_mask(mask, path, CLASSES)
    assert "out.geojson" in str(info.value)
    assert path.read_text() == "keep me"
    export_mask(mask, path, CLASSES, overwrite=True)
    assert len(read_geojson(path)) == len(vectorise(mask, CLASSES))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.geojson"]


def test_unknown_labels_get_generic_names():
    mask = np.zeros((6, 6), np.uint16)
    mask[1:3, 1:3] = 1
    mask[3:5, 3:5] = 700
    with pytest.warns(AnnotationWarning, match=r"\[700\]"):
        result = vectorise(mask, {"A": 1})
    assert [a.class_name for a in result] == ["A", "Class 700"]
    assert result.class_to_label == {"A": 1, "Class 700": 700}


def test_empty_bool_and_bad_masks(tmp_path):
    empty = vectorise(np.zeros((5, 7), np.uint8), CLASSES)
    assert len(empty) == 0
    path = export_mask(np.zeros((5, 7), np.uint8), tmp_path / "empty.geojson", CLASSES)
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    boolean = np.zeros((5, 5), bool)
    boolean[1:4, 1:4] = True
    (a,) = vectorise(boolean, {"Tissue": 1})
    assert a.geometry.equals(shapely.box(1, 1, 4, 4))
    with pytest.raises(ValueError, match="2D"):
        vectorise(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="integer"):
        vectorise(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="negative"):
        vectorise(np.full((2, 2), -1, np.int16))


def test_simplify_keeps_shared_borders():
    mask = blobs((300, 300), 12, seed=5)
    exact = vectorise(mask, CLASSES)
    smooth = vectorise(mask, CLASSES, simplify=1.0)
    assert len(smooth) == len(exact)
    vertices = lambda s: sum(shapely.get_num_coordinates(a.geometry) for a in s)  # noqa: E731
    assert vertices(smooth) < vertices(exact) / 2
    again = back_to_mask(smooth, mask.shape)
    inter = ((again == mask) & (mask > 0)).sum()
    assert inter / ((again > 0) | (mask > 0)).sum() > 0.95
    # neighbours still share their borders: no overlaps between simplified regions
    geoms = [a.geometry for a in smooth]
    overlap = shapely.union_all(geoms).area - sum(g.area for g in geoms)
    assert abs(overlap) < 1e-6
