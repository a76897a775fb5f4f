"""Which level-0 regions of a partial output are written: a crash-tolerant log and queries.

The OME-Zarr writer appends one line ``[y, x, h, w]`` to a small JSON-lines file after each
block has been stored, so a rerun after a crash or a cancel knows what to skip. Appending is
cheap and a line cut short by a crash is simply ignored (that block is written again).
Coverage queries are exact for any set of rectangles, aligned or not: the rectangles that meet
the query are rasterised on the grid of their own edges (coordinate compression), which is tiny
however large the rectangles are.
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path

import numpy as np

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import WriterError


class DoneLog:
    """Append-only record of the written level-0 rectangles of one partial output.

    Parameters
    ----------
    path : Path
        The JSON-lines file; read when it exists, then appended to.
    shape : tuple of int
        Level-0 ``(Y, X)``; recorded rectangles outside it are ignored on load.
    """

    def __init__(self, path: Path, shape: tuple[int, int]) -> None:
        self.path = path
        self.shape = shape
        self._rects = np.zeros((64, 4), dtype=np.int64)  # y0, y1, x0, x1
        self._n = 0
        self._lock = threading.Lock()
        if path.exists():
            self._load()
        try:
            self._fh = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise WriterError(path, f"cannot open the progress log: {exc}") from exc

    def _load(self) -> None:
        bad = 0
        h, w = self.shape
        text = self.path.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            try:
                y, x, rh, rw = (int(v) for v in json.loads(line))
            except (ValueError, TypeError):
                bad += 1
                continue
            if y >= 0 and x >= 0 and rh > 0 and rw > 0 and y + rh <= h and x + rw <= w:
                self._append(y, x, rh, rw)
            else:
                bad += 1
        if bad or (not text.endswith("\n") and text):
            # rewrite the record without the damaged lines, so appends start on a fresh line
            text = "".join(json.dumps(r) + "\n" for r in self.regions())
            atomic_write_bytes(self.path, text.encode("utf-8"), overwrite=True)
        if bad:
            warnings.warn(
                f"{self.path}: ignored {bad} unreadable progress record(s) (a crash while "
                "writing); those regions count as not written",
                RuntimeWarning,
                stacklevel=4,
            )

    def _append(self, y: int, x: int, h: int, w: int) -> None:
        if self._n == len(self._rects):
            self._rects = np.concatenate([self._rects, np.zeros_like(self._rects)])
        self._rects[self._n] = (y, y + h, x, x + w)
        self._n += 1

    def add(self, y: int, x: int, h: int, w: int) -> None:
        """Record a written region (call only after its data is stored)."""
        with self._lock:
            self._append(y, x, h, w)
            self._fh.write(json.dumps([y, x, h, w]) + "\n")
            self._fh.flush()

    def close(self) -> None:
        """Close the file; the record stays on disk for a later resume."""
        if not self._fh.closed:
            self._fh.close()

    def regions(self) -> list[tuple[int, int, int, int]]:
        """Return the recorded regions as ``(y, x, h, w)``, in the order they were written."""
        with self._lock:
            r = self._rects[: self._n].copy()
        return [(int(a), int(c), int(b - a), int(d - c)) for a, b, c, d in r]

    def covered(self, y: int, x: int, h: int, w: int) -> bool:
        """Return whether the region ``(y, x, h, w)`` is entirely inside written regions."""
        return bool(self.coverage_grid([y, y + h], [x, x + w]).all())

    def coverage_grid(self, ys: list[int] | np.ndarray, xs: list[int] | np.ndarray) -> np.ndarray:
        """Return, for the cells between the sorted cuts ``ys`` × ``xs``, whether fully written.

        The result has shape ``(len(ys) - 1, len(xs) - 1)``.
        """
        ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
        with self._lock:
            r = self._rects[: self._n]
            keep = (r[:, 0] < ys[-1]) & (r[:, 1] > ys[0]) & (r[:, 2] < xs[-1]) & (r[:, 3] > xs[0])
            r = r[keep].copy()
        out = np.zeros((len(ys) - 1, len(xs) - 1), dtype=bool)
        if len(r) == 0:
            return out
        r[:, 0:2] = np.clip(r[:, 0:2], ys[0], ys[-1])
        r[:, 2:4] = np.clip(r[:, 2:4], xs[0], xs[-1])
        # rasterise on the grid of all edges, then ask each output cell whether all of it is set
        gy = np.unique(np.concatenate([ys, r[:, 0], r[:, 1]]))
        gx = np.unique(np.concatenate([xs, r[:, 2], r[:, 3]]))
        fine = np.zeros((len(gy) - 1, len(gx) - 1), dtype=bool)
        iy = np.searchsorted(gy, r[:, 0:2])
        ix = np.searchsorted(gx, r[:, 2:4])
        for (a, b), (c, d) in zip(iy, ix, strict=True):
            fine[a:b, c:d] = True
        cy = np.searchsorted(gy, ys)
        cx = np.searchsorted(gx, xs)
        # a cell is covered when none of its fine cells is missing
        missing = np.add.reduceat(np.add.reduceat(~fine, cy[:-1], axis=0), cx[:-1], axis=1)
        return missing == 0
