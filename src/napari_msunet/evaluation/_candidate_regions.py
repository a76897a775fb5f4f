"""The machinery of the candidate search: the annotation on the coarse grid, and regions.

:func:`~napari_msunet.evaluation.missing.iter_find_missing` reads a probability pyramid one
window at a time; these pieces turn a window's disagreeing pixels into regions that cross
window borders (a union-find over the border pixels), so memory depends on the window and the
number of candidates, never on the slide's area. A region is one *key*: the pair (annotated
class, predicted class) encoded as ``annotated * C + predicted``, so that a suspected missing
region (annotated 0) and a suspected wrong one (annotated k > 0) are told apart and never
joined, and neither are two wrong regions whose classes differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import shapely
from scipy import ndimage

from napari_msunet.io.annotation_store import AnnotationStore
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.rasterise import Rasteriser
from napari_msunet.io.vectorise import vectorise
from napari_msunet.io.writers import read_block

__all__ = [
    "UNKNOWN_CLASS",
    "AnnotationGrid",
    "Regions",
    "annotated",
    "near_agreement",
    "read_padded",
    "window_regions",
]

UNKNOWN_CLASS = 255
"""Label of a GeoJSON class the prediction does not know: annotated, but of no model class,
so it can hide a suspected missing region yet never be called wrong."""


class AnnotationGrid:
    """The annotation read on the coarse grid: label 0 = background (nearest neighbour).

    Label masks and stores keep their own labels (the GUI makes stores with the model's
    classes, so their labels are the prediction's channels); a QuPath GeoJSON has no numbers,
    so its classes take the index of the prediction class of the same name (``names``), and
    :data:`UNKNOWN_CLASS` when there is none.
    """

    def __init__(
        self,
        source: Any,
        slide_shape: tuple[int, int],
        d: tuple[float, float],
        shape,
        names: list[str] | None = None,
    ):
        self.slide_shape, self.d = slide_shape, d
        self.raster = None
        if isinstance(source, AnnotationStore):
            source = source.mask_path
        if isinstance(source, str | Path) and Path(source).suffix.lower() in (".geojson", ".json"):
            anns = read_geojson(source, slide_shape=slide_shape)
            index = {n.casefold(): i for i, n in enumerate(names or []) if i > 0}
            labels = {c.name: index.get(c.name.casefold(), UNKNOWN_CLASS) for c in anns.classes}
            dd = (d[0] + d[1]) / 2
            self.raster = Rasteriser(anns, slide_shape, dd, labels=labels, level_shape=shape)
            return
        levels = list(open_mask(source).levels) if isinstance(source, str | Path) else [source]
        H = slide_shape[0]
        self.level = levels[0]
        for lv in levels:  # the coarsest level still at least as fine as the grid
            if H / int(lv.shape[0]) <= d[0] * 1.001:
                self.level = lv

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        if self.raster is not None:
            return self.raster.region(y, x, h, w)
        (H, W), (dy, dx) = self.slide_shape, self.d
        mh, mw = (int(s) for s in self.level.shape)
        rows = np.minimum(((np.arange(y, y + h) + 0.5) * dy * mh / H).astype(np.int64), mh - 1)
        cols = np.minimum(((np.arange(x, x + w) + 0.5) * dx * mw / W).astype(np.int64), mw - 1)
        r0, c0 = int(rows[0]), int(cols[0])
        block = read_block(self.level, (slice(r0, int(rows[-1]) + 1), slice(c0, int(cols[-1]) + 1)))
        return block[np.ix_(rows - r0, cols - c0)]


def read_padded(read: Any, shape, y: int, x: int, h: int, w: int, k: int) -> np.ndarray:
    """``read(y0, x0, h, w)`` of a window grown by ``k`` pixels on each side.

    What lies beyond the grid (``shape``) continues the edge pixels: the slide's border is
    no annotation boundary. Leading axes (channels) are kept.
    """
    y0, x0 = max(0, y - k), max(0, x - k)
    y1, x1 = min(shape[0], y + h + k), min(shape[1], x + w + k)
    block = np.asarray(read(y0, x0, y1 - y0, x1 - x0))
    pad = ((y0 - (y - k), y + h + k - y1), (x0 - (x - k), x + w + k - x1))
    if not any(sum(p) for p in pad):
        return block
    return np.pad(block, ((0, 0),) * (block.ndim - 2) + pad, mode="edge")


def annotated(ann: AnnotationGrid, shape, y: int, x: int, h: int, w: int, k: int):
    """The annotation's labels of a window grown by ``k``, and which pixels lie near another
    label (both with the ``k``-pixel margin, so that nearness across window edges counts).

    A pixel is *near* when a pixel within ``k`` steps (4-connected) has another label: for a
    background pixel, an annotated region within reach (what makes a suspected missing
    region a sliver along an annotation's outline).
    """
    a = read_padded(ann.read, shape, y, x, h, w, k)
    if k == 0:
        return a, np.zeros(a.shape, bool)
    foot = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), k)
    hi = ndimage.maximum_filter(a, footprint=foot, mode="nearest")
    lo = ndimage.minimum_filter(a, footprint=foot, mode="nearest")
    return a, (hi != a) | (lo != a)


def near_agreement(a: np.ndarray, cls: np.ndarray, k: int) -> np.ndarray:
    """Annotated pixels within ``k`` steps of a pixel where the model agrees with the same
    annotated class.

    An annotated region whose rim the model leaves out (its region a little smaller) is a
    boundary disagreement: the rim lies near the agreeing interior. A region the model
    rejects wholly has no agreeing pixel near it, however small it is.
    """
    out = np.zeros(a.shape, bool)
    if k == 0:
        return out
    agree = (a == cls) & (a > 0)
    cross = ndimage.generate_binary_structure(2, 1)
    for label in np.unique(a[agree]):
        mine = a == label
        out |= mine & ndimage.binary_dilation(agree & mine, structure=cross, iterations=k)
    return out


class Regions:
    """Union-find over window-local components, with their statistics and outlines."""

    def __init__(self) -> None:
        self.parent: list[int] = [0]
        self.cls: list[int] = [0]  # the region's key (annotated * C + predicted)
        self.area: list[int] = [0]
        self.conf: list[float] = [0.0]
        self.edge: list[int] = [0]
        self.box: list[list[int]] = [[0, 0, 0, 0]]
        self.polys: list[list[Any]] = [[]]

    def add(self, cls: int, area: int, conf: float, edge: int, box: list[int], poly: Any) -> int:
        self.parent.append(len(self.parent))
        self.cls.append(cls)
        self.area.append(area)
        self.conf.append(conf)
        self.edge.append(edge)
        self.box.append(box)
        self.polys.append([poly])
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb or self.cls[ra] != self.cls[rb]:
            return
        self.parent[rb] = ra
        self.area[ra] += self.area[rb]
        self.conf[ra] += self.conf[rb]
        self.edge[ra] += self.edge[rb]
        ba, bb = self.box[ra], self.box[rb]
        self.box[ra] = [min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3])]
        self.polys[ra].extend(self.polys[rb])
        self.polys[rb] = []

    def join_edge(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join the regions of two facing rows/columns of global ids (0 = none)."""
        both = (a > 0) & (b > 0)
        for i, j in set(zip(a[both].tolist(), b[both].tolist(), strict=True)):
            self.union(i, j)

    def roots(self) -> list[int]:
        return [i for i in range(1, len(self.parent)) if self.find(i) == i]


def window_regions(
    regions: Regions,
    key: np.ndarray,
    conf: np.ndarray,
    cand: np.ndarray,
    touch: np.ndarray,
    origin: tuple[int, int],
    d: tuple[float, float],
    min_pixels: int,
) -> np.ndarray:
    """Label the candidate pixels of one window, register them; return global ids per pixel.

    Components are taken per value of ``key`` (see the module docstring); ``touch`` marks
    pixels of a boundary disagreement (counted per region).
    """
    gid = np.zeros(cand.shape, np.int64)
    h, w = cand.shape
    y0, x0 = origin
    offset, scale = np.array([x0, y0], float), np.array([d[1], d[0]])  # window px -> level 0
    for c in np.unique(key[cand]):
        comp, n = ndimage.label(cand & (key == c))
        if n == 0:
            continue
        area = np.bincount(comp.ravel(), minlength=n + 1)
        sums = np.bincount(comp.ravel(), weights=conf.ravel(), minlength=n + 1)
        edge = np.bincount(comp.ravel(), weights=touch.ravel(), minlength=n + 1)
        slices = ndimage.find_objects(comp)
        keep = []
        for k, sl in enumerate(slices, 1):
            touches = sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w
            if area[k] >= min_pixels or touches:
                keep.append(k)
        if not keep:
            continue
        lut = np.zeros(n + 1, np.int64)
        lut[keep] = -1
        kept = np.where(lut[comp] != 0, comp, 0).astype(np.int32)
        outlines = vectorise(kept, {str(k): k for k in keep}, block=max(h, w))
        for ann in outlines:
            k = int(ann.class_name)
            sl = slices[k - 1]
            geom = shapely.transform(ann.geometry, lambda xy: (xy + offset) * scale)
            box = [sl[0].start + y0, sl[1].start + x0, sl[0].stop + y0, sl[1].stop + x0]
            lut[k] = regions.add(int(c), int(area[k]), float(sums[k]), int(edge[k]), box, geom)
        sel = kept > 0
        gid[sel] = lut[kept[sel]]
    return gid
