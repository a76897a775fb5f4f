"""Streaming pyramidal writers for label masks and probability maps: the shared part.

Two formats share one pyramid definition so that a prediction saved as OME-Zarr and the same
prediction exported as OME-TIFF hold identical pixels at every level:

- :class:`~napari_msunet.io.ome_zarr.OmeZarrWriter` and
  :func:`~napari_msunet.io.ome_zarr.write_ome_zarr`: OME-Zarr (zarr v3, OME-NGFF 0.5), fed block
  by block in any order, resumable after a crash or a cancel;
- :func:`~napari_msunet.io.ome_tiff.write_ome_tiff`: a tiled, losslessly compressed OME-TIFF
  with the lower levels in SubIFDs, for QuPath and other TIFF-only viewers.

Both whole-array writers are generators first (``iter_write_ome_zarr``,
``iter_write_ome_tiff``: GUIDE, "Long work is a generator"): they yield a
:class:`~napari_msunet.progress.Progress` per block (stage ``"write"``, then ``"pyramid"``),
take a ``stop``, and a stopped or closed one removes everything it made and returns ``None``.
``write_ome_zarr`` and ``write_ome_tiff`` are their eager twins.

Pyramid definition. Level ``k`` has shape ``ceil(shape[k-1] / 2)`` and is computed from level
``k - 1`` alone:

- labels: nearest-neighbour subsampling, ``level[k] = level[k-1][::2, ::2]`` (so
  ``level[k] = level[0][::2**k, ::2**k]``). It never invents a label that is not in the data
  (a mean or a mode of ids would), costs nothing, and keeps thin structures visible at about the
  rate a viewer needs. It is biased to the top-left pixel of each 2 × 2 block.
- probabilities: the mean of each 2 × 2 block, rounded half up for integer types. At an odd
  right/bottom edge the block is padded by repeating the edge, which makes the value the mean of
  the pixels that exist.

Level ``k`` pixel ``(i, j)`` sits at level-0 pixel ``(i * 2**k, j * 2**k)``; the metadata writes
only a per-level ``scale`` (no half-pixel translation), which is what napari's multiscale layers
assume.

Both writers build everything under a temporary sibling name (``<name>.partial``) and rename it
to the final name only when complete, so a reader never sees half an output; an existing final
output is replaced only when asked (``overwrite=True``), and then by writing the new one first.

The format-specific names can be imported from here too (``from napari_msunet.io.writers import
OmeZarrWriter``); they are loaded on first use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from napari_msunet._atomic import check_writable, write_error
from napari_msunet.errors import WriterError
from napari_msunet.progress import Progress, Stop, stopped

__all__ = [
    "DEFAULT_CHUNK",
    "PARTIAL_SUFFIX",
    "Kind",
    "default_n_levels",
    "downsample",
    "level_shapes",
    "partial_path",
]

Kind = Literal["labels", "probabilities"]
KINDS: tuple[str, ...] = ("labels", "probabilities")

#: Default chunk (OME-Zarr) and tile (OME-TIFF) edge in pixels.
DEFAULT_CHUNK = 512
#: Suffix of the temporary sibling under which an output is built.
PARTIAL_SUFFIX = ".partial"

# Default class colours (RGB) for label values 1, 2, ...; 0 (background) is transparent.
_PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 200, 0),
    (230, 40, 40),
    (40, 90, 255),
    (255, 190, 0),
    (200, 0, 200),
    (0, 200, 200),
    (255, 120, 0),
    (140, 80, 20),
    (120, 120, 120),
    (160, 255, 120),
)

T = TypeVar("T")
R = TypeVar("R")


def __getattr__(name: str) -> Any:
    """Load the format-specific writers on first use (they import this module)."""
    if name in ("OmeZarrWriter", "write_ome_zarr", "iter_write_ome_zarr"):
        from napari_msunet.io import ome_zarr

        return getattr(ome_zarr, name)
    if name in ("write_ome_tiff", "iter_write_ome_tiff"):
        from napari_msunet.io import ome_tiff

        return getattr(ome_tiff, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------
# pyramid geometry and downsampling


def default_n_levels(shape: Sequence[int], chunk: int = DEFAULT_CHUNK) -> int:
    """Return the default number of pyramid levels for a level-0 ``(Y, X)`` shape.

    Levels are added by halving until the smaller side of the last level is below ``chunk``,
    so the coarsest level fits in one chunk along its short side: the cheapest level a viewer
    can show a whole slide from.
    """
    h, w = (int(s) for s in shape[-2:])
    n = 1
    while min(h, w) >= chunk and min(h, w) > 1:
        h, w = -(-h // 2), -(-w // 2)
        n += 1
    return n


def level_shapes(shape: Sequence[int], n_levels: int) -> list[tuple[int, int]]:
    """Return the ``(Y, X)`` shape of each level: each is the ceiling of half the previous."""
    h, w = (int(s) for s in shape[-2:])
    out = [(h, w)]
    for _ in range(n_levels - 1):
        h, w = -(-h // 2), -(-w // 2)
        out.append((h, w))
    return out


def downsample_labels(block: np.ndarray) -> np.ndarray:
    """Halve the last two axes of a label block by taking every second pixel (``[::2, ::2]``)."""
    return np.ascontiguousarray(block[..., ::2, ::2])


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """Halve the last two axes by the mean of each 2 × 2 block, keeping the dtype.

    Odd trailing edges are padded by repetition, so an edge value is the mean of the pixels that
    exist. Integer results are rounded half up; a block of equal values maps to that value.
    """
    h, w = block.shape[-2:]
    if h % 2 or w % 2:
        pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
        block = np.pad(block, pad, mode="edge")
    if np.issubdtype(block.dtype, np.integer):
        acc = np.uint64 if block.dtype.itemsize > 2 else np.uint32
        s = block[..., ::2, ::2].astype(acc)
        s += block[..., 1::2, ::2]
        s += block[..., ::2, 1::2]
        s += block[..., 1::2, 1::2]
        s += 2
        s //= 4
        return s.astype(block.dtype)
    acc_f = np.float64 if block.dtype == np.float64 else np.float32
    s = block[..., ::2, ::2].astype(acc_f)
    s += block[..., 1::2, ::2]
    s += block[..., ::2, 1::2]
    s += block[..., 1::2, 1::2]
    s *= 0.25
    return s.astype(block.dtype)


def downsample(block: np.ndarray, kind: Kind) -> np.ndarray:
    """Compute the next pyramid level of a block: subsampling for labels, mean otherwise.

    A block taken at even level-``k`` coordinates downsamples to exactly the matching region of
    level ``k + 1``, which is what lets both writers build levels chunk by chunk.
    """
    return downsample_labels(block) if kind == "labels" else downsample_mean(block)


# --------------------------------------------------------------------------------------------
# validation shared by both formats


def check_kind(kind: str, path: Path) -> Kind:
    """Return ``kind`` if it is 'labels' or 'probabilities', else raise :class:`WriterError`."""
    if kind not in KINDS:
        raise WriterError(path, f"kind must be 'labels' or 'probabilities', not {kind!r}")
    return kind  # type: ignore[return-value]


def check_dtype(kind: Kind, dtype: Any, path: Path) -> np.dtype:
    """Validate the output dtype: integers for labels, unsigned integers or floats otherwise."""
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        raise WriterError(path, f"{dtype!r} is not a NumPy dtype") from exc
    if kind == "labels" and not np.issubdtype(dt, np.integer):
        raise WriterError(path, f"labels need an integer dtype (uint8 for a few classes), not {dt}")
    if kind == "probabilities" and not (
        np.issubdtype(dt, np.unsignedinteger) or np.issubdtype(dt, np.floating)
    ):
        raise WriterError(
            path,
            f"probabilities need an unsigned integer or float dtype (uint8: p * 255), not {dt}",
        )
    return dt


def check_positive_int(value: Any, name: str, path: Path, minimum: int = 1) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise WriterError(path, f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


def check_mpp(mpp: float | None, path: Path) -> float | None:
    """Return the pixel size in µm as a float, ``None`` when unknown; reject non-positive ones."""
    if mpp is None:
        return None
    try:
        value = float(mpp)
    except (TypeError, ValueError) as exc:
        raise WriterError(path, f"mpp must be a number of µm per pixel, not {mpp!r}") from exc
    if not np.isfinite(value) or value <= 0:
        raise WriterError(path, f"mpp must be a positive number of µm per pixel, not {mpp!r}")
    return value


def check_source(source: Any, kind: str | None, path: Path) -> tuple[Kind, np.dtype]:
    """Validate an array-like source (2-D labels or CYX probabilities) and infer its kind.

    Returns the kind and the dtype the output gets (bool sources are written as uint8).
    """
    shape = getattr(source, "shape", None)
    dtype = getattr(source, "dtype", None)
    if shape is None or dtype is None:
        raise WriterError(
            path, f"the source must be an array (NumPy, dask, zarr), not {type(source).__name__}"
        )
    if len(shape) not in (2, 3):
        raise WriterError(
            path,
            "the source must be 2-D (Y, X) labels or 3-D (C, Y, X) probabilities, "
            f"got shape {tuple(shape)}",
        )
    if any(int(s) < 1 for s in shape):
        raise WriterError(path, f"the source is empty (shape {tuple(shape)})")
    inferred: Kind = "labels" if len(shape) == 2 else "probabilities"
    k = check_kind(kind if kind is not None else inferred, path)
    if (k == "labels") != (len(shape) == 2):
        raise WriterError(
            path,
            f"{k} need a {'2-D (Y, X)' if k == 'labels' else '3-D (C, Y, X)'} source, "
            f"got shape {tuple(shape)}",
        )
    dt = np.dtype(np.uint8) if np.dtype(dtype) == np.bool_ else np.dtype(dtype)
    return k, check_dtype(k, dt, path)


def class_metadata(
    kind: Kind,
    n_values: int,
    class_names: Sequence[str] | None,
    class_colors: Sequence[Any] | None,
    path: Path,
) -> tuple[list[str] | None, list[list[int]]]:
    """Validate class names and colours and fill in default colours.

    ``class_names[i]`` names label value ``i`` (labels; 0 is usually background) or channel ``i``
    (probabilities). Colours are ``'#rrggbb[aa]'`` strings, 3-4 ints in 0-255 or 3-4 floats in
    0-1 (napari's convention); they come back as RGBA int lists. Without colours, value 0 of a
    label map is transparent and the others take a fixed palette.
    """
    names = None if class_names is None else [str(n) for n in class_names]
    n = n_values if names is None else len(names)
    if kind == "probabilities" and names is not None and len(names) != n_values:
        raise WriterError(path, f"{len(names)} class names for {n_values} probability channels")
    if class_colors is None:
        # value/channel 0 is background: transparent in a label map, grey as a channel
        first = [0, 0, 0, 0] if kind == "labels" else [128, 128, 128, 255]
        colors = [first if i == 0 else [*_PALETTE[(i - 1) % len(_PALETTE)], 255] for i in range(n)]
        return names, colors
    colors = [_rgba(c, path) for c in class_colors]
    if names is not None and len(colors) != len(names):
        raise WriterError(path, f"{len(colors)} class colours for {len(names)} class names")
    return names, colors


def _rgba(color: Any, path: Path) -> list[int]:
    """Parse one colour into four ints in 0-255."""
    try:
        if isinstance(color, str):
            s = color.lstrip("#")
            if len(s) not in (6, 8):
                raise ValueError(color)
            vals = [int(s[i : i + 2], 16) for i in range(0, len(s), 2)]
        else:
            seq = list(color)
            if len(seq) not in (3, 4):
                raise ValueError(color)
            if any(isinstance(v, float | np.floating) for v in seq):
                vals = [round(float(v) * 255) for v in seq]
            else:
                vals = [int(v) for v in seq]
        if len(vals) == 3:
            vals.append(255)
        if any(not 0 <= v <= 255 for v in vals):
            raise ValueError(color)
    except (TypeError, ValueError) as exc:
        raise WriterError(
            path, f"cannot read colour {color!r}: use '#rrggbb', (r, g, b[, a]) in 0-255 or 0.0-1.0"
        ) from exc
    return vals


# --------------------------------------------------------------------------------------------
# files: temporary names, atomic publishing


def partial_path(path: str | os.PathLike[str]) -> Path:
    """Return the temporary sibling under which ``path`` is built (``<name>.partial``)."""
    p = Path(path)
    return p.with_name(p.name + PARTIAL_SUFFIX)


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``, or a folder that cannot be written (see
    :func:`~napari_msunet._atomic.check_writable`); make sure the parent folder exists."""
    if path.name in ("", ".", ".."):
        raise WriterError(path, "the output needs a file or folder name")
    if os.path.lexists(path) and not overwrite:
        raise WriterError(path, "the output exists; pass overwrite=True to replace it")
    check_writable(path)  # a read-only or foreign folder: refused before any work
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc, "cannot create the output folder") from exc


