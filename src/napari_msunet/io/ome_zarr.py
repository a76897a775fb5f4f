"""Streaming, resumable OME-Zarr (zarr v3, OME-NGFF 0.5) writer for label maps and probabilities.

The inference engine produces a slide-sized output a tile at a time and may be cancelled at any
moment; :class:`OmeZarrWriter` takes those tiles (``write_region``) in any order, aligned to its
chunks or not, keeps a record of what is written so a rerun resumes, and builds the lower
pyramid levels and the metadata in :meth:`OmeZarrWriter.finalize`. Nothing is visible under the
final name until then (see :mod:`napari_msunet.io.writers` for the pyramid and the publishing
rules). :func:`iter_write_ome_zarr` (eager twin :func:`write_ome_zarr`) streams a whole (lazy)
array through the writer.

Layout of the output folder::

    <name>/zarr.json       group; attributes["ome"] = multiscales (+ image-label for labels)
    <name>/0, 1, ...       one array per level; dimension_names y, x (or c, y, x)

Only one writer may work on a path at a time. Blocks written concurrently from several threads
must not share a chunk (a block that covers part of a chunk is merged into it by reading and
rewriting the chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Generator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from napari_msunet._atomic import os_error_reason, write_error
from napari_msunet.errors import WriterError
from napari_msunet.io._done_log import DoneLog
from napari_msunet.io._ome_metadata import ngff_metadata
from napari_msunet.io.writers import (
    DEFAULT_CHUNK,
    Kind,
    check_dtype,
    check_kind,
    check_mpp,
    check_positive_int,
    check_source,
    check_target,
    class_metadata,
    default_n_levels,
    downsample,
    iter_regions,
    level_shapes,
    partial_path,
    prefetched,
    publish,
    read_block,
    read_step,
    remove_path,
)
from napari_msunet.progress import Progress, Stop, eager, stopped

__all__ = ["OmeZarrWriter", "iter_write_ome_zarr", "write_ome_zarr"]

_PARAMS_KEY = "napari_msunet"
_DONE_LOG = "msunet-done.jsonl"


async def _others_finished(timeout: float) -> None:
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    if others:
        await asyncio.wait(others, timeout=timeout)
    for task in others:  # their errors are the one already reported: mark them read
        if task.done() and not task.cancelled():
            task.exception()


def settle_zarr_io(timeout: float = 10.0) -> None:
    """Wait until zarr's writes still in flight have ended (at most ``timeout`` s).

    zarr writes a node's metadata files with ``asyncio.gather``, which raises at the first
    failure (a full disk) and leaves the other writes running in zarr's threads. Removing the
    half-made store under them would let a late write recreate its folder, and a process
    that exits at once leaves their errors unread, which asyncio prints as a traceback after
    the clean error message. Called before deleting a store after an error or a cancel.
    """
    from zarr.core.sync import sync

    with contextlib.suppress(Exception):
        sync(_others_finished(timeout))


class OmeZarrWriter:
    """Write a label map or a probability map to a pyramidal OME-Zarr, block by block.

    Parameters
    ----------
    path : str or PathLike
        The final output folder (e.g. ``slide.labels.ome.zarr``). Work happens in
        ``<path>.partial``, which is renamed to ``path`` by :meth:`finalize`.
    shape : tuple of int
        Level-0 ``(Y, X)`` of the output.
    kind : {'labels', 'probabilities'}
        Labels are ``(Y, X)`` integers, downsampled by subsampling; probabilities are
        ``(C, Y, X)`` (typically uint8, ``p * 255``), downsampled by the mean.
    n_channels : int, optional
        Channels of a probability map; defaults to ``len(class_names)``.
    dtype : dtype, optional
        Stored type; default uint8. Blocks of other types are accepted when they cast safely.
    chunk : int
        Chunk edge in pixels (default 512). Blocks aligned to it are written fastest.
    n_levels : int, optional
        Pyramid levels including level 0; default: halve until the smaller side < ``chunk``.
    mpp : float, optional
        Level-0 µm per pixel. Scales are in micrometres when known, in pixels otherwise.
    class_names, class_colors : sequence, optional
        Names and colours of label values ``0, 1, ...`` (labels) or of channels
        (probabilities); written as OME-NGFF ``image-label`` (labels) or ``omero`` channels.
    fill_value : int or float
        Value of never-written pixels (e.g. skipped background tiles).
    overwrite : bool
        Replace an existing output at ``path`` when finalizing; otherwise refuse at once.
    resume : bool
        When ``<path>.partial`` exists from an interrupted run with the same parameters, keep
        its written blocks (default). With different parameters a :class:`WriterError` is
        raised. ``resume=False`` deletes it and starts afresh.

    Raises
    ------
    WriterError
        Bad parameters, an existing output without ``overwrite``, a partial output that does
        not match, or a folder that cannot be written; the message names the path.

    Examples
    --------
    >>> with OmeZarrWriter("out.ome.zarr", (2000, 3000), kind="labels", mpp=1.0) as w:
    ...     for y, x, tile in tiles:
    ...         if not w.is_done(y, x, *tile.shape):
    ...             w.write_region(y, x, tile)
    ...     w.finalize()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        shape: Sequence[int],
        *,
        kind: Kind = "labels",
        n_channels: int | None = None,
        dtype: Any = np.uint8,
        chunk: int = DEFAULT_CHUNK,
        n_levels: int | None = None,
        mpp: float | None = None,
        class_names: Sequence[str] | None = None,
        class_colors: Sequence[Any] | None = None,
        fill_value: float = 0,
        overwrite: bool = False,
        resume: bool = True,
    ) -> None:
        self.path = Path(path)
        p = self.path
        self.kind = check_kind(kind, p)
        if len(shape) != 2:
            raise WriterError(p, f"shape must be the level-0 (Y, X), not {tuple(shape)}")
        self.shape = (
            check_positive_int(shape[0], "height", p),
            check_positive_int(shape[1], "width", p),
        )
        self.dtype = check_dtype(self.kind, dtype, p)
        self.chunk = check_positive_int(chunk, "chunk", p, minimum=16)
        if self.kind == "probabilities":
            if n_channels is None:
                if class_names is None:
                    raise WriterError(p, "probabilities need n_channels or class_names")
                n_channels = len(class_names)
            self.n_channels = check_positive_int(n_channels, "n_channels", p)
        else:
            if n_channels not in (None, 1):
                raise WriterError(p, f"labels have one channel, not n_channels={n_channels}")
            self.n_channels = 1
        default = default_n_levels(self.shape, self.chunk)
        self.n_levels = default if n_levels is None else check_positive_int(n_levels, "n_levels", p)
        self.mpp = check_mpp(mpp, p)
        n_values = self.n_channels if self.kind == "probabilities" else 2
        self.class_names, self.class_colors = class_metadata(
            self.kind, n_values, class_names, class_colors, p
        )
        try:
            self.fill_value = np.array(fill_value, dtype=self.dtype).item()
        except (OverflowError, TypeError, ValueError) as exc:
            raise WriterError(p, f"fill_value {fill_value!r} does not fit {self.dtype}") from exc
        self.overwrite = overwrite
        self.level_shapes = level_shapes(self.shape, self.n_levels)
        self.partial_path = partial_path(p)
        self._finalized = False
        self._params = self._param_record()

        check_target(p, overwrite)
        self.resumed = False
        try:
            if self.partial_path.exists() and not resume:
                remove_path(self.partial_path)
            if self.partial_path.exists():
                self._open_existing()
                self.resumed = True
            else:
                self._create()
        except OSError as exc:
            raise write_error(
                p, exc, f"cannot prepare the partial output {self.partial_path}"
            ) from exc
        self._done = DoneLog(self.partial_path / _DONE_LOG, self.shape)

    # ---------------------------------------------------------------------------------------
    # setup

    def _param_record(self) -> dict[str, Any]:
        """The parameters a resumed run must share, as JSON (also kept in the output)."""
        return {
            "kind": self.kind,
            "shape": list(self.shape),
            "n_channels": self.n_channels,
            "dtype": self.dtype.str,
            "chunk": self.chunk,
            "n_levels": self.n_levels,
            "mpp": self.mpp,
            "class_names": self.class_names,
            "class_colors": self.class_colors,
            "fill_value": self.fill_value,
            "downsampling": "subsample [::2, ::2]" if self.kind == "labels" else "mean 2x2",
        }

    def _array_shape(self, level: int) -> tuple[int, ...]:
        h, w = self.level_shapes[level]
        return (h, w) if self.kind == "labels" else (self.n_channels, h, w)

    def _create(self) -> None:
        """Build the empty partial store under a unique name, then rename it into place."""
        tmp = self.path.with_name(f".{self.path.name}.init-{os.getpid()}")
        remove_path(tmp)
        try:
            group = zarr.open_group(LocalStore(tmp), mode="w", zarr_format=3)
            dims = ["y", "x"] if self.kind == "labels" else ["c", "y", "x"]
            chunks = (
                (self.chunk, self.chunk) if self.kind == "labels" else (1, self.chunk, self.chunk)
            )
            for level in range(self.n_levels):
                group.create_array(
                    str(level),
                    shape=self._array_shape(level),
                    chunks=chunks,
                    dtype=self.dtype,
                    fill_value=self.fill_value,
                    dimension_names=dims,
                )
            group.attrs[_PARAMS_KEY] = self._params
            os.rename(tmp, self.partial_path)
        except BaseException:  # a full disk half-way: no half-made store is left behind
            settle_zarr_io()
            with contextlib.suppress(OSError):
                remove_path(tmp)
            raise
        self._open_store()

    def _open_store(self) -> None:
        self._group = zarr.open_group(LocalStore(self.partial_path), mode="r+", zarr_format=3)
        self._arrays = [self._group[str(level)] for level in range(self.n_levels)]

    def _open_existing(self) -> None:
        """Reopen an interrupted partial output after checking it was made with our parameters."""
        p = self.partial_path
        try:
            stored = zarr.open_group(LocalStore(p), mode="r", zarr_format=3).attrs.get(_PARAMS_KEY)
        except Exception as exc:
            raise WriterError(
                p, f"not a resumable partial output ({exc}); pass resume=False to discard it"
            ) from exc
        if stored != json.loads(json.dumps(self._params)):
            diff = sorted(
                k
                for k in self._params
                if not isinstance(stored, dict)
                or stored.get(k) != json.loads(json.dumps(self._params[k]))
            )
            raise WriterError(
                p,
                "an interrupted output with different parameters "
                f"({', '.join(diff) or 'unknown'}) exists; use the same parameters to resume it "
                "or pass resume=False to discard it",
            )
        try:
            self._open_store()
        except Exception as exc:
            raise WriterError(
                p, f"the partial output is damaged ({exc}); pass resume=False"
            ) from exc

    # ---------------------------------------------------------------------------------------
    # writing

    def write_region(self, y: int, x: int, block: Any) -> None:
        """Store a level-0 block with its top-left corner at ``(y, x)`` and record it as done.

        ``block`` is ``(h, w)`` for labels and ``(C, h, w)`` for probabilities; it must lie
        inside the output and cast safely to the output dtype.
        """
        self._check_open()
        p = self.path
        data = np.asarray(block)
        if data.dtype == np.bool_ and self.kind == "labels":
            data = data.astype(self.dtype)
        want = 2 if self.kind == "labels" else 3
        if data.ndim != want or (want == 3 and data.shape[0] != self.n_channels):
            expect = "(h, w)" if want == 2 else f"({self.n_channels}, h, w)"
            raise WriterError(p, f"a {self.kind} block must be {expect}, got shape {data.shape}")
        h, w = data.shape[-2:]
        if h == 0 or w == 0:
            return
        y, x = int(y), int(x)
        if y < 0 or x < 0 or y + h > self.shape[0] or x + w > self.shape[1]:
            raise WriterError(
                p, f"block of {h} × {w} at (y={y}, x={x}) is outside the output {self.shape}"
            )
        if data.dtype != self.dtype:
            if not np.can_cast(data.dtype, self.dtype, casting="safe"):
                raise WriterError(
                    p,
                    f"block dtype {data.dtype} does not fit the output dtype {self.dtype}; "
                    "cast it first (probabilities: uint8 = round(p * 255))",
                )
            data = data.astype(self.dtype)
        index = (slice(y, y + h), slice(x, x + w))
        try:
            self._arrays[0][index if want == 2 else (slice(None), *index)] = data
        except Exception as exc:
            why = os_error_reason(exc, p) if isinstance(exc, OSError) else exc
            raise WriterError(p, f"cannot write the block at (y={y}, x={x}): {why}") from exc
        self._done.add(y, x, h, w)

    def is_done(self, y: int, x: int, h: int, w: int) -> bool:
        """Return whether the level-0 region is entirely covered by blocks already written."""
        return self._done.covered(int(y), int(x), int(h), int(w))

    def read_region(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Read back a level-0 block: ``(h, w)`` labels or ``(C, h, w)`` probabilities.

        Meaningful where :meth:`is_done` says the block was written (elsewhere it holds the
        fill value); used to take over the tiles another run of the same prediction wrote.
        """
        self._check_open()
        index = (slice(int(y), int(y) + h), slice(int(x), int(x) + w))
        lead = () if self.kind == "labels" else (slice(None),)
        try:
            return np.asarray(self._arrays[0][(*lead, *index)])
        except Exception as exc:
            raise WriterError(self.path, f"cannot read the block at (y={y}, x={x}): {exc}") from exc

    def done_regions(self) -> list[tuple[int, int, int, int]]:
        """Return the written level-0 blocks as ``(y, x, h, w)``, including resumed ones."""
        return self._done.regions()

    def done_chunks(self) -> np.ndarray:
        """Return a boolean grid over the level-0 chunks: True where a chunk is fully written."""
        h, w = self.shape
        ys = [*range(0, h, self.chunk), h]
        xs = [*range(0, w, self.chunk), w]
        return self._done.coverage_grid(ys, xs)

    # ---------------------------------------------------------------------------------------
    # finishing

    def iter_finalize(
        self, workers: int = 2, stop: Stop = None
    ) -> Generator[Progress, None, Path | None]:
        """Build levels 1.., write the OME-NGFF metadata and publish the output under its name.

        Each chunk of level ``k`` is computed from the matching ``2 * chunk`` square of level
        ``k - 1`` (``workers`` threads), so memory stays at a few chunks. A generator: yields a
        :class:`~napari_msunet.progress.Progress` (stage ``"pyramid"``) per chunk and returns
        the path; :meth:`finalize` is its eager twin. When ``stop`` is set (checked after every
        chunk) it returns ``None`` with nothing published: the partial output stays, and a
        later ``finalize`` builds the levels again from level 0.
        """
        self._check_open()
        regions = {
            level: list(iter_regions(self.level_shapes[level], self.chunk))
            for level in range(1, self.n_levels)
        }
        total, done, last = sum(map(len, regions.values())), 0, self.n_levels - 1
        workers = max(1, workers)
        try:
            for level, todo in regions.items():
                # one level at a time: a level is read only once the one above is written
                items = [(level, r) for r in todo]
                with contextlib.closing(
                    prefetched(self._downsample_region, items, depth=2 * workers, workers=workers)
                ) as running:
                    for _ in running:
                        done += 1
                        yield Progress(done, total, "pyramid", f"level {level} of {last}")
                        if stopped(stop):
                            return None
            ome = ngff_metadata(
                self.kind,
                self.path.name,
                self.n_levels,
                self.mpp,
                self.dtype,
                self.n_channels,
                self.class_names,
                self.class_colors,
            )
            self._group.attrs.update({"ome": ome, _PARAMS_KEY: self._params})
        except OSError as exc:
            raise write_error(self.path, exc, "cannot write the pyramid") from exc
        self._done.close()
        publish(self.partial_path, self.path, self.overwrite)
        self._finalized = True
        # the progress record goes last: until the rename, a crash must still be resumable
        (self.path / _DONE_LOG).unlink(missing_ok=True)
        return self.path

    finalize = eager(iter_finalize)

    def _downsample_region(self, item: tuple[int, tuple[int, int, int, int]]) -> None:
        """Compute one chunk-aligned region of a level from the level above it.

        Regions of one level never share a chunk, so several threads may write them at once.
        """
        level, (y, x, h, w) = item
        src, dst = self._arrays[level - 1], self._arrays[level]
        sh, sw = self.level_shapes[level - 1]
        lead = () if self.kind == "labels" else (slice(None),)
        block = src[(*lead, slice(2 * y, min(2 * (y + h), sh)), slice(2 * x, min(2 * (x + w), sw)))]
        dst[(*lead, slice(y, y + h), slice(x, x + w))] = downsample(block, self.kind)

    def discard(self) -> None:
        """Delete the partial output (a cancel that should not be resumed)."""
        self.close()
        settle_zarr_io()
        remove_path(self.partial_path)
        self._finalized = True

    def close(self) -> None:
        """Close the progress record; the partial output stays for a later resume."""
        if hasattr(self, "_done"):
            self._done.close()

    def _check_open(self) -> None:
        if self._finalized:
            raise WriterError(self.path, "the writer is finalized or discarded; open a new one")

    def __enter__(self) -> OmeZarrWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"OmeZarrWriter({str(self.path)!r}, shape={self.shape}, kind={self.kind!r}, "
            f"n_levels={self.n_levels}, chunk={self.chunk}, resumed={self.resumed})"
        )


def iter_write_ome_zarr(
    path: str | os.PathLike[str],
    source: Any,
    *,
    kind: Kind | None = None,
    mpp: float | None = None,
    chunk: int = DEFAULT_CHUNK,
    n_levels: int | None = None,
    class_names: Sequence[str] | None = None,
    class_colors: Sequence[Any] | None = None,
    overwrite: bool = False,
    resume: bool = True,
    stop: Stop = None,
) -> Generator[Progress, None, Path | None]:
    """Write a 2-D label array or a CYX probability array to a pyramidal OME-Zarr.

    The source (NumPy, dask or zarr) is read one region at a time, a few regions ahead in
    threads, so a lazy source of any size streams through in bounded memory. Bool sources are
    written as uint8. See :class:`OmeZarrWriter` for the parameters.

    A generator (GUIDE: "Long work is a generator"): it yields a
    :class:`~napari_msunet.progress.Progress` per region (stage ``"write"``) and per pyramid
    chunk (stage ``"pyramid"``) and returns the output path; :func:`write_ome_zarr` is its
    eager twin.

    Interruptions. ``stop`` (a ``threading.Event`` or a callable, checked after every region
    and chunk) and ``close()`` are a user's cancel: the partial output is deleted and ``None``
    returned, so nothing of the cancelled write stays on disk. An error (an unreadable source,
    a full disk) or a crash keeps ``<path>.partial``: called again with the same arguments, the
    write resumes where it failed (``resume=False`` starts afresh).

    Returns
    -------
    Path or None
        The output path, or ``None`` when stopped.
    """
    p = Path(path)
    k, dtype = check_source(source, kind, p)
    shape = tuple(int(s) for s in source.shape)
    writer = OmeZarrWriter(
        p,
        shape[-2:],
        kind=k,
        n_channels=shape[0] if k == "probabilities" else None,
        dtype=dtype,
        chunk=chunk,
        n_levels=n_levels,
        mpp=mpp,
        class_names=class_names,
        class_colors=class_colors,
        overwrite=overwrite,
        resume=resume,
    )
    lead = () if k == "labels" else (slice(None),)
    c = writer.chunk
    step = read_step(source, c, limit=2048)
    done = writer.done_chunks()
    todo = [
        r
        for r in iter_regions(shape, step)
        if not done[r[0] // c : -(-(r[0] + r[2]) // c), r[1] // c : -(-(r[1] + r[3]) // c)].all()
    ]

    def copy(region: tuple[int, int, int, int]) -> None:
        # regions are whole chunks, so threads never write into the same chunk
        y, x, h, w = region
        try:
            block = read_block(source, (*lead, slice(y, y + h), slice(x, x + w)))
        except Exception as exc:
            raise WriterError(p, f"cannot read the source at (y={y}, x={x}): {exc}") from exc
        writer.write_region(y, x, block)

    try:
        yield Progress(0, len(todo), "write", f"writing {p.name}")
        halted = False
        # closed before anything below runs: no thread writes into a store being deleted
        with contextlib.closing(prefetched(copy, todo)) as copied:
            for n, _ in enumerate(copied, 1):
                yield Progress(n, len(todo), "write", f"writing {p.name}")
                if stopped(stop):
                    halted = True
                    break
        if not halted:
            published = yield from writer.iter_finalize(stop=stop)
            if published is not None:
                return published
        writer.discard()
        return None
    except Exception:
        writer.close()  # an error: the partial output stays for a resume
        raise
    except BaseException:  # close() (GeneratorExit) or Ctrl-C: a cancel, nothing stays
        writer.discard()
        raise


write_ome_zarr = eager(iter_write_ome_zarr)
