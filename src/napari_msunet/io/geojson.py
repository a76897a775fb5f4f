"""QuPath GeoJSON: read exports into an :class:`AnnotationSet`, write annotations back.

QuPath writes coordinates as **level-0 pixel coordinates (x, y)** of the slide, and so does
this module; :mod:`napari_msunet.io.rasterise` turns annotations into label masks at any level
and :mod:`napari_msunet.io.vectorise` turns masks back into annotations.

What is read
    A ``FeatureCollection``, a bare list of Features, a single Feature (or a bare geometry).
    ``properties.objectType`` (``"annotation"``, ``"detection"``, ``"cell"``, ...; QuPath 0.2
    wrote the type as the feature ``id``, e.g. ``"PathAnnotationObject"``, which is understood
    too) and ``properties.classification`` with ``name`` (or ``names``, joined with ``": "`` as
    QuPath shows derived classes) and ``color`` ``[r, g, b]`` or ``colorRGB`` (a packed signed
    ARGB integer, e.g. ``-16711936`` for green). Other properties (``isLocked``,
    ``measurements``, ...) are ignored. Features without a classification get the class
    :data:`UNCLASSIFIED`, which is written back without a classification, as QuPath does.

Geometries
    ``Polygon`` and ``MultiPolygon`` (with holes) are kept. From a ``GeometryCollection`` the
    polygonal parts are kept (unioned). ``Point``/``MultiPoint``/``LineString``/
    ``MultiLineString`` features have no area, so a label mask cannot hold them: they are
    skipped with an :class:`AnnotationWarning` (QuPath point counts and rulers are common in
    real projects and must not make a file unreadable). Features with a ``null`` geometry are
    skipped with a warning too. Any other geometry type is an :class:`AnnotationError`.

Repairs (each with one :class:`AnnotationWarning` that counts the features concerned)
    Positions farther than :data:`FAR_LIMIT` (10^13 px) from the origin lie on no slide
    (a broken export, a typo, a hostile file): each is pulled in along the line from the
    origin to that distance. Computing with them as they are (up to 1.8e308) overflows, and
    a polygon covering half the slide was then dropped as "wholly outside"; pulled in, the
    part of the region over the slide survives, moved by less than ``2 * side**2 / 1e13`` px
    (0.2 px for a slide of 10^6 px a side). Invalid polygons (self-intersections, holes
    outside their shell, ...) are repaired with :func:`shapely.make_valid`, keeping the
    polygonal part. When the slide's level-0 shape is given, geometries reaching outside the
    slide are clipped to it, and those wholly outside are dropped. Polygons that have no area
    left are dropped.

Errors (:class:`~napari_msunet.errors.AnnotationError`, naming the file and the feature)
    A missing, empty, non-UTF-8 or non-JSON file; JSON nested deeper than Python's decoder
    allows; a structure that is not GeoJSON; GeometryCollections nested more than
    :data:`MAX_COLLECTION_DEPTH` deep; coordinates that are wrongly nested, not numbers, NaN
    or infinite; rings with fewer than 3 positions; unknown geometry types; malformed
    classifications or colours. Values quoted in messages are abbreviated, so a hostile file
    cannot produce a huge message.

Writing
    QuPath 0.4+ style: a ``FeatureCollection`` of Features with a UUID ``id``, ``objectType``
    and ``classification`` ``{"name", "color"}``; written to a temporary file and renamed, and
    never over an existing file unless asked.
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import AnnotationError, WriterError, brief
from napari_msunet.io.annotations import (
    UNCLASSIFIED,
    Annotation,
    AnnotationSet,
    AnnotationWarning,
    Color,
    default_color,
)

__all__ = [
    "FAR_LIMIT",
    "MAX_COLLECTION_DEPTH",
    "annotations_to_geojson",
    "parse_geojson",
    "read_geojson",
    "write_geojson",
]

FAR_LIMIT = 1e13
"""Positions farther than this (level-0 px, in x or y) from the origin are pulled in to it.

