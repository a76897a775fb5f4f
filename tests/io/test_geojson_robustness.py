"""Hostile GeoJSON (issue 12, items 8 and 10): absurd coordinates and deep nesting.

Item 8: a polygon with one coordinate at 1e308 that covers half the slide was dropped as
"wholly outside" (float overflow in the clipping). Far positions are now pulled in towards the
origin, so the part of the region over the slide survives, with a warning naming the feature.

Item 10: a GeometryCollection nested ~900 deep raised a bare ``RecursionError`` (in the JSON
decoder and in the parser); it is now an :class:`AnnotationError` naming the file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from napari_msunet.errors import AnnotationError
from napari_msunet.io.annotations import AnnotationWarning
from napari_msunet.io.geojson import FAR_LIMIT, MAX_COLLECTION_DEPTH, parse_geojson, read_geojson
from napari_msunet.io.rasterise import rasterise_array

SLIDE = (100, 100)  # (height, width)


def _collection(path: Path, ring: list[list[float]], name: str = "tumour") -> Path:
    data = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "a1",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "name": name},
            }
        ],
    }
    path.write_text(json.dumps(data))
    return path


def _read(path: Path, slide_shape=SLIDE):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        anns = read_geojson(path, slide_shape=slide_shape)
    return anns, caught


# --------------------------------------------------------------------------- item 8


@pytest.mark.parametrize("far", [1e308, 1.7976931348623157e308, 1e30, 1e16])
def test_far_vertex_keeps_the_visible_half(tmp_path, far):
    """The left half of the slide, one corner moved to y = far: the left half survives."""
    ring = [[0, 0], [50, 0], [50, far], [0, 100], [0, 0]]
    anns, caught = _read(_collection(tmp_path / "a.geojson", ring))
    assert len(anns) == 1
    mask = rasterise_array(anns, SLIDE)
    expected = np.zeros(SLIDE, np.uint8)
    expected[:, :50] = 1
    np.testing.assert_array_equal(mask, expected)
    texts = [str(w.message) for w in caught]
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], texts
    assert any("far" in t and "'tumour'" in t for t in texts), texts
    assert not any("wholly outside" in t for t in texts), texts


@pytest.mark.parametrize("far", [1e308, -1e308])
def test_far_vertex_whole_slide(tmp_path, far):
    """A vertex far to the right (or left) along the top edge: nothing inside is lost."""
    ring = [[0, 0], [abs(far), 0], [50, 100], [0, 100], [0, 0]]
    if far < 0:  # mirrored: far to the left, the region spans the slide from x = 100
        ring = [[100, 0], [far, 0], [50, 100], [100, 100], [100, 0]]
    anns, _ = _read(_collection(tmp_path / "a.geojson", ring))
    mask = rasterise_array(anns, SLIDE)
    assert mask.all()


def test_far_vertex_without_slide_shape(tmp_path):
    """Without a slide the positions are still pulled in to FAR_LIMIT, finite and usable."""
    ring = [[0, 0], [50, 0], [50, 1e308], [0, 100], [0, 0]]
    anns, caught = _read(_collection(tmp_path / "a.geojson", ring), slide_shape=None)
    (ann,) = anns
    x0, y0, x1, y1 = ann.geometry.bounds
    assert (x0, y0, x1) == (0, 0, 50)
    assert y1 == pytest.approx(FAR_LIMIT)
    assert any(issubclass(w.category, AnnotationWarning) for w in caught)
    mask = rasterise_array(anns, SLIDE)
    assert mask[:, :50].all()
    assert not mask[:, 50:].any()


def test_non_finite_coordinates_are_refused(tmp_path):
    """NaN/Infinity (which Python's JSON accepts) stay a clear error naming the feature."""
    path = tmp_path / "inf.geojson"
    path.write_text(
        '{"type": "Feature", "properties": {"name": "bad"}, "geometry": {"type": "Polygon",'
        ' "coordinates": [[[0, 0], [Infinity, 0], [5, 5], [0, 0]]]}}'
    )
    with pytest.raises(AnnotationError, match=r"inf\.geojson.*'bad'.*NaN or infinite"):
        read_geojson(path, slide_shape=SLIDE)
    path.write_text(path.read_text().replace("Infinity", "1e999"))  # overflows to inf
    with pytest.raises(AnnotationError, match="NaN or infinite"):
        read_geojson(path, slide_shape=SLIDE)


def test_ordinary_coordinates_untouched():
    """Large but plausible coordinates (a 10^6 px slide) are not moved and not warned about."""
    ring = [[0, 0], [1_000_000, 0], [1_000_000, 1_000_000], [0, 0]]
    data = {
        "type": "Feature",
        "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (ann,) = parse_geojson(data)
    assert ann.geometry.bounds == (0, 0, 1_000_000, 1_000_000)


# --------------------------------------------------------------------------- item 10


def _nested(depth: int) -> str:
    text = json.dumps({"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]})
    for _ in range(depth):
        text = '{"type": "GeometryCollection", "geometries": [' + text + "]}"
    return '{"type": "Feature", "properties": {}, "geometry": ' + text + "}"


@pytest.mark.parametrize("depth", [MAX_COLLECTION_DEPTH + 1, 900, 5000])
def test_deep_geometry_collection_is_a_clear_error(tmp_path, depth):
    path = tmp_path / "deep.geojson"
    path.write_text(_nested(depth))
    with pytest.raises(AnnotationError, match=r"deep\.geojson.*nested") as info:
        read_geojson(path, slide_shape=SLIDE)
    assert len(str(info.value)) < 500


def test_moderate_nesting_still_reads(tmp_path):
    path = tmp_path / "ok.geojson"
    path.write_text(_nested(MAX_COLLECTION_DEPTH))
    (ann,) = read_geojson(path, slide_shape=SLIDE)
    assert ann.geometry.area == 50


def test_deep_collection_given_as_python_objects():
    """parse_geojson on an already-decoded, deeply nested dict refuses it too."""
    geom: dict = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 0]]]}
    for _ in range(3000):
        geom = {"type": "GeometryCollection", "geometries": [geom]}
    with pytest.raises(AnnotationError, match="nested"):
        parse_geojson({"type": "Feature", "properties": {}, "geometry": geom}, source="x.geojson")