def remove_path(path: Path) -> None:
    """Remove a file or a folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def publish(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move a finished output from its temporary name to its final name.

    A file replaces an existing one atomically (``os.replace``). A folder cannot replace a
    non-empty folder in one step, so the old one is first renamed aside, the new one renamed in,
    and the old one deleted; if the second rename fails the old one is put back. At every
    moment a complete output (old or new) exists under one of the two names.
    """
    try:
        if not os.path.lexists(final):
            os.rename(tmp, final)
            return
        if not overwrite:
            raise WriterError(final, "the output appeared while it was being written; not replaced")
        if tmp.is_file() and not final.is_dir():
            os.replace(tmp, final)
            return
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(old, final)
            raise
        remove_path(old)
    except OSError as exc:
        raise write_error(final, exc, "cannot move the finished output into place") from exc


# --------------------------------------------------------------------------------------------
# streaming helpers


def iter_regions(
    shape: Sequence[int], step: int | tuple[int, int]
) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(y, x, h, w)`` of a row-major grid of ``step``-sized regions covering ``shape``."""
    sy, sx = (step, step) if isinstance(step, int) else step
    h, w = int(shape[-2]), int(shape[-1])
    for y in range(0, h, sy):
        for x in range(0, w, sx):
            yield y, x, min(sy, h - y), min(sx, w - x)


def prefetched(
    fn: Callable[[T], R], items: Iterable[T], depth: int = 4, workers: int = 2
) -> Iterator[R]:
    """Yield ``fn(item)`` in order while up to ``depth`` later items are computed in threads.

    Reading a lazy source (dask compute, zarr decode) and compressing both release the GIL, so
    this overlaps them; at most ``depth + 1`` results are alive at a time, which bounds memory.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
            for fut in pending:
                with contextlib.suppress(Exception):
                    fut.result()


