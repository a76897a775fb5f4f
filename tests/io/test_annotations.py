"""QuPath GeoJSON: the annotation data model, reading (with repairs and errors) and writing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon

from napari_msunet.errors import AnnotationError, MsunetError, WriterError
from napari_msunet.io.annotations import (
    UNCLASSIFIED,
    Annotation,
    AnnotationSet,
    AnnotationWarning,
    ClassInfo,
)
from napari_msunet.io.geojson import (
    annotations_to_geojson,
    parse_geojson,
    read_geojson,
    write_geojson,
)

SQUARE = [[10, 10], [90, 10], [90, 90], [10, 90], [10, 10]]
HOLE = [[30, 30], [30, 60], [60, 60], [60, 30], [30, 30]]


def feature(geometry, classification=None, object_type="annotation", **extra):
    """A feature exactly as QuPath 0.4/0.5 exports it."""
    props = {"objectType": object_type}
    if classification is not None:
        props["classification"] = classification
    props.update(extra)
    return {
        "type": "Feature",
        "id": "8f2a6b1c-55d3-4a0e-9d7e-0c4b1f6d2e11",
        "geometry": geometry,
        "properties": props,
    }


def polygon(*rings):
    return {"type": "Polygon", "coordinates": [list(r) for r in rings]}


def write(tmp_path: Path, data, name="annotations.geojson") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


# --------------------------------------------------------------------------- QuPath styles


def test_reads_qupath_04_export(tmp_path):
    data = {
        "type": "FeatureCollection",
        "features": [
            feature(polygon(SQUARE, HOLE), {"name": "Tumor", "color": [200, 0, 0]}),
            feature(
                {
                    "type": "MultiPolygon",
                    "coordinates": [[SQUARE], [[[100, 0], [120, 0], [120, 20]]]],
                },
                {"name": "Stroma", "color": [0, 0, 180]},
                isLocked=True,
                name="stroma 1",
            ),
        ],
    }
    result = read_geojson(write(tmp_path, data))
    assert len(result) == 2
    assert result.source == tmp_path / "annotations.geojson"
    tumor, stroma = result
    assert tumor.class_name == "Tumor"
    assert tumor.color == (200, 0, 0)
    assert tumor.object_type == "annotation"
    assert tumor.id == "8f2a6b1c-55d3-4a0e-9d7e-0c4b1f6d2e11"
    assert isinstance(tumor.geometry, Polygon)
    assert len(tumor.geometry.interiors) == 1
    assert tumor.geometry.area == 80 * 80 - 30 * 30
    assert isinstance(stroma.geometry, MultiPolygon)
    assert stroma.name == "stroma 1"
    assert result.classes == (
        ClassInfo("Tumor", 1, (200, 0, 0)),
        ClassInfo("Stroma", 2, (0, 0, 180)),
    )
    assert result.class_to_label == {"Tumor": 1, "Stroma": 2}


def test_reads_old_style_color_rgb(tmp_path):
    data = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": "PathAnnotationObject",
                "geometry": polygon(SQUARE),
                "properties": {
                    "classification": {"name": "Germinal centre", "colorRGB": -16711936},
                    "isLocked": False,
                    "measurements": [],
                },
            },
            {
                "type": "Feature",
                "id": "PathDetectionObject",
                "geometry": polygon(HOLE),
                "properties": {"classification": {"name": "Sinus", "colorRGB": -3670016}},
            },
        ],
    }
    first, second = read_geojson(write(tmp_path, data))
    assert first.color == (0, 255, 0)
    assert first.object_type == "annotation"
    assert first.id is None  # the legacy id is a type name, not an identity
    assert second.color == (200, 0, 0)  # -3670016 == 0xFFC80000
    assert second.object_type == "detection"


def test_bare_list_single_feature_and_unclassified(tmp_path):
    f = feature(polygon(SQUARE))
    assert len(read_geojson(write(tmp_path, [f, f], "list.geojson"))) == 2
    single = read_geojson(write(tmp_path, f, "single.json"))
    assert single[0].class_name == UNCLASSIFIED
    assert single.classes[0].name == UNCLASSIFIED
    # an unclassified annotation is written back without a classification
    out = annotations_to_geojson(single)
    assert "classification" not in out["features"][0]["properties"]


def test_bare_geometry_is_one_unclassified_annotation():
    (a,) = parse_geojson(polygon(SQUARE))
    assert a.class_name == UNCLASSIFIED
    assert a.geometry.area == 80 * 80


def test_derived_class_names_and_object_type_filter(tmp_path):
    data = [
        feature(polygon(SQUARE), {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}),
        feature(polygon(HOLE), {"name": "Cell"}, object_type="detection"),
    ]
    path = write(tmp_path, data)
    everything = read_geojson(path)
    assert [a.class_name for a in everything] == ["Tumor: Positive", "Cell"]
    only = read_geojson(path, object_types={"annotation"})
    assert [a.object_type for a in only] == ["annotation"]
    assert [a.object_type for a in everything.filter(object_types=["detection"])] == ["detection"]


def test_class_without_colour_gets_a_palette_colour():
    result = parse_geojson([feature(polygon(SQUARE), {"name": "A"})])
    assert result.classes[0].color == (230, 25, 75)
    assert result[0].color is None


# --------------------------------------------------------------------------- repairs


def test_points_and_lines_are_skipped_with_a_warning(tmp_path):
    data = [
        feature({"type": "Point", "coordinates": [5, 5]}),
        feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}),
        feature({"type": "MultiPoint", "coordinates": [[0, 0], [5, 5]]}),
        feature(None),
        feature(polygon(SQUARE), {"name": "Tumor"}),
    ]
    path = write(tmp_path, data)
    with pytest.warns(AnnotationWarning, match="without area|no geometry") as record:
        result = read_geojson(path)
    assert [a.class_name for a in result] == ["Tumor"]
    assert all(path.name in str(w.message) for w in record)
    assert any("no geometry" in str(w.message) for w in record)


def test_geometry_collection_keeps_polygonal_parts():
    collection = {
        "type": "GeometryCollection",
        "geometries": [
            polygon(SQUARE),
            {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
            polygon([[80, 80], [120, 80], [120, 120], [80, 120]]),
        ],
    }
    with pytest.warns(AnnotationWarning, match="LineString"):
        (a,) = parse_geojson([feature(collection)])
    assert a.geometry.area == pytest.approx(80 * 80 + 40 * 40 - 10 * 10)


def test_self_intersecting_polygon_is_repaired_with_a_warning(tmp_path):
    bowtie = polygon([[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]])
    path = write(tmp_path, [feature(bowtie, {"name": "A"})])
    with pytest.warns(AnnotationWarning, match="make_valid") as record:
        (a,) = read_geojson(path)
    assert path.name in str(record[0].message)
    assert "Self-intersection" in str(record[0].message)
    assert a.geometry.is_valid
    assert a.geometry.area == pytest.approx(50.0)


def test_zero_area_polygon_is_dropped_with_a_warning():
    flat = polygon([[0, 0], [5, 0], [10, 0], [0, 0]])
    with pytest.warns(AnnotationWarning, match="no area"):
        result = parse_geojson([feature(flat), feature(polygon(SQUARE))])
    assert len(result) == 1


def test_clipping_to_the_slide(tmp_path):
    data = [
        feature(polygon([[-10, -10], [50, -10], [50, 50], [-10, 50]]), {"name": "A"}),
        feature(polygon([[500, 500], [600, 500], [600, 600]]), {"name": "A"}),
        feature(polygon(SQUARE), {"name": "B"}),
    ]
    path = write(tmp_path, data)
    with pytest.warns(AnnotationWarning) as record:
        result = read_geojson(path, slide_shape=(100, 200))
    messages = " ".join(str(w.message) for w in record)
    assert "clipped" in messages
    assert "wholly outside" in messages
    assert path.name in messages
    assert len(result) == 2
    assert result[0].geometry.bounds == (0.0, 0.0, 50.0, 50.0)
    # without a slide shape nothing is clipped, and a file inside the slide is silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_geojson(path)[0].geometry.bounds == (-10.0, -10.0, 50.0, 50.0)
        read_geojson(write(tmp_path, data[2:], "inside.geojson"), slide_shape=(100, 100))


def test_3d_positions_and_unclosed_rings_are_accepted():
    ring = [[0, 0, 1], [10, 0, 1], [10, 10, 1], [0, 10, 1]]
    (a,) = parse_geojson(feature(polygon(ring)))
    assert a.geometry.area == 100
    assert not a.geometry.has_z


# --------------------------------------------------------------------------- bad input

BAD_STRUCTURES = {
    "top level number": (42, "top level is a JSON int"),
    "top level string": ('"hello"', "top level is a JSON str"),
    "wrong type": ({"type": "Topology"}, "expected a FeatureCollection"),
    "no features": ({"type": "FeatureCollection"}, "no 'features' list"),
    "feature not object": ({"type": "FeatureCollection", "features": [3]}, "feature #0"),
    "feature wrong type": ([{"type": "Polygon", "coordinates": []}], "expected 'Feature'"),
    "no geometry member": ([{"type": "Feature", "properties": {}}], "no 'geometry'"),
    "geometry not object": ([feature([1, 2])], "not a GeoJSON geometry"),
    "unknown geometry": ([feature({"type": "Circle", "coordinates": [0, 0]})], "'Circle'"),
    "missing geometry type": ([feature({"coordinates": [SQUARE]})], "unsupported type None"),
    "flat nesting": ([feature({"type": "Polygon", "coordinates": SQUARE})], "nested"),
    "deep nesting": ([feature({"type": "Polygon", "coordinates": [[SQUARE]]})], "nested"),
    "ragged": ([feature(polygon([[0, 0], [1, 1, 1, 1], [2, 0]]))], "wrongly nested"),
    "not numbers": ([feature(polygon([[0, 0], ["a", 1], [2, 0]]))], "non-numeric"),
    "ring not list": ([feature({"type": "Polygon", "coordinates": [7]})], "ring 0"),
    "two positions": ([feature(polygon([[0, 0], [1, 1]]))], "at least 3"),
    "multipolygon flat": (
        [feature({"type": "MultiPolygon", "coordinates": 5})],
        "list of polygons",
    ),
    "collection without list": (
        [feature({"type": "GeometryCollection"})],
        "no 'geometries' list",
    ),
    "properties not object": (
        [{"type": "Feature", "geometry": polygon(SQUARE), "properties": [1]}],
        "'properties'",
    ),
    "object type not string": ([feature(polygon(SQUARE), object_type=5)], "objectType"),
    "classification not object": ([feature(polygon(SQUARE), [1])], "classification"),
    "classification name": ([feature(polygon(SQUARE), {"name": 5})], "name must be a string"),
    "colour out of range": (
        [feature(polygon(SQUARE), {"name": "A", "color": [0, 300, 0]})],
        "color",
    ),
    "colour wrong length": ([feature(polygon(SQUARE), {"name": "A", "color": [0, 0]})], "color"),
    "colorRGB not int": (
        [feature(polygon(SQUARE), {"name": "A", "colorRGB": "red"})],
        "colorRGB",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_STRUCTURES))
def test_malformed_structure_names_the_file_and_reason(tmp_path, case):
    data, reason = BAD_STRUCTURES[case]
    path = write(tmp_path, data, f"bad {case}.geojson")
    with pytest.raises(AnnotationError, match=reason) as info:
        read_geojson(path)
    assert f"bad {case}.geojson" in str(info.value)
    assert info.value.path == path
    assert isinstance(info.value, MsunetError)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinite_coordinates(tmp_path, value):
    text = json.dumps([feature(polygon(SQUARE))]).replace("[90, 10]", f"[{value}, 10]", 1)
    path = write(tmp_path, text, "nan.geojson")
    with pytest.raises(AnnotationError, match="NaN or infinite") as info:
        read_geojson(path)
    assert "nan.geojson" in str(info.value)
    assert "feature #0" in str(info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"  \n\t ", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a UTF-8"),
        (b'{"type": "FeatureCollection", "features": [', "not valid JSON"),
        (b"hello world", "not valid JSON"),
    ],
)
def test_unreadable_files(tmp_path, content, reason):
    path = tmp_path / "slide_annotations.geojson"
    path.write_bytes(content)
    with pytest.raises(AnnotationError, match=reason) as info:
        read_geojson(path)
    assert "slide_annotations.geojson" in str(info.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(AnnotationError, match="does not exist") as info:
        read_geojson(tmp_path / "nowhere.geojson")
    assert "nowhere.geojson" in str(info.value)
    with pytest.raises(AnnotationError, match="not a file"):
        read_geojson(tmp_path)


def test_utf8_bom_and_empty_collection(tmp_path):
    path = tmp_path / "bom.geojson"
    path.write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"type": "FeatureCollection", "features": []}).encode()
    )
    result = read_geojson(path)
    assert len(result) == 0
    assert result.classes == ()


def test_parse_errors_without_a_file_have_no_path():
    with pytest.raises(AnnotationError, match="feature #0") as info:
        parse_geojson([feature({"type": "Circle"})])
    assert info.value.path is None


# --------------------------------------------------------------------------- writing


def test_write_and_read_back(tmp_path):
    source = parse_geojson(
        [
            feature(polygon(SQUARE, HOLE), {"name": "Tumor", "color": [200, 0, 0]}, name="T1"),
            feature(polygon([[0.25, 0], [5.5, 0], [5.5, 7.125]]), object_type="detection"),
        ]
    )
    path = write_geojson(source, tmp_path / "out.geojson")
    raw = json.loads(path.read_text())
    assert raw["type"] == "FeatureCollection"
    first = raw["features"][0]
    assert first["properties"] == {
        "objectType": "annotation",
        "classification": {"name": "Tumor", "color": [200, 0, 0]},
        "name": "T1",
    }
    assert first["geometry"]["type"] == "Polygon"
    assert all(isinstance(v, int) for v in first["geometry"]["coordinates"][0][0])
    back = read_geojson(path)
    assert back.classes == source.classes
    for a, b in zip(source, back, strict=True):
        assert a.geometry.equals(b.geometry)
        assert (a.class_name, a.object_type, a.name) == (b.class_name, b.object_type, b.name)
    assert [p.name for p in tmp_path.iterdir()] == ["out.geojson"]  # no temporary left


def test_write_never_overwrites_unless_asked(tmp_path):
    path = tmp_path / "keep.geojson"
    path.write_text("precious")
    annotations = [Annotation(shapely.box(0, 0, 5, 5), "A")]
    with pytest.raises(WriterError, match="already exists") as info:
        write_geojson(annotations, path)
    assert "keep.geojson" in str(info.value)
    assert path.read_text() == "precious"
    write_geojson(annotations, path, overwrite=True)
    assert len(read_geojson(path)) == 1
    with pytest.raises(WriterError, match="cannot be written"):
        write_geojson(annotations, tmp_path / "missing" / "x.geojson")


def test_multipolygon_is_written_as_multipolygon(tmp_path):
    geom = MultiPolygon([shapely.box(0, 0, 2, 2), shapely.box(5, 5, 7, 7)])
    raw = annotations_to_geojson([Annotation(geom, "A", (1, 2, 3))])
    feat = raw["features"][0]
    assert feat["geometry"]["type"] == "MultiPolygon"
    assert feat["properties"]["classification"] == {"name": "A", "color": [1, 2, 3]}
    # RFC 7946 orientation: exterior rings counter-clockwise
    ring = np.array(feat["geometry"]["coordinates"][0][0], dtype=float)
    assert shapely.is_ccw(shapely.linearrings(ring))


# --------------------------------------------------------------------------- data model


def test_data_model_validation():
    with pytest.raises(ValueError, match=">= 1"):
        ClassInfo("A", 0, (1, 2, 3))
    with pytest.raises(ValueError, match="colour"):
        ClassInfo("A", 1, (1, 2))
    with pytest.raises(ValueError, match="Polygon"):
        Annotation(shapely.Point(0, 0).buffer(0), "A")  # empty
    with pytest.raises(ValueError, match="Polygon"):
        Annotation(shapely.LineString([(0, 0), (1, 1)]), "A")
    a = Annotation(shapely.box(0, 0, 1, 1), "A")
    with pytest.raises(ValueError, match="missing"):
        AnnotationSet((a,), ())
    with pytest.raises(ValueError, match="unique"):
        AnnotationSet((), (ClassInfo("A", 1, (0, 0, 0)), ClassInfo("B", 1, (0, 0, 0))))


def test_from_annotations_extends_a_given_table():
    table = (ClassInfo("Tumor", 3, (9, 9, 9)),)
    anns = [
        Annotation(shapely.box(0, 0, 1, 1), "Stroma"),
        Annotation(shapely.box(0, 0, 1, 1), "Tumor"),
        Annotation(shapely.box(0, 0, 1, 1), "Fat", (5, 5, 5)),
    ]
    result = AnnotationSet.from_annotations(anns, table)
    assert result.class_to_label == {"Tumor": 3, "Stroma": 4, "Fat": 5}
    assert result.classes[2].color == (5, 5, 5)
    assert "3 annotations" in repr(result)
    assert result.filter(class_names={"Fat"})[0].class_name == "Fat"