No slide is wider than ~10^6 px, so such a position is on no slide; left as it is, a value
near the float maximum overflows in the geometry operations. 10^13 keeps the error of the
part over the slide below 0.2 px for slides up to 10^6 px a side, while float64 still
resolves 0.002 px at that distance."""

MAX_COLLECTION_DEPTH = 32
"""GeometryCollections nested deeper than this are refused (QuPath never nests them)."""

# QuPath 0.2 wrote the object type as the feature id.
_LEGACY_OBJECT_IDS = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
    "TMACoreObject": "tma_core",
}
_NO_AREA_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString"}
_MAX_LISTED = 5  # features named in one warning before "..."


def _text(value: Any) -> str:
    """A string/number from the file as text; anything else as a short repr."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value) if abs(value) < 1e30 else brief(value)
    return brief(value)


# --------------------------------------------------------------------------- reading


class _BadFeature(Exception):
    """Internal: a feature is malformed; turned into an AnnotationError naming the file."""


def read_geojson(
    path: str | Path,
    *,
    slide_shape: tuple[int, int] | None = None,
    object_types: Iterable[str] | None = None,
) -> AnnotationSet:
    """Read a QuPath GeoJSON export.

    Parameters
    ----------
    path
        The ``.geojson``/``.json`` file.
    slide_shape
        Level-0 ``(height, width)`` of the slide the annotations belong to. When given,
        geometries are clipped to the slide (with a warning), so that nothing reaches outside.
    object_types
        Keep only these QuPath object types (e.g. ``{"annotation"}``); ``None`` keeps all.

    Returns
    -------
    AnnotationSet
        The annotations in file order and their class table.

    Raises
    ------
    AnnotationError
        The file is missing, empty, not JSON or not (QuPath) GeoJSON; see the module docstring.
    """
    path = Path(path)
    if not path.exists():
        raise AnnotationError(path, "file does not exist")
    if not path.is_file():
        raise AnnotationError(path, "is not a file")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AnnotationError(path, f"cannot be read ({exc.strerror or exc})") from exc
    if not raw.strip():
        raise AnnotationError(path, "file is empty; expected QuPath GeoJSON")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AnnotationError(path, "is not a UTF-8 text file; expected QuPath GeoJSON") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            path,
            f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            "is the file truncated or not a GeoJSON export?",
        ) from exc
    except RecursionError:
        raise AnnotationError(
            path,
            "is JSON nested too deeply to be decoded (QuPath GeoJSON is nested a few levels); "
            "is the file broken or not a GeoJSON export?",
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise AnnotationError(path, f"is not valid GeoJSON ({exc})") from None
    return parse_geojson(data, source=path, slide_shape=slide_shape, object_types=object_types)


def parse_geojson(
    data: Any,
    *,
    source: str | Path | None = None,
    slide_shape: tuple[int, int] | None = None,
    object_types: Iterable[str] | None = None,
) -> AnnotationSet:
    """Interpret already-decoded GeoJSON (``json.load`` output); see :func:`read_geojson`.

    ``source`` names the origin in error messages and warnings.
    """
    where = Path(source) if source is not None else None
    features = _features(data, where)
    types = None if object_types is None else set(object_types)
    skipped: dict[str, list[str]] = {}
    kept: list[tuple[str, BaseGeometry, dict[str, Any]]] = []
    far: list[str] = []
    for i, feature in enumerate(features):
        label = _describe(i, feature)
        flags: set[str] = set()
        try:
            attrs = _properties(feature)
            if types is not None and attrs["object_type"] not in types:
                continue
            geometry, dropped = _geometry(feature.get("geometry"), "geometry", flags)
        except _BadFeature as exc:
            raise AnnotationError(where, f"{label}: {exc}") from None
        if "far" in flags:
            far.append(label)
        if dropped:
            kinds = "/".join(sorted(dropped))
            reason = f"skipped parts or features without area ({kinds})"
            skipped.setdefault(reason, []).append(label)
        if geometry is None or geometry.is_empty:
            if not dropped:
                skipped.setdefault("skipped features with no geometry or no area", []).append(label)
            continue
        kept.append((label, geometry, attrs))

    if far:
        _warn(
            where,
            f"pulled in positions far outside any slide (beyond {FAR_LIMIT:.0e} px) to "
            f"{FAR_LIMIT:.0e} px from the origin",
            far,
        )
    geometries = _repair([g for _, g, _ in kept], [lab for lab, _, _ in kept], where)
    if slide_shape is not None:
        geometries = _clip(geometries, [lab for lab, _, _ in kept], slide_shape, where)
    annotations = []
    for (_, _, attrs), geometry in zip(kept, geometries, strict=True):
        if geometry is None:
            continue
        annotations.append(Annotation(geometry=geometry, **attrs))
    for reason, labels in skipped.items():
        _warn(where, reason, labels)
    return AnnotationSet.from_annotations(annotations, source=where)


def _warn(where: Path | None, reason: str, labels: Sequence[str]) -> None:
    listed = ", ".join(labels[:_MAX_LISTED]) + (", ..." if len(labels) > _MAX_LISTED else "")
    prefix = f"{where}: " if where is not None else ""
    warnings.warn(
        f"{prefix}{reason}: {len(labels)} feature(s) ({listed})", AnnotationWarning, stacklevel=4
    )


def _features(data: Any, where: Path | None) -> list[dict[str, Any]]:
    """Return the list of Feature objects of any accepted top-level layout."""
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection":
            features = data.get("features")
            if not isinstance(features, list):
                raise AnnotationError(where, "FeatureCollection has no 'features' list")
        elif kind == "Feature":
            features = [data]
        elif (isinstance(kind, str) and "coordinates" in data) or kind == "GeometryCollection":
            features = [{"type": "Feature", "geometry": data, "properties": {}}]
        else:
            raise AnnotationError(
                where,
                f"top-level object has type {brief(kind)}; expected a FeatureCollection, a "
                "Feature or a list of Features (a QuPath GeoJSON export)",
            )
    else:
        raise AnnotationError(
            where,
            f"top level is a JSON {type(data).__name__}; expected a FeatureCollection, a Feature "
            "or a list of Features (a QuPath GeoJSON export)",
        )
    for i, feature in enumerate(features):
        if not isinstance(feature, dict):
            raise AnnotationError(
                where, f"feature #{i} is a JSON {type(feature).__name__}, not an object"
            )
        kind = feature.get("type", "Feature" if "geometry" in feature else None)
        if kind != "Feature":
            raise AnnotationError(where, f"feature #{i} has type {brief(kind)}, expected 'Feature'")
        if "geometry" not in feature:
            raise AnnotationError(where, f"feature #{i} has no 'geometry' member")
    return features


def _describe(i: int, feature: dict[str, Any]) -> str:
    props = feature.get("properties")
    name = props.get("name") if isinstance(props, dict) else None
    fid = feature.get("id")
    if isinstance(name, str):
        return f"feature #{i} {brief(name)}"
    return f"feature #{i} (id {_text(fid)})" if fid is not None else f"feature #{i}"


def _properties(feature: dict[str, Any]) -> dict[str, Any]:
    """Return the :class:`Annotation` keyword arguments from a feature's properties."""
    props = feature.get("properties")
    if props is None:
        props = {}
    if not isinstance(props, dict):
        raise _BadFeature(f"'properties' is a {type(props).__name__}, not an object")
    fid = feature.get("id")
    object_type = props.get("objectType")
    if object_type is None:
        object_type = _LEGACY_OBJECT_IDS.get(fid, "annotation") if isinstance(fid, str) else None
        object_type = object_type or "annotation"
    if not isinstance(object_type, str) or not object_type:
        raise _BadFeature(f"objectType must be a string, got {brief(object_type)}")
    name = props.get("name")
    if name is not None and not isinstance(name, str):
        name = _text(name)
    class_name, color = _classification(props.get("classification"))
    # GeoJSON ids are strings or numbers; any other value is not kept (a new one is written)
    valid_id = isinstance(fid, str | int | float) and not isinstance(fid, bool)
    return {
        "class_name": class_name,
        "color": color,
        "object_type": object_type,
        "name": name,
        "id": _text(fid) if valid_id and fid not in _LEGACY_OBJECT_IDS else None,
    }


def _classification(value: Any) -> tuple[str, Color | None]:
    if value is None:
        return UNCLASSIFIED, None
    if isinstance(value, str):  # written by some tools other than QuPath
        return (value or UNCLASSIFIED), None
    if not isinstance(value, dict):
        raise _BadFeature(f"classification must be an object, got {type(value).__name__}")
    name = value.get("name")
    if name is None and isinstance(value.get("names"), list):
        name = ": ".join(_text(n) for n in value["names"])
    if name is None or name == "":
        name = UNCLASSIFIED
    if not isinstance(name, str):
        raise _BadFeature(f"classification name must be a string, got {brief(name)}")
    if "color" in value and value["color"] is not None:
        color = value["color"]
        if (
            not isinstance(color, list)
            or len(color) not in (3, 4)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in color)
            or not all(0 <= v <= 255 for v in color)
        ):
            raise _BadFeature(
                f"classification color must be [r, g, b] with 0-255, got {brief(color)}"
            )
        return name, (color[0], color[1], color[2])
    if "colorRGB" in value and value["colorRGB"] is not None:
        packed = value["colorRGB"]
        if not isinstance(packed, int) or isinstance(packed, bool):
            raise _BadFeature(f"classification colorRGB must be an integer, got {brief(packed)}")
        packed &= 0xFFFFFF  # QuPath writes a signed 32-bit ARGB integer
        return name, ((packed >> 16) & 255, (packed >> 8) & 255, packed & 255)
    return name, None