def read_step(source: Any, chunk: int, limit: int = 4096) -> int:
    """Return a read-region edge: a multiple of ``chunk`` that covers the source's own chunks.

    Reading a dask or zarr source in regions aligned to its chunks computes or decodes each
    source chunk once instead of once per output chunk it overlaps.
    """
    src_chunks = getattr(source, "chunks", None)
    try:
        edge = max(int(c[0]) if isinstance(c, tuple) else int(c) for c in src_chunks[-2:])
    except (TypeError, ValueError, IndexError):
        return chunk
    return max(chunk, min(-(-edge // chunk) * chunk, max(chunk, limit // chunk * chunk)))


def read_block(source: Any, index: tuple[slice | int, ...]) -> np.ndarray:
    """Read ``source[index]`` into memory as a NumPy array (computes dask, decodes zarr)."""
    block = source[index]
    if hasattr(block, "compute") and not isinstance(block, np.ndarray):
        block = block.compute(scheduler="synchronous")
    block = np.asarray(block)
    return block.astype(np.uint8) if block.dtype == np.bool_ else block


class _Aborted(Exception):
    """Raised in a worker thread by its ``report`` once the generator driving it has stopped."""


def iter_in_thread(
    work: Callable[[Callable[..., None]], R], stop: Stop, poll_s: float = 0.1
) -> Generator[Progress, None, tuple[bool, R | None]]:
    """Run ``work(report)`` in a thread and yield its progress, so a push-style writer is a
    generator too.

    Some writers hand their blocks to a library that pulls them (tifffile consumes a tile
    iterator inside one ``write`` call), so the generator cannot yield between blocks itself.
    ``work`` runs in a thread instead and calls ``report(done, total, stage, message="")``
    after each block; this generator yields the newest of those records as they come (it may
    skip some, never reorders them), checks ``stop`` after each and every ``poll_s`` seconds,
    and once stopped, or closed, or failing, makes the thread's next ``report`` raise so that
    ``work`` unwinds (its ``finally`` blocks run), and waits for it.

    Returns
    -------
    (finished, value)
        ``(True, work's return value)``, or ``(False, None)`` when ``stop`` ended it first.
        An exception of ``work`` is raised here.
    """
    cond = threading.Condition()
    abort = threading.Event()
    state: dict[str, Any] = {"record": None, "end": False}
    t0 = time.monotonic()

    def report(done: int, total: int, stage: str, message: str = "") -> None:
        if abort.is_set():
            raise _Aborted
        rec = Progress(done, total, stage, message, time.monotonic() - t0)
        with cond:
            state["record"] = rec
            cond.notify()

    def run() -> None:
        try:
            state["value"] = work(report)
        except BaseException as exc:  # handed to the generator's thread
            state["error"] = exc
        finally:
            with cond:
                state["end"] = True
                cond.notify()

    thread = threading.Thread(target=run, name="msunet-writer", daemon=True)
    thread.start()
    shown = None
    try:
        while True:
            with cond:
                if state["record"] is shown and not state["end"]:
                    cond.wait(poll_s)
                rec, end = state["record"], state["end"]
            if rec is not shown:
                shown = rec
                yield rec
            if stopped(stop):
                abort.set()
                thread.join()
                return False, None
            if end:
                break
    except BaseException:  # closed (GeneratorExit), interrupted, or failing: stop the thread
        abort.set()
        thread.join()
        raise
    thread.join()
    error = state.get("error")
    if isinstance(error, _Aborted):  # pragma: no cover - only abort sets it, handled above
        return False, None
    if error is not None:
        raise error
    return True, state.get("value")
