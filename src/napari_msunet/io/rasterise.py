"""Annotations -> label masks at any pyramid level, chunk by chunk.

Pixel convention
    Annotation coordinates are level-0 pixels (x, y). Pixel ``(row r, col c)`` of a level with
    downsample ``d`` (level-0 pixels per level pixel, possibly non-integer) covers the level-0
    box ``[c*d, (c+1)*d) x [r*d, (r+1)*d)``, and belongs to a polygon when its centre
    ``((c+0.5)*d, (r+0.5)*d)`` lies inside it (holes excluded). A centre exactly on an outline
    counts as inside on a left or top edge and outside on a right or bottom one (the
    half-open scan-line rule), so two polygons sharing an edge never both claim a pixel.

Overlaps
    Later annotations are painted over earlier ones (the order of the file or sequence): put
    an enclosing region (tissue) before the regions inside it (tumour) and the inner one wins.
    A class mapped to label 0 erases what lies below it.

How
    Each output chunk asks an STRtree for the annotations whose bounds meet it and fills them
    with a vectorised even-odd scan line over the chunk's pixel centres (all crossings of all
    edges with all pixel-centre rows at once, then runs between crossing pairs). Building the
    lazy array costs one STRtree, so it is instant, and memory never depends on the slide's
    size. :mod:`napari_msunet.io.vectorise` goes the other way, exactly.
"""

from __future__ import annotations

import math
import uuid
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import dask.array as da
import numpy as np
import shapely

from napari_msunet.io.annotations import Annotation, AnnotationSet, AnnotationWarning

__all__ = ["Rasteriser", "rasterise", "rasterise_array"]

_EAGER_TILE = 2048  # tile size of rasterise_array, to bound temporary memory
_PAINT_BATCH = 1 << 22  # pixels painted per batch where annotations overlap


