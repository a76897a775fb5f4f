"""Fuzz tests of the parsers of user files (issue 12): GeoJSON, label masks, model headers.

Every parser of a file a user hands us must either succeed or raise one of the project's
errors (:class:`~napari_msunet.errors.MsunetError` subclasses, which the CLI and the GUI turn
into a message); never a bare ``TypeError``, ``KeyError``, ``RecursionError``, ... from deep
inside. Hypothesis generates JSON-ish documents, mutates valid files (values replaced, keys
dropped, bytes cut and flipped) and writes masks of odd dtypes, shapes and values.

The runs are seeded (``derandomize=True``) and short (a few hundred examples each, a few
seconds in all), so CI is deterministic; for a longer hunt set ``FUZZ_EXAMPLES=5000`` (and
``FUZZ_RANDOM=1`` for fresh random inputs).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_msunet.errors import MsunetError
from napari_msunet.io.annotations import AnnotationSet, AnnotationWarning
from napari_msunet.io.geojson import parse_geojson, read_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.rasterise import rasterise_array

_N = int(os.environ.get("FUZZ_EXAMPLES", "0"))
_RANDOM = bool(os.environ.get("FUZZ_RANDOM"))  # set it to explore beyond the fixed seed


def fuzz(n: int):
    """Seeded, deadline-free settings; ``n`` examples unless FUZZ_EXAMPLES overrides."""
    return settings(
        max_examples=_N or n,
        derandomize=not _RANDOM,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


# --------------------------------------------------------------------------- JSON-ish values

_KEYS = [
    "type",
    "features",
    "geometry",
    "geometries",
    "coordinates",
    "properties",
    "id",
    "objectType",
    "classification",
    "name",
    "names",
    "color",
    "colorRGB",
]
_TYPES = [
    "Feature",
    "FeatureCollection",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
    "Point",
    "LineString",
    "MultiPoint",
    "Circle",
    "PathAnnotationObject",
    "annotation",
]
_NUMBERS = st.one_of(
    st.integers(-300, 300),
    st.integers(),
    st.integers(-(2**80), 2**80),
    st.floats(),  # NaN, inf, subnormals, 1.8e308
    st.sampled_from([0, -1, 1e308, -1e308, 1.7976931348623157e308, 1e13, 1e16, 5e-324]),
)
_SCALARS = st.one_of(
    st.none(), st.booleans(), _NUMBERS, st.text(max_size=6), st.sampled_from(_TYPES)
)
JSONISH = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=4)), inner, max_size=5),
    ),
    max_leaves=24,
)


def _position() -> st.SearchStrategy:
    coord = st.one_of(st.integers(-20, 120), st.floats(-20, 120), _NUMBERS)
    return st.lists(coord, min_size=2, max_size=3)


def _ring() -> st.SearchStrategy:
    return st.lists(_position(), min_size=0, max_size=7)


_GEOMETRY = st.recursive(
    st.one_of(
        st.fixed_dictionaries(
            {"type": st.just("Polygon"), "coordinates": st.lists(_ring(), max_size=3)}
        ),
        st.fixed_dictionaries(
            {
                "type": st.just("MultiPolygon"),
                "coordinates": st.lists(st.lists(_ring(), max_size=2), max_size=3),
            }
        ),
        st.fixed_dictionaries(
            {"type": st.sampled_from(["Point", "LineString"]), "coordinates": JSONISH}
        ),
        st.none(),
        JSONISH,
    ),
    lambda inner: st.fixed_dictionaries(
        {"type": st.just("GeometryCollection"), "geometries": st.lists(inner, max_size=3)}
    ),
    max_leaves=6,
)
_CLASSIFICATION = st.one_of(
    st.none(),
    st.text(max_size=5),
    st.fixed_dictionaries(
        {"name": st.one_of(st.text(max_size=5), JSONISH)},
        optional={
            "color": st.one_of(st.lists(st.integers(-2, 300), max_size=4), JSONISH),
            "colorRGB": st.one_of(st.integers(), JSONISH),
            "names": JSONISH,
        },
    ),
    JSONISH,
)
_FEATURE = st.fixed_dictionaries(
    {"type": st.just("Feature"), "geometry": _GEOMETRY},
    optional={
        "id": st.one_of(st.sampled_from(["PathAnnotationObject", "abc"]), JSONISH),
        "properties": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={
                    "objectType": st.one_of(st.sampled_from(["annotation", "detection"]), JSONISH),
                    "classification": _CLASSIFICATION,
                    "name": JSONISH,
                },
            ),
            JSONISH,
        ),
    },
)
GEOJSONISH = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("FeatureCollection"), "features": st.lists(_FEATURE, max_size=4)}
    ),
    st.lists(_FEATURE, max_size=3),
    _FEATURE,
    _GEOMETRY,
    JSONISH,
)

VALID_GEOJSON: dict[str, Any] = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "id": "8f2a6b1c-55d3-4a0e-9d7e-0c4b1f6d2e11",
            "geometry": {
                "type": "Polygon",
                "coordinates": [
                    [[10, 10], [90, 10], [90, 90], [10, 90], [10, 10]],
                    [[30, 30], [30, 60], [60, 60], [60, 30], [30, 30]],
                ],
            },
            "properties": {
                "objectType": "annotation",
                "name": "tumour 1",
                "classification": {"name": "Tumor", "color": [200, 0, 0]},
            },
        },
        {
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [
                    [[[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]]],
                    [[[70, 70], [130, 70], [100, 130], [70, 70]]],
                ],
            },
            "properties": {"classification": {"names": ["Stroma", "x"], "colorRGB": -16711936}},
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "GeometryCollection",
                "geometries": [
                    {"type": "Polygon", "coordinates": [[[0, 0], [9, 9], [9, 0], [0, 9], [0, 0]]]},
                    {"type": "Point", "coordinates": [5, 5]},
                ],
            },
            "properties": {"objectType": "detection"},
        },
    ],
}


@st.composite
def mutated(draw, doc: Any) -> Any:
    """``doc`` with a few values replaced, dropped, duplicated or wrapped, at random places."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        holder, key = None, None
        node = doc
        while isinstance(node, dict | list) and node and draw(st.booleans()):
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = draw(st.sampled_from(keys))
            holder, node = node, node[key]
        if holder is None:
            continue
        action = draw(st.sampled_from(["replace", "drop", "wrap", "number", "repeat"]))
        if action == "replace":
            holder[key] = draw(JSONISH)
        elif action == "drop":
            del holder[key]
        elif action == "wrap":
            holder[key] = [holder[key]]
        elif action == "number":
            holder[key] = draw(_NUMBERS)
        elif isinstance(holder, list):
            holder.extend([holder[key]] * draw(st.integers(1, 3)))
    return doc