def _ring(coords: Any, where: str, flags: set[str]) -> np.ndarray:
    """Validate one ring's positions and return them as an (n, 2) float array.

    Positions beyond :data:`FAR_LIMIT` are pulled in (``"far"`` is added to ``flags``).
    """
    if not isinstance(coords, list):
        raise _BadFeature(f"{where} is a {type(coords).__name__}, expected a list of [x, y]")
    try:
        arr = np.asarray(coords, dtype=np.float64)
    except OverflowError:  # an integer beyond the float range (> 1.8e308)
        raise _BadFeature(f"{where} has NaN or infinite coordinates (too large)") from None
    except (TypeError, ValueError):
        raise _BadFeature(
            f"{where} has wrongly nested or non-numeric coordinates; expected [[x, y], ...]"
        ) from None
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise _BadFeature(
            f"{where} has coordinates nested {arr.ndim} deep with shape {arr.shape}; "
            "expected a list of [x, y] positions"
        )
    if not np.isfinite(arr).all():
        raise _BadFeature(f"{where} has NaN or infinite coordinates")
    arr = arr[:, :2]
    reach = np.abs(arr).max(axis=1)
    far = reach > FAR_LIMIT
    if far.any():
        # along the ray from the origin, so that the part over the slide barely moves
        arr = arr.copy()
        arr[far] *= (FAR_LIMIT / reach[far])[:, None]
        flags.add("far")
    closed = len(arr) > 1 and bool((arr[0] == arr[-1]).all())
    if len(arr) - closed < 3:
        raise _BadFeature(f"{where} has {len(arr)} positions; a polygon ring needs at least 3")
    return arr