def _label_dtype(max_label: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label {max_label} does not fit in uint32")


class Rasteriser:
    """A lazily rasterised label mask of one pyramid level, readable region by region.

    Indexing (``rasteriser[y0:y1, x0:x1]``) or :meth:`region` rasterises just that window, so
    the object serves as a dask source (:meth:`to_dask`) and for one-off reads.

    Parameters
    ----------
    annotations
        An :class:`AnnotationSet` or annotations in painting order (later on top).
    slide_shape
        Level-0 ``(height, width)`` of the slide.
    downsample
        Level-0 pixels per pixel of the level to rasterise at (``1`` = level 0).
    labels
        Class name -> label value. Defaults to the set's class table. Annotations whose class
        is missing from the mapping are left out (one :class:`AnnotationWarning`).
    level_shape
        ``(height, width)`` of the level; defaults to ``ceil(slide_shape / downsample)``.
        Pass the slide's real level shape when its pyramid rounds differently.
    dtype
        Output dtype; defaults to the smallest of uint8/uint16/uint32 holding every label.
    """

    def __init__(
        self,
        annotations: AnnotationSet | Iterable[Annotation],
        slide_shape: tuple[int, int],
        downsample: float = 1.0,
        *,
        labels: Mapping[str, int] | None = None,
        level_shape: tuple[int, int] | None = None,
        dtype: np.dtype | type | None = None,
    ) -> None:
        if not isinstance(annotations, AnnotationSet):
            annotations = AnnotationSet.from_annotations(annotations)
        d = float(downsample)
        if not (math.isfinite(d) and d > 0):
            raise ValueError(f"downsample must be a positive number, got {downsample!r}")
        height, width = (int(v) for v in slide_shape)
        if height <= 0 or width <= 0:
            raise ValueError(f"slide_shape must be positive, got {slide_shape!r}")
        if level_shape is None:
            level_shape = (math.ceil(height / d), math.ceil(width / d))
        self.shape: tuple[int, int] = (int(level_shape[0]), int(level_shape[1]))
        self.ndim = 2
        self.downsample = d
        mapping = dict(annotations.class_to_label if labels is None else labels)
        if any(int(v) < 0 for v in mapping.values()):
            raise ValueError("labels must be >= 0")
        missing = sorted({a.class_name for a in annotations} - set(mapping))
        if missing:
            warnings.warn(
                f"{annotations.source or 'annotations'}: classes {missing} have no label and "
                "are not rasterised",
                AnnotationWarning,
                stacklevel=2,
            )
        kept = [a for a in annotations if a.class_name in mapping]
        top = max(mapping.values(), default=0)
        self.dtype = _label_dtype(top) if dtype is None else np.dtype(dtype)
        if self.dtype.kind != "u" or top > np.iinfo(self.dtype).max:
            raise ValueError(f"dtype {self.dtype} cannot hold label {top}")
        self._labels = np.array([mapping[a.class_name] for a in kept], dtype=np.int64)
        self._geoms = np.array([a.geometry for a in kept], dtype=object)
        self._tree = shapely.STRtree(self._geoms)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_tree")  # rebuilt on unpickling (for dask.distributed workers)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._tree = shapely.STRtree(self._geoms)

    def __repr__(self) -> str:
        return (
            f"Rasteriser({len(self._geoms)} geometries, shape={self.shape}, "
            f"downsample={self.downsample}, dtype={self.dtype})"
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (2 - len(key))
        if len(key) != 2:
            raise IndexError(f"a label mask has 2 dimensions, got index {key!r}")
        bounds, post = [], []
        for k, n in zip(key, self.shape, strict=True):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step < 0:
                    raise IndexError("negative steps are not supported")
                bounds.append((start, max(start, stop)))
                post.append(slice(None, None, step))
            elif isinstance(k, int | np.integer):
                i = int(k) + n if k < 0 else int(k)
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for size {n}")
                bounds.append((i, i + 1))
                post.append(0)
            else:
                raise IndexError(f"unsupported index {k!r}; use integers and slices")
        (r0, r1), (c0, c1) = bounds
        return self.region(r0, c0, r1 - r0, c1 - c0)[tuple(post)]

    def region(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Rasterise the window ``[y, y+height) x [x, x+width)`` of the level."""
        out = np.zeros((max(height, 0), max(width, 0)), dtype=self.dtype)
        if out.size == 0 or len(self._geoms) == 0:
            return out
        d = self.downsample
        query = shapely.box(
            (x + 0.5) * d, (y + 0.5) * d, (x + width - 0.5) * d, (y + height - 0.5) * d
        )
        ids = np.sort(self._tree.query(query))
        if len(ids) == 0:
            return out
        rows, starts, ends, prio = self._spans(ids, y, x, height, width)
        if len(rows) == 0:
            return out
        labels = self._labels[ids]
        if _overlapping(rows, starts, ends):
            # each pixel takes the label of the last annotation covering it: the maximum
            # priority, accumulated in batches so that temporary memory stays bounded
            top = np.zeros(height * width, dtype=np.int32)
            lengths = ends - starts
            batch = np.cumsum(lengths) // _PAINT_BATCH
            for b in np.unique(batch):
                sel = batch == b
                n, first = lengths[sel], (rows * width + starts)[sel]
                flat = np.repeat(first - (np.cumsum(n) - n), n) + np.arange(n.sum())
                np.maximum.at(top, flat, np.repeat(prio[sel] + 1, n).astype(np.int32))
            lut = np.concatenate([[0], labels]).astype(self.dtype)
            out[:] = lut[top].reshape(height, width)
        else:
            # disjoint spans: a running sum of +label/-label marks fills them in one pass
            # (modular arithmetic in the output dtype is exact: partial sums stay in range)
            marks = np.zeros((height, width + 1), dtype=self.dtype)
            values = labels[prio].astype(self.dtype)
            marks[rows, starts] += values
            marks[rows, ends] -= values
            np.cumsum(marks[:, :width], axis=1, dtype=self.dtype, out=out)
        return out

    def _spans(
        self, ids: np.ndarray, y: int, x: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return the filled pixel runs (row, start, end, priority) of ``ids`` in the window.

        Priority ``k`` is the position of the geometry in ``ids``. Edges are taken from the
        geometries on demand, so nothing per edge is kept between calls.
        """
        parts, owner = shapely.get_parts(self._geoms[ids], return_index=True)
        rings, ring_part = shapely.get_rings(parts, return_index=True)
        xy, coord_ring = shapely.get_coordinates(rings, return_index=True)
        # u, v: level coordinates shifted so that pixel centres fall on integers
        uv = xy / self.downsample - 0.5
        edge = np.flatnonzero((coord_ring[1:] == coord_ring[:-1]) & (uv[1:, 1] != uv[:-1, 1]))
        u0, v0, u1, v1 = uv[edge, 0], uv[edge, 1], uv[edge + 1, 0], uv[edge + 1, 1]
        # an edge crosses the centre line of row r when min(v) <= r < max(v) (half-open)
        lo = np.maximum(np.ceil(np.minimum(v0, v1)), y).astype(np.int64)
        hi = np.minimum(np.ceil(np.maximum(v0, v1)), y + height).astype(np.int64)
        n = np.maximum(hi - lo, 0)
        total = int(n.sum())
        if total == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty, empty
        e = np.repeat(np.arange(len(edge)), n)
        row = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(total)
        xs = u0[e] + (row - v0[e]) * ((u1 - u0) / (v1 - v0))[e]
        prio = owner[ring_part[coord_ring[edge]]][e]
        order = np.lexsort((xs, row, prio))
        xs, row, prio = xs[order], row[order], prio[order]
        # even-odd rule: crossings of one geometry on one row pair up as (enter, leave)
        start = np.clip(np.ceil(xs[0::2]) - x, 0, width).astype(np.int64)
        end = np.clip(np.ceil(xs[1::2]) - x, 0, width).astype(np.int64)
        ok = start < end
        return row[0::2][ok] - y, start[ok], end[ok], prio[0::2][ok]

    def to_dask(self, chunks: int | tuple[int, int] = 1024) -> da.Array:
        """Return the whole level as a lazy dask array computed chunk by chunk."""
        return da.from_array(
            self,
            chunks=chunks,
            name=f"rasterise-{uuid.uuid4().hex}",
            asarray=False,
            fancy=False,
            meta=np.empty((0, 0), dtype=self.dtype),
        )


def _overlapping(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> bool:
    """Whether any two spans on the same row overlap."""
    order = np.lexsort((starts, rows))
    r, s, e = rows[order], starts[order], ends[order]
    return bool(np.any((r[1:] == r[:-1]) & (s[1:] < e[:-1])))


def rasterise(
    annotations: AnnotationSet | Iterable[Annotation],
    slide_shape: tuple[int, int],
    downsample: float = 1.0,
    *,
    labels: Mapping[str, int] | None = None,
    level_shape: tuple[int, int] | None = None,
    chunks: int | tuple[int, int] = 1024,
    dtype: np.dtype | type | None = None,
) -> da.Array:
    """Rasterise annotations to a lazy label mask of one pyramid level.

    Building the array costs only an STRtree over the annotations; each chunk, when computed,
    rasterises just the annotations that meet it. See :class:`Rasteriser` for the parameters
    and the module docstring for the pixel convention and the overlap rule.

    Returns
    -------
    dask.array.Array
        Shape ``level_shape``, dtype uint8 (uint16 beyond 255 labels), background 0.
    """
    return Rasteriser(
        annotations, slide_shape, downsample, labels=labels, level_shape=level_shape, dtype=dtype
    ).to_dask(chunks)


def rasterise_array(
    annotations: AnnotationSet | Iterable[Annotation],
    slide_shape: tuple[int, int],
    downsample: float = 1.0,
    *,
    labels: Mapping[str, int] | None = None,
    level_shape: tuple[int, int] | None = None,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """Rasterise annotations to an in-memory label mask (small levels); see :func:`rasterise`."""
    raster = Rasteriser(
        annotations, slide_shape, downsample, labels=labels, level_shape=level_shape, dtype=dtype
    )
    out = np.zeros(raster.shape, dtype=raster.dtype)
    for y in range(0, raster.shape[0], _EAGER_TILE):
        for x in range(0, raster.shape[1], _EAGER_TILE):
            h, w = min(_EAGER_TILE, raster.shape[0] - y), min(_EAGER_TILE, raster.shape[1] - x)
            out[y : y + h, x : x + w] = raster.region(y, x, h, w)
    return out