@st.composite
def corrupted_text(draw, text: str) -> str:
    """``text`` with a few character-level edits: cuts, insertions and replaced tokens."""
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 20)))
        insert = draw(
            st.one_of(
                st.text(max_size=4),
                st.sampled_from(
                    ["1e999", "NaN", "-Infinity", "9" * 5000, "[" * 3000, "{", '"', "\\ud800"]
                ),
            )
        )
        text = text[:i] + insert + text[j:]
    return text


def _outcome(fn, *args, **kwargs) -> tuple[Any, MsunetError | None]:
    """``(result, None)`` or ``(None, error)`` for one of the project's errors; anything
    else propagates and fails the test."""
    try:
        return fn(*args, **kwargs), None
    except MsunetError as exc:
        return None, exc


def _check_annotations(result: Any, slide_shape: tuple[int, int] | None) -> None:
    """A successful parse gives valid, non-empty polygons that the rasteriser can paint."""
    assert isinstance(result, AnnotationSet)
    for ann in result:
        assert ann.geometry.is_valid
        assert ann.geometry.area > 0
        if slide_shape is not None:
            x0, y0, x1, y1 = ann.geometry.bounds
            assert min(x0, y0) >= 0
            assert x1 <= slide_shape[1]
            assert y1 <= slide_shape[0]
        assert np.isfinite(shapely.get_coordinates(ann.geometry)).all()
    rasterise_array(result, slide_shape or (128, 128))


