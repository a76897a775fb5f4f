"""The Review widget's queue over all open slides: which slides, their stores, the search.

Every slide layer with a finished prediction (its probabilities on disk) and an annotation
store (the one the widget has open, else the one in the slide's workspace) takes part; the
core ranks their suspected missing and wrong annotations together
(:func:`~napari_msunet.evaluation.review_queue.iter_review_queue`). Stores of the other slides
are opened in the worker and held (their edit lock) until the next search replaces the
queue, so that Accept and Reject can write to them; a store another program edits is left
out with a note. Everything here is plain Python over the viewer's layers: the widget owns
the buttons and the task.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_msunet._napari._layer_info import layer_info, prediction_layers
from napari_msunet._napari._layers import is_slide, slide_path_of
from napari_msunet._napari._review_layers import (
    candidate_shapes,
    keep_edges_visible,
    slide_scale,
    slide_units,
)
from napari_msunet._napari._workspace import workspace_dir
from napari_msunet.errors import MsunetError
from napari_msunet.palette import REVIEW_COLOURS

__all__ = ["KIND_COLORS", "CohortQueue", "Entry", "export_task", "queue_shapes"]

KIND_COLORS = {k: tuple(v / 255 for v in REVIEW_COLOURS[k]) for k in ("missing", "wrong")}
"""Outline of a candidate by kind: apart from each other, the annotation's classes, the TP/FP/FN
colours and the white edit rectangle."""

Entry = tuple[str, Any, Path, Path | None, Any]
"""One slide to search: name, slide layer, probabilities, labels, store (open) or its root."""


def _finished(info: Any) -> tuple[Path, Path | None] | None:
    """A prediction layer's probabilities and labels, when its probabilities are on disk."""
    probs = info.probabilities if info is not None else None
    if probs is None or not probs.exists():
        return None
    labels = info.path if info.path is not None and info.path.exists() else None
    return probs, labels


class CohortQueue:
    """The slides of the current queue and the stores it opened (see the module docstring)."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.slides: list[Any] = []  # QueueSlide
        self.layers: dict[str, Any] = {}  # slide name -> slide layer
        self._opened: list[Any] = []
        self.notes: list[str] = []  # slides the last search left out, and why
        self.outlined: str | None = None  # the slide whose candidates are drawn

    def entries(
        self, slide_layer: Any, store: Any, prediction: Any, all_slides: bool
    ) -> tuple[list[Entry], list[str]]:
        """The slides to search, and a note for each open slide left out (and why).

        ``slide_layer``, ``store`` and ``prediction`` are the widget's: its slide is searched
        with its store and the prediction it selected; with ``all_slides`` every other slide
        layer with a prediction of its own and a store in its workspace is searched too.
        """
        out: list[Entry] = []
        notes: list[str] = []
        own = _finished(layer_info(prediction))
        if store is not None and own is not None and slide_layer is not None:
            out.append((_name(slide_layer), slide_layer, *own, store))
        if not all_slides:
            return out, notes
        for layer in self.viewer.layers:
            path = slide_path_of(layer)
            if not is_slide(layer) or path is None or any(e[1] is layer for e in out):
                continue
            mine = [p for p in prediction_layers(self.viewer, path) if layer_info(p).slide == path]
            found = [f for f in (_finished(layer_info(p)) for p in mine) if f is not None]
            root = workspace_dir(path, create=False) / "annotation"
            if not found:
                notes.append(f"{path.name}: no finished prediction")
            elif not (root / "store.json").is_file():
                notes.append(f"{path.name}: no review started (no corrected annotation)")
            else:
                out.append((_name(layer), layer, *found[-1], root))
        names = [e[0] for e in out]
        return [_unique(e, names) for e in out], notes

    def search(
        self, entries: Sequence[Entry], threshold: float, kinds: Sequence[str]
    ) -> Callable[[Any], Generator]:
        """The task (for :func:`~napari_msunet._napari._tasks.start_task`): open the other
        slides' stores, rank the cohort; returns the candidates and keeps the slides."""

        def make(stop):
            from napari_msunet.evaluation.review_queue import QueueSlide, iter_review_queue
            from napari_msunet.io.annotation_store import AnnotationStore

            slides, opened, notes = [], [], []
            for name, _layer, probs, labels, store in entries:
                if isinstance(store, Path):
                    try:
                        store = AnnotationStore.open(store)
                    except MsunetError as exc:  # another program edits it
                        notes.append(f"{name}: {exc}")
                        continue
                    opened.append(store)
                slides.append(QueueSlide(name, probs, store, labels))
            try:
                found = yield from iter_review_queue(
                    slides, threshold=threshold, kinds=kinds, stop=stop
                )
            except BaseException:
                for s in opened:
                    s.close()
                raise
            self._adopt(slides, opened, {e[0]: e[1] for e in entries})
            self.notes = notes
            return found

        return make

    def _adopt(self, slides: list[Any], opened: list[Any], layers: dict[str, Any]) -> None:
        old, self._opened = self._opened, opened
        self.slides, self.layers = slides, layers
        for store in old:
            store.close()

    def draw(self, candidates: Sequence[Any], current: Any, fallback: Any, old: Any) -> Any:
        """Outline the candidates on ``current``'s slide (replacing the layer ``old``); return
        the new Shapes layer, ``None`` when there is nothing to draw."""
        self.outlined = getattr(current, "slide", None)
        layer = self.layers.get(self.outlined) or fallback
        on_slide = [c for c in candidates if c.slide == self.outlined]
        shapes, kwargs = queue_shapes(on_slide, layer, slide_scale(layer), slide_units(layer))
        if old is not None and old in self.viewer.layers:
            self.viewer.layers.remove(old)
        if not shapes:
            return None
        new = self.viewer.add_shapes(shapes, **kwargs)
        keep_edges_visible(self.viewer, new)
        return new

    def roots(self, store: Any) -> list[Path]:
        """The store folders whose decisions an export takes: the queue's slides' and
        ``store`` (the widget's)."""
        stores = [s.store for s in self.slides]
        if store is not None and store not in stores:
            stores.append(store)
        return [s.root for s in stores]

    def slide_of(self, candidate: Any) -> Any:
        """The queue slide (store, labels) of a listed candidate, or ``None``."""
        for s in self.slides:
            if s.name == candidate.slide:
                return s
        return None

    def close(self) -> None:
        """Release the stores this queue opened."""
        self._adopt([], [], {})


