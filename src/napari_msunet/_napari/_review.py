"""The Review widget: correct the annotation region by region; work through the review queue.

napari cannot paint on a multiscale Labels layer, and a slide-level mask is far too large
for a single-scale one, so editing works on windows: the slide-level annotation lives in an
:class:`~napari_msunet.io.annotation_store.AnnotationStore` under the slide's workspace
(``<slide>.msunet/annotation/``), shown read-only as a multiscale layer; "Edit region" opens
one window of it at store resolution as an ordinary Labels layer placed exactly on the
slide; "Apply" writes it back (journalled, crash-safe) and records the window as corrected;
"Undo" restores the last edit.

The store is made at the model's µm/px (the selected prediction's, else the bundled
model's): that is the resolution fine-tuning trains at, and editing windows are small.

The review queue (:mod:`napari_msunet.evaluation.review_queue`) lists the suspected missing
and wrong annotations of every open slide with a prediction and a store
(:mod:`~napari_msunet._napari._cohort_queue`), ranked by area x confidence; clicking one
centres the view on it, and Accept / Reject / Edit act on it, each recorded as a decision
beside its slide's store (exported with "Export decisions…"). Every read or write of the
store and every search runs in a worker
(:func:`~napari_msunet._napari._tasks.start_task`); the GUI thread only shows results.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_msunet._napari._candidate_panel import CandidatePanel
from napari_msunet._napari._cohort_queue import CohortQueue, export_task
from napari_msunet._napari._layer_info import (
    Kind,
    LayerInfo,
    kind_of,
    layer_info,
    set_layer_info,
)
from napari_msunet._napari._layers import LayerCombo, is_slide, slide_mpp_of, slide_path_of
from napari_msunet._napari._review_layers import (
    annotation_rank,
    center_on,
    edit_layer_kwargs,
    is_annotation_layer,
    keep_edges_visible,
    level0_of,
    level0_rect_of_shape,
    slide_scale,
    slide_units,
    store_info,
    store_layer_kwargs,
)
from napari_msunet._napari._scroll import make_scrollable
from napari_msunet._napari._tasks import Task, TaskBar, one_step, start_task
from napari_msunet._napari._viewer_setup import prepare_viewer
from napari_msunet._napari._wording import describe_region
from napari_msunet._napari._workspace import workspace_dir
from napari_msunet.errors import MsunetError
from napari_msunet.progress import Progress

__all__ = ["ReviewWidget"]

#: How long the view stays on an accepted region (showing what was added) before the queue
#: moves on to the next one.
ACCEPT_PAUSE_MS = 1200

FILE_ENTRY = "QuPath GeoJSON or mask file…"
EMPTY_ENTRY = "(start from an empty annotation)"
MAX_EDIT_PIXELS = 4096 * 4096
"""Largest editable window (store pixels): beyond it painting and writing get slow."""


class ReviewWidget(QWidget):
    """Review and correct a slide's annotation (see the module docstring)."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        prepare_viewer(napari_viewer)  # outlines, short notifications (_viewer_setup)
        self.store: Any = None
        self.store_layer: Any = None
        self.edit_layer: Any = None
        self.rect_layer: Any = None
        self.candidate_layer: Any = None
        self.annotation_file: Path | None = None
        self._busy: Task | None = None
        self.queue = CohortQueue(napari_viewer)
        self._editing: Any = None  # the queue's candidate open for editing

        self.slide_combo = LayerCombo(napari_viewer, is_slide)
        self.annotation_combo = LayerCombo(
            napari_viewer,
            is_annotation_layer,
            annotation_rank,
            extra=[FILE_ENTRY, EMPTY_ENTRY],
            auto=lambda ly: kind_of(ly) is Kind.ANNOTATION,
        )
        self.annotation_combo.activated.connect(self._annotation_chosen)
        self.prediction_combo = LayerCombo(
            napari_viewer,
            lambda ly: kind_of(ly) is Kind.PREDICTION,
            none_text="(none)",
        )
        self.restart_check = QCheckBox("Start over (discard earlier corrections)")
        self.start_bar = TaskBar("Start review", self.start_review)
        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("Annotation", self.annotation_combo)
        form.addRow("Prediction", self.prediction_combo)
        setup = QGroupBox("1. Annotation to review")
        box = QVBoxLayout(setup)
        box.addLayout(form)
        box.addWidget(self.restart_check)
        box.addWidget(self.start_bar)

        self.draw_button = QPushButton("Draw a rectangle")
        self.edit_button = QPushButton("Edit region")
        self.edit_button.setToolTip("The last rectangle drawn, else the current view")
        self.apply_button = QPushButton("Apply")
        self.undo_button = QPushButton("Undo")
        self.discard_button = QPushButton("Discard")
        self.draw_button.clicked.connect(self.draw_rectangle)
        self.edit_button.clicked.connect(lambda: self.open_region())
        self.apply_button.clicked.connect(lambda: self.apply())
        self.undo_button.clicked.connect(lambda: self.undo())
        self.discard_button.clicked.connect(self.discard)
        edit = QGroupBox("2. Correct regions")
        grid = QVBoxLayout(edit)
        row = QHBoxLayout()
        for b in (self.draw_button, self.edit_button):
            row.addWidget(b)
        grid.addLayout(row)
        row = QHBoxLayout()
        for b in (self.apply_button, self.undo_button, self.discard_button):
            row.addWidget(b)
        grid.addLayout(row)

        self.missing = CandidatePanel(self.find_queue)
        self.missing.export_button.clicked.connect(lambda: self.export_decisions())
        self.missing.selected.connect(self._candidate_selected)
        self.missing.accept_button.clicked.connect(lambda: self.accept_candidate())
        self.missing.reject_button.clicked.connect(self.reject_candidate)
        self.missing.edit_button.clicked.connect(lambda: self.edit_candidate())
        self.candidate_list = self.missing.list  # shorthands
        self.threshold = self.missing.threshold

        self.status = QLabel("Pick the slide and its annotation, then Start review.")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        for w in (setup, edit, self.missing, self.status):
            layout.addWidget(w)
        layout.addStretch(1)
        self._update_buttons()
        make_scrollable(self)  # stacked docks scroll instead of clipping

    # -- helpers -----------------------------------------------------------------------

    def _fail(self, text: str) -> None:
        self.status.setText(text)
        show_error(text)

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _busy_now(self) -> bool:
        return self._busy is not None and not self._busy.done

    def _update_buttons(self) -> None:
        has_store, editing = self.store is not None, self.edit_layer is not None
        busy = self._busy_now()
        self.draw_button.setEnabled(has_store)
        self.edit_button.setEnabled(has_store and not editing and not busy)
        self.apply_button.setEnabled(editing and not busy)
        self.discard_button.setEnabled(editing and not busy)
        self.undo_button.setEnabled(has_store and not editing and not busy and self.store.can_undo)
        self.missing.enable_actions(has_store and not busy and not editing)

    def _run(self, make, description: str, on_return) -> Task | None:
        """Start a store operation in a worker; one at a time."""
        if self._busy_now():
            self._fail("Wait until the current operation has finished.")
            return None

        def finished(_task: Task) -> None:
            self._busy = None
            self._update_buttons()

        def errored(exc: BaseException) -> None:
            self.status.setText(f"{description} failed: {exc}")

        self._busy = start_task(
            make, description, on_return=on_return, on_error=errored, on_finish=finished
        )
        self._update_buttons()
        return self._busy

    def _slide_layer(self) -> Any:
        return self.slide_combo.current_layer()

    def _annotation_chosen(self, _index: int) -> None:
        if self.annotation_combo.current_extra() == FILE_ENTRY:
            path, _ = QFileDialog.getOpenFileName(
                self,
                "Annotation of the slide",
                "",
                "Annotations (*.geojson *.json *.zarr *.tif *.tiff *.png);;All files (*)",
            )
            if path:
                self.set_annotation_file(path)

    def set_annotation_file(self, path: str | Path) -> None:
        """Use a QuPath GeoJSON or label-mask file as the annotation to review."""
        self.annotation_file = Path(path)
        self.annotation_combo.set_extra(FILE_ENTRY)
        self._say(f"Annotation: {self.annotation_file.name}")

    # -- 1. start ----------------------------------------------------------------------

    def start_review(self) -> Task | None:
        """Create (or reopen) the slide's annotation store in a worker and show it."""
        slide_layer = self._slide_layer()
        slide_path = slide_path_of(slide_layer)
        if slide_layer is None or slide_path is None:
            self._fail("Open a slide first (File > Open), then pick it as the slide.")
            return None
        root = workspace_dir(slide_path) / "annotation"
        layer = self.annotation_combo.current_layer()
        info = layer_info(layer)
        existing = info.store if info is not None else None
        restart = self.restart_check.isChecked()
        if existing is not None and restart:
            self._fail(
                "To start over, pick the original annotation (layer or file), not the store."
            )
            return None
        if existing is not None:
            source, root = None, existing
        elif layer is not None:
            source = (info.path if info is not None else None) or level0_of(layer)
        elif self.annotation_combo.current_extra() == FILE_ENTRY:
            if self.annotation_file is None:
                self._fail("Choose the annotation file first.")
                return None
            source = self.annotation_file
        else:
            source = None
        pred = layer_info(self.prediction_combo.current_layer())
        names = None
        if pred is not None and pred.classes:
            top = max(c.label for c in pred.classes)
            names = ["Background"] + [f"Class {i}" for i in range(1, top + 1)]
            for c in pred.classes:
                names[c.label] = c.name
        pred_mpp = pred.mpp if pred is not None else None
        slide_mpp = slide_mpp_of(slide_layer)  # the file's, or the one entered in Segment

        def make(stop):
            from napari_msunet.io.annotation_store import AnnotationStore
            from napari_msunet.io.slide import open_slide

            if AnnotationStore.exists(root) and not restart:
                yield Progress(0, 1, "build", "opening the corrected annotation")
                return AnnotationStore.open(root), "reopened"
            mpp = pred_mpp
            if mpp is None:
                from napari_msunet.demo import default_model_path
                from napari_msunet.models.checkpoint import read_header

                mpp = read_header(default_model_path()).input_um_per_px
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                slide = open_slide(slide_path)
            try:
                store = yield from AnnotationStore.iter_create(
                    root,
                    source,
                    slide,
                    slide_mpp=slide_mpp,
                    mpp=mpp,
                    classes=names,
                    overwrite=restart,
                    stop=stop,
                )
            finally:
                slide.close()
            return None if store is None else (store, "created")  # None: cancelled

        def done(result) -> None:
            if result is None:  # cancelled: the creation left nothing behind
                return
            store, how = result
            if self.store is not None and self.store is not store:
                self.store.close()  # its edit lock (this process's count of it)
            self.store = store
            self._show_store(slide_layer)
            what = "Reopened the corrected annotation" if how == "reopened" else "Created"
            self._say(
                f"{what} in {store.root} ({store.mpp or store.downsample:g} "
                f"{'µm/px' if store.mpp else 'x level 0'}, {len(store.regions())} corrected "
                "regions). Draw a rectangle and press Edit region."
            )

        return self._run(make, "Preparing the annotation", done)

    def _show_store(self, slide_layer: Any = None) -> None:
        """Show the store as the slide-level layer (new dask names: the edits appear)."""
        slide_layer = slide_layer or self._slide_layer()
        levels = self.store.levels()
        data = levels if len(levels) > 1 else levels[0]
        kwargs = store_layer_kwargs(self.store, slide_layer)
        layer = self.store_layer
        if (
            layer is not None
            and layer in self.viewer.layers
            and layer.multiscale == (len(levels) > 1)
        ):
            layer.data = data
            set_layer_info(layer, store_info(self.store, slide_layer))
            layer.refresh()
        else:
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_labels(data, multiscale=len(levels) > 1, **kwargs)
        layer.editable = False
        self.store_layer = layer
        self._update_buttons()

    # -- 2. edit -----------------------------------------------------------------------

    def draw_rectangle(self) -> None:
        """Add (or select) the Shapes layer for the region to edit, in rectangle mode."""
        slide_layer = self._slide_layer()
        s0 = slide_scale(slide_layer)
        if self.rect_layer is None or self.rect_layer not in self.viewer.layers:
            units = slide_units(slide_layer)
            self.rect_layer = self.viewer.add_shapes(
                **({"units": units} if units else {}),
                name="region to edit",
                edge_color="white",
                face_color="transparent",
                scale=(s0, s0),
                translate=(-0.5 * s0, -0.5 * s0),
                metadata=LayerInfo(kind=Kind.EDIT_RECTANGLES).as_metadata(),
            )
            keep_edges_visible(self.viewer, self.rect_layer)
        self.viewer.layers.selection.active = self.rect_layer
        self.rect_layer.mode = "add_rectangle"
        self._say("Drag a rectangle over the region to correct, then press Edit region.")

    def _drawn_region(self) -> tuple[int, int, int, int] | None:
        layer = self.rect_layer
        if layer is None or layer not in self.viewer.layers or len(layer.data) == 0:
            return None
        return level0_rect_of_shape(layer, len(layer.data) - 1, self._slide_layer())

    def open_region(self, region: tuple[int, int, int, int] | None = None) -> Task | None:
        """Open a level-0 window (default: the last rectangle, else the view) for painting."""
        if self.store is None:
            self._fail("Start the review first.")
            return None
        if self.edit_layer is not None:
            self._fail("Apply or discard the open region first.")
            return None
        slide_layer = self._slide_layer()
        if region is None:
            region = self._drawn_region()
        if region is None:
            from napari_msunet._napari._segment import visible_region  # the shared view helper

            region = visible_region(self.viewer, slide_layer)
        window = self.store.to_store(*region)
        if window[2] * window[3] == 0:
            self._fail("The region lies outside the slide.")
            return None
        if window[2] * window[3] > MAX_EDIT_PIXELS:
            self._fail("The region is too large to paint on; draw a smaller one or zoom in.")
            return None
        store = self.store

        def done(data: np.ndarray) -> None:
            kwargs = edit_layer_kwargs(store, slide_layer, window)
            self.edit_layer = self.viewer.add_labels(data, **kwargs)
            self.viewer.layers.selection.active = self.edit_layer
            self.edit_layer.mode = "paint"
            self.edit_layer.selected_label = 1
            self._say(
                f"Paint the region ({window[2]} x {window[3]} px at "
                f"{store.mpp or store.downsample:g} {'µm/px' if store.mpp else 'x level 0'}; "
                "label 0 erases), then Apply."
            )
            self._update_buttons()

        return self._run(
            one_step(lambda: store.read_store(*window), "reading"), "Opening the region", done
        )

    def apply(self) -> Task | None:
        """Write the edited region back into the store (worker) and refresh the slide layer."""
        if self.edit_layer is None:
            self._fail("No region is open.")
            return None
        info = layer_info(self.edit_layer)
        window = info.window if info is not None else None
        assert window is not None  # open_region made the layer with its window
        data = np.array(self.edit_layer.data, dtype=np.uint8)
        store, cand = self.store, self._editing

        def done(edit) -> None:
            self._close_edit_layer()
            self._show_store()
            if cand is not None and cand in self.candidates:  # decided: "edit"
                self.show_candidates([c for c in self.candidates if c is not cand])
            self._say(
                f"Applied: region {describe_region(edit.region, store.slide_mpp)} recorded as "
                f"corrected ({len(store.regions())} corrected regions)."
            )

        def work():
            edit = store.apply_store(window[0], window[1], data)
            if cand is not None:
                from napari_msunet.evaluation.missing import record_decision

                record_decision(store, cand, "edit")
            return edit

        return self._run(one_step(work, "writing"), "Applying the correction", done)

    def undo(self) -> Task | None:
        """Undo the last applied edit (worker)."""
        if self.store is None or not self.store.can_undo:
            self._fail("Nothing to undo.")
            return None
        store = self.store

        def done(edit) -> None:
            self._show_store()
            self._say(f"Undone: {edit.label} of {describe_region(edit.region, store.slide_mpp)}.")

        return self._run(one_step(store.undo, "undoing"), "Undoing the last edit", done)

    def discard(self) -> None:
        """Close the open region without writing it."""
        self._close_edit_layer()
        self._say("Region discarded; the annotation is unchanged.")

    def _close_edit_layer(self) -> None:
        if self.edit_layer is not None and self.edit_layer in self.viewer.layers:
            self.viewer.layers.remove(self.edit_layer)
        self.edit_layer = None
        self._editing = None
        if self.store_layer is not None and self.store_layer in self.viewer.layers:
            self.viewer.layers.selection.active = self.store_layer
        self._update_buttons()

    # -- 3. the review queue: suspected missing and wrong annotations -------------------

    def find_queue(self) -> Task | None:
        """Rank the suspected missing and wrong annotations of every open slide with a
        prediction and a store (see :mod:`~napari_msunet._napari._cohort_queue`)."""
        return self._find(True, ("missing", "wrong"))

    def find_missing(self) -> Task | None:
        """Search this slide's selected prediction for confident regions the annotation lacks."""
        return self._find(False, ("missing",))

    def _find(self, all_slides: bool, kinds: tuple[str, ...]) -> Task | None:
        prediction = self.prediction_combo.current_layer()
        entries, notes = self.queue.entries(self._slide_layer(), self.store, prediction, all_slides)
        if not entries:
            self._fail(
                "Start the review and pick a finished prediction (its probabilities are "
                "needed)." + (f" Left out: {'; '.join(notes)}." if notes else "")
            )
            return None
        what = " and ".join(kinds)

        def done(found: list[Any]) -> None:
            self.show_candidates(found)
            left = notes + self.queue.notes
            self._say(
                f"{len(found)} suspected {what} annotations on {len(self.queue.slides)} "
                "slide(s), largest and surest first. Click one to go there."
                + (f" Left out: {'; '.join(left)}." if left else "")
            )

        make = self.queue.search(entries, float(self.threshold.value()), kinds)
        return start_task(make, f"Looking for suspected {what} annotations", on_return=done)

    def show_candidates(self, candidates: list[Any]) -> None:
        """List candidates and outline those on the selected one's slide (else the first's)."""
        self.missing.set_candidates(candidates)
        self._outline()

    def _outline(self) -> None:
        current = self.missing.current() or (self.candidates[0] if self.candidates else None)
        self.candidate_layer = self.queue.draw(
            self.candidates, current, self._slide_layer(), self.candidate_layer
        )
        if self.store_layer is not None:
            self.viewer.layers.selection.active = self.store_layer
        self._update_buttons()

    @property
    def candidates(self) -> list[Any]:
        """The queue's candidates listed, best first."""
        return self.missing.candidates

    def _candidate_selected(self, row: int) -> None:
        if 0 <= row < len(self.candidates):
            cand = self.candidates[row]
            if cand.slide != self.queue.outlined:
                self._outline()
            layer = self.queue.layers.get(cand.slide) or self._slide_layer()
            center_on(self.viewer, layer, cand.bbox)
        self._update_buttons()

    def _drop_current(self, pause_ms: int = 0) -> None:
        """Take the decided candidate off the list and select the next one, at once or after
        ``pause_ms`` (Accept: the view stays on what was added for a moment), unless the user
        picked one meanwhile."""
        remaining, row = self.missing.without_current()
        self.show_candidates(remaining)
        if row < 0:
            return
        if not pause_ms:
            self.candidate_list.setCurrentRow(row)
            return
        listed = self.candidates

        def next_one() -> None:
            if self.candidates is listed and self.candidate_list.currentRow() < 0:
                self.candidate_list.setCurrentRow(row)

        timer = QTimer(self)  # dies with the widget: never fires into a closed one
        timer.setSingleShot(True)
        timer.timeout.connect(next_one)
        timer.timeout.connect(timer.deleteLater)
        timer.start(pause_ms)

    def _current(self) -> tuple[Any, Any]:
        cand = self.missing.current()
        if cand is None:
            self._fail("Select a candidate of the review queue first.")
            return None, None
        return cand, self.queue.slide_of(cand)

    def accept_candidate(self) -> Task | None:
        """Take the model's answer for the selected candidate (worker): add the missing
        region, or replace (remove) the wrong annotation; the decision is recorded."""
        cand, slide = self._current()
        if slide is None:
            return None

        def work():
            from napari_msunet.evaluation.review_queue import decide

            return decide(slide, cand, "accept")

        def done(edit) -> None:
            self._drop_current(pause_ms=ACCEPT_PAUSE_MS)  # see what was added, then move on
            if slide.store is self.store:
                self._show_store()
            where = describe_region(edit.region, slide.store.slide_mpp)
            self._say(f"Accepted on {slide.name}: {edit.label}; {where} corrected.")

        return self._run(one_step(work, "accepting"), "Accepting the model's answer", done)

    def reject_candidate(self) -> None:
        """Keep the annotation: drop the selected candidate and record the rejection."""
        cand, slide = self._current()
        if slide is None:
            return
        from napari_msunet.evaluation.review_queue import decide

        try:
            decide(slide, cand, "reject")
        except MsunetError as exc:
            self._fail(str(exc))
            return
        self._drop_current()
        self._say(f"Rejected; it will not be suggested again ({slide.store.root}).")

    def edit_candidate(self) -> Task | None:
        """Open the selected candidate (with a margin) as an editable region; Apply records
        the decision "edit"."""
        cand, slide = self._current()
        if slide is None:
            return None
        if slide.store is not self.store:
            self._fail(f"It lies on {slide.name}: pick that slide and Start review to edit it.")
            return None
        y, x, h, w = cand.bbox
        my, mx = max(h // 4, 16), max(w // 4, 16)
        task = self.open_region((y - my, x - mx, h + 2 * my, w + 2 * mx))
        self._editing = cand if task is not None else None
        return task

    def export_decisions(self, folder: str | Path | None = None) -> Task | None:
        """Write the review decisions of the queue's slides (and this one's) to a folder: a
        QuPath GeoJSON per slide and decisions.csv (worker)."""
        roots = self.queue.roots(self.store)
        if not roots:
            self._fail("Start the review first: the decisions are kept with the annotation.")
            return None
        folder = folder or QFileDialog.getExistingDirectory(self, "Export the decisions to")
        if not folder:
            return None

        def done(files) -> None:
            if files:
                self._say(
                    f"Exported the decisions to {folder}: {', '.join(f.name for f in files)}."
                )

        make = export_task(roots, Path(folder))
        return start_task(make, "Exporting the review decisions", on_return=done)
