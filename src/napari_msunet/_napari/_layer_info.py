"""What a layer of this plugin is: the :class:`LayerInfo` record, read and written only here.

Every layer the plugin makes carries one record in ``layer.metadata["napari_msunet"]``: its
role (:class:`Kind`), the file it shows, the slide it lies on, its µm/px, the model that made
it, its classes, and the few facts of its kind that widgets act on. Widgets find their inputs
by this record, never by layer name, so a user may rename layers freely.

The record is stored as plain JSON values (strings, numbers, lists, dictionaries): napari
copies a layer's metadata (when a layer is duplicated or its state saved), and values such as
``Path`` objects or numpy scalars would not survive that everywhere. :meth:`LayerInfo.as_metadata`
writes it for a new layer's keyword arguments, :func:`set_layer_info` onto an existing layer,
and :func:`layer_info` reads it back, tolerant of layers we did not make (``None``) and of the
``PublicOnlyProxy`` layers napari hands to dock widgets. Nothing else in the plugin touches
``metadata["napari_msunet"]``.

This module imports neither napari nor Qt, so the reader's layer-data helpers that use it stay
free of them too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

__all__ = [
    "KEY",
    "Kind",
    "LayerClass",
    "LayerInfo",
    "kind_of",
    "layer_info",
    "prediction_layers",
    "set_layer_info",
    "unwrap",
]

KEY = "napari_msunet"
"""The key of our record in a layer's metadata (the plugin's name, so no other plugin uses it)."""

Box = tuple[int, int, int, int]
"""``(y, x, h, w)`` in pixels."""


class Kind(StrEnum):
    """The role of a layer: what widgets look for when they list their inputs."""

    SLIDE = "slide"
    """A whole-slide image opened by our reader."""
    PREDICTION = "prediction"
    """A model's label map of a slide (Segment, Fine-tune), growing while it is computed."""
    ANNOTATION = "annotation"
    """An annotation of a slide: a QuPath GeoJSON, or the Review widget's corrected store."""
    LABELS = "labels"
    """A label mask file opened by our reader (e.g. a prediction folder's ``labels.ome.zarr``)."""
    OVERLAY = "overlay"
    """A TP/FP/FN map of a prediction against an annotation (Compare)."""
    ANNOTATION_EDIT = "annotation-edit"
    """One window of the Review widget's store, open for painting."""
    EDIT_RECTANGLES = "edit-rectangles"
    """The Shapes layer where the user draws the region to edit (Review)."""
    CANDIDATES = "candidates"
    """Outlines of suspected missing annotations (Review)."""


class LayerClass(NamedTuple):
    """One class of a label layer: its label value, name and display colour."""

    label: int
    name: str
    color: tuple[int, int, int] | None = None
    """RGB, 0-255; ``None`` when the layer names no colour for it."""


# ---------------------------------------------------------------------------- coercion
def _path(value: Any) -> Path:
    if not isinstance(value, str | Path) or not str(value):
        raise TypeError(f"not a path: {value!r}")
    return Path(value)


def _mpp(value: Any) -> float | None:
    """A positive, finite µm/px; anything else (0, NaN) means "not known"."""
    mpp = float(value)
    return mpp if math.isfinite(mpp) and mpp > 0 else None


def _box(value: Any) -> Box:
    box = tuple(int(v) for v in value)
    if len(box) != 4:
        raise ValueError(f"not (y, x, h, w): {value!r}")
    return box  # type: ignore[return-value]


def _pair(value: Any) -> tuple[str, str]:
    a, b = value
    return str(a), str(b)


def _class(entry: Any) -> LayerClass:
    if isinstance(entry, Mapping):
        label, name, color = entry["label"], entry["name"], entry.get("color")
    else:
        label, name, *rest = entry
        color = rest[0] if rest else None
    rgb = None if color is None else tuple(int(v) for v in list(color)[:3])
    if rgb is not None and len(rgb) != 3:
        raise ValueError(f"not an RGB colour: {color!r}")
    return LayerClass(int(label), str(name), rgb)  # type: ignore[arg-type]