def _parse(data: Any, slide_shape: tuple[int, int] | None) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result, error = _outcome(
            parse_geojson, data, source="fuzz.geojson", slide_shape=slide_shape
        )
    if error is not None:
        assert len(str(error)) < 2000, str(error)[:300]
        return
    # numpy / shapely overflow RuntimeWarnings would mean arithmetic on absurd values
    others = [w for w in caught if not issubclass(w.category, AnnotationWarning)]
    assert not others, [f"{w.category.__name__}: {w.message}" for w in others]
    _check_annotations(result, slide_shape)


_SLIDES = st.sampled_from([None, (100, 100), (64, 128)])


@fuzz(300)
@given(data=GEOJSONISH, slide_shape=_SLIDES)
def test_fuzz_parse_geojson_generated(data, slide_shape):
    _parse(data, slide_shape)


@fuzz(300)
@given(data=mutated(VALID_GEOJSON), slide_shape=_SLIDES)
def test_fuzz_parse_geojson_mutated(data, slide_shape):
    _parse(data, slide_shape)


@fuzz(150)
@given(text=corrupted_text(json.dumps(VALID_GEOJSON)), slide_shape=_SLIDES)
def test_fuzz_read_geojson_corrupted_file(text, slide_shape):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.geojson"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AnnotationWarning)
            result, error = _outcome(read_geojson, path, slide_shape=slide_shape)
        if error is not None:
            assert str(error).startswith(str(path))
            return
        _check_annotations(result, slide_shape)


# --------------------------------------------------------------------------- label masks

_DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64"]
_DTYPES += ["float32", "float64", "float16", "complex64"]


