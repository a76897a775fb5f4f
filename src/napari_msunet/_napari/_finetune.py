"""Fine-tune widget: train the model on the corrected annotation, then look at the result.

The pathologist has corrected some regions (Review widget). Here they pick the slide, that
annotation and the parent model (by default the model of the prediction on screen), and Run
starts the core :func:`~napari_msunet.training.finetune.iter_finetune` generator in a worker:
bootstrap + fuzzy-boundary losses, corrected regions trusted and the rest left to the
bootstrap term, exactly as the core does it. A live plot shows the loss, Cancel stops between
two steps. The result is always a *new* file (``<parent>-ftN.safetensors``, see
:mod:`._model_history` for where it goes); when it is ready the current view is predicted
again with it, so the effect shows where the user is looking. The model history lists the
family of versions; "Use this model" predicts the view with any of them, the parent included.

No compute here: the widget gathers paths and settings, the core does the work.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_msunet._napari._finetune_inputs import (
    BROWSE,
    annotation_items,
    annotation_source,
    fill_combo,
    model_items,
    prediction_model,
)
from napari_msunet._napari._history_panel import ModelHistoryPanel
from napari_msunet._napari._layer_info import Kind, kind_of, layer_info, prediction_layers
from napari_msunet._napari._layers import same_layer, slide_path_of
from napari_msunet._napari._loss_plot import LossPlot
from napari_msunet._napari._model_history import (
    family_root,
    latest_version,
    model_history,
    version_target,
)
from napari_msunet._napari._prediction_versions import toggle_before_after
from napari_msunet._napari._scroll import make_scrollable
from napari_msunet._napari._tasks import Task, TaskBar, import_quietly, start_task
from napari_msunet._napari._viewer_setup import prepare_viewer
from napari_msunet._napari._workspace import workspace_dir
from napari_msunet.training.finetune import (
    FinetuneResult,
    interrupted_version,
    iter_finetune,
)
from napari_msunet.training.held_out import FRACTION
from napari_msunet.training.slide_dataset import SlideSpec
from napari_msunet.training.trainer import TrainStep

if TYPE_CHECKING:
    import napari

__all__ = ["CLASS_CHOICES", "FinetuneWidget"]

#: The "Classes" choices: what to do with annotation classes the parent does not know.
CLASS_CHOICES = (
    ("Automatic", "auto"),
    ("Keep the model's classes", "keep"),
    ("Add classes", "add"),
    ("Replace classes", "replace"),
)


class FinetuneWidget(QWidget):
    """Dock widget: fine-tune a model on the corrected annotation of a slide.

    Attributes (for scripts and tests)
    ----------
    task
        The fine-tune :class:`~._tasks.Task` of the last run (``None`` before).
    predict_task
        The prediction started after a fine-tune or by "Use this model".
    result
        The last :class:`~napari_msunet.training.finetune.FinetuneResult`.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        prepare_viewer(napari_viewer)  # outlines, short notifications (_viewer_setup)
        self.task: Task | None = None
        self.predict_task: Task | None = None
        self.result: FinetuneResult | None = None
        self._annotation_files: list[Path] = []
        self._model_files: list[Path] = []
        self._model_auto = True  # follow the prediction layer until the user picks a model
        self._busy = False  # repopulating combos: ignore their change signals

        self.slide_combo = QComboBox()
        self.annotation_combo = QComboBox()
        self.model_combo = QComboBox()
        for combo in (self.slide_combo, self.annotation_combo, self.model_combo):
            # long file names must not widen the dock (and squeeze the canvas)
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(16)
        self.annotation_combo.setToolTip(
            "The corrected annotation (Review widget), a label mask layer, or a QuPath GeoJSON"
        )
        self.model_combo.setToolTip("The model to start from; it is never changed")
        self.steps = QSpinBox()
        self.steps.setRange(1, 100_000)
        self.steps.setValue(100)
        self.lr = QDoubleSpinBox()
        self.lr.setDecimals(6)
        self.lr.setRange(1e-7, 1.0)
        self.lr.setSingleStep(1e-5)
        self.lr.setValue(1e-4)
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(8)
        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("Annotation", self.annotation_combo)
        form.addRow("Parent model", self.model_combo)
        self.classes = QComboBox()
        for text, mode in CLASS_CHOICES:
            self.classes.addItem(text, mode)
        self.classes.setToolTip(
            "When the annotation has classes the model does not know (say germinal centre "
            "and sinus for a gland model): add them to the model's classes, or replace the "
            "model's classes by the annotation's. The encoder and decoder are kept either way."
        )
        form.addRow("Classes", self.classes)
        form.addRow("Steps", self.steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Batch size", self.batch)

        # advanced settings, folded away
        self.advanced_toggle = QToolButton()
        self.advanced_toggle.setText("Advanced")
        self.advanced_toggle.setCheckable(True)
        self.advanced_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_toggle.toggled.connect(self._fold)
        self.advanced = QWidget()
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.regions = QLineEdit()
        self.regions.setPlaceholderText("from the annotation layer")
        self.regions.setToolTip(
            "GeoJSON of the corrected regions: only there does the annotation count fully. "
            "Empty: the annotation layer's own, or the whole annotation if it has none."
        )
        regions_browse = QPushButton("…")
        regions_browse.setMaximumWidth(30)
        regions_browse.clicked.connect(self._browse_regions)
        regions_row = QHBoxLayout()
        regions_row.addWidget(self.regions, 1)
        regions_row.addWidget(regions_browse)
        self.held_out = QDoubleSpinBox()
        self.held_out.setRange(0.0, 0.9)
        self.held_out.setSingleStep(0.05)
        self.held_out.setValue(FRACTION)
        self.held_out.setToolTip(
            "Share of each class's corrected (or annotated) regions kept out of training; the "
            "parent and the new version are scored there. 0: none kept out, no score."
        )
        self.repredict = QCheckBox("Predict the current view with the new model")
        self.repredict.setChecked(True)
        adv = QFormLayout(self.advanced)
        adv.setContentsMargins(12, 0, 0, 0)
        adv.addRow("Device", self.device)
        adv.addRow("Seed", self.seed)
        adv.addRow("Corrected regions", regions_row)
        adv.addRow("Held-out share", self.held_out)
        adv.addRow(self.repredict)
        self.advanced.setVisible(False)

        self.taskbar = TaskBar(
            "Fine-tune",
            self._run,
            cancelled_text="Cancelled; the steps done so far are saved as a new version.",
        )
        self.plot = LossPlot(self)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        # room for two lines from the start: text arriving during a run must not change the
        # dock's layout (a relayout resizes and repaints the napari canvas)
        lines = 2 * self.info.fontMetrics().lineSpacing()
        self.info.setMinimumHeight(lines)
        self.taskbar.status.setMinimumHeight(lines)

        self.history = ModelHistoryPanel()
        self.history.use_requested.connect(self.use_model)
        self.history.refresh_requested.connect(self.refresh_history)
        self.history.before_after_requested.connect(self.before_after)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.advanced_toggle)
        layout.addWidget(self.advanced)
        layout.addWidget(self.taskbar)
        layout.addWidget(self.plot)
        layout.addWidget(self.info)
        layout.addWidget(self.history)
        layout.addStretch(1)

        self.slide_combo.currentIndexChanged.connect(self._slide_changed)
        self.annotation_combo.activated.connect(self._annotation_activated)
        self.model_combo.activated.connect(self._model_activated)
        self.model_combo.currentIndexChanged.connect(lambda _i: self._model_changed())
        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self.viewer.layers.selection.events.active.connect(self._layers_changed)
        self._layers_changed()
        make_scrollable(self)  # stacked docks scroll instead of clipping

    # ------------------------------------------------------------------ inputs
    def _fold(self, open_: bool) -> None:
        self.advanced.setVisible(open_)
        arrow = Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow
        self.advanced_toggle.setArrowType(arrow)

    def _given_slide_mpp(self) -> float | None:
        """The µm/px entered in Segment for a slide whose file does not state it, else None."""
        info = layer_info(self.slide_combo.currentData())
        return info.mpp_given if info is not None and info.mpp is None else None

    def _slide_path(self) -> Path | None:
        return slide_path_of(self.slide_combo.currentData())

    def _prediction_layers(self) -> list[Any]:
        layers = prediction_layers(self.viewer, self._slide_path())
        return [ly for ly in layers if prediction_model(ly) is not None]

    def _current_prediction(self) -> Any | None:
        active = self.viewer.layers.selection.active
        predictions = self._prediction_layers()
        for p in predictions:
            if same_layer(active, p):
                return p
        return predictions[-1] if predictions else None

    def _layers_changed(self, _event: Any = None) -> None:
        self._busy = True
        try:
            slides = [ly for ly in self.viewer.layers if kind_of(ly) is Kind.SLIDE]
            fill_combo(self.slide_combo, [(ly.name, ly) for ly in slides])
            self._fill_annotations()
            self._fill_models()
        finally:
            self._busy = False
        self.refresh_history()

    def _slide_changed(self, _index: int) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            self._fill_annotations()
            self._fill_models()
        finally:
            self._busy = False
        self.refresh_history()

    def _fill_annotations(self) -> None:
        items, prefer = annotation_items(
            self.viewer.layers, self._slide_path(), self._annotation_files
        )
        fill_combo(self.annotation_combo, items, prefer)

    def _fill_models(self) -> None:
        items, default = model_items(self._prediction_layers(), self._model_files)
        prefer = None
        if self._model_auto:
            current = self._current_prediction()
            prefer = prediction_model(current) if current is not None else default
            latest = self._latest_version(prefer)
            if latest is not None:  # continue the chain of versions, not the original
                self._model_files.append(latest)
                items, _ = model_items(self._prediction_layers(), self._model_files)
                prefer = latest
                self.info.setText(
                    f"Continuing from {latest.name}, the newest version of "
                    f"{family_root(latest)} (choose another in Model)."
                )
            self.model_combo.setCurrentIndex(-1)  # let the preference win over the old choice
        fill_combo(self.model_combo, items, prefer)

    def _latest_version(self, model: Any) -> Path | None:
        """A newer version of ``model`` than itself (see ``latest_version``), or ``None``."""
        if not isinstance(model, Path) or not model.is_file():
            return None
        folders = []
        slide = self._slide_path()
        if slide is not None:
            with contextlib.suppress(OSError):
                folders.append(workspace_dir(slide, create=False) / "models")
        latest = latest_version(model, folders)
        return latest if latest.resolve() != model.resolve() else None

    def _annotation_activated(self, index: int) -> None:
        if self.annotation_combo.itemData(index) != BROWSE:
            return
        path, _ = QFileDialog.getOpenFileName(
            self, "QuPath annotation", "", "QuPath GeoJSON (*.geojson *.json)"
        )
        if path:
            self.set_annotation_file(path)
        else:
            self.annotation_combo.setCurrentIndex(0)

    def _model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) != BROWSE:
            self._model_auto = False
            return
        path, _ = QFileDialog.getOpenFileName(self, "Model", "", "Model files (*.safetensors)")
        if path:
            self.set_model_file(path)
        else:
            self._fill_models()

    def _browse_regions(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Corrected regions", "", "QuPath GeoJSON (*.geojson *.json)"
        )
        if path:
            self.regions.setText(path)

    def set_annotation_file(self, path: str | Path) -> None:
        """Use a QuPath GeoJSON (or label mask) file as the annotation."""
        path = Path(path)
        if path not in self._annotation_files:
            self._annotation_files.append(path)
        self._busy = True
        try:
            self._fill_annotations()
            self.annotation_combo.setCurrentIndex(
                self.annotation_combo.findText(f"{path.name} (file)")
            )
        finally:
            self._busy = False

    def set_model_file(self, path: str | Path) -> None:
        """Start from this model file (also how a new version becomes the current one)."""
        path = Path(path)
        self._model_auto = False
        if path not in self._model_files:
            self._model_files.append(path)
        self._busy = True
        try:
            self._fill_models()
            for i in range(self.model_combo.count()):
                if self.model_combo.itemData(i) == path:
                    self.model_combo.setCurrentIndex(i)
        finally:
            self._busy = False
        self.refresh_history()

    def parent_model(self) -> Path | None:
        data = self.model_combo.currentData()
        return data if isinstance(data, Path) else None

    def _model_changed(self) -> None:
        if not self._busy:
            self.refresh_history()

    # ------------------------------------------------------------------ running
    def _fail(self, message: str) -> None:
        show_error(message)
        self.taskbar.status.setText(message)

    def _run(self) -> Task | None:
        slide = self._slide_path()
        parent = self.parent_model()
        if slide is None:
            self._fail("Open a slide first (File > Open, or File > Open Sample).")
            return None
        if parent is None or not parent.is_file():
            self._fail(f"Choose a parent model file (not found: {parent})")
            return None
        try:
            annotation, regions = annotation_source(
                self.annotation_combo.currentData(), self.regions.text()
            )
            target = version_target(parent, slide)
        except (ValueError, OSError) as exc:
            self._fail(str(exc))
            return None
        if regions is not None and _no_regions(regions):
            self._fail(
                f"No region has been corrected yet ({regions.name} is empty): correct at least "
                "one region in 'Review and correct' first, or pick the annotation itself to "
                "fine-tune on all of it."
            )
            return None
        spec = SlideSpec(slide, annotation, regions=regions, mpp=self._given_slide_mpp())
        settings = {
            "steps": self.steps.value(),
            "lr": self.lr.value(),
            "batch_size": self.batch.value(),
            "seed": self.seed.value(),
            "device": self.device.currentText(),
            "classes": self.classes.currentData(),
            "held_out_fraction": round(self.held_out.value(), 4),
        }
        # a fine-tune of these settings that was interrupted (napari closed, a crash) is
        # finished rather than started again as the next version
        target = interrupted_version(target.parent, parent, [spec], **settings) or target

        def make(stop):
            # torch's optimiser imports torch._dynamo on first use: see import_quietly
            import_quietly("torch._dynamo")
            return iter_finetune(parent, [spec], out=target, stop=stop, **settings)

        self.plot.clear(total=settings["steps"])
        where = "the corrected regions" if regions else "all"
        choice = self.annotation_combo.currentData()
        name = getattr(choice, "name", annotation.name)
        self.info.setText(f"Training on {where} of {name}; will save {target.name}.")
        self.task = start_task(
            make,
            f"Fine-tuning {parent.name}",
            on_yield=self._on_step,
            on_return=self._on_done,
            on_error=lambda exc: self.info.setText(f"Fine-tuning failed: {exc}"),
        )
        return self.task

    def _on_step(self, record: Any) -> None:
        if isinstance(record, TrainStep):
            self.plot.add(record.done, record.loss, record.total)

    def _on_done(self, result: FinetuneResult) -> None:
        self.result = result
        if result.model is None:  # the core saves no version that trained zero steps
            self.info.setText("Stopped before the first step; no new version was saved.")
            return
        if self.plot.losses and not result.stopped:
            self.taskbar.status.setText(
                f"Done: {result.steps} steps, last loss {self.plot.losses[-1]:.3f} "
                f"(moving average {self.plot.smoothed[-1]:.3f})"
            )
        text = _saved_text(result)
        self.set_model_file(result.model)
        repredict = not result.stopped and self.repredict.isChecked()
        if repredict and self.predict(result.model) is not None:
            text += " Predicting the current view with it…"
        self.info.setText(text)

    def predict(self, model: str | Path) -> Task | None:
        """Predict the current view of the slide with ``model`` (Segment's runner)."""
        layer = self.slide_combo.currentData()
        if layer is None:
            self._fail("Open a slide first.")
            return None
        try:
            from napari_msunet._napari._segment import start_prediction, visible_region
        except ImportError as exc:  # the Segment widget is missing from this install
            self._fail(f"Cannot predict the view: {exc}")
            return None
        region = visible_region(self.viewer, layer)
        self.predict_task = start_prediction(self.viewer, layer, Path(model), region=region)
        self.predict_task.listeners.append(lambda task: self._predicted(task, Path(model)))
        return self.predict_task

    def _predicted(self, task: Task, model: Path) -> None:
        if not task.done:
            return
        self.refresh_history()
        if task.error is None and not task.cancelled:
            text = f"The current view is predicted with {model.name}."
            if self.result is not None and self.result.model == model:  # keep its scores
                text = f"{_saved_text(self.result)} {text}"
            self.info.setText(text)

    # ------------------------------------------------------------------ history
    def refresh_history(self) -> None:
        """List the parent model's family (root and ``-ftN`` versions) with their headers."""
        parent = self.parent_model()
        slide = self._slide_path()
        if parent is None or not parent.is_file():
            self.history.show_versions([])
            return
        folders = []
        if slide is not None:
            with contextlib.suppress(OSError):  # no writable workspace: nothing there
                folders.append(workspace_dir(slide) / "models")
        current = self._current_prediction()
        self.history.show_versions(
            model_history(parent, folders),
            selected=parent,
            in_use=prediction_model(current),
            in_use_by=current.name if current is not None else "",
        )

    def before_after(self) -> Any | None:
        """Switch the slide's view between its newest prediction and the one before."""
        shown = toggle_before_after(self.viewer, self._slide_path())
        if shown is None:
            self.info.setText("Before / after needs two predictions of this slide.")
        else:
            self.info.setText(f"Showing {shown.name}.")
        return shown

    def history_paths(self) -> list[Path]:
        """The model files listed in the history, in order."""
        return self.history.paths()

    def use_model(self, path: str | Path) -> Task | None:
        """Make ``path`` the current model and predict the current view with it."""
        self.set_model_file(path)
        task = self.predict(path)
        if task is not None:
            self.info.setText(f"Predicting the current view with {Path(path).name}…")
        return task

    def use_selected(self) -> Task | None:
        """ "Use this model": the version selected in the history."""
        path = self.history.selected()
        if path is None:
            self._fail("Select a model version in the history first.")
            return None
        return self.use_model(path)


def _no_regions(path: Path) -> bool:
    """Whether a corrected-regions GeoJSON exists but holds no feature (nothing reviewed)."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False  # the core reads it and names the problem
    features = data.get("features") if isinstance(data, dict) else data
    return isinstance(features, list) and not features


def _saved_text(result: FinetuneResult) -> str:
    """What the widget says of a saved version: name, steps, and its scores."""
    text = f"Saved {result.model.name} ({result.steps} steps"
    text += ", stopped early)." if result.stopped else ")."
    return text + "".join(f" {line}." for line in result.score_lines())