def _name(layer: Any) -> str:
    path = slide_path_of(layer)
    return path.name if path is not None else str(layer.name)


def _unique(entry: Entry, names: list[str]) -> Entry:
    """Two slides of the same file name in different folders are named by their paths."""
    if names.count(entry[0]) > 1:
        return (str(slide_path_of(entry[1])), *entry[1:])
    return entry


#: Most outline parts drawn per candidate, and the most vertices of each (napari triangulates
#: every polygon it draws: a raster outline of thousands of vertices would stall the window).
MAX_OUTLINE_PARTS = 4
MAX_OUTLINE_VERTICES = 400


def proposed_outline(candidate: Any) -> list[np.ndarray]:
    """The model's outline of a candidate as napari polygons ``(y, x)`` in level-0 pixels:
    the outer rings of its largest parts, simplified to a few hundred vertices."""
    import shapely

    geometry = getattr(candidate, "polygon", None)
    if geometry is None or geometry.is_empty:
        return []
    parts = sorted(getattr(geometry, "geoms", [geometry]), key=lambda g: -g.area)
    rings = []
    for part in parts[:MAX_OUTLINE_PARTS]:
        tolerance = max(float(getattr(candidate, "downsample", 1.0)), 1.0)
        ring = part.exterior
        while len(ring.coords) > MAX_OUTLINE_VERTICES:
            ring = shapely.simplify(part, tolerance).exterior
            tolerance *= 2
        xy = np.asarray(ring.coords, dtype=float)[:-1]
        if len(xy) >= 3:
            rings.append(xy[:, ::-1])  # (x, y) -> napari (y, x); corners, as the boxes
    return rings


def queue_shapes(candidates: Sequence[Any], slide_layer: Any, s0: float, units: Any):
    """Boxes around the candidates on one slide and, inside each, the model's proposed
    outline, coloured by kind (a Shapes layer's data and keyword arguments)."""
    candidates = list(candidates)
    shapes, kwargs = candidate_shapes(candidates, s0, units)
    colours = [KIND_COLORS.get(c.kind, KIND_COLORS["missing"]) for c in candidates]
    types = ["rectangle"] * len(shapes)
    for c, colour in zip(candidates, list(colours), strict=True):
        for ring in proposed_outline(c):
            shapes.append(ring)
            types.append("polygon")
            colours.append(colour)
    kwargs["shape_type"] = types
    kwargs["edge_color"] = colours or "cyan"
    kwargs["name"] = f"review queue — {_name(slide_layer)}"
    return shapes, kwargs


def export_task(roots: Sequence[Path], out: Path) -> Callable[[Any], Generator]:
    """The task exporting the decisions of ``roots`` to the folder ``out`` (a GeoJSON per
    slide and decisions.csv, replacing an earlier export there)."""

    def make(stop):
        from napari_msunet.io.decisions import iter_export_decisions

        return (yield from iter_export_decisions(roots, out, overwrite=True, stop=stop))

    return make
