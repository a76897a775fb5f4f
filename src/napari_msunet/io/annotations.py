"""Annotations: regions with a class, in level-0 pixel coordinates, and their class table.

The data model shared by the QuPath GeoJSON reader/writer (:mod:`napari_msunet.io.geojson`),
the rasteriser (:mod:`napari_msunet.io.rasterise`) and the mask vectoriser
(:mod:`napari_msunet.io.vectorise`).

Coordinates are **level-0 pixel coordinates (x, y)** of the slide as QuPath writes them: x to
the right, y downwards, the top-left corner of the top-left pixel at (0, 0). Geometries keep
shapely's and GeoJSON's (x, y) order; shapes and windows elsewhere in the API are (y, x).

Classes: every annotation has a class name; features that QuPath left unclassified get
:data:`UNCLASSIFIED`. A class table (:class:`ClassInfo` items) gives each class a label value
for masks (1, 2, ...; 0 is background) and a display colour. Read from a file, labels follow
the order in which classes first appear; pass an explicit mapping to the rasteriser when they
must be the same across files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon, Polygon

from napari_msunet.palette import CLASS_COLOURS

__all__ = [
    "UNCLASSIFIED",
    "Annotation",
    "AnnotationSet",
    "AnnotationWarning",
    "ClassInfo",
    "Color",
    "default_color",
]

UNCLASSIFIED = "Unclassified"
"""Class name given to features without a QuPath classification (written back without one)."""

Color = tuple[int, int, int]

# Distinct colours for classes that come without one (Kelly / Glasbey-like, no black or white)
_PALETTE: tuple[Color, ...] = CLASS_COLOURS


class AnnotationWarning(UserWarning):
    """Annotations were read or converted with a documented repair (skip, clip, make_valid)."""


def default_color(label: int) -> Color:
    """Return the palette colour used for class ``label`` when the class has no colour."""
    return _PALETTE[(max(int(label), 1) - 1) % len(_PALETTE)]


def _check_color(color: Any) -> Color:
    if (
        not isinstance(color, tuple | list)
        or len(color) != 3
        or not all(isinstance(v, int | np.integer) and 0 <= v <= 255 for v in color)
    ):
        raise ValueError(f"a colour must be three integers 0-255 (r, g, b), got {color!r}")
    return (int(color[0]), int(color[1]), int(color[2]))


@dataclass(frozen=True)
class ClassInfo:
    """One annotation class: its name, its label value in masks and its display colour.

    Label 0 is the background of every mask, so class labels start at 1.
    """

    name: str
    label: int
    color: Color

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a class name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.label, int | np.integer) or self.label < 1:
            raise ValueError(
                f"class {self.name!r}: label must be an integer >= 1 (0 is background)"
            )
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "color", _check_color(self.color))


@dataclass(frozen=True)
class Annotation:
    """One annotated region in level-0 pixel coordinates (x, y).

    ``geometry`` is a valid, non-empty shapely ``Polygon`` or ``MultiPolygon``. ``color`` is the
    colour the file gave this feature, if any (the class table holds the class colour).
    """

    geometry: Polygon | MultiPolygon
    class_name: str = UNCLASSIFIED
    color: Color | None = None
    object_type: str = "annotation"
    name: str | None = None
    id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, Polygon | MultiPolygon) or self.geometry.is_empty:
            raise ValueError(
                f"an annotation needs a non-empty Polygon or MultiPolygon, got "
                f"{getattr(self.geometry, 'geom_type', type(self.geometry).__name__)}"
            )
        if not isinstance(self.class_name, str) or not self.class_name:
            raise ValueError(f"class_name must be a non-empty string, got {self.class_name!r}")
        if self.color is not None:
            object.__setattr__(self, "color", _check_color(self.color))


@dataclass(frozen=True)
class AnnotationSet:
    """Annotations in file order plus their class table.

    File order matters: when regions overlap, later annotations are painted on top when
    rasterised. ``classes`` holds one :class:`ClassInfo` per class; when read from a file,
    labels are given in order of first appearance (1, 2, ...). Pass an explicit class-to-label
    mapping to the rasteriser when labels must be stable across files.
    """

    annotations: tuple[Annotation, ...] = ()
    classes: tuple[ClassInfo, ...] = ()
    source: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", tuple(self.annotations))
        object.__setattr__(self, "classes", tuple(self.classes))
        names = [c.name for c in self.classes]
        labels = [c.label for c in self.classes]
        if len(set(names)) != len(names) or len(set(labels)) != len(labels):
            raise ValueError("class names and labels must be unique in a class table")
        missing = {a.class_name for a in self.annotations} - set(names)
        if missing:
            raise ValueError(f"classes missing from the class table: {sorted(missing)}")

    @classmethod
    def from_annotations(
        cls,
        annotations: Iterable[Annotation],
        classes: Iterable[ClassInfo] = (),
        source: str | Path | None = None,
    ) -> AnnotationSet:
        """Build a set, extending ``classes`` with any class the annotations use.

        New classes get the next free labels in order of first appearance and the colour of
        their first annotation that has one (else a palette colour).
        """
        annotations = tuple(annotations)
        table = {c.name: c for c in classes}
        next_label = max((c.label for c in table.values()), default=0) + 1
        colors: dict[str, Color] = {}
        for a in annotations:
            if a.color is not None:
                colors.setdefault(a.class_name, a.color)
        for a in annotations:
            if a.class_name not in table:
                color = colors.get(a.class_name, default_color(next_label))
                table[a.class_name] = ClassInfo(a.class_name, next_label, color)
                next_label += 1
        return cls(annotations, tuple(table.values()), Path(source) if source else None)

    def __len__(self) -> int:
        return len(self.annotations)

    def __iter__(self) -> Iterator[Annotation]:
        return iter(self.annotations)

    def __getitem__(self, index: int) -> Annotation:
        return self.annotations[index]

    def __repr__(self) -> str:
        names = ", ".join(c.name for c in self.classes)
        return f"AnnotationSet({len(self)} annotations, classes [{names}], source={self.source})"

    @property
    def class_to_label(self) -> dict[str, int]:
        """The mapping class name -> label of the class table."""
        return {c.name: c.label for c in self.classes}

    def filter(
        self,
        object_types: Iterable[str] | None = None,
        class_names: Iterable[str] | None = None,
    ) -> AnnotationSet:
        """Keep the annotations of the given object types and classes (``None`` keeps all)."""
        types = None if object_types is None else set(object_types)
        names = None if class_names is None else set(class_names)
        kept = tuple(
            a
            for a in self.annotations
            if (types is None or a.object_type in types)
            and (names is None or a.class_name in names)
        )
        return AnnotationSet(kept, self.classes, self.source)