@st.composite
def mask_arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(_DTYPES)))
    shape = tuple(
        draw(
            st.one_of(
                st.lists(st.integers(1, 40), min_size=2, max_size=2),
                st.lists(st.integers(1, 6), min_size=1, max_size=4),
                st.tuples(st.integers(1, 20), st.integers(1, 20), st.sampled_from([1, 2, 3, 4])),
            )
        )
    )
    kind = draw(st.sampled_from(["zeros", "random", "extremes"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if kind == "zeros":
            return np.zeros(shape, dtype)
        if kind == "extremes":
            return rng.choice(np.array([info.min, info.max, 0], dtype), size=shape)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    values = rng.normal(0, 1e3, shape)
    if kind == "extremes":
        values = rng.choice(np.array([np.nan, np.inf, -np.inf, 0, 1]), size=shape)
    return values.astype(dtype)


def _write_png(arr: np.ndarray, path: Path) -> bool:
    """Save ``arr`` as PNG if Pillow can; return whether it did."""
    from PIL import Image

    try:
        img = Image.fromarray(arr)
        img.save(path, format="PNG")
    except Exception:  # setting up the input, not what is tested
        return False
    return True


def _write_tiff(arr: np.ndarray, path: Path, tiled: bool) -> bool:
    import tifffile

    try:
        if tiled and arr.ndim >= 2 and arr.shape[0] >= 16 and arr.shape[1] >= 16:
            tifffile.imwrite(path, arr, tile=(16, 16))
        else:
            tifffile.imwrite(path, arr)
    except Exception:  # setting up the input, not what is tested
        return False
    return True


@st.composite
def damage(draw, data: bytes) -> bytes:
    """Cut the file short or overwrite a few bytes (or leave it intact)."""
    what = draw(st.sampled_from(["intact", "intact", "truncate", "flip", "garbage"]))
    if what == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if what == "flip" and data:
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] = draw(st.integers(0, 255))
        return bytes(buf)
    if what == "garbage":
        return draw(st.binary(max_size=300))
    return data


def _open_and_read(path: Path) -> None:
    def read(path: Path) -> list[np.ndarray]:
        # a damaged header may declare a huge size: read a corner, as a chunked reader would
        return [np.asarray(level[:64, :64]) for level in open_mask(path).levels]

    levels, error = _outcome(read, path)
    if error is not None:
        assert str(error).startswith(str(path)), str(error)[:300]
        return
    for level in levels:
        assert level.ndim == 2
        assert level.dtype.kind in "ub"


@fuzz(150)
@given(
    arr=mask_arrays(),
    fmt=st.sampled_from(["png", "tif", "tif-tiled", "png-as-tif", "tif-as-png"]),
    data=st.data(),
)
def test_fuzz_open_mask(arr, fmt, data):
    # Pillow and tifffile warn about damaged tags and odd layouts: expected here
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tmp = Path(tmp)
        writer_ext = "png" if fmt.startswith("png") else "tif"
        written = tmp / f"written.{writer_ext}"
        if writer_ext == "png":
            ok = _write_png(arr, written)
        else:
            ok = _write_tiff(arr, written, tiled=fmt == "tif-tiled")
        raw = written.read_bytes() if ok else b""
        ext = {"png-as-tif": "tif", "tif-as-png": "png"}.get(fmt, writer_ext)
        path = tmp / f"mask.{ext}"
        path.write_bytes(data.draw(damage(raw)))
        _open_and_read(path)


# --------------------------------------------------------------------------- model headers


@pytest.fixture(scope="module")
def valid_header() -> dict[str, Any]:
    from napari_msunet.models import ModelHeader
    from napari_msunet.models.config import ModelConfig

    config = ModelConfig(widths=(6, 12, 24), n_classes=3)
    header = ModelHeader(
        architecture="msunet",
        config=config,
        class_names=("background", "gland", "lumen"),
        class_colours=((0, 0, 0), (0, 120, 255), (255, 0, 0)),
        input_um_per_px=0.92,
        norm_mean=(0.7, 0.55, 0.7),
        norm_std=(0.15, 0.2, 0.15),
        tile_size=512,
        training={"epochs": 3, "losses": {"fuzzy_boundary": True}, "parent_model": None},
    )
    return header.to_dict()


def _header_file(path: Path, text: str) -> None:
    import torch
    from safetensors.torch import save_file

    from napari_msunet.models.checkpoint import METADATA_KEY

    save_file({"w": torch.zeros(2)}, str(path), metadata={METADATA_KEY: text})


_HEADER_VALUES = st.one_of(
    JSONISH,
    st.lists(st.text(max_size=3), max_size=4),
    st.lists(st.lists(st.integers(-300, 300), max_size=4), max_size=4),
)


@st.composite
def mutated_header(draw, doc: dict[str, Any]) -> Any:
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 3))):
        section = doc
        key = draw(st.sampled_from(sorted(section)))
        if key == "config" and isinstance(section["config"], dict) and draw(st.booleans()):
            section = section["config"]
            if not section:
                continue
            key = draw(st.sampled_from(sorted(section)))
        action = draw(st.sampled_from(["replace", "drop", "number", "add"]))
        if action == "replace":
            section[key] = draw(_HEADER_VALUES)
        elif action == "drop":
            del section[key]
        elif action == "number":
            section[key] = draw(_NUMBERS)
        else:
            section[draw(st.text(max_size=5))] = draw(JSONISH)
    return doc


@fuzz(300)
@given(data=st.data())
def test_fuzz_model_header_from_dict(data, valid_header):
    from napari_msunet.models import ModelHeader

    doc = data.draw(st.one_of(mutated_header(valid_header), mutated(valid_header), JSONISH))
    header, error = _outcome(ModelHeader.from_dict, doc)
    if error is not None:
        assert len(str(error)) < 2000, str(error)[:300]
        return
    assert ModelHeader.from_dict(json.loads(header.to_json())) == header