def _polygon(coords: Any, where: str, flags: set[str]) -> Polygon:
    if not isinstance(coords, list):
        raise _BadFeature(f"{where} is a {type(coords).__name__}, expected a list of rings")
    if not coords:
        return Polygon()
    rings = [_ring(r, f"{where} ring {k}", flags) for k, r in enumerate(coords)]
    return Polygon(rings[0], rings[1:])


def _geometry(
    geom: Any, where: str, flags: set[str], depth: int = 0
) -> tuple[BaseGeometry | None, set[str]]:
    """Parse a GeoJSON geometry; return its polygonal part and the skipped non-areal types.

    ``depth`` counts the GeometryCollections around ``geom``; the recursion stops at
    :data:`MAX_COLLECTION_DEPTH`, far below Python's recursion limit.
    """
    if geom is None:
        return None, set()
    if not isinstance(geom, dict):
        raise _BadFeature(f"{where} is a {type(geom).__name__}, not a GeoJSON geometry object")
    kind = geom.get("type")
    if kind == "GeometryCollection":
        if depth >= MAX_COLLECTION_DEPTH:
            raise _BadFeature(
                f"geometry has GeometryCollections nested more than {MAX_COLLECTION_DEPTH} "
                "deep; QuPath never nests them: flatten the collection"
            )
        parts = geom.get("geometries")
        if not isinstance(parts, list):
            raise _BadFeature(f"{where}: GeometryCollection has no 'geometries' list")
        polygons, dropped = [], set()
        for k, part in enumerate(parts):
            g, d = _geometry(part, f"{where} part {k}", flags, depth + 1)
            dropped |= d
            if g is not None and not g.is_empty:
                polygons.append(g)
        # union needs valid parts (GEOS raises a TopologyException on a bow-tie)
        polygons = [p if p.is_valid else _polygonal(shapely.make_valid(p)) for p in polygons]
        polygons = [p for p in polygons if p is not None]
        if not polygons:
            return None, dropped
        merged = polygons[0] if len(polygons) == 1 else _polygonal(shapely.union_all(polygons))
        return merged, dropped
    if isinstance(kind, str) and kind in _NO_AREA_TYPES:  # (a list type is unhashable)
        return None, {kind}
    if kind not in ("Polygon", "MultiPolygon"):
        raise _BadFeature(
            f"{where} has unsupported type {brief(kind)}; expected Polygon or MultiPolygon "
            "(Points and LineStrings are skipped)"
        )
    coords = geom.get("coordinates")
    if kind == "Polygon":
        return _polygon(coords, where, flags), set()
    if not isinstance(coords, list):
        raise _BadFeature(f"{where}: MultiPolygon coordinates must be a list of polygons")
    parts = [_polygon(p, f"{where} polygon {k}", flags) for k, p in enumerate(coords)]
    parts = [p for p in parts if not p.is_empty]
    return MultiPolygon(parts) if parts else None, set()


