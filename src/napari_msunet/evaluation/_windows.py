"""Memory-bounded scanning of aligned 2-D label arrays, one window at a time.

Slide-level metrics must never hold a whole mask: a 100k x 100k label map is 10 GB as uint8
and 80 GB as the int64 codes a naive ``np.bincount`` would make. Everything in
:mod:`napari_msunet.evaluation` that touches full-resolution pixels therefore goes through
:func:`scan`, which cuts the level into windows aligned to the prediction's chunks (so every
stored chunk is decoded or computed once), reads the same window from each source (NumPy,
zarr or dask; dask windows are computed with the synchronous scheduler inside our own
threads), and hands the NumPy blocks to a per-window function whose small results are
consumed in order. At most ``depth + 1`` windows are alive at a time.

A region mask (e.g. tissue) may be coarser or finer than the level it restricts: it is
sampled nearest-neighbour by :class:`Resampled`, following the pyramid convention of
:mod:`napari_msunet.io.writers` (pixel ``i`` of a level ``f`` times coarser covers level
pixels ``i * f .. i * f + f - 1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from napari_msunet.io.writers import prefetched, read_block

__all__ = ["Resampled", "Window", "check_label_array", "iter_windows", "scan", "window_shape"]

R = TypeVar("R")

Window = tuple[slice, slice]

#: Target window edge: about 4 Mpx per window, large enough that per-window overhead (dask
#: graph slicing, zarr calls) is small, small enough that a few windows in flight stay under
#: ~100 MB.
DEFAULT_WINDOW = 2048
#: Largest window area accepted when a source's chunks are long strips (stripped TIFF, PNG).
_MAX_WINDOW_AREA = 1 << 24


def check_label_array(arr: Any, what: str) -> tuple[int, int]:
    """Check that ``arr`` is a 2-D integer (or bool) array and return its shape.

    Raises
    ------
    ValueError
        Not an array, not 2-D, or not of an integer/bool dtype (probabilities, RGB pictures).
    """
    shape = getattr(arr, "shape", None)
    dtype = getattr(arr, "dtype", None)
    if shape is None or dtype is None:
        raise ValueError(f"{what} must be an array (NumPy, dask or zarr), not {type(arr).__name__}")
    if len(shape) != 2:
        raise ValueError(f"{what} must be a 2-D label array, got shape {tuple(shape)}")
    if np.dtype(dtype).kind not in "uib":
        raise ValueError(f"{what} must hold integer labels, got dtype {dtype} (probabilities?)")
    return int(shape[0]), int(shape[1])


def _chunk_edges(arr: Any) -> tuple[int, int] | None:
    """The (first) chunk edge along each axis of a dask or zarr array, ``None`` for NumPy."""
    chunks = getattr(arr, "chunks", None)
    if chunks is None or isinstance(arr, np.ndarray):
        return None
    try:
        edges = [int(c[0]) if isinstance(c, tuple) else int(c) for c in chunks[-2:]]
    except (TypeError, ValueError, IndexError):
        return None
    return (edges[0], edges[1]) if len(edges) == 2 and min(edges) > 0 else None


def window_shape(arr: Any, target: int = DEFAULT_WINDOW) -> tuple[int, int]:
    """Choose the window ``(height, width)`` for scanning ``arr``.

    Each edge is a multiple of the array's chunk edge near ``target``, so windows never cut a
    chunk; strip-shaped chunks (one row band across the whole width) get fewer rows so the
    window stays under ~16 Mpx.
    """
    h, w = (int(s) for s in arr.shape[-2:])
    edges = _chunk_edges(arr)
    if edges is None:
        return min(h, target), min(w, target)
    cy, cx = (min(e, n) for e, n in zip(edges, (h, w), strict=True))
    wy = max(cy, round(target / cy) * cy)
    wx = max(cx, round(target / cx) * cx)
    if wy * wx > _MAX_WINDOW_AREA:
        wy = max(cy, _MAX_WINDOW_AREA // wx // cy * cy)
    return min(wy, h), min(wx, w)


def iter_windows(shape: Sequence[int], step: tuple[int, int]) -> Iterator[Window]:
    """Yield the row-major grid of windows of edge ``step`` covering ``shape``."""
    h, w = int(shape[0]), int(shape[1])
    sy, sx = step
    for y in range(0, h, sy):
        for x in range(0, w, sx):
            yield slice(y, min(y + sy, h)), slice(x, min(x + sx, w))


class Resampled:
    """A 2-D array seen at another shape by nearest-neighbour sampling, read window by window.

    Used for region masks computed at another resolution than the prediction (a tissue mask
    from a thumbnail level, say). When ``source`` is an ``f``-times coarser pyramid level of
    the target (``source.shape == ceil(shape / f)`` for an integer ``f``), target pixel ``r``
    maps to source pixel ``r // f``, exactly as :mod:`napari_msunet.io.writers` builds
    pyramids; otherwise to ``floor(r * source_size / size)``.

    Parameters
    ----------
    source
        NumPy, zarr or dask 2-D array.
    shape
        The ``(height, width)`` it is read at.
    """

    def __init__(self, source: Any, shape: tuple[int, int]) -> None:
        self.source = source
        self.shape = (int(shape[0]), int(shape[1]))
        self.source_shape = tuple(int(s) for s in source.shape[-2:])
        self.identity = self.source_shape == self.shape
        self._factor = tuple(
            _pyramid_factor(n, m) for n, m in zip(self.shape, self.source_shape, strict=True)
        )

    def _index(self, axis: int, start: int, stop: int) -> np.ndarray:
        r = np.arange(start, stop, dtype=np.int64)
        f, m, n = self._factor[axis], self.source_shape[axis], self.shape[axis]
        idx = r // f if f else (r * m) // n
        return np.minimum(idx, m - 1)

    def read(self, window: Window) -> np.ndarray:
        """Return the target window ``(rows, cols)`` as a NumPy array."""
        if self.identity:
            return read_block(self.source, window)
        ys, xs = window
        ri = self._index(0, ys.start, ys.stop)
        ci = self._index(1, xs.start, xs.stop)
        if len(ri) == 0 or len(ci) == 0:
            return np.zeros((len(ri), len(ci)), dtype=self.source.dtype)
        block = read_block(
            self.source,
            (slice(int(ri[0]), int(ri[-1]) + 1), slice(int(ci[0]), int(ci[-1]) + 1)),
        )
        return np.take(np.take(block, ri - ri[0], axis=0), ci - ci[0], axis=1)


def _pyramid_factor(n: int, m: int) -> int:
    """Integer ``f`` with ``ceil(n / f) == m`` (a pyramid level ``f`` times coarser), else 0."""
    if m >= n:
        return 0
    f = round(n / m)
    return f if f >= 1 and math.ceil(n / f) == m else 0


def scan(
    fn: Callable[[Window, list[np.ndarray]], R],
    shape: tuple[int, int],
    sources: Sequence[Any],
    *,
    step: tuple[int, int],
    workers: int = 2,
    depth: int = 4,
) -> Iterator[tuple[Window, R]]:
    """Yield ``(window, fn(window, blocks))`` for every window, in row-major order.

    ``sources`` are arrays of ``shape`` or :class:`Resampled` views (or ``None``, passed
    through as ``None``); each is read for the window in a worker thread, then ``fn`` runs in
    that thread too, so decoding, rasterising and counting overlap across windows.
    """

    def one(window: Window) -> tuple[Window, R]:
        blocks = [
            None
            if s is None
            else s.read(window)
            if isinstance(s, Resampled)
            else read_block(s, window)
            for s in sources
        ]
        return window, fn(window, blocks)

    yield from prefetched(one, iter_windows(shape, step), depth=depth, workers=max(1, workers))
