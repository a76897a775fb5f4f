"""Watch a prediction fill in: the lower pyramid levels of an unfinished label map, kept current.

While :func:`~napari_msunet.inference.engine.iter_predict_slide` runs, its label map lives in
``labels.ome.zarr.partial`` and only level 0 is written; the coarser levels are built once, at
the end (:meth:`~napari_msunet.io.ome_zarr.OmeZarrWriter.finalize`). A viewer zoomed out on a
whole slide reads a coarse level, so without help it would show nothing until the run ends,
and reading level 0 instead would cost thousands of times more I/O per screen.

:class:`LivePyramid` closes that gap. It reads the writer's progress record (which lists a
level-0 block only once its data is stored) and subsamples each newly finished block into the
coarser levels of the same partial store, exactly as ``finalize`` will (``[::2, ::2]``), so
what a viewer shows while the run goes on is what it will show afterwards. ``finalize``
rebuilds those levels from level 0 anyway, so nothing here can change the final result.

:func:`live_levels` gives a viewer array-likes for every level that work before the run
(zeros), during it (the unfinished store) and after it (the published one), so a layer can be
made once, when the user clicks Run, and only refreshed afterwards.

Call :meth:`LivePyramid.update` from the thread that drives the prediction generator, between
two of its records: the engine writes coarse levels only inside ``finalize``, which runs after
its last batch, so the two never write the same arrays at the same time. No Qt here (the GUI
calls it from its worker thread).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from napari_msunet.errors import WriterError
from napari_msunet.io.writers import DEFAULT_CHUNK, default_n_levels, level_shapes, partial_path

__all__ = ["LiveLevel", "LivePyramid", "live_levels"]

_DONE_LOG = "msunet-done.jsonl"  # the OmeZarrWriter's progress record


class LivePyramid:
    """The levels of an unfinished label map, with the coarse ones kept up to date.

    Parameters
    ----------
    labels
        The *final* path of the label map (``.../labels.ome.zarr``); its ``.partial`` store
        must exist (the engine creates it before its first progress record).

    Raises
    ------
    WriterError
        When there is no partial label store at that path.
    """

    def __init__(self, labels: str | os.PathLike[str]) -> None:
        self.path = Path(labels)
        self.root = partial_path(self.path)
        if not (self.root / "zarr.json").is_file():  # checked first: opening would create it
            raise WriterError(self.root, "no unfinished label map here")
        try:
            group = zarr.open_group(LocalStore(self.root), mode="r+", zarr_format=3)
            n = int(group.attrs["napari_msunet"]["n_levels"])
            self._arrays = [group[str(k)] for k in range(n)]
        except Exception as exc:
            raise WriterError(self.root, f"not an unfinished label map ({exc})") from exc
        self._log = self.root / _DONE_LOG
        self._offset = 0

    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(Y, X)``."""
        return tuple(self._arrays[0].shape)

    def levels(self) -> list[LiveLevel]:
        """Views of every level for a viewer (see :func:`live_levels`)."""
        return live_levels(self.path)

    def _new_regions(self) -> list[tuple[int, int, int, int]]:
        """Blocks recorded since the last call (only complete lines: the writer may be
        appending one right now)."""
        try:
            with self._log.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self._offset += end
        out = []
        for line in data[:end].splitlines():
            try:
                y, x, h, w = (int(v) for v in json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut by a crash: that block is written again
            out.append((y, x, h, w))
        return out

    def update(self) -> list[tuple[int, int, int, int]]:
        """Subsample the level-0 blocks finished since the last call into the coarse levels.

        Returns those blocks as level-0 ``(y, x, h, w)`` (all blocks of an earlier run on the
        first call after a resume).
        """
        regions = self._new_regions()
        for y, x, h, w in regions:
            y0, x0, y1, x1 = y, x, y + h, x + w
            for k in range(1, len(self._arrays)):
                src, dst = self._arrays[k - 1], self._arrays[k]
                # level-k pixel i is level-(k-1) pixel 2i: every i with 2i or 2i + 1 in the
                # block, so that a pixel first taken from an unfinished neighbour is redone
                # when that neighbour finishes
                y0, x0 = y0 // 2, x0 // 2
                y1 = min(math.ceil(y1 / 2), dst.shape[0])
                x1 = min(math.ceil(x1 / 2), dst.shape[1])
                if y1 <= y0 or x1 <= x0:
                    break
                dst[y0:y1, x0:x1] = src[2 * y0 : 2 * y1 : 2, 2 * x0 : 2 * x1 : 2]
        return regions


def _n_levels(root: Path) -> int | None:
    """Levels of the label store at ``root`` (unfinished or finished), ``None`` if absent."""
    if not (root / "zarr.json").is_file():
        return None
    try:
        group = zarr.open_group(LocalStore(root, read_only=True), mode="r", zarr_format=3)
        return int(group.attrs["napari_msunet"]["n_levels"])
    except Exception:
        return None


def live_levels(
    labels: str | os.PathLike[str],
    shape: tuple[int, int] | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> list[LiveLevel]:
    """Views of every level of a label map, whatever state it is in, level 0 first.

    A viewer can be given these before a prediction starts and keep them while it runs and
    after: each read goes to the unfinished store (``<labels>.partial``) while it exists,
    else to the finished one, else gives zeros. Level shapes come from whichever store
    exists; when neither does yet, from ``shape`` (the output's level-0 ``(Y, X)``) and
    ``chunk``, by the rules the engine's writer follows.

    They are not dask arrays: dask's cache (napari installs one) would keep serving the
    blocks it read before they were filled in.

    Raises
    ------
    ValueError
        When no store exists and ``shape`` is not given.
    """
    final = Path(labels)
    partial = partial_path(final)
    for root in (partial, final):
        n = _n_levels(root)
        if n is not None:
            group = zarr.open_group(LocalStore(root, read_only=True), mode="r", zarr_format=3)
            shapes = [tuple(group[str(k)].shape) for k in range(n)]
            break
    else:
        if shape is None:
            raise ValueError(f"{final}: no label map yet; pass its shape")
        shapes = level_shapes(shape, default_n_levels(shape, chunk))
    return [LiveLevel(partial, final, str(k), shapes[k]) for k in range(len(shapes))]


class LiveLevel:
    """One level of a label map that may be unwritten, being written, or finished (array-like).

    Every read looks again at which store exists: the ``.partial`` one while a run writes it,
    the final one after the writer has published it, none before a run (zeros). A store
    whose level has another shape (made with other settings) reads as zeros rather than
    as misplaced pixels.
    """

    dtype = np.dtype(np.uint8)

    def __init__(self, partial: Path, final: Path, key: str, shape: tuple[int, ...]) -> None:
        self._roots = (partial, final)
        self._key = key
        self.shape: tuple[int, ...] = tuple(int(v) for v in shape)
        self.ndim = len(self.shape)
        self._root: Path | None = None
        self._array: zarr.Array | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def source(self) -> Path | None:
        """The store read now (``None``: none yet, or one of another shape)."""
        for root in self._roots:
            if (root / "zarr.json").is_file():
                break
        else:
            root = None
        if root != self._root:
            self._root, self._array = root, None
            if root is not None:
                try:
                    group = zarr.open_group(LocalStore(root, read_only=True), mode="r")
                    array = group[self._key]
                    if tuple(array.shape) == self.shape:
                        self._array = array
                except Exception:  # renamed away while opening: read zeros this time
                    self._root = None
        return self._root if self._array is not None else None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if self.source is None:
            view = np.broadcast_to(np.zeros((), self.dtype), self.shape)[index]
            return np.zeros(np.shape(view), self.dtype)
        return self._array[index]

    def __array__(self, dtype=None, copy=None):
        data = self[...]
        return data if dtype is None else data.astype(dtype)

    def __repr__(self) -> str:
        return f"LiveLevel({str(self.source)!r}, level {self._key}, shape={self.shape})"