def _polygonal(geom: BaseGeometry | None) -> Polygon | MultiPolygon | None:
    """Return the polygonal part of ``geom`` (``None`` when it has no area)."""
    if geom is None or geom.is_empty:
        return None
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    parts = [
        p for p in shapely.get_parts(geom) if isinstance(p, Polygon | MultiPolygon) and p.area > 0
    ]
    if not parts:
        return None
    merged = parts[0] if len(parts) == 1 else shapely.union_all(parts)
    return merged if isinstance(merged, Polygon | MultiPolygon) else _polygonal(merged)


def _repair(
    geoms: list[BaseGeometry], labels: list[str], where: Path | None
) -> list[Polygon | MultiPolygon | None]:
    """Repair invalid geometries with ``make_valid`` and drop those without area."""
    out: list[Polygon | MultiPolygon | None] = list(geoms)
    if not geoms:
        return out
    invalid = np.flatnonzero(~shapely.is_valid(np.asarray(geoms, dtype=object)))
    repaired, emptied = [], []
    for k in invalid:
        reason = shapely.is_valid_reason(geoms[k])
        out[k] = _polygonal(shapely.make_valid(geoms[k]))
        (emptied if out[k] is None else repaired).append(f"{labels[k]}: {reason}")
    for k, g in enumerate(out):
        if g is not None and not (g.area > 0):
            out[k] = None
            emptied.append(labels[k])
    if repaired:
        _warn(where, "repaired invalid (e.g. self-intersecting) polygons with make_valid", repaired)
    if emptied:
        _warn(where, "dropped polygons with no area", emptied)
    return out


