"""Streaming pyramidal OME-TIFF writer for label maps and probability maps.

QuPath, Bio-Formats and most slide viewers read a tiled OME-TIFF with its lower resolutions in
SubIFDs; :func:`iter_write_ome_tiff` (eager twin :func:`write_ome_tiff`) writes one from an
array of any size without holding a level in memory. Tiles are handed to tifffile one by one
from generators. While level ``k`` is written, each of its tiles is also downsampled into a
temporary chunk file (next to the output, deleted at the end), from which level ``k + 1`` is
written in turn; so every level is computed from the one above it exactly as in the OME-Zarr
writer (see :mod:`napari_msunet.io.writers`), and the source is read once.

tifffile pulls the tiles inside one ``write`` call per level, so the writing runs in a thread
(:func:`~napari_msunet.io.writers.iter_in_thread`) and the generator yields the progress it
reports; a stop or a ``close()`` makes the tile iterator raise at the next tile, the thread
unwinds, and the temporary files are deleted.

Compression is lossless: deflate (``'zlib'``, TIFF's Adobe deflate) by default; ``'lzw'``,
``'zstd'`` or ``None`` can be chosen, zstd being faster but unknown to some readers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_msunet._atomic import write_error
from napari_msunet.errors import WriterError
from napari_msunet.io._ome_metadata import ome_xml_metadata
from napari_msunet.io.writers import (
    DEFAULT_CHUNK,
    Kind,
    check_mpp,
    check_positive_int,
    check_source,
    check_target,
    class_metadata,
    default_n_levels,
    downsample,
    iter_in_thread,
    iter_regions,
    level_shapes,
    partial_path,
    prefetched,
    publish,
    read_block,
    read_step,
)
from napari_msunet.progress import Progress, Stop, eager

__all__ = ["iter_write_ome_tiff", "write_ome_tiff"]

_LOSSLESS = {
    None: None,
    "none": None,
    "zlib": "zlib",
    "deflate": "zlib",
    "lzw": "lzw",
    "zstd": "zstd",
}
_BIGTIFF_BYTES = 2**31  # uncompressed size above which BigTIFF is used

Region = tuple[int, int, int, int]


def iter_write_ome_tiff(
    path: str | os.PathLike[str],
    source: Any,
    *,
    kind: Kind | None = None,
    mpp: float | None = None,
    tile: int = DEFAULT_CHUNK,
    n_levels: int | None = None,
    compression: str | None = "zlib",
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Any] | None = None,
    overwrite: bool = False,
    workers: int = 2,
    stop: Stop = None,
) -> Generator[Progress, None, Path | None]:
    """Write a 2-D label array or a CYX probability array to a tiled, pyramidal OME-TIFF.

    A generator (GUIDE: "Long work is a generator"): it yields a
    :class:`~napari_msunet.progress.Progress` per tile, stage ``"write"`` for level 0 (and the
    copy of a lazy source that precedes it, see :class:`_Pyramid`) and ``"pyramid"`` for the
    lower levels, and returns the output path. :func:`write_ome_tiff` is its eager twin.

    Parameters
    ----------
    path : str or PathLike
        The output file (``.ome.tif`` by convention). It is written as ``<path>.partial`` and
        renamed when complete.
    source : array-like
        NumPy, dask or zarr array: ``(Y, X)`` integer labels or ``(C, Y, X)`` probabilities
        (unsigned integers or floats). Read one tile (all channels) at a time.
    kind : {'labels', 'probabilities'}, optional
        Inferred from the number of dimensions when omitted.
    mpp : float, optional
        Level-0 µm per pixel, written as OME ``PhysicalSizeX/Y`` (µm) and as TIFF resolution
        (per level). Left out when unknown.
    tile : int
        Tile edge in pixels, a multiple of 16 (TIFF's rule); default 512.
    n_levels : int, optional
        Levels including level 0; default: halve until the smaller side < ``tile``.
    compression : {'zlib', 'lzw', 'zstd', None}
        Lossless codec; 'zlib' (deflate) is read everywhere.
    class_names, class_colors : sequence, optional
        Names and colours of label values ``0, 1, ...`` (stored in an OME MapAnnotation in the
        ``napari-msunet/classes`` namespace) or of channels (OME ``Channel`` names and colours).
    overwrite : bool
        Replace an existing file (atomically); otherwise refuse.
    workers : int
        Threads for reading the source and for compressing tiles.
    stop : threading.Event or callable, optional
        Checked after every tile (:func:`~napari_msunet.progress.stopped`). Once set, the
        writing ends at the next tile, every temporary file is deleted and ``None`` is
        returned; an existing output is left as it was. Closing the generator does the same.

    Returns
    -------
    Path or None
        The output path, or ``None`` when stopped (nothing was written).

    Raises
    ------
    WriterError
        Bad source or parameters, an existing output without ``overwrite``, or an I/O failure;
        the message names the path. Temporary files are removed.
    """
    p = Path(path)
    k, dtype = check_source(source, kind, p)
    if dtype.itemsize > 4 and dtype.kind in "iu":
        raise WriterError(p, f"OME-TIFF has no {dtype} pixels; cast the labels to uint32 or less")
    tile = check_positive_int(tile, "tile", p, minimum=16)
    if tile % 16:
        raise WriterError(p, f"tile must be a multiple of 16, not {tile}")
    key = compression.lower() if isinstance(compression, str) else compression
    if key not in _LOSSLESS:
        raise WriterError(
            p, f"compression must be one of zlib, lzw, zstd or None, not {compression!r}"
        )
    mpp = check_mpp(mpp, p)
    shape = tuple(int(s) for s in source.shape)
    channels = 1 if k == "labels" else shape[0]
    n = default_n_levels(shape, tile) if n_levels is None else n_levels
    n = check_positive_int(n, "n_levels", p)
    names, colors = class_metadata(
        k, channels if k == "probabilities" else 2, class_names, class_colors, p
    )
    check_target(p, overwrite)

    tmp = partial_path(p)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{p.name}.levels-", dir=p.parent))
    except OSError as exc:
        raise write_error(p, exc, "cannot create a temporary folder next to the output") from exc

    def write(report: Callable[..., None]) -> None:
        """Write the whole file under ``tmp`` (runs in a thread, see ``iter_in_thread``)."""
        pyramid = _Pyramid(p, source, k, dtype, shape, n, tile, work, workers, report)
        try:
            pyramid.stage()
            options: dict[str, Any] = {
                "dtype": dtype,
                "tile": (tile, tile),
                "photometric": "minisblack",
                "compression": _LOSSLESS[key],
                "maxworkers": max(1, workers),
                # tifffile batches this many bytes of tiles per compression round (default
                # 256 MB)
                "buffersize": max(4 << 20, 4 * workers * tile * tile * dtype.itemsize),
            }
            total = sum(channels * h * w for h, w in pyramid.shapes) * dtype.itemsize
            with tifffile.TiffWriter(tmp, bigtiff=total > _BIGTIFF_BYTES, ome=True) as tif:
                for level, (h, w) in enumerate(pyramid.shapes):
                    extra: dict[str, Any] = (
                        {"subfiletype": 1}
                        if level
                        else {
                            "subifds": n - 1,
                            "metadata": ome_xml_metadata(k, mpp, names, colors),
                        }
                    )
                    if mpp is not None:
                        res = 1e4 / (mpp * 2**level)
                        extra |= {"resolution": (res, res), "resolutionunit": "CENTIMETER"}
                    lvl_shape = (h, w) if k == "labels" else (channels, h, w)
                    tif.write(pyramid.tiles(level), shape=lvl_shape, **options, **extra)
        finally:
            pyramid.close()

    try:
        try:
            finished, _ = yield from iter_in_thread(write, stop)
        except WriterError:
            raise
        except OSError as exc:  # a full disk, a read-only folder: said in words, nothing stays
            raise write_error(p, exc, "cannot write the OME-TIFF") from exc
        except (ValueError, tifffile.OmeXmlError) as exc:
            raise WriterError(p, f"cannot write the OME-TIFF: {exc}") from exc
        if not finished:
            return None
        publish(tmp, p, overwrite)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return p


write_ome_tiff = eager(iter_write_ome_tiff)


def _chunks_divide(source: Any, tile: int) -> bool:
    """Whether each tile covers whole source chunks (so no source chunk is read twice)."""
    chunks = getattr(source, "chunks", None)
    if chunks is None:
        return True
    try:
        return all(
            tile % int(c) == 0
            for axis in chunks[-2:]
            for c in (axis[:-1] if isinstance(axis, tuple) else (axis,))
        )
    except (TypeError, ValueError, ZeroDivisionError):
        return False


class _ChunkFile:
    """A temporary level: zstd-compressed square chunks appended to one file, indexed in memory.

    Thousands of small files (a zarr store) cost milliseconds each to create; appending to one
    file costs microseconds. The index holds two integers per chunk.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int], chunk: int, dtype: np.dtype):
        self.shape, self.chunk, self.dtype = shape, chunk, dtype
        c, h, w = shape
        self.index = np.full((c, -(-h // chunk), -(-w // chunk), 2), -1, dtype=np.int64)
        self.fh = path.open("w+b")
        self.end = 0
        self.lock = threading.Lock()

    def put(self, y: int, x: int, block: np.ndarray, c: int | None = None) -> None:
        """Store a ``(C, h, w)`` block (or channel ``c`` of one, ``(h, w)``) at chunk-aligned
        ``(y, x)``; ``h`` and ``w`` are multiples of the chunk except at the right/bottom edge.
        """
        block3 = block[None] if c is not None else block
        channels = range(self.shape[0]) if c is None else (c,)
        n = self.chunk
        for i, ch in enumerate(channels):
            for by in range(0, block3.shape[1], n):
                for bx in range(0, block3.shape[2], n):
                    sub = np.ascontiguousarray(block3[i, by : by + n, bx : bx + n])
                    data = _zstd().zstd_encode(sub, level=1)
                    with self.lock:
                        offset, self.end = self.end, self.end + len(data)
                    os.pwrite(self.fh.fileno(), data, offset)
                    self.index[ch, (y + by) // n, (x + bx) // n] = (offset, len(data))

    def get(self, c: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Read channel ``c`` of the region ``(y, x, h, w)``; unwritten chunks read as 0."""
        n, (_, sh, sw) = self.chunk, self.shape
        out = np.zeros((h, w), dtype=self.dtype)
        for cy in range(y // n, -(-(y + h) // n)):
            for cx in range(x // n, -(-(x + w) // n)):
                offset, length = self.index[c, cy, cx]
                if offset < 0:
                    continue
                raw = _zstd().zstd_decode(os.pread(self.fh.fileno(), int(length), int(offset)))
                y0, x0 = cy * n, cx * n
                chunk = np.frombuffer(raw, self.dtype).reshape(min(n, sh - y0), min(n, sw - x0))
                ya, yb = max(y, y0), min(y + h, y0 + chunk.shape[0])
                xa, xb = max(x, x0), min(x + w, x0 + chunk.shape[1])
                out[ya - y : yb - y, xa - x : xb - x] = chunk[ya - y0 : yb - y0, xa - x0 : xb - x0]
        return out

    def close(self) -> None:
        self.fh.close()


class _Pyramid:
    """Yields the tiles of each level in TIFF order and fills the next level as it goes.

    Levels 1.. live in temporary chunk files with ``tile / 2`` chunks, so the downsampled tile
    of level ``k`` is exactly one chunk of level ``k + 1``. A lazy source is first copied to a
    chunk file in regions aligned to its own chunks when tiles would not be (a 1024 dask chunk
    read per 512 tile is computed four times) or when it has several channels (TIFF wants
    channel 0 in full before channel 1, and reading one channel of a chunk computes them all).
    """

    def __init__(
        self,
        path: Path,
        source: Any,
        kind: Kind,
        dtype: np.dtype,
        shape: tuple[int, ...],
        n_levels: int,
        tile: int,
        work: Path,
        workers: int,
        report: Callable[..., None] = lambda *_: None,
    ) -> None:
        self.kind, self.dtype, self.tile, self.workers = kind, dtype, tile, max(1, workers)
        self.path = path
        self.report = report
        self.channels = 1 if kind == "labels" else shape[0]
        self.shapes = level_shapes(shape, n_levels)
        self.source = source
        self.files = {
            lvl: _ChunkFile(work / str(lvl), (self.channels, *hw), tile // 2, dtype)
            for lvl, hw in enumerate(self.shapes)
            if lvl > 0
        }
        self.staged = not isinstance(source, np.ndarray) and (
            self.channels > 1 or not _chunks_divide(source, tile)
        )
        self._step = read_step(source, tile, limit=2048)
        n_tiles = [self.channels * _n_regions(hw, tile) for hw in self.shapes]
        # "write": the copy of a staged source, then level 0; "pyramid": levels 1..
        self._totals = {
            "write": n_tiles[0] + (_n_regions(self.shapes[0], self._step) if self.staged else 0),
            "pyramid": sum(n_tiles[1:]),
        }
        self._done = dict.fromkeys(self._totals, 0)
        if self.staged:
            self.files[0] = _ChunkFile(work / "0", (self.channels, *self.shapes[0]), tile, dtype)

    def close(self) -> None:
        """Close the temporary files (the caller deletes their folder)."""
        for f in self.files.values():
            f.close()

    def _count(self, stage: str, message: str) -> None:
        """One more tile (or staged region) of ``stage`` is done: tell the driver."""
        self._done[stage] += 1
        self.report(self._done[stage], self._totals[stage], stage, message)

    def _read_source(self, index: tuple[slice | int, ...]) -> np.ndarray:
        try:
            block = read_block(self.source, index)
        except Exception as exc:
            where = ", ".join(
                f"{i.start}:{i.stop}" if isinstance(i, slice) else str(i) for i in index
            )
            raise WriterError(self.path, f"cannot read the source at [{where}]: {exc}") from exc
        return block.astype(self.dtype, copy=False)

    def stage(self) -> None:
        """Copy a source that needs it (``staged``), in regions aligned to its chunks, and fill
        level 1 on the way; nothing to do for the others."""
        if not self.staged:
            return
        lead: tuple[slice, ...] = () if self.kind == "labels" else (slice(None),)

        def one(region: Region) -> None:
            y, x, h, w = region
            block = self._read_source((*lead, slice(y, y + h), slice(x, x + w)))
            block = block.reshape(self.channels, h, w)
            self.files[0].put(y, x, block)
            if 1 in self.files:
                self.files[1].put(y // 2, x // 2, downsample(block, self.kind))

        regions = iter_regions(self.shapes[0], self._step)
        for _ in prefetched(one, regions, workers=self.workers):
            self._count("write", "copying the source")

    def tiles(self, level: int) -> Iterator[np.ndarray]:
        """Tiles of ``level`` in tifffile's order: channel by channel, rows of tiles."""
        fill_next = level + 1 in self.files and not (level == 0 and self.staged)

        def one(item: tuple[int, Region]) -> np.ndarray:
            c, (y, x, h, w) = item
            if level in self.files:
                block = self.files[level].get(c, y, x, h, w)
            else:
                index = (slice(y, y + h), slice(x, x + w))
                block = self._read_source(index if self.kind == "labels" else (c, *index))
            if fill_next:
                self.files[level + 1].put(y // 2, x // 2, downsample(block, self.kind), c)
            return block

        items = (
            (c, r)
            for c in range(self.channels)
            for r in iter_regions(self.shapes[level], self.tile)
        )
        stage = "pyramid" if level else "write"
        message = f"level {level} of {len(self.shapes) - 1}" if level else "level 0"
        for block in prefetched(one, items, workers=self.workers):
            self._count(stage, message)
            yield block


def _n_regions(shape: tuple[int, int], step: int) -> int:
    """How many ``step``-sized regions :func:`iter_regions` gives for ``shape``."""
    return -(-shape[0] // step) * -(-shape[1] // step)


def _zstd():
    """imagecodecs, imported when a tile is coded: importing the I/O layer needs no codecs."""
    import imagecodecs

    return imagecodecs
