"""Train widget: a model for the lab's own classes from the slides and annotations open in napari.

The pathologist ticks the slides to learn from, picks each one's annotation (an annotation
layer, a corrected annotation from Review, or a QuPath GeoJSON file) and what the slide is for:
*Training*, or *Held out* (kept out of training and only scored). Then a start (transfer from
the bundled model's weights, the default, or from scratch), a network size for scratch, a
step budget and the held-out share the tool keeps out of the training slides (stratified by
class). Train starts the core :func:`~napari_msunet.training.slide_training.iter_train_slides`
in a worker with a live loss curve.

Cancel *pauses*: the checkpoint stays in the model's run folder and the button becomes
"Resume", which continues at the step reached (also after napari was closed). When the budget
is done, the model file is written with the held-out Dice of the start model and of the new
model in its header, shown below and in the model history; "Use this model" predicts the
current view with it.

No compute and no file parsing here: the widget gathers paths and settings; the core trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_msunet._napari._finetune_inputs import (
    annotation_items,
    annotation_source,
    fill_combo,
    model_items,
)
from napari_msunet._napari._history_panel import ModelHistoryPanel
from napari_msunet._napari._layer_info import Kind, kind_of, layer_info
from napari_msunet._napari._layers import slide_path_of
from napari_msunet._napari._loss_plot import LossPlot
from napari_msunet._napari._model_history import model_history
from napari_msunet._napari._scroll import make_scrollable
from napari_msunet._napari._tasks import Task, TaskBar, import_quietly, start_task
from napari_msunet._napari._viewer_setup import prepare_viewer
from napari_msunet._napari._workspace import workspace_dir
from napari_msunet.training.held_out import FRACTION
from napari_msunet.training.slide_dataset import SlideSpec
from napari_msunet.training.slide_training import VersionResult, iter_train_slides, paused_run
from napari_msunet.training.trainer import TrainStep

if TYPE_CHECKING:
    import napari

__all__ = ["ROLES", "TrainWidget"]

#: What a ticked slide is used for.
ROLES = (("Training", "train"), ("Held out", "held-out"))

_STARTS = (("Transfer from the base model", "transfer"), ("From scratch", "scratch"))


class TrainWidget(QWidget):
    """Dock widget: train a model for new classes from the annotated slides open in napari.

    Attributes (for scripts and tests)
    ----------
    task
        The training :class:`~._tasks.Task` of the last run (``None`` before).
    predict_task
        The prediction started by "Use this model".
    result
        The last :class:`~napari_msunet.training.slide_training.VersionResult`.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        prepare_viewer(napari_viewer)  # outlines, short notifications (_viewer_setup)
        self.task: Task | None = None
        self.predict_task: Task | None = None
        self.result: VersionResult | None = None
        self._rows: list[tuple[Any, QComboBox, QComboBox]] = []
        self._model_files: list[Path] = []

        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Slide", "Annotation", "Use for"])
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(110)
        self.table.setToolTip("Tick the slides to use; each needs its annotation")

        self.start = QComboBox()
        for text, mode in _STARTS:
            self.start.addItem(text, mode)
        self.start.setToolTip(
            "Transfer keeps what the base model learnt about tissue (its encoder and decoder) "
            "and learns a new class head: far fewer steps than from scratch"
        )
        self.base = QComboBox()
        self.base.activated.connect(self._base_activated)
        self.preset = QComboBox()
        self.preset.addItems(["lite", "paper"])
        self.preset.setToolTip("Network size from scratch: lite (fast) or paper (the paper's)")
        self.start.currentIndexChanged.connect(lambda _i: self._start_changed())
        self.steps = QSpinBox()
        self.steps.setRange(1, 1_000_000)
        self.steps.setValue(1000)
        self.held_out = QDoubleSpinBox()
        self.held_out.setRange(0.0, 0.9)
        self.held_out.setSingleStep(0.05)
        self.held_out.setValue(FRACTION)
        self.held_out.setToolTip(
            "Share of each class's annotated regions on the training slides kept out of "
            "training and scored (ignored when a slide is marked 'Held out')"
        )
        self.batch = QSpinBox()
        self.batch.setRange(1, 256)
        self.batch.setValue(8)
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.out = QLineEdit()
        self.out.setPlaceholderText("the new model file (.safetensors)")
        self.out.editingFinished.connect(self._out_changed)
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse_out)
        out_row = QHBoxLayout()
        out_row.addWidget(self.out, 1)
        out_row.addWidget(browse)
        form = QFormLayout()
        form.addRow("Start", self.start)
        form.addRow("Base model", self.base)
        form.addRow("Network", self.preset)
        form.addRow("Steps", self.steps)
        form.addRow("Held-out share", self.held_out)
        form.addRow("Batch size", self.batch)
        form.addRow("Device", self.device)
        form.addRow("Save as", out_row)

        self.taskbar = TaskBar(
            "Train",
            self._run,
            cancelled_text="Paused; the run is kept. Resume continues at the step reached.",
        )
        self.plot = LossPlot(self)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.info.setMinimumHeight(2 * self.info.fontMetrics().lineSpacing())
        self.history = ModelHistoryPanel()
        self.history.use_requested.connect(self.use_model)
        self.history.refresh_requested.connect(self.refresh_history)

        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Slides and their annotations"))
        layout.addWidget(self.table)
        layout.addLayout(form)
        layout.addWidget(self.taskbar)
        layout.addWidget(self.plot)
        layout.addWidget(self.info)
        layout.addWidget(self.history)
        layout.addStretch(1)

        self.viewer.layers.events.inserted.connect(self._layers_changed)
        self.viewer.layers.events.removed.connect(self._layers_changed)
        self._fill_base()
        self._start_changed()
        self._layers_changed()
        make_scrollable(self)  # stacked docks scroll instead of clipping

    # ------------------------------------------------------------------ inputs
    def _slides(self) -> list[Any]:
        return [ly for ly in self.viewer.layers if kind_of(ly) is Kind.SLIDE]

    def _layers_changed(self, _event: Any = None) -> None:
        """One row per open slide; choices of rows that stay are kept."""
        # read the choices before the rows (and their combo boxes) are deleted
        before = {
            slide_path_of(layer): (ann.currentData(), role.currentIndex())
            for layer, ann, role in self._rows
        }
        checked = {slide_path_of(self._rows[i][0]) for i in self._checked_rows()}
        self.table.setRowCount(0)
        self._rows = []
        for layer in self._slides():
            path = slide_path_of(layer)
            row = self.table.rowCount()
            self.table.insertRow(row)
            item = QTableWidgetItem(layer.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
            was = path in before
            state = path in checked or not was
            item.setCheckState(Qt.CheckState.Checked if state else Qt.CheckState.Unchecked)
            item.setToolTip(str(path))
            ann, role = QComboBox(), QComboBox()
            ann.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            ann.setMinimumContentsLength(12)
            items, prefer = annotation_items(self.viewer.layers, path, [])
            items = [(t, d) for t, d in items if not isinstance(d, str)]  # no "browse" entry
            keep = before[path][0] if was else None
            fill_combo(ann, items, keep if keep is not None else prefer)
            for text, value in ROLES:
                role.addItem(text, value)
            if was:
                role.setCurrentIndex(before[path][1])
            self.table.setItem(row, 0, item)
            self.table.setCellWidget(row, 1, ann)
            self.table.setCellWidget(row, 2, role)
            self._rows.append((layer, ann, role))
        self.table.resizeColumnToContents(0)
        if not self.out.text() and self._rows:
            self.out.setText(str(_default_out(slide_path_of(self._rows[0][0]))))
            self._out_changed()

    def _checked_rows(self) -> list[int]:
        return [
            i
            for i in range(min(self.table.rowCount(), len(self._rows)))
            if self.table.item(i, 0).checkState() == Qt.CheckState.Checked
        ]

    def set_role(self, slide_layer: Any, role: str) -> None:
        """Use ``slide_layer`` for ``role`` ("train" or "held-out")."""
        for layer, _ann, combo in self._rows:
            if layer is slide_layer:
                combo.setCurrentIndex(combo.findData(role))

    def _fill_base(self, prefer: Path | None = None) -> None:
        items, default = model_items([], self._model_files)
        fill_combo(self.base, items, prefer or default)

    def _base_activated(self, _index: int) -> None:
        if isinstance(self.base.currentData(), Path):
            return
        path, _ = QFileDialog.getOpenFileName(self, "Base model", "", "Model files (*.safetensors)")
        if path:
            self.set_base_model(path)
        else:
            self._fill_base()

    def set_base_model(self, path: str | Path) -> None:
        """Transfer from (and compare with) this model file."""
        path = Path(path)
        if path not in self._model_files:
            self._model_files.append(path)
        self._fill_base(prefer=path)

    def _start_changed(self) -> None:
        scratch = self.start.currentData() == "scratch"
        self.preset.setEnabled(scratch)
        self.preset.setToolTip(
            "Network size from scratch: lite (fast) or paper (the paper's)"
            if scratch
            else "Transfer keeps the base model's network"
        )

    def _browse_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the new model as", self.out.text(), "Model files (*.safetensors)"
        )
        if path:
            self.out.setText(path if path.endswith(".safetensors") else path + ".safetensors")
            self._out_changed()

    def _out_changed(self) -> None:
        """Offer to resume a paused run into the chosen file."""
        text = self.out.text().strip()
        step = paused_run(text) if text else None
        label = "Train" if step is None else f"Resume (step {step})"
        self.taskbar.set_label(label)
        self.refresh_history()

    # ------------------------------------------------------------------ running
    def _fail(self, message: str) -> None:
        show_error(message)
        self.taskbar.status.setText(message)

    def _specs(self) -> tuple[list[SlideSpec], list[SlideSpec]]:
        train, held = [], []
        for i in self._checked_rows():
            layer, ann, role = self._rows[i]
            annotation, regions = annotation_source(ann.currentData(), "")
            info = layer_info(layer)
            mpp = info.mpp_given if info is not None and info.mpp is None else None
            spec = SlideSpec(slide_path_of(layer), annotation, regions=regions, mpp=mpp)
            (held if role.currentData() == "held-out" else train).append(spec)
        return train, held

    def _run(self) -> Task | None:
        try:
            train, held = self._specs()
        except (ValueError, OSError) as exc:
            self._fail(str(exc))
            return None
        if not train:
            self._fail("Tick at least one slide for training (and choose its annotation).")
            return None
        text = self.out.text().strip()
        if not text:
            self._fail("Choose where to save the new model (Save as).")
            return None
        out = Path(text)
        base = self.base.currentData()
        settings = {
            "start": self.start.currentData(),
            "base": base if isinstance(base, Path) else None,
            "preset": self.preset.currentText() if self.start.currentData() == "scratch" else None,
            "steps": self.steps.value(),
            "batch_size": self.batch.value(),
            "device": self.device.currentText(),
            "held_out_fraction": round(self.held_out.value(), 4),
            "held_out_slides": held,
        }

        def make(stop):
            import_quietly("torch._dynamo")  # see import_quietly
            return iter_train_slides(train, out, stop=stop, **settings)

        step = paused_run(out)
        self.plot.clear(total=settings["steps"])
        kept = f"; {len(held)} slide(s) held out" if held else ""
        again = f"resuming at step {step}, " if step is not None else ""
        self.info.setText(f"Training on {len(train)} slide(s){kept}; {again}will save {out.name}.")
        self.task = start_task(
            make,
            f"Training {out.name}",
            on_yield=self._on_step,
            on_return=self._on_done,
            on_error=lambda exc: self.info.setText(f"Training failed: {exc}"),
            on_finish=lambda _task: self._out_changed(),
        )
        return self.task

    def _on_step(self, record: Any) -> None:
        if isinstance(record, TrainStep):
            self.plot.add(record.done, record.loss, record.total)

    def _on_done(self, result: VersionResult) -> None:
        self.result = result
        if result.model is None:
            if result.run_dir is not None:
                self.info.setText(
                    f"Paused at step {result.steps}; the run is kept in {result.run_dir.name}. "
                    "Resume continues from there."
                )
            else:
                self.info.setText("Stopped before the first step; nothing was saved.")
            return
        summary = " ".join(f"{line}." for line in result.score_lines())
        self.info.setText(f"Saved {result.model.name} ({result.steps} steps). {summary}")
        self.refresh_history()

    # ------------------------------------------------------------------ history
    def refresh_history(self) -> None:
        """The new model's family (the model and its fine-tuned versions)."""
        text = self.out.text().strip()
        path = Path(text) if text else None
        if path is None or not path.is_file():
            self.history.show_versions([])
            return
        self.history.show_versions(model_history(path), selected=path)

    def use_model(self, path: str | Path) -> Task | None:
        """Predict the current view of the first ticked slide with ``path``."""
        from napari_msunet._napari._segment import start_prediction, visible_region

        rows = self._checked_rows() or range(len(self._rows))
        if not rows:
            self._fail("Open a slide first.")
            return None
        layer = self._rows[next(iter(rows))][0]
        region = visible_region(self.viewer, layer)
        self.predict_task = start_prediction(self.viewer, layer, Path(path), region=region)
        self.info.setText(f"Predicting the current view of {layer.name} with {Path(path).name}…")
        return self.predict_task


def _default_out(slide: Path | None) -> Path:
    """The first ``models/trained-N.safetensors`` not written yet in the first slide's
    workspace (a paused ``trained-N.run`` is then offered to resume)."""
    folder = workspace_dir(slide) / "models" if slide is not None else Path.cwd()
    n = 1
    while (folder / f"trained-{n}.safetensors").exists():
        n += 1
    return folder / f"trained-{n}.safetensors"
