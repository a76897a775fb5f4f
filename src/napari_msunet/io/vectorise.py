"""Label masks -> polygon annotations and QuPath GeoJSON, exact on pixel edges.

The outline of every region follows the pixel edges of the mask, so rasterising the polygons
again at the same level (:mod:`napari_msunet.io.rasterise`) gives back the identical mask.

How
    The mask is read block by block (memory per block, not per mask). In each block the pixel
    edges between different labels are merged into maximal straight *runs* that know the label
    on either side. Each run gives one directed copy per non-zero side, oriented with that
    label on its left, and each directed run is linked to the run that continues the outline
    of the same label at its end vertex. Where a label touches itself only diagonally (a
    saddle) the outline turns left, so regions are **4-connected**: pixels that touch only at
    a corner are separate regions. Rings come out of the links by pointer jumping (all
    vectorised), counter-clockwise rings are shells, clockwise ones holes, and each hole goes
    to the smallest shell of its label that contains it. Regions crossing block borders are
    merged because the runs of all blocks are linked together.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from napari_msunet.errors import WriterError
from napari_msunet.io.annotations import (
    Annotation,
    AnnotationSet,
    AnnotationWarning,
    ClassInfo,
    default_color,
)
from napari_msunet.io.geojson import write_geojson
from napari_msunet.progress import Progress, Stop, eager, stopped

__all__ = ["export_mask", "iter_export_mask", "iter_vectorise", "vectorise"]

# unit vectors of the four directions; left turn of direction k is (k + 1) % 4
_DX = np.array([1, 0, -1, 0])
_DY = np.array([0, 1, 0, -1])


def iter_vectorise(
    mask: Any,
    classes: Iterable[ClassInfo] | Mapping[str, int] | None = None,
    downsample: float = 1.0,
    *,
    block: int = 4096,
    simplify: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0),
    stop: Stop = None,
) -> Generator[Progress, None, AnnotationSet | None]:
    """Turn a label mask into one polygon annotation per 4-connected region.

    A generator (GUIDE: "Long work is a generator"): reading the mask and finding the
    outlines in each block is the long part, so it yields a
    :class:`~napari_msunet.progress.Progress` per block (stage ``"vectorise"``; the last unit
    of ``total`` is tracing the outlines of the whole mask) and returns the annotations;
    :func:`vectorise` is its eager twin.

    Parameters
    ----------
    mask
        2D integer label array (numpy, dask or zarr), 0 = background; read block by block.
    classes
        Class table (:class:`ClassInfo` items, or a name -> label mapping) naming the labels.
        Labels missing from it are named ``"Class <label>"`` (with an AnnotationWarning).
    downsample
        Level-0 pixels per mask pixel; coordinates are scaled to level-0 pixels.
    block
        Block edge in pixels (rounded up to whole chunks of a chunked mask).
    simplify
        Tolerance in mask pixels for :func:`shapely.coverage_simplify` (borders shared by two
        regions stay shared). ``0`` keeps the exact pixel-edge outline.
    offset
        Level-0 ``(y, x)`` of the mask's top-left corner, for a mask that covers only a
        window of the slide (an edited region, say); added after scaling.
    stop
        A ``threading.Event`` or a callable, checked after every block; once set the
        generator returns ``None``.

    Returns
    -------
    AnnotationSet or None
        Polygons (with holes) sorted by label, then top to bottom and left to right;
        object type ``"annotation"``; the class table holds every class given. ``None`` when
        stopped.
    """
    if getattr(mask, "ndim", None) != 2:
        raise ValueError(f"a label mask must be 2D, got shape {getattr(mask, 'shape', None)}")
    dtype = np.dtype(mask.dtype)
    if dtype.kind not in "biu":
        raise ValueError(f"a label mask must have an integer dtype, got {dtype}")
    table = _class_table(classes)
    bh, bw = _block_size(mask, block)
    height, width = (int(v) for v in mask.shape)
    n_blocks = -(-height // bh) * -(-width // bw)
    total = n_blocks + 1  # the last unit: tracing the outlines of the whole mask
    yield Progress(0, total, "vectorise", "reading the mask")
    parts: list[np.ndarray] = []
    for done, part in enumerate(_iter_mask_runs(mask, bh, bw), 1):
        parts.append(part)
        yield Progress(done, total, "vectorise", f"block {done} of {n_blocks}")
        if stopped(stop):
            return None
    runs = np.concatenate(parts) if parts else np.zeros((0, 7), dtype=np.int64)
    polygons, labels = _polygons(runs)
    oy, ox = (float(v) for v in offset)
    annotations = _to_annotations(polygons, labels, table, float(downsample), simplify, (oy, ox))
    yield Progress(total, total, "vectorise", f"{len(annotations)} regions")
    return annotations


vectorise = eager(iter_vectorise)


def iter_export_mask(
    mask: Any,
    path: str | Path,
    classes: Iterable[ClassInfo] | Mapping[str, int] | None = None,
    downsample: float = 1.0,
    *,
    overwrite: bool = False,
    block: int = 4096,
    simplify: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0),
    stop: Stop = None,
) -> Generator[Progress, None, Path | None]:
    """Write a label mask as QuPath GeoJSON in level-0 pixel coordinates, atomically.

    One Feature per 4-connected region (a Polygon with holes), ``objectType`` annotation,
    ``classification`` with the class name and colour. See :func:`iter_vectorise` for the
    parameters; the file is written under a temporary name and renamed when complete.

    A generator (GUIDE: "Long work is a generator"): it yields a
    :class:`~napari_msunet.progress.Progress` per block of the mask (stage ``"vectorise"``)
    and returns the path; :func:`export_mask` is its eager twin. ``stop`` (checked after
    every block and before the file is written) or ``close()`` ends it with nothing written;
    a stopped export returns ``None``.

    Raises
    ------
    WriterError
        ``path`` exists and ``overwrite`` is false (checked before any work), or it cannot be
        written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise WriterError(path, "already exists; pass overwrite=True to replace it")
    annotations = yield from iter_vectorise(
        mask, classes, downsample, block=block, simplify=simplify, offset=offset, stop=stop
    )
    if annotations is None or stopped(stop):
        return None
    return write_geojson(annotations, path, overwrite=overwrite)


