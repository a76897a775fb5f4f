"""read_geojson_for_slide(): a GeoJSON of another slide is refused, small overhangs clipped."""

from __future__ import annotations

import warnings

import pytest
import shapely

from napari_msunet.errors import AnnotationError
from napari_msunet.io.annotations import Annotation, AnnotationSet, AnnotationWarning
from napari_msunet.io.geojson import write_geojson
from napari_msunet.io.geojson_fit import check_fits_slide, read_geojson_for_slide


def _write(tmp_path, *boxes, name="a.geojson"):
    anns = AnnotationSet.from_annotations([Annotation(shapely.box(*b), "GC") for b in boxes])
    return write_geojson(anns, tmp_path / name)


def test_annotations_on_the_slide_are_read_unchanged(tmp_path):
    path = _write(tmp_path, (10, 10, 100, 50))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        anns = read_geojson_for_slide(path, (200, 300))
    assert len(anns) == 1
    assert anns[0].geometry.bounds == (10, 10, 100, 50)


def test_small_overhang_is_clipped_with_a_warning(tmp_path):
    path = _write(tmp_path, (250, 10, 301, 50))  # 1 px beyond the 300-px width
    with pytest.warns(AnnotationWarning, match="clipped"):
        anns = read_geojson_for_slide(path, (200, 300))
    assert anns[0].geometry.bounds[2] == 300


def test_geojson_of_a_larger_slide_is_refused_naming_the_file(tmp_path):
    path = _write(tmp_path, (10, 10, 100, 50), (900, 700, 1000, 800), name="other.geojson")
    with pytest.raises(AnnotationError, match=r"other\.geojson.*300 x 200"):
        read_geojson_for_slide(path, (200, 300))


def test_negative_coordinates_are_refused():
    anns = AnnotationSet.from_annotations([Annotation(shapely.box(-50, -50, 10, 10), "GC")])
    with pytest.raises(AnnotationError, match="beyond"):
        check_fits_slide(anns, (200, 300), "x.geojson")


def test_empty_file_fits_any_slide(tmp_path):
    path = write_geojson(AnnotationSet.from_annotations([]), tmp_path / "empty.geojson")
    assert len(read_geojson_for_slide(path, (10, 10))) == 0