@fuzz(100)
@given(data=st.data())
def test_fuzz_read_header_file(data, valid_header):
    from napari_msunet.models import read_header

    text = data.draw(
        st.one_of(
            mutated_header(valid_header).map(lambda d: json.dumps(d)),
            corrupted_text(json.dumps(valid_header)),
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        _header_file(path, text)
        raw = path.read_bytes()
        path.write_bytes(data.draw(damage(raw)))
        _, error = _outcome(read_header, path)
    if error is not None:
        assert str(error).startswith(str(path)), str(error)[:300]
        assert len(str(error)) < 2000, str(error)[:300]


# --------------------------------------------------------------------------- what they found

_SQUARE = [[0, 0], [5, 0], [5, 5], [0, 5], [0, 0]]
_BOWTIE = [[0, 0], [9, 9], [9, 0], [0, 9], [0, 0]]


@pytest.mark.parametrize(
    ("data", "error"),
    [
        # TypeError: unhashable type 'list' (the type looked up in a set)
        ([{"type": "Feature", "geometry": {"type": []}}], "unsupported type \\[\\]"),
        # TypeError: unhashable type 'list' (the id looked up in the legacy ids)
        (
            {
                "type": "Feature",
                "id": [1],
                "geometry": {"type": "Polygon", "coordinates": [_SQUARE]},
            },
            None,
        ),
        # OverflowError: int too large to convert to float
        (
            {"type": "Polygon", "coordinates": [[[0, 0], [10**400, 0], [1, 1]]]},
            "NaN or infinite",
        ),
        # GEOSException: TopologyException (union of an invalid bow-tie with another part)
        (
            {
                "type": "GeometryCollection",
                "geometries": [
                    {"type": "Polygon", "coordinates": [_BOWTIE]},
                    {"type": "Polygon", "coordinates": [_SQUARE]},
                ],
            },
            None,
        ),
        # a 9,000-character message quoting the whole value
        (
            {"type": "Feature", "properties": {"objectType": [[[[1]]]] * 1000}, "geometry": None},
            "objectType",
        ),
    ],
)
def test_geojson_fuzz_findings(data, error):
    """Inputs the fuzzers found that raised bare Python errors; now a result or our error."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnnotationWarning)
        if error is None:
            result = parse_geojson(data, source="found.geojson", slide_shape=(100, 100))
            _check_annotations(result, (100, 100))
            assert len(result) == 1
        else:
            with pytest.raises(MsunetError, match=error) as info:
                parse_geojson(data, source="found.geojson")
            assert len(str(info.value)) < 300


def test_model_header_fuzz_finding(valid_header):
    """``"architecture": []`` raised TypeError (unhashable) instead of ConfigError."""
    from napari_msunet.errors import ConfigError
    from napari_msunet.models import ModelHeader

    with pytest.raises(ConfigError, match="architecture"):
        ModelHeader.from_dict({**valid_header, "architecture": []})


def test_truncated_tiff_mask_fuzz_finding(tmp_path):
    """A TIFF mask cut short opened fine, then its chunks raised tifffile's TiffFileError
    from deep inside dask when read; now an AnnotationError naming the file."""
    import tifffile

    from napari_msunet.errors import AnnotationError

    full = tmp_path / "full.tif"
    tifffile.imwrite(full, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), tile=(16, 16))
    cut = tmp_path / "cut.tif"
    raw = full.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    mask = open_mask(cut)  # the header is intact: opening is lazy and succeeds
    with pytest.raises(AnnotationError, match=r"cut\.tif.*corrupt or truncated"):
        np.asarray(mask.levels[0])


def test_deep_model_header_fuzz_finding(tmp_path):
    """A header of 3000 nested lists raised RecursionError from the JSON decoder."""
    from napari_msunet.errors import ModelFileError
    from napari_msunet.models import read_header

    path = tmp_path / "deep.safetensors"
    _header_file(path, "[" * 3000 + "]" * 3000)
    with pytest.raises(ModelFileError, match=r"deep\.safetensors.*nested too deeply"):
        read_header(path)
