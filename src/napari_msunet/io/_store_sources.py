"""Sources an :class:`~napari_msunet.io.annotation_store.AnnotationStore` is created from.

A QuPath GeoJSON (rasterised window by window) or a label mask of any resolution (sampled
nearest-neighbour), read on the store's grid and relabelled into the store's classes. Only
read: the user's files are never written.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_msunet.errors import AnnotationError
from napari_msunet.io.annotations import AnnotationSet, AnnotationWarning, ClassInfo, default_color
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.masks import LabelMask, open_mask
from napari_msunet.io.rasterise import Rasteriser
from napari_msunet.io.writers import read_block

__all__ = ["open_source"]


def _norm(name: str) -> str:
    return name.strip().casefold()


def _class_table(
    source_classes: Sequence[ClassInfo],
    names: Sequence[str] | None,
    colors: Sequence[Any] | None,
    where: Path | None,
) -> tuple[list[str] | None, list[list[int]] | None, dict[int, int]]:
    """Store class names and colours (index = label) and the source label -> store label map.

    Without ``names`` the source's own table is kept. With them, source classes are matched by
    name (ignoring case); a single source class and a single foreground class are paired when
    their names differ (a one-class annotation named differently from the model's class);
    other unknown classes get new labels, with an :class:`AnnotationWarning`.
    """
    if names is None:
        if not source_classes:
            return None, None, {}
        top = max(c.label for c in source_classes)
        by_label = {c.label: c for c in source_classes}
        out_names = ["Background"] + [
            by_label[i].name if i in by_label else f"Class {i}" for i in range(1, top + 1)
        ]
        out_colors = [[0, 0, 0, 0]] + [
            [*(by_label[i].color if i in by_label else default_color(i)), 255]
            for i in range(1, top + 1)
        ]
        return out_names, out_colors, {}
    out_names = [str(n) for n in names]
    if len(out_names) < 2:
        raise ValueError(f"classes must name the background and at least one class: {names}")
    if colors is not None:
        out_colors = [[*(int(v) for v in c[:3]), 255 if i else 0] for i, c in enumerate(colors)]
        if len(out_colors) != len(out_names):
            raise ValueError(f"{len(out_colors)} colours for {len(out_names)} classes")
    else:
        by_name = {_norm(c.name): c.color for c in source_classes}
        out_colors = [[0, 0, 0, 0]] + [
            [*by_name.get(_norm(n), default_color(i)), 255]
            for i, n in enumerate(out_names)
            if i > 0
        ]
    index = {_norm(n): i for i, n in enumerate(out_names) if i > 0}
    lut: dict[int, int] = {}
    unknown = [c for c in source_classes if _norm(c.name) not in index]
    if len(unknown) == 1 and len(source_classes) == 1 and len(out_names) == 2:
        lut[unknown[0].label] = 1
        unknown = []
    for c in source_classes:
        if _norm(c.name) in index:
            lut[c.label] = index[_norm(c.name)]
    for c in unknown:
        lut[c.label] = len(out_names)
        out_names.append(c.name)
        out_colors.append([*c.color, 255])
    if unknown:
        warnings.warn(
            f"{where or 'annotation'}: classes {[c.name for c in unknown]} are not among "
            f"{list(names)[1:]}; kept under new labels",
            AnnotationWarning,
            stacklevel=4,
        )
    if len(out_names) > 256:
        raise AnnotationError(where, "more than 255 classes do not fit an 8-bit label mask")
    return out_names, out_colors, lut


class _MaskSource:
    """A label mask of any resolution read on the store grid (nearest neighbour, relabelled)."""

    def __init__(
        self,
        levels: Sequence[Any],
        slide_shape: tuple[int, int],
        d: int,
        lut: dict[int, int],
        where: Path | None,
    ) -> None:
        H, W = slide_shape
        mh, mw = (int(s) for s in levels[0].shape)
        if abs((H / mh) / (W / mw) - 1) > 0.02 + 2 / min(mh, mw):
            raise AnnotationError(
                where,
                f"is {mw} x {mh} px, which is not the slide ({W} x {H} px) at any scale: "
                "a mask made for another slide?",
            )
        chosen = levels[0]
        for lv in levels:  # the coarsest level that is still at least as fine as the store
            if H / int(lv.shape[0]) <= d * 1.001:
                chosen = lv
        self.level = chosen
        self.slide_shape, self.d, self.where = (H, W), d, where
        self.lut = np.arange(65536, dtype=np.int64)
        for src, dst in lut.items():
            if 0 <= src < len(self.lut):
                self.lut[src] = dst

    def __call__(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        H, W = self.slide_shape
        mh, mw = (int(s) for s in self.level.shape)
        rows = np.minimum(((np.arange(y, y + h) + 0.5) * self.d * mh / H).astype(np.int64), mh - 1)
        cols = np.minimum(((np.arange(x, x + w) + 0.5) * self.d * mw / W).astype(np.int64), mw - 1)
        r0, c0 = int(rows[0]), int(cols[0])
        block = read_block(self.level, (slice(r0, int(rows[-1]) + 1), slice(c0, int(cols[-1]) + 1)))
        block = block[np.ix_(rows - r0, cols - c0)]
        if block.dtype.kind not in "ub":
            raise AnnotationError(self.where, f"holds {block.dtype} values, not labels")
        out = self.lut[np.minimum(block.astype(np.int64), len(self.lut) - 1)]
        if out.size and out.max() > 255:
            raise AnnotationError(self.where, f"holds label {out.max()}; the store keeps 0..255")
        return out.astype(np.uint8)


def open_source(
    source: Any,
    slide_shape: tuple[int, int],
    d: int,
    store_shape: tuple[int, int],
    names: Sequence[str] | None,
    colors: Sequence[Any] | None,
) -> tuple[Callable[[int, int, int, int], np.ndarray], list[str] | None, Any, str]:
    """A window reader on the store grid, the store's class names and colours, a description."""
    if source is None:
        out_names, out_colors, _ = _class_table([], names, colors, None)
        return (lambda y, x, h, w: np.zeros((h, w), np.uint8)), out_names, out_colors, "empty"
    where = Path(source) if isinstance(source, str | os.PathLike) else None
    if where is not None and where.suffix.lower() in (".geojson", ".json") and where.is_file():
        source = read_geojson(where, slide_shape=slide_shape)
    if isinstance(source, AnnotationSet):
        out_names, out_colors, lut = _class_table(source.classes, names, colors, where)
        labels = {c.name: lut.get(c.label, c.label) for c in source.classes}
        raster = Rasteriser(
            source, slide_shape, d, labels=labels, level_shape=store_shape, dtype=np.uint8
        )
        desc = str(where or source.source or "annotations")
        return raster.region, out_names, out_colors, desc
    if where is not None:
        source = open_mask(where)
    if isinstance(source, LabelMask):
        out_names, out_colors, lut = _class_table(source.classes, names, colors, source.path)
        reader = _MaskSource(source.levels, slide_shape, d, lut, source.path)
        return reader, out_names, out_colors, str(source.path)
    if getattr(source, "ndim", None) == 2:
        out_names, out_colors, _ = _class_table([], names, colors, None)
        return _MaskSource([source], slide_shape, d, {}, None), out_names, out_colors, "array"
    raise TypeError(
        f"cannot create an annotation store from {type(source).__name__}: give a QuPath "
        "GeoJSON or label-mask path, an AnnotationSet, a LabelMask or a 2-D label array"
    )