def _classes(value: Any) -> tuple[LayerClass, ...]:
    return tuple(_class(c) for c in value)


def _plain(value: Any) -> Any:
    """``value`` as plain JSON values (lists for tuples, strings for paths), or TypeError."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)  # a numpy scalar
    if callable(item) and getattr(value, "shape", None) == ():
        return _plain(item())
    raise TypeError(f"not a plain JSON value: {value!r}")


#: How each optional field is made from what metadata holds; it raises on a bad value.
_COERCE: dict[str, Callable[[Any], Any]] = {
    "path": _path,
    "slide": _path,
    "mpp": _mpp,
    "mpp_given": _mpp,
    "model": _path,
    "prediction_dir": _path,
    "probabilities": _path,
    "region": _box,
    "store": _path,
    "regions": _path,
    "window": _box,
    "compared": _pair,
}


# ---------------------------------------------------------------------------- the record
@dataclass(frozen=True, kw_only=True)
class LayerInfo:
    """What the plugin knows about one of its layers (see the module docstring).

    Attributes
    ----------
    kind
        The role of the layer.
    path
        The file or store the layer shows (a slide file, a label map, a GeoJSON, a store's
        mask); ``None`` for layers that live only in the viewer.
    slide
        The slide file the layer lies on; for a slide layer, its own ``path``.
    mpp
        µm per pixel of the layer's finest level, as its file or the run that made it says.
        For a slide, ``None`` when the file does not state it (see ``mpp_given``).
    mpp_given
        µm/px of level 0 entered by the user (Segment's "Slide µm/px") for a slide whose file
        does not state it, so that Review and Fine-tune read the slide at the same scale.
    model
        The model file that made a prediction.
    classes
        The classes the layer's label values stand for (background left out).
    prediction_dir
        The folder of a prediction (a rerun into it updates the same layer).
    probabilities
        A prediction's class-probability store (what the missing-annotation search reads).
    region
        Level-0 ``(y, x, h, w)`` of a "current view only" prediction or of an edited window.
    store
        The Review widget's annotation store the layer shows or edits.
    regions
        The store's corrected-regions file (what fine-tuning trusts).
    window
        ``(y, x, h, w)`` of an edited window in store pixels (where "Apply" writes it back).
    compared
        ``(prediction layer name, annotation name)`` an overlay compares (a new run on the same
        pair replaces it).
    details
        Facts carried for the user to read in the layer's metadata, which no code acts on
        (a slide's magnification, an overlay's metrics, the reader's warnings, a credit...);
        plain JSON values, keys other than the fields above.
    """

    kind: Kind
    path: Path | None = None
    slide: Path | None = None
    mpp: float | None = None
    mpp_given: float | None = None
    model: Path | None = None
    classes: tuple[LayerClass, ...] = ()
    prediction_dir: Path | None = None
    probabilities: Path | None = None
    region: Box | None = None
    store: Path | None = None
    regions: Path | None = None
    window: Box | None = None
    compared: tuple[str, str] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values: dict[str, Any] = {"kind": Kind(self.kind), "classes": _classes(self.classes)}
        for name, coerce in _COERCE.items():
            value = getattr(self, name)
            values[name] = None if value is None else coerce(value)
        if values["kind"] is Kind.SLIDE and values["slide"] is None:
            values["slide"] = values["path"]  # a slide lies on itself
        clash = set(self.details) & _FIELDS
        if clash:
            raise ValueError(f"details may not use the record's field names: {sorted(clash)}")
        values["details"] = MappingProxyType(_plain(dict(self.details)))
        for name, value in values.items():
            object.__setattr__(self, name, value)

    # -------------------------------------------------------------- derived facts
    @property
    def slide_mpp(self) -> float | None:
        """µm/px of a slide's level 0: what its file states, else what the user entered."""
        return self.mpp or self.mpp_given

    @property
    def class_names(self) -> dict[int, str]:
        """Label -> class name of the named foreground classes."""
        return {c.label: c.name for c in self.classes if c.label > 0 and c.name}

    def with_details(self, **details: Any) -> LayerInfo:
        """The same record with more (or changed) ``details``."""
        return dataclasses.replace(self, details={**self.details, **details})

    # -------------------------------------------------------------- reading and writing
    def as_metadata(self) -> dict[str, Any]:
        """The record as a layer's ``metadata`` (plain JSON values), e.g. for ``add_labels``."""
        block: dict[str, Any] = {"kind": self.kind.value}
        for name in _COERCE:
            value = getattr(self, name)
            if value is not None:
                block[name] = _plain(value)
        if self.classes:
            block["classes"] = [
                {"name": c.name, "label": c.label}
                | ({"color": list(c.color)} if c.color is not None else {})
                for c in self.classes
            ]
        block.update(_plain(dict(self.details)))
        return {KEY: block}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> LayerInfo | None:
        """The record in a layer's ``metadata`` (or a layer-data tuple's), ``None`` when there
        is none: not ours, or a role this version does not know.

        Bad values are dropped rather than raised: metadata can come from anywhere (another
        version of the plugin, a script), and a widget listing layers must not fail on one.
        """
        block = metadata.get(KEY) if isinstance(metadata, Mapping) else None
        if not isinstance(block, Mapping):
            return None
        try:
            kind = Kind(block.get("kind"))
        except ValueError:
            return None
        values: dict[str, Any] = {}
        for name, coerce in _COERCE.items():
            if block.get(name) is not None:
                with contextlib.suppress(TypeError, ValueError, KeyError):
                    values[name] = coerce(block[name])
        classes = []
        for entry in block.get("classes") or ():
            try:
                classes.append(_class(entry))
            except (TypeError, ValueError, KeyError):
                continue
        details = {}
        for key, value in block.items():
            if key in _FIELDS:
                continue
            try:
                details[str(key)] = _plain(value)
            except TypeError:
                continue
        return cls(kind=kind, classes=tuple(classes), details=details, **values)


_FIELDS = frozenset(f.name for f in dataclasses.fields(LayerInfo))


# ---------------------------------------------------------------------------- layers
def unwrap(obj: Any) -> Any:
    """The object behind napari's ``PublicOnlyProxy`` (dock widgets get a proxied viewer, whose
    layers are proxies too: ``is`` between a proxy and the layer itself is False)."""
    while hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return obj


def layer_info(layer: Any) -> LayerInfo | None:
    """The record of a layer; ``None`` for ``None`` and for layers we did not make."""
    if layer is None:
        return None
    metadata = getattr(unwrap(layer), "metadata", None)
    return LayerInfo.from_metadata(metadata) if isinstance(metadata, Mapping) else None


def kind_of(layer: Any) -> Kind | None:
    """The role of a layer, ``None`` for layers we did not make."""
    info = layer_info(layer)
    return info.kind if info is not None else None


def set_layer_info(layer: Any, info: LayerInfo) -> None:
    """Write ``info`` onto an existing layer (other plugins' metadata stays)."""
    layer = unwrap(layer)
    layer.metadata = {**layer.metadata, **info.as_metadata()}


def prediction_layers(viewer: Any, slide: str | Path | None = None) -> list[Any]:
    """The viewer's prediction layers in layer order; with ``slide``, those of that slide file
    (a prediction that names no slide counts for any)."""
    want = None if slide is None else Path(slide)
    out = []
    for layer in viewer.layers:
        info = layer_info(layer)
        if info is None or info.kind is not Kind.PREDICTION:
            continue
        if want is None or info.slide is None or info.slide == want:
            out.append(layer)
    return out
