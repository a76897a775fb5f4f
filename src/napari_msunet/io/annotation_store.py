"""The editable slide-level annotation: a label mask on disk, corrected regions and undo.

Reviewing a slide means changing its annotation region by region, for hours, on a file that
must survive a crash at any moment. :class:`AnnotationStore` keeps that annotation in a folder
(normally ``<slide>.msunet/annotation/``)::

    store.json                  what the store is: slide shape, store resolution, classes
    mask.ome.zarr/              the annotation as OME-Zarr labels (zarr v3, OME-NGFF 0.5), with
                                a pyramid for display; readable by io.masks.open_mask, so it
                                serves directly as SlideSpec(annotation=...) for fine-tuning
    corrected_regions.geojson   the corrected regions: QuPath GeoJSON rectangles in level-0
                                pixels (SlideSpec(regions=...))
    journal/                    undo entries (see napari_msunet.io._store_journal)
    decisions.jsonl             the reviewer's accept / reject / edit of each suspected
                                missing or wrong annotation (see napari_msunet.io.decisions);
                                what is not suggested again is derived from it
    rejected.json               rejections of stores made before decisions.jsonl (read only)

Resolution. The store holds the annotation at an integer downsample ``d`` of the slide's
level 0: store pixel ``(r, c)`` covers the level-0 pixels ``[r d, (r + 1) d) x [c d,
(c + 1) d)``. An integer ``d`` keeps the two grids aligned exactly (a store window is a whole
number of level-0 pixels, so corrected regions are exact rectangles on both). The GUI creates
stores at the model's µm/px (``d = round(model µm/px / slide µm/px)``): that is the
resolution fine-tuning trains at and predictions are made at, so nothing of value is lost,
while an editing window and every write are ``d²`` times smaller than at level 0 (16 times at
1 µm/px on a 0.25 µm/px scan) and the mask and its pyramid stay small on disk.

Creation streams the source (a QuPath GeoJSON rasterised window by window, or a label mask of
any resolution sampled nearest-neighbour) through
:class:`~napari_msunet.io.ome_zarr.OmeZarrWriter`, so memory does not grow with the slide,
into ``<store>.creating``, renamed to the store when complete; a cancelled or failed creation
deletes it (:mod:`napari_msunet.io._store_build` writes it). The user's GeoJSON or mask is only
read, never written.

Edits (:meth:`AnnotationStore.apply`) are write-ahead journalled: the previous content of the
chunks about to change is saved to the journal and flushed to disk first, then the chunks are
written, each one atomically (a temporary file renamed over the chunk, after an fsync), then
the pyramid above them and the regions file. A crash at any point is rolled back to the state
before the edit when the store is next opened; :meth:`AnnotationStore.undo` uses the same
entries. One program edits a store at a time: the store holds ``<store>.lock`` beside its
folder while it is open (see :mod:`napari_msunet.io._store_lock`); another program opening it
gets an error naming the holder. :meth:`AnnotationStore.close` (or the end of the process)
releases it.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.storage import LocalStore

from napari_msunet.errors import AnnotationError, WriterError
from napari_msunet.io import _store_lock
from napari_msunet.io._store_build import (
    CORRECTED_CLASS,
    INFO_NAME,
    JOURNAL_NAME,
    MASK_NAME,
    REGIONS_NAME,
    REJECTED_NAME,
    STORE_FORMAT,
    Window,
    iter_build,
    read_regions,
    store_downsample,
    store_exists,
    write_regions,
)
from napari_msunet.io._store_journal import DurableStore, Journal
from napari_msunet.io.decisions import NOT_AGAIN, Decision, append_decision, read_decisions
from napari_msunet.io.writers import DEFAULT_CHUNK, remove_path
from napari_msunet.progress import Progress, Stop, eager

__all__ = [
    "CORRECTED_CLASS",
    "AnnotationStore",
    "Edit",
    "remove_store",
    "store_downsample",
]

MAX_UNDO = 200
"""Edits kept in the journal; older ones can no longer be undone."""


@dataclass(frozen=True)
class Edit:
    """One applied edit, as the journal keeps it.

    Attributes
    ----------
    index
        Journal number (increasing).
    window
        The store window written, ``(y, x, h, w)`` in store pixels.
    region
        The same window in level-0 slide pixels: the corrected region recorded.
    label
        What the edit was ("edit", "accept suspected missing annotation", ...).
    """

    index: int
    window: Window
    region: Window
    label: str


# ------------------------------------------------------------------------------------------


class AnnotationStore:
    """An editable slide-level annotation on disk (see the module docstring).

    Open an existing store with :meth:`open`; make one with :meth:`create` (or the generator
    :meth:`iter_create`, for a progress bar and Cancel). Coordinates in the API are level-0
    slide pixels ``(y, x)`` unless a name says "store".

    Attributes
    ----------
    root
        The store folder.
    mask_path, regions_path
        The OME-Zarr label mask and the corrected-regions GeoJSON (for
        ``SlideSpec(slide, annotation=mask_path, regions=regions_path)``).
    slide_shape
        Level-0 ``(height, width)`` of the slide.
    downsample
        Level-0 pixels per store pixel (an integer).
    shape
        ``(height, width)`` of the store's full-resolution level.
    slide_mpp, mpp
        µm/px of the slide's level 0 and of the store (``None`` when unknown).
    class_names, class_colors
        Name and RGBA colour of each label value (index = label, 0 = background), or ``None``
        for a store made from an unnamed mask.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._closed = True
        _store_lock.acquire(self.root)  # before recovery: that writes too
        self._closed = False
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        info_path = self.root / INFO_NAME
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise AnnotationError(
                self.root, "is not an annotation store (no store.json); create one first"
            ) from None
        except (OSError, ValueError) as exc:
            raise AnnotationError(info_path, f"cannot be read: {exc}") from exc
        if info.get("format") != STORE_FORMAT:
            raise AnnotationError(info_path, "is not a napari-msunet annotation store")
        self.info: dict[str, Any] = info
        self.slide_shape: tuple[int, int] = tuple(info["slide_shape"])  # type: ignore[assignment]
        self.downsample: int = int(info["downsample"])
        self.shape: tuple[int, int] = tuple(info["shape"])  # type: ignore[assignment]
        self.slide_mpp: float | None = info.get("slide_mpp")
        self.mpp: float | None = info.get("mpp")
        self.class_names: list[str] | None = info.get("class_names")
        self.class_colors: list[list[int]] | None = info.get("class_colors")
        self.mask_path = self.root / MASK_NAME
        self.regions_path = self.root / REGIONS_NAME
        self._lock = threading.RLock()
        try:
            group = zarr.open_group(DurableStore(self.mask_path), mode="r+", zarr_format=3)
            n = len(group.attrs["ome"]["multiscales"][0]["datasets"])
            self._arrays = [group[str(k)] for k in range(n)]
        except Exception as exc:
            raise AnnotationError(
                self.mask_path, f"the store's mask cannot be opened: {exc}"
            ) from exc
        self.chunk: tuple[int, int] = tuple(int(c) for c in self._arrays[0].chunks)  # type: ignore[assignment]
        self._journal = Journal(self.root / JOURNAL_NAME)
        self._recover()

    def close(self) -> None:
        """Release the store's edit lock (once; the object must not edit afterwards)."""
        if not self._closed:
            self._closed = True
            _store_lock.release(self.root)

    def __enter__(self) -> AnnotationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- creation ------------------------------------------------------------------------

    @staticmethod
    def exists(root: str | os.PathLike[str]) -> bool:
        """Whether ``root`` holds a complete store."""
        return store_exists(root)

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> AnnotationStore:
        """Open an existing store, rolling back an edit a crash interrupted."""
        return cls(root)

    @classmethod
    def iter_create(
        cls,
        root: str | os.PathLike[str],
        source: Any,
        slide: Any,
        *,
        slide_mpp: float | None = None,
        mpp: float | None = None,
        downsample: int | None = None,
        classes: Sequence[str] | None = None,
        colors: Sequence[Any] | None = None,
        chunk: int = DEFAULT_CHUNK,
        overwrite: bool = False,
        stop: Stop = None,
    ) -> Generator[Progress, None, AnnotationStore | None]:
        """Create a store from an annotation, as a generator.

        Yields a :class:`~napari_msunet.progress.Progress` per window of the mask (stage
        ``"build"``), then per chunk of its pyramid (stage ``"pyramid"``); returns the open
        store. :meth:`create` is its eager twin.

        Parameters
        ----------
        root
            The store folder to create (e.g. ``workspace_dir(slide) / "annotation"``).
        source
            A QuPath GeoJSON or label-mask path (OME-Zarr, TIFF, PNG), an
            :class:`AnnotationSet`, a :class:`LabelMask`, a 2-D label array (at any
            resolution of the slide), or ``None`` for an empty annotation. Only read.
        slide
            The :class:`~napari_msunet.io.slide.Slide` (or its level-0 ``(height, width)``).
        slide_mpp
            µm/px of level 0; defaults to the slide's.
        mpp, downsample
            Store resolution: ``downsample`` level-0 pixels per store pixel, or the integer
            downsample nearest to ``mpp`` (see :func:`store_downsample`). Default: level 0.
            The GUI passes the model's µm/px (see the module docstring).
        classes, colors
            Class names by label (``classes[0]`` is the background), e.g. the model's, and
            their colours; source classes are matched to them by name. Default: the source's.
        chunk
            Chunk edge of the mask (the unit of atomic writes and of undo data).
        overwrite
            Replace an existing store at ``root`` (its corrections are lost).
        stop
            A ``threading.Event`` or callable checked between windows; when set the creation
            stops and returns ``None``. A stopped, closed or failed creation leaves nothing:
            ``root`` is as it was and the folder it was built in is deleted.

        Raises
        ------
        WriterError
            A store exists at ``root`` without ``overwrite``, or it cannot be written.
        AnnotationError
            The source cannot be read or does not fit the slide.
        """
        root = Path(root)
        _store_lock.acquire(root)  # nobody edits the store being replaced meanwhile
        try:
            built = yield from iter_build(
                root,
                source,
                slide,
                slide_mpp=slide_mpp,
                mpp=mpp,
                downsample=downsample,
                classes=classes,
                colors=colors,
                chunk=chunk,
                overwrite=overwrite,
                stop=stop,
            )
            return cls(root) if built else None  # opened while the lock is still held
        finally:
            _store_lock.release(root)

    create = classmethod(eager(iter_create.__func__))

    # -- geometry ------------------------------------------------------------------------

    def to_store(self, y0: int, x0: int, h: int, w: int) -> Window:
        """The store window ``(y, x, h, w)`` covering a level-0 window, clipped to the store."""
        d = self.downsample
        sy, sx = max(0, int(y0) // d), max(0, int(x0) // d)
        ey = min(self.shape[0], -(-(int(y0) + int(h)) // d))
        ex = min(self.shape[1], -(-(int(x0) + int(w)) // d))
        return sy, sx, max(0, ey - sy), max(0, ex - sx)

    def to_level0(self, sy: int, sx: int, sh: int, sw: int) -> Window:
        """The level-0 window of a store window, clipped to the slide."""
        d, (H, W) = self.downsample, self.slide_shape
        y0, x0 = sy * d, sx * d
        return y0, x0, max(0, min(H, (sy + sh) * d) - y0), max(0, min(W, (sx + sw) * d) - x0)

    # -- reading -------------------------------------------------------------------------

    def read_region(self, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """The annotation of a level-0 window at store resolution (a new, writable array).

        The array covers :meth:`to_store` ``(y0, x0, h, w)``: its top-left pixel is the store
        pixel containing level-0 ``(y0, x0)``.
        """
        sy, sx, sh, sw = self.to_store(y0, x0, h, w)
        return self.read_store(sy, sx, sh, sw)

    def read_store(self, sy: int, sx: int, sh: int, sw: int) -> np.ndarray:
        """A store window at full store resolution."""
        return np.array(self._arrays[0][sy : sy + sh, sx : sx + sw])

    def levels(self) -> list[da.Array]:
        """The mask pyramid as lazy arrays for display.

        Every call gives arrays with new dask names, so a viewer that caches dask chunks by
        name shows edits made since the previous call.
        """
        token = uuid.uuid4().hex[:12]
        group = zarr.open_group(LocalStore(self.mask_path, read_only=True), mode="r")
        return [
            da.from_zarr(group[str(k)], name=f"annotation-store-{token}-{k}")
            for k in range(len(self._arrays))
        ]

    def regions(self) -> list[Window]:
        """The corrected regions, level-0 ``(y, x, h, w)`` rectangles, oldest first."""
        return read_regions(self.regions_path)

    def edits(self) -> list[Edit]:
        """The edits that can be undone, oldest first."""
        out = []
        for i in self._journal.indices():
            e = self._journal.entry(i)
            out.append(Edit(i, tuple(e["window"]), tuple(e["region"]), e.get("label", "edit")))
        return out

    @property
    def can_undo(self) -> bool:
        return bool(self._journal.indices())

    # -- editing -------------------------------------------------------------------------

    def apply(
        self, y0: int, x0: int, data: Any, *, label: str = "edit", record: bool = True
    ) -> Edit:
        """Write an edited store-resolution window back, journalled (see the module docstring).

        Parameters
        ----------
        y0, x0
            Level-0 position of the window, as given to :meth:`read_region`: ``data[0, 0]``
            goes to the store pixel containing it.
        data
            2-D labels at store resolution (uint8 values).
        label
            A name for the edit (journal, undo list).
        record
            Add the window (in level-0 pixels) to the corrected regions.

        Returns
        -------
        Edit
        """
        d = self.downsample
        return self.apply_store(int(y0) // d, int(x0) // d, data, label=label, record=record)

    def apply_store(
        self, sy: int, sx: int, data: Any, *, label: str = "edit", record: bool = True
    ) -> Edit:
        """:meth:`apply` with the window's top-left given in store pixels."""
        block = np.asarray(data)
        if block.ndim != 2 or block.size == 0:
            raise ValueError(f"an edit must be a non-empty 2-D label array, got {block.shape}")
        if block.dtype.kind not in "uib":
            raise ValueError(f"an edit must hold integer labels, got {block.dtype}")
        if block.min() < 0 or block.max() > 255:
            raise ValueError("labels of an edit must be within 0..255")
        sh, sw = block.shape
        if sy < 0 or sx < 0 or sy + sh > self.shape[0] or sx + sw > self.shape[1]:
            raise ValueError(
                f"an edit of {sh} x {sw} at store ({sy}, {sx}) lies outside the store {self.shape}"
            )
        window = (int(sy), int(sx), int(sh), int(sw))
        region = self.to_level0(*window)
        with self._lock:
            aligned = self._aligned(window)
            ay, ax = aligned[:2]
            before = self.read_store(*aligned)
            regions_before = self.regions()
            regions_after = list(regions_before)
            if record and region not in regions_after:
                regions_after.append(region)
            index = self._journal.next_index()
            entry = {
                "index": index,
                "label": label,
                "window": list(window),
                "aligned": list(aligned),
                "region": list(region),
                "regions_before": [list(r) for r in regions_before],
                "regions_after": [list(r) for r in regions_after],
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            self._journal.commit(index, entry, before)
            after = before.copy()
            after[sy - ay : sy - ay + sh, sx - ax : sx - ax + sw] = block
            try:
                self._write(aligned, after, before)
                if regions_after != regions_before:
                    write_regions(self.regions_path, regions_after)
                self._journal.mark_applied(index)
            except Exception as exc:
                # put back what was written; if even that fails, opening the store will
                with contextlib.suppress(Exception):
                    self._rollback(index, entry)
                raise WriterError(
                    self.mask_path, f"the edit could not be written and was rolled back: {exc}"
                ) from exc
            self._journal.prune(MAX_UNDO)
        return Edit(index, window, region, label)

    def undo(self) -> Edit | None:
        """Undo the last edit (content, pyramid and corrected regions); ``None`` if none."""
        with self._lock:
            indices = self._journal.indices()
            if not indices:
                return None
            index = indices[-1]
            entry = self._journal.entry(index)
            self._journal.mark_undoing(index)
            self._rollback(index, entry)
        return Edit(index, tuple(entry["window"]), tuple(entry["region"]), entry.get("label", ""))

    # -- review decisions ----------------------------------------------------------------

    @property
    def slide_name(self) -> str:
        """The slide's file name (for decision records), from store.json or the workspace."""
        slide = self.info.get("slide")
        if slide:
            return Path(slide).name
        parent = self.root.parent.name
        return parent.removesuffix(".msunet") if parent.endswith(".msunet") else self.root.name

    def record_decision(self, decision: Decision) -> None:
        """Append a review decision to ``decisions.jsonl`` (atomically; see
        :mod:`napari_msunet.io.decisions`)."""
        with self._lock:
            append_decision(self.root, decision)

    def decisions(self) -> list[Decision]:
        """The review decisions, oldest first."""
        return read_decisions(self.root)

    def reject(self, bbox: Sequence[int], label: int, annotated: int = 0) -> None:
        """Remember that a candidate (level-0 bbox, predicted and annotated class) was rejected.

        A decision record with what is known; :func:`napari_msunet.evaluation.missing.
        reject_candidate` records the whole candidate (outline, area, confidence).
        """
        item = {"bbox": [int(v) for v in bbox], "label": int(label)}
        if annotated:
            item["annotated"] = int(annotated)
        if item in self.rejected():
            return
        names = self.class_names or []

        def name(k: int) -> str:
            return names[k] if 0 <= k < len(names) else f"class {k}"

        self.record_decision(
            Decision(
                slide=self.slide_name,
                kind="wrong" if annotated else "missing",
                annotated=int(annotated),
                annotated_class=name(int(annotated)),
                predicted=int(label),
                predicted_class=name(int(label)),
                decision="reject",
                bbox=tuple(item["bbox"]),  # type: ignore[arg-type]
            )
        )

    def rejected(self) -> list[dict[str, Any]]:
        """Candidates not to suggest again: ``{"bbox": [y, x, h, w], "label"}`` (the predicted
        class) and ``"annotated"`` for a suspected wrong one.

        Derived from the decisions (rejected, or corrected by hand: see
        :data:`~napari_msunet.io.decisions.NOT_AGAIN`), plus the ``rejected.json`` of an older
        store.
        """
        try:
            items = json.loads((self.root / REJECTED_NAME).read_text(encoding="utf-8"))
        except FileNotFoundError:
            items = []
        except (OSError, ValueError) as exc:
            raise AnnotationError(self.root / REJECTED_NAME, f"cannot be read: {exc}") from exc
        for d in self.decisions():
            if d.decision in NOT_AGAIN:
                item = {"bbox": list(d.bbox), "label": d.predicted}
                if d.annotated:
                    item["annotated"] = d.annotated
                if item not in items:
                    items.append(item)
        return items

    # -- internals -----------------------------------------------------------------------

    def _aligned(self, window: Window) -> Window:
        """The window grown to whole chunks of level 0 (the unit the journal saves)."""
        (cy, cx), (H, W) = self.chunk, self.shape
        y, x, h, w = window
        ay, ax = y // cy * cy, x // cx * cx
        return ay, ax, min(H, -(-(y + h) // cy) * cy) - ay, min(W, -(-(x + w) // cx) * cx) - ax

    def _write(self, aligned: Window, after: np.ndarray, before: np.ndarray | None) -> None:
        """Write level-0 chunks of ``aligned`` that change, then the pyramid above them."""
        ay, ax, ah, aw = aligned
        cy, cx = self.chunk
        level0 = self._arrays[0]
        for y in range(0, ah, cy):
            for x in range(0, aw, cx):
                new = after[y : y + cy, x : x + cx]
                if before is not None and np.array_equal(new, before[y : y + cy, x : x + cx]):
                    continue
                level0[ay + y : ay + y + new.shape[0], ax + x : ax + x + new.shape[1]] = new
        self._update_pyramid(aligned)

    def _update_pyramid(self, window: Window) -> None:
        """Recompute levels 1.. over a level-0 window (labels: ``level[k-1][::2, ::2]``)."""
        y0, x0, y1, x1 = window[0], window[1], window[0] + window[2], window[1] + window[3]
        for k in range(1, len(self._arrays)):
            src, dst = self._arrays[k - 1], self._arrays[k]
            y0, x0 = y0 // 2, x0 // 2
            y1, x1 = min(dst.shape[0], -(-y1 // 2)), min(dst.shape[1], -(-x1 // 2))
            block = np.asarray(
                src[2 * y0 : min(src.shape[0], 2 * y1), 2 * x0 : min(src.shape[1], 2 * x1)]
            )
            dst[y0:y1, x0:x1] = block[::2, ::2]

    def _rollback(self, index: int, entry: dict[str, Any]) -> None:
        """Restore the content and regions saved in a journal entry, then drop the entry."""
        aligned = tuple(entry["aligned"])
        before = self._journal.before(index)
        self._write(aligned, before, self.read_store(*aligned))
        regions = [tuple(r) for r in entry["regions_before"]]
        if self.regions() != regions:
            write_regions(self.regions_path, regions)
        self._journal.remove(index)

    def _recover(self) -> None:
        """Roll back an edit or an undo that a crash interrupted."""
        self._journal.clean()
        for index in reversed(self._journal.indices()):
            if not self._journal.is_complete(index):
                self._rollback(index, self._journal.entry(index))

    def __repr__(self) -> str:
        return (
            f"AnnotationStore({str(self.root)!r}, shape={self.shape}, "
            f"downsample={self.downsample}, edits={len(self._journal.indices())})"
        )


def remove_store(root: str | os.PathLike[str]) -> None:
    """Delete a store folder (used to start a review over); refused while another program
    edits it."""
    _store_lock.acquire(root)
    try:
        remove_path(Path(root))
    finally:
        _store_lock.release(root)