def _clip(
    geoms: list[Polygon | MultiPolygon | None],
    labels: list[str],
    slide_shape: tuple[int, int],
    where: Path | None,
) -> list[Polygon | MultiPolygon | None]:
    """Clip geometries to the slide's level-0 bounds ``(0, 0, width, height)``."""
    height, width = (int(v) for v in slide_shape)
    bounds = shapely.box(0, 0, width, height)
    out = list(geoms)
    clipped, dropped = [], []
    inside = shapely.covered_by(np.asarray(geoms, dtype=object), bounds)
    for k in np.flatnonzero(~inside):
        if geoms[k] is None:
            continue
        out[k] = _polygonal(shapely.intersection(geoms[k], bounds))
        (dropped if out[k] is None else clipped).append(labels[k])
    if clipped:
        _warn(where, f"clipped polygons reaching outside the {width} x {height} slide", clipped)
    if dropped:
        _warn(where, f"dropped polygons wholly outside the {width} x {height} slide", dropped)
    return out


# --------------------------------------------------------------------------- writing


def _ring_coords(ring: Any) -> list[list[float]] | list[list[int]]:
    xy = shapely.get_coordinates(ring)
    integral = np.round(xy)
    if np.array_equal(integral, xy) and np.abs(xy).max(initial=0) < 2**53:
        return integral.astype(np.int64).tolist()
    return xy.tolist()


def _geometry_json(geom: Polygon | MultiPolygon) -> dict[str, Any]:
    geom = shapely.orient_polygons(geom)  # RFC 7946: exteriors counter-clockwise

    def rings(p: Polygon) -> list[Any]:
        return [_ring_coords(p.exterior), *(_ring_coords(r) for r in p.interiors)]

    if isinstance(geom, Polygon):
        return {"type": "Polygon", "coordinates": rings(geom)}
    return {"type": "MultiPolygon", "coordinates": [rings(p) for p in geom.geoms]}


def annotations_to_geojson(annotations: AnnotationSet | Iterable[Annotation]) -> dict[str, Any]:
    """Return a QuPath (0.4+) style GeoJSON ``FeatureCollection`` as a dict.

    Each annotation becomes one Feature with a random UUID ``id`` (unless it has one),
    ``objectType`` and a ``classification`` with the class ``name`` and ``color`` (from the
    class table, else the annotation's own colour, else the palette). :data:`UNCLASSIFIED`
    annotations are written without a classification.
    """
    if not isinstance(annotations, AnnotationSet):
        annotations = AnnotationSet.from_annotations(annotations)
    table = {c.name: c for c in annotations.classes}
    features = []
    for a in annotations:
        props: dict[str, Any] = {"objectType": a.object_type}
        if a.class_name != UNCLASSIFIED:
            info = table.get(a.class_name)
            color = info.color if info is not None else a.color or default_color(1)
            props["classification"] = {"name": a.class_name, "color": list(color)}
        if a.name is not None:
            props["name"] = a.name
        features.append(
            {
                "type": "Feature",
                "id": a.id or str(uuid.uuid4()),
                "geometry": _geometry_json(a.geometry),
                "properties": props,
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(
    annotations: AnnotationSet | Iterable[Annotation],
    path: str | Path,
    *,
    overwrite: bool = False,
) -> Path:
    """Write annotations as QuPath GeoJSON, atomically.

    The file is written under a temporary name in the same folder and renamed when complete,
    so a crash never leaves a half-written file under ``path``.

    Raises
    ------
    WriterError
        ``path`` exists and ``overwrite`` is false, or the folder cannot be written.
    """
    text = json.dumps(annotations_to_geojson(annotations), separators=(",", ":"))
    path = Path(path)
    if not path.parent.is_dir():
        raise WriterError(path, f"cannot be written (no folder {path.parent})")
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)
