"""The Segment widget: run a model over a slide layer and watch the prediction appear.

The widget only gathers settings; :func:`start_prediction` (shared with the Fine-tune widget)
runs the engine in a worker and shows the growing Labels layer. Defaults are the ones a
pathologist should not have to think about: the bundled model, the model's own µm/px, the
device picked automatically, tile and batch size sized by the engine (under "Advanced").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

from napari_msunet._napari._layer_info import Kind, kind_of, layer_info
from napari_msunet._napari._layers import remember_slide_mpp, slide_mpp_of
from napari_msunet._napari._predict_run import (
    PredictionRun,
    prediction_layers,
    start_prediction,
    visible_region,
)
from napari_msunet._napari._scroll import make_scrollable
from napari_msunet._napari._tasks import Task, TaskBar
from napari_msunet._napari._viewer_setup import prepare_viewer
from napari_msunet.errors import MsunetError
from napari_msunet.io.domain import DomainStats

#: Text colour of warnings in the widget (amber: readable on napari's dark and light themes).
WARNING_COLOUR = "#e69f00"

__all__ = ["SegmentWidget", "prediction_layers", "start_prediction", "visible_region"]


def _devices() -> list[str]:
    """``auto`` and ``cpu``, plus the accelerators this torch build can use here."""
    import torch

    devices = ["auto", "cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


class SegmentWidget(QWidget):
    """Dock widget: slide, model, resolution, device and tiling, then Run / Cancel."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        prepare_viewer(napari_viewer)  # outlines, short notifications (_viewer_setup)
        self.header: Any = None
        self.last_run: PredictionRun | None = None

        self.slide_combo = QComboBox()
        self.slide_combo.setToolTip("The slide to segment (opened with the napari-msunet reader).")

        self.model_edit = QLineEdit()
        self.model_edit.setToolTip("Model file (.safetensors); the bundled default is preselected.")
        self.model_edit.editingFinished.connect(self._model_changed)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        default = QPushButton("Default")
        default.setToolTip("Use the bundled model (MS U-Net trained on EBHI-Seg)")
        default.clicked.connect(self._use_default_model)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_edit, 1)
        model_row.addWidget(browse)
        model_row.addWidget(default)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)

        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setDecimals(3)
        self.mpp_spin.setRange(0.05, 64.0)
        self.mpp_spin.setSingleStep(0.25)
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_spin.setToolTip(
            "Resolution the model sees. Its own (from its file) is the default: other values "
            "change the scale of the tissue the model was trained on."
        )

        # only for slides whose file does not state its pixel size (a plain TIFF, a PNG)
        self.slide_mpp_spin = QDoubleSpinBox()
        self.slide_mpp_spin.setDecimals(4)
        self.slide_mpp_spin.setRange(0.0, 64.0)
        self.slide_mpp_spin.setSingleStep(0.05)
        self.slide_mpp_spin.setSpecialValueText("enter it")
        self.slide_mpp_spin.setSuffix(" µm/px")
        self.slide_mpp_spin.setToolTip(
            "This slide's file does not say how large its pixels are. Enter the scanner's "
            "value (about 0.25 µm/px at 40x, 0.5 at 20x): the model must see tissue at the "
            "scale it learned."
        )

        self.view_only = QCheckBox("Current view only")
        self.view_only.setToolTip("Predict just the region shown on the canvas: a quick look.")
        self.overwrite = QCheckBox("Replace an existing prediction")
        self.overwrite.setToolTip(
            "Recompute even when this model's finished prediction exists (otherwise it is "
            "shown as is, and an interrupted one is resumed)."
        )

        # advanced settings, folded away
        self.advanced_button = QToolButton()
        self.advanced_button.setText("Advanced")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.toggled.connect(self._toggle_advanced)
        self.advanced = QWidget()
        self.device_combo = QComboBox()
        self.device_combo.addItems(_devices())
        self.device_combo.setToolTip("auto: a CUDA or Apple GPU when there is one, else the CPU.")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip(
            "Output tile side in working pixels, a multiple of the model's alignment. auto: "
            "1024 on CPU, the largest that fits half the free memory on a GPU."
        )
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(0, 64)
        self.batch_spin.setSpecialValueText("auto")
        self.batch_spin.setToolTip("Tiles per forward pass. auto: 1 on CPU, what fits on a GPU.")
        adv = QFormLayout(self.advanced)
        adv.setContentsMargins(12, 0, 0, 0)
        adv.addRow("Device", self.device_combo)
        adv.addRow("Tile size", self.tile_spin)
        adv.addRow("Batch size", self.batch_spin)
        self.advanced.setVisible(False)

        self.taskbar = TaskBar("Run", self.run)
        self.output_label = QLabel("")
        self.output_label.setWordWrap(True)
        self.output_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        # the domain check's warning (io.domain): stays until the next run
        self.warning_label = QLabel("")
        self.warning_label.setWordWrap(True)
        self.warning_label.setStyleSheet(f"color: {WARNING_COLOUR}; font-weight: bold")
        self.warning_label.setVisible(False)

        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("Model", model_row)
        form.addRow("", self.model_info)
        form.addRow("Resolution", self.mpp_spin)
        form.addRow("Slide µm/px", self.slide_mpp_spin)
        self._form = form
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.view_only)
        layout.addWidget(self.overwrite)
        layout.addWidget(self.advanced_button)
        layout.addWidget(self.advanced)
        layout.addWidget(self.taskbar)
        layout.addWidget(self.warning_label)
        layout.addWidget(self.output_label)
        layout.addStretch(1)

        events = self.viewer.layers.events
        events.inserted.connect(self._refresh_slides)
        events.removed.connect(self._refresh_slides)
        events.reordered.connect(self._refresh_slides)
        self.slide_combo.currentIndexChanged.connect(self._slide_changed)
        self._refresh_slides()
        self._use_default_model()
        make_scrollable(self)  # stacked docks scroll instead of clipping

    # ------------------------------------------------------------------ inputs
    def _refresh_slides(self, event: Any = None) -> None:
        """List the slide layers; keep the selection, else pick the newest slide."""
        current = self.slide_combo.currentData()
        slides = [ly for ly in self.viewer.layers if kind_of(ly) is Kind.SLIDE]
        self.slide_combo.blockSignals(True)
        self.slide_combo.clear()
        for layer in slides:
            self.slide_combo.addItem(layer.name, layer)
        keep = slides.index(current) if current in slides else len(slides) - 1
        self.slide_combo.setCurrentIndex(keep)
        self.slide_combo.blockSignals(False)
        self._slide_changed()

    def _slide_changed(self, *_: Any) -> None:
        """Ask for the slide's µm/px only when its file does not state it."""
        shown = self.slide_needs_mpp()
        if shown:  # what the user entered for this slide before, else "enter it"
            self.slide_mpp_spin.setValue(slide_mpp_of(self.slide_layer()) or 0.0)
        if hasattr(self._form, "setRowVisible"):  # Qt >= 6.4
            self._form.setRowVisible(self.slide_mpp_spin, shown)
        else:
            self._form.labelForField(self.slide_mpp_spin).setVisible(shown)
            self.slide_mpp_spin.setVisible(shown)

    def slide_needs_mpp(self) -> bool:
        """Whether the selected slide's file does not state its µm/px."""
        info = layer_info(self.slide_layer())
        return info is not None and info.mpp is None

    def slide_layer(self) -> Any:
        """The selected slide layer, or ``None``."""
        return self.slide_combo.currentData()

    def _use_default_model(self) -> None:
        from napari_msunet.demo import default_model_path

        try:
            self.set_model(default_model_path())
        except MsunetError as exc:
            self.model_info.setText(str(exc))

    def _browse(self) -> None:
        start = str(Path(self.model_edit.text()).parent) if self.model_edit.text() else ""
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a model file", start, "Model files (*.safetensors);;All files (*)"
        )
        if path:
            self.set_model(path)

    def set_model(self, path: str | Path) -> None:
        """Use the model file ``path``: show its classes and µm/px, make that the resolution."""
        self.model_edit.setText(str(path))
        self._model_changed()

    def _model_changed(self) -> None:
        from napari_msunet.models.checkpoint import read_header

        text = self.model_edit.text().strip()
        self.header = None
        if not text:
            self.model_info.setText("Choose a model file.")
            return
        try:
            header = read_header(Path(text).expanduser())  # the JSON header only: fast
        except MsunetError as exc:
            self.model_info.setText(f"<span style='color:#e05050'>{exc}</span>")
            return
        self.header = header
        classes = ", ".join(header.class_names[1:]) or "(none)"
        text = (
            f"{header.architecture}; classes: {classes}; trained at "
            f"{header.input_um_per_px:g} µm/px"
        )
        domain = DomainStats.from_training(header.training)
        if domain is not None and domain.description:
            text += f" on {domain.description}"
        elif domain is None:
            text += "; its training data are not recorded (no domain check)"
        self.model_info.setText(text)
        self.mpp_spin.setValue(header.input_um_per_px)

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.setVisible(shown)
        arrow = Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow
        self.advanced_button.setArrowType(arrow)

    def config(self) -> Any:
        """The :class:`~napari_msunet.inference.config.InferenceConfig` the widget describes."""
        from napari_msunet.inference.config import AUTO, InferenceConfig

        return InferenceConfig(
            target_mpp=round(self.mpp_spin.value(), 6),
            tile=self.tile_spin.value() or AUTO,
            batch_size=self.batch_spin.value() or AUTO,
            device=self.device_combo.currentText(),
        )

    # ------------------------------------------------------------------ running
    def _fail(self, text: str) -> None:
        self.taskbar.status.setText(text)
        show_error(text)

    def run(self) -> Task | None:
        """Start the prediction the widget describes (the Run button); ``None`` if refused."""
        layer = self.slide_layer()
        if layer is None:
            self._fail("Open a slide first (File > Open, or File > Open Sample > napari-msunet).")
            return None
        if self.header is None:
            self._fail(f"Cannot use the model: {self.model_info.text() or 'none chosen'}")
            return None
        try:
            config = self.config()
        except MsunetError as exc:
            self._fail(str(exc))
            return None
        slide_mpp = None
        if self.slide_needs_mpp():
            slide_mpp = round(self.slide_mpp_spin.value(), 6) or None
            if slide_mpp is None:
                self._fail(
                    f"{layer.name}: the file does not say how large its pixels are. Enter its "
                    "µm/px in 'Slide µm/px' (the scanner's value: about 0.25 at 40x, 0.5 at 20x)."
                )
                return None
            remember_slide_mpp(layer, slide_mpp)  # for Review and Fine-tune
        region = visible_region(self.viewer, layer) if self.view_only.isChecked() else None
        self.output_label.setText("")
        self.warning_label.setVisible(False)
        return start_prediction(
            self.viewer,
            layer,
            Path(self.model_edit.text().strip()).expanduser(),
            region=region,
            config=config,
            on_done=self._done,
            on_warning=self._warn,
            overwrite=self.overwrite.isChecked(),
            slide_mpp=slide_mpp,
        )

    def _warn(self, text: str) -> None:
        """The engine's warning (the slide unlike the model's training data), kept in view."""
        self.warning_label.setText(text)
        self.warning_label.setVisible(True)

    def _done(self, run: PredictionRun) -> None:
        self.last_run = run
        if run.reused:
            text = "Showing the finished prediction (tick 'Replace…' to recompute)."
        elif run.completed:
            r = run.result
            text = (
                f"Done: {r.tiles_computed} tiles computed"
                + (f", {r.tiles_resumed} resumed" if r.tiles_resumed else "")
                + f" in {r.timings.get('total', 0):.1f} s on {r.device.split(', amp')[0]}."
            )
        else:
            r = run.result
            text = (
                f"Cancelled after {r.tiles_computed + r.tiles_resumed} of {r.tiles_total} "
                "tiles; Run again to resume."
            )
        if run.completed:
            self.taskbar.status.setText("Finished.")
        self.output_label.setText(f"{text}\nSaved in {run.folder}")