def test_deep_json_elsewhere_is_a_clear_error(tmp_path):
    """Deep nesting anywhere in the file (here in the properties) is refused, not a traceback."""
    path = tmp_path / "props.geojson"
    path.write_text(
        '{"type": "Feature", "geometry": null, "properties": {"m": '
        + "[" * 100_000
        + "]" * 100_000
        + "}}"
    )
    with pytest.raises(AnnotationError, match=r"props\.geojson.*nested"):
        read_geojson(path)


# --------------------------------------------------------------------------- the CLI, end to end


def _msunet(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", *map(str, args)],
        capture_output=True,
        text=True,
    )


def test_cli_rasterize_far_vertex_and_deep_collection(tmp_path):
    """`msunet rasterize` keeps the visible half (item 8) and refuses deep nesting (item 10)."""
    from PIL import Image

    from napari_msunet.io.masks import open_mask

    slide = tmp_path / "slide.png"
    Image.fromarray(np.full((100, 100, 3), 200, np.uint8)).save(slide)
    far = _collection(tmp_path / "far.geojson", [[0, 0], [50, 0], [50, 1e308], [0, 100], [0, 0]])
    proc = _msunet("rasterize", far, "--slide", slide, "--out", tmp_path / "far.ome.tif")
    assert proc.returncode == 0, proc.stderr
    mask = np.asarray(open_mask(tmp_path / "far.ome.tif").levels[0])
    assert mask[:, :50].all()
    assert not mask[:, 50:].any()

    deep = tmp_path / "deep.geojson"
    deep.write_text(_nested(900))
    proc = _msunet("rasterize", deep, "--slide", slide, "--out", tmp_path / "deep.ome.tif")
    assert proc.returncode == 2, proc.stderr
    assert str(deep) in proc.stderr
    assert "nested" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "deep.ome.tif").exists()