export_mask = eager(iter_export_mask)


# --------------------------------------------------------------------------- boundary runs


def _block_size(mask: Any, block: int) -> tuple[int, int]:
    """Round ``block`` up to whole chunks of a dask or zarr array (each chunk read once)."""
    chunks = getattr(mask, "chunksize", None) or getattr(mask, "chunks", None)
    if not chunks or not all(isinstance(c, int | np.integer) for c in chunks[:2]):
        return block, block
    return (
        max(1, math.ceil(block / int(chunks[0]))) * int(chunks[0]),
        max(1, math.ceil(block / int(chunks[1]))) * int(chunks[1]),
    )


def _runs(line: np.ndarray, pos: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Merge unit edges, sorted by (line, pos), into maximal runs along each line.

    Runs break wherever a side label changes, so two runs meet only at their ends. Returns
    rows ``(line, start, end, label a, label b)``.
    """
    if len(line) == 0:
        return np.zeros((0, 5), dtype=np.int64)
    new = np.ones(len(line), dtype=bool)
    new[1:] = (line[1:] != line[:-1]) | (pos[1:] != pos[:-1] + 1)
    new[1:] |= (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(line)) - 1
    return np.stack([line[first], pos[first], pos[last] + 1, a[first], b[first]], 1)


def _iter_mask_runs(mask: Any, bh: int, bw: int) -> Iterator[np.ndarray]:
    """Boundary runs of the whole mask, one array per block, as rows ``(x0, y0, x1, y1, a,
    b, vertical)``.

    Horizontal runs lie on the line y between rows y-1 (label a) and y (label b); vertical
    runs on the line x between columns x-1 (a) and x (b); outside the mask is label 0. Each
    block adds the runs on its top and left borders (using the row above and the column to
    the left kept from earlier blocks), inside it, and on the mask's bottom and right edges.
    """
    height, width = (int(v) for v in mask.shape)
    dtype = np.dtype(mask.dtype)
    prev_row = np.zeros(width, dtype=dtype)  # last row of the block row above
    for y in range(0, height, bh):
        h = min(bh, height - y)
        left = np.zeros(h, dtype=dtype)
        row = np.empty(width, dtype=dtype)
        for x in range(0, width, bw):
            blk = np.asarray(mask[y : y + h, x : x + bw], dtype=dtype)
            if dtype.kind == "i" and blk.min(initial=0) < 0:
                raise ValueError("a label mask must not hold negative labels")
            w = blk.shape[1]
            parts = [prev_row[None, x : x + w], blk]
            if y + h == height:
                parts.append(np.zeros((1, w), dtype=dtype))
            grid = np.concatenate(parts)
            ln, ps = np.nonzero(grid[:-1] != grid[1:])
            r = _runs(ln, ps, grid[ln, ps].astype(np.int64), grid[ln + 1, ps].astype(np.int64))
            horizontal = np.c_[
                r[:, 1] + x, r[:, 0] + y, r[:, 2] + x, r[:, 0] + y, r[:, 3:], 0 * r[:, 0]
            ]
            parts = [left[:, None], blk]
            if x + w == width:
                parts.append(np.zeros((h, 1), dtype=dtype))
            grid = np.concatenate(parts, 1)
            ps, ln = np.nonzero(grid[:, :-1] != grid[:, 1:])
            by_line = np.argsort(ln, kind="stable")
            ps, ln = ps[by_line], ln[by_line]
            r = _runs(ln, ps, grid[ps, ln].astype(np.int64), grid[ps, ln + 1].astype(np.int64))
            vertical = np.c_[
                r[:, 0] + x, r[:, 1] + y, r[:, 0] + x, r[:, 2] + y, r[:, 3:], 1 + 0 * r[:, 0]
            ]
            left = blk[:, -1].copy()
            row[x : x + w] = blk[-1]
            yield np.concatenate([horizontal, vertical])
        prev_row = row


# --------------------------------------------------------------------------- tracing


def _polygons(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Link the runs into rings and rings into polygons; return polygons and their labels."""
    if len(runs) == 0:
        return np.zeros(0, dtype=object), np.zeros(0, dtype=np.int64)
    x0, y0, x1, y1, a, b, vertical = runs.T
    vertical = vertical.astype(bool)
    # directed copies with their label on the left: horizontal b -> +x, a -> -x;
    # vertical a -> +y, b -> -y (the left of direction (dx, dy) is (-dy, dx))
    label = np.concatenate([b, a])
    direction = np.concatenate([np.where(vertical, 3, 0), np.where(vertical, 1, 2)])
    sx = np.concatenate([np.where(vertical, x1, x0), np.where(vertical, x0, x1)])
    sy = np.concatenate([np.where(vertical, y1, y0), np.where(vertical, y0, y1)])
    ex = np.concatenate([np.where(vertical, x0, x1), np.where(vertical, x1, x0)])
    ey = np.concatenate([np.where(vertical, y0, y1), np.where(vertical, y1, y0)])
    keep = label > 0
    label, direction = label[keep], direction[keep]
    sx, sy, ex, ey = sx[keep], sy[keep], ex[keep], ey[keep]

    # link each directed run to the one leaving its end vertex with the same label
    classes, dense = np.unique(label, return_inverse=True)
    span = int(max(ex.max(), ey.max(), sx.max(), sy.max())) + 2
    start_key = (sx * span + sy) * len(classes) + dense
    end_key = (ex * span + ey) * len(classes) + dense
    order = np.argsort(start_key, kind="stable")
    lo = np.searchsorted(start_key, end_key, side="left", sorter=order)
    hi = np.searchsorted(start_key, end_key, side="right", sorter=order)
    if np.any(hi - lo < 1) or np.any(hi - lo > 2):
        raise RuntimeError("internal error: pixel outlines do not close")  # pragma: no cover
    nxt = order[lo]
    saddle = np.flatnonzero(hi - lo == 2)  # turn left there: regions are 4-connected
    other = order[np.minimum(lo[saddle] + 1, len(order) - 1)]
    take_other = direction[other] == (direction[saddle] + 1) % 4
    nxt[saddle[take_other]] = other[take_other]

    ring, pos = _cycles(nxt)
    order = np.lexsort((pos, ring))
    ring_sorted = ring[order]
    new_ring = np.r_[True, ring_sorted[1:] != ring_sorted[:-1]]
    starts = np.flatnonzero(new_ring)
    ends = np.r_[starts[1:], len(order)] - 1
    ring_index = np.cumsum(new_ring) - 1  # 0, 1, ... per ring
    # drop vertices where the outline goes straight on (T-junctions, block borders)
    dirs = direction[order]
    prev = np.empty_like(dirs)
    prev[1:] = dirs[:-1]
    prev[starts] = dirs[ends]
    corner = dirs != prev
    vx, vy, vring = sx[order][corner], sy[order][corner], ring_index[corner]
    rstarts = np.flatnonzero(np.r_[True, vring[1:] != vring[:-1]])
    nx, ny = np.roll(vx, -1), np.roll(vy, -1)
    rends = np.r_[rstarts[1:], len(vx)] - 1
    nx[rends], ny[rends] = vx[rstarts], vy[rstarts]
    area2 = np.add.reduceat(vx * ny - nx * vy, rstarts)  # twice the signed area
    rings = shapely.linearrings(np.c_[vx, vy].astype(np.float64), indices=vring)
    heads = order[starts]  # first directed run of every ring
    ring_label = label[heads]
    shell = area2 > 0

    # every hole belongs to the smallest shell of its label around its first pixel
    holes = np.flatnonzero(~shell)
    shells = np.flatnonzero(shell)
    shell_polys = shapely.polygons(rings[shells])
    owner = np.zeros(len(holes), dtype=np.int64)
    if len(holes):
        h = heads[holes]
        d, left = direction[h], (direction[h] + 1) % 4
        px = sx[h] + 0.5 * _DX[d] + 0.5 * _DX[left]
        py = sy[h] + 0.5 * _DY[d] + 0.5 * _DY[left]
        hole_i, shell_i = shapely.STRtree(shell_polys).query(
            shapely.points(px, py), predicate="within"
        )
        same = ring_label[holes[hole_i]] == ring_label[shells[shell_i]]
        hole_i, shell_i = hole_i[same], shell_i[same]
        best = np.lexsort((area2[shells[shell_i]], hole_i))
        hole_i, shell_i = hole_i[best], shell_i[best]
        first = np.r_[True, hole_i[1:] != hole_i[:-1]]
        if first.sum() != len(holes):
            raise RuntimeError("internal error: a hole has no shell")  # pragma: no cover
        owner[hole_i[first]] = shell_i[first]
    polygon_of = np.concatenate([np.arange(len(shells)), owner])
    members = np.concatenate([shells, holes])
    grouping = np.lexsort((np.r_[np.zeros(len(shells)), np.ones(len(holes))], polygon_of))
    polygons = shapely.polygons(rings[members[grouping]], indices=polygon_of[grouping])
    # an outline that touches itself at a corner is one ring visiting a vertex twice;
    # make_valid turns it into a shell and a hole touching at that point (same pixels)
    for k in np.flatnonzero(~shapely.is_valid(polygons)):
        fixed = shapely.make_valid(polygons[k])
        if fixed.geom_type == "GeometryCollection":  # keep the area only, should lines appear
            fixed = shapely.union_all([p for p in fixed.geoms if p.area > 0])
        polygons[k] = fixed
    return polygons, ring_label[shells]


def _cycles(nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a permutation into cycles by pointer jumping.

    Returns, per element, its cycle id (the smallest index in the cycle) and its position
    along the cycle counted from that element.
    """
    n = len(nxt)
    ring = np.arange(n)
    jump = nxt.copy()
    while True:  # ring[i] = min over 2**k successors; stable means the whole cycle is seen
        new = np.minimum(ring, ring[jump])
        if np.array_equal(new, ring):
            break
        ring, jump = new, jump[jump]
    head = ring == np.arange(n)
    # steps forward to the head: list ranking with the head as a fixed point
    dist = (~head).astype(np.int64)
    jump = np.where(head, np.arange(n), nxt)
    while not np.array_equal(jump, ring):
        dist, jump = dist + dist[jump], jump[jump]
    length = np.bincount(ring, minlength=n)[ring]
    return ring, (length - dist) % length


# --------------------------------------------------------------------------- annotations


def _class_table(classes: Iterable[ClassInfo] | Mapping[str, int] | None) -> dict[int, ClassInfo]:
    if classes is None:
        return {}
    if isinstance(classes, Mapping):
        items = [ClassInfo(n, lab, default_color(lab)) for n, lab in classes.items() if lab > 0]
    else:
        items = list(classes)
    return {c.label: c for c in items}


def _to_annotations(
    polygons: np.ndarray,
    labels: np.ndarray,
    table: dict[int, ClassInfo],
    downsample: float,
    simplify: float,
    offset: tuple[float, float] = (0.0, 0.0),
) -> AnnotationSet:
    """Scale to level-0 coordinates, sort, name the classes and build the set."""
    if len(polygons) and simplify > 0:
        polygons = shapely.coverage_simplify(polygons, simplify)
    if len(polygons) and downsample != 1.0:
        polygons = shapely.transform(polygons, lambda xy: xy * downsample)
    if len(polygons) and offset != (0.0, 0.0):
        shift = np.array([offset[1], offset[0]])  # shapely coordinates are (x, y)
        polygons = shapely.transform(polygons, lambda xy: xy + shift)
    bounds = shapely.bounds(polygons) if len(polygons) else np.zeros((0, 4))
    order = np.lexsort((bounds[:, 0], bounds[:, 1], labels))
    unnamed = sorted({int(v) for v in labels} - set(table))
    if unnamed:
        warnings.warn(
            f"labels {unnamed} are not in the class table; named 'Class <label>'",
            AnnotationWarning,
            stacklevel=2,  # iter_vectorise: what calls it is a driver, not the user's code
        )
    table = dict(table)
    for lab in unnamed:
        table[lab] = ClassInfo(f"Class {lab}", lab, default_color(lab))
    annotations = [
        Annotation(polygons[k], table[int(labels[k])].name, table[int(labels[k])].color)
        for k in order
        if not polygons[k].is_empty
    ]
    return AnnotationSet(tuple(annotations), tuple(table[lab] for lab in sorted(table)))
