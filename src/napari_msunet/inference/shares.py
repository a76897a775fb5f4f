"""One slide's tiles spread over several runs ("shares"), published once as one prediction.

A cohort of a few large slides on many workers would leave most workers idle with one task
per slide. So a slide can also be split: share ``i`` of ``n`` is the engine run with
``share=(i, n)``; it computes the ``i``-th of ``n`` contiguous runs of the slide's tiles
(:meth:`~napari_msunet.inference.tiling.TilePlan.part`) into its own folder and stops before
publishing, leaving its tiles in its ``.partial`` stores with its run record. The run that
publishes (``adopt=`` the share folders) takes every tile a share finished instead of
computing it, copies its pixels into its own stores, computes whatever no share finished (a
share that failed, was lost with its worker, or never ran) and publishes as any run does.

**Identical result.** A share computes each of its tiles exactly as the whole-slide run does
(same grid, margins and batch shape), and the copy is of the stored pixels, so the published
stores equal a one-process run's; the tests check this pixel for pixel.

**Coordinated writes.** No two processes ever write one store: each share writes only its
own folder under that folder's lock, and only the publishing run writes the final stores,
under the output folder's lock. It reads a share only while holding the share's lock (a share
still running is not read from; its tiles are computed instead) and only when the share's run
record says it was made with the same slide, model and settings.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_msunet.errors import MsunetError, WriterError
from napari_msunet.inference.outputs import SlideOutputs, lock_folder, unlock_folder
from napari_msunet.inference.tiling import Tile
from napari_msunet.io.ome_zarr import OmeZarrWriter
from napari_msunet.io.writers import partial_path

__all__ = ["SHARES", "ShareTiles", "share_folders"]

#: Folder inside a slide's output folder that holds its shares while it is split.
SHARES = ".msunet-shares"

OpenWriters = Callable[[SlideOutputs], tuple[OmeZarrWriter | None, OmeZarrWriter | None]]


def share_folders(root: str | Path, count: int, tag: str = "") -> list[Path]:
    """The folders of the ``count`` shares of the prediction in ``root``.

    ``tag`` (say a hash of the model and settings) keeps the shares of different runs apart,
    so a rerun with other settings never finds a stale share under the same name.
    """
    base = Path(root) / SHARES
    return [base / f"{tag}{i + 1}-of-{count}" for i in range(count)]


def _unusable(outputs: SlideOutputs, record: Mapping[str, Any], probabilities: bool) -> str:
    """Why the share in ``outputs`` cannot give tiles to the run with ``record`` ("" if it can)."""
    name = outputs.root.name
    try:
        stored = json.loads(outputs.run_record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"share {name}: no readable run record"
    if not isinstance(stored, dict) or "share" not in stored:
        return f"share {name}: not a share's run record"
    mine = json.loads(json.dumps(dict(record)))
    theirs = {k: v for k, v in stored.items() if k != "share"}
    diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if diff:
        return f"share {name}: made with a different {', '.join(diff)}"
    stores = [outputs.labels, outputs.probabilities] if probabilities else [outputs.labels]
    if not all(partial_path(p).is_dir() for p in stores):
        return f"share {name}: its stores are missing"
    return ""


class ShareTiles:
    """The finished tiles of share runs, for the publishing run to copy (see the module).

    Parameters
    ----------
    folders
        The shares' folders; missing, running, foreign or damaged ones are passed over
        (:attr:`ignored` says why) and their tiles computed by the caller.
    record
        The publishing run's record (``prediction.run.json``): a share's must equal it but
        for its ``share`` entry.
    open_writers
        Opens the label and probability stores of a share's outputs, resuming them, with
        the publishing run's parameters (so a share of another shape or classes is refused).
    probabilities
        Whether the run keeps probabilities (then a tile is taken only with them).
    """

    def __init__(
        self,
        folders: Sequence[str | Path],
        record: Mapping[str, Any],
        open_writers: OpenWriters,
        probabilities: bool,
    ) -> None:
        self.ignored: list[str] = []
        self._shares: list[tuple[SlideOutputs, OmeZarrWriter | None, OmeZarrWriter | None]] = []
        for folder in folders:
            outputs = SlideOutputs.in_dir(folder)
            if not outputs.root.is_dir():
                continue  # never started: nothing to say
            why = _unusable(outputs, record, probabilities)
            if why:
                self.ignored.append(why)
                continue
            try:
                lock_folder(outputs)  # a share still running is refused here
            except WriterError as exc:
                self.ignored.append(f"share {outputs.root.name}: {exc}")
                continue
            try:
                labels, probs = open_writers(outputs)
            except (MsunetError, OSError) as exc:
                unlock_folder(outputs)
                self.ignored.append(f"share {outputs.root.name}: {exc}")
                continue
            self._shares.append((outputs, labels, probs))

    def __len__(self) -> int:
        return len(self._shares)

    def take(self, tile: Tile) -> tuple[np.ndarray | None, np.ndarray] | None:
        """The tile's ``(probabilities or None, labels)`` from the first share that finished
        it, or ``None`` when none did."""
        y, x, h, w = tile.y, tile.x, tile.h, tile.w
        for _, labels, probs in self._shares:
            if labels is None or not labels.is_done(y, x, h, w):
                continue
            if probs is not None and not probs.is_done(y, x, h, w):
                continue
            return (None if probs is None else probs.read_region(y, x, h, w)), labels.read_region(
                y, x, h, w
            )
        return None

    def close(self) -> None:
        """Close the shares' stores and release their locks (the folders stay)."""
        for outputs, labels, probs in self._shares:
            for w in (labels, probs):
                if w is not None:
                    w.close()
            with contextlib.suppress(OSError):
                unlock_folder(outputs)
        self._shares = []
