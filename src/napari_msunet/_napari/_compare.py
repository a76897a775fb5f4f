"""Compare widget: prediction vs annotation as a TP/FP/FN layer and a slide-level IoU/Dice table.

The user picks the prediction (a Labels layer), the annotation (a Labels layer, or a QuPath
GeoJSON file) and, optionally, the slide (the scale of a GeoJSON file against a prediction
made at a coarser resolution, and the tissue mask when only tissue is to be counted). Run
starts :func:`~napari_msunet.evaluation.iter_compare` in a worker: it counts the confusion
matrix window by window and returns the metrics with a lazy TP/FP/FN pyramid, which this widget
adds as a multiscale Labels layer on the prediction's grid (so it lies exactly where the
prediction lies), drawn as outlines in the palette's colours (:mod:`napari_msunet.palette`:
colour-blind safe by default, blue TP, orange FP, reddish purple FN; the paper's green, red,
blue as a choice), moved off any class colour of the two layers compared.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Labels, Layer
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_msunet._napari._comparison_colours import (
    overlay_colormap,
    overlay_colours,
    paint_swatch,
    swatch,
)
from napari_msunet._napari._layer_info import Kind, LayerInfo, kind_of, layer_info
from napari_msunet._napari._layers import (
    LayerCombo,
    is_slide,
    layer_pyramid,
    same_layer,
    slide_path_of,
)
from napari_msunet._napari._scroll import make_scrollable
from napari_msunet._napari._tasks import Task, TaskBar, start_task
from napari_msunet._napari._viewer_setup import prepare_viewer
from napari_msunet.evaluation.overlay import FN, FP, OVERLAY_NAMES, TP
from napari_msunet.palette import COMPARISON_SCHEMES, DEFAULT_SCHEME

if TYPE_CHECKING:
    import napari
    from napari_msunet.evaluation.compare import Comparison

__all__ = ["GEOJSON_ENTRY", "CompareWidget", "overlay_layer_kwargs"]

#: The annotation combo's entry for "a QuPath GeoJSON file chosen by path".
GEOJSON_ENTRY = "QuPath GeoJSON file…"
_ALL_CLASSES = "All classes (any foreground)"
_LEGEND = (
    (TP, "TP: prediction and annotation agree"),
    (FP, "FP: predicted, not annotated"),
    (FN, "FN: annotated, not predicted"),
)
_MEANING = {0: "", TP: "TP (both)", FP: "FP (prediction only)", FN: "FN (annotation only)"}


def _is_labels(layer: Layer) -> bool:
    """Whole-slide Labels layers (not our overlays, nor the review widget's edit windows)."""
    return isinstance(layer, Labels) and kind_of(layer) not in (Kind.OVERLAY, Kind.ANNOTATION_EDIT)


def _prediction_rank(layer: Layer) -> int:
    return {Kind.PREDICTION: 0, Kind.LABELS: 1}.get(kind_of(layer), 2)


def _annotation_rank(layer: Layer) -> int:
    ranks = {Kind.ANNOTATION: 0, Kind.LABELS: 1, Kind.PREDICTION: 3}
    return ranks.get(kind_of(layer), 2)


def _fmt(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def overlay_layer_kwargs(
    comparison: Comparison,
    prediction: Layer,
    annotation_name: str,
    label: int | None,
    colours: Mapping[int, tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """``add_labels`` keyword arguments of the TP/FP/FN layer: the prediction's grid (scale,
    translate, units), the comparison's colours (default: :data:`OVERLAY_COLORS`), and our
    record (kind ``"overlay"``)."""
    colormap = overlay_colormap(colours)
    pred = layer_info(prediction)
    subject = "any foreground" if label is None else comparison.matching.names.get(label, label)
    kwargs: dict[str, Any] = {
        "name": f"TP/FP/FN {prediction.name} vs {annotation_name}",
        "scale": tuple(prediction.scale),
        "translate": tuple(prediction.translate),
        "opacity": 0.6,
        "colormap": colormap,
        "features": {"index": list(_MEANING), "meaning": list(_MEANING.values())},
        "metadata": LayerInfo(
            kind=Kind.OVERLAY,
            mpp=comparison.mpp,
            compared=(prediction.name, annotation_name),
            details={
                "prediction": pred.path if pred is not None and pred.path else prediction.name,
                "shows": subject,
                "label": label,
                "codes": {str(k): v for k, v in OVERLAY_NAMES.items()},
                "metrics": comparison.metrics.to_dict(),
                "matching": comparison.matching.to_dict(),
            },
        ).as_metadata(),
    }
    units = getattr(prediction, "units", None)
    if units is not None:
        kwargs["units"] = tuple(str(u) for u in units)
    return kwargs


class CompareWidget(QWidget):
    """Prediction vs annotation: TP/FP/FN layer, slide-level IoU/Dice table and legend.

    Parameters
    ----------
    napari_viewer
        The viewer whose layers are compared and which receives the overlay layer.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        prepare_viewer(napari_viewer)  # outlines, short notifications (_viewer_setup)
        self.comparison: Comparison | None = None
        self.overlay_layer: Labels | None = None
        self._prediction_layer: Layer | None = None
        self._annotation_name = ""

        self.prediction = LayerCombo(napari_viewer, _is_labels, _prediction_rank)
        self.annotation = LayerCombo(
            napari_viewer,
            _is_labels,
            _annotation_rank,
            extra=[GEOJSON_ENTRY],
            # another prediction is listed (model A vs model B) but never chosen by itself
            auto=lambda ly: (
                kind_of(ly) is not Kind.PREDICTION and ly is not self.prediction.current_layer()
            ),
        )
        self.geojson_path = QLineEdit()
        self.geojson_path.setPlaceholderText("QuPath GeoJSON export (level-0 pixels)")
        self.browse = QPushButton("Browse…")
        self.browse.clicked.connect(self._browse)
        path_row = QWidget()
        row = QHBoxLayout(path_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.geojson_path, 1)
        row.addWidget(self.browse)
        self._path_row = path_row
        self.slide = LayerCombo(napari_viewer, is_slide, none_text="(none)")
        self.tissue_only = QCheckBox("Count tissue only")
        self.tissue_only.setToolTip(
            "Leave glass out of the counts (tissue detected on a low-resolution level of the "
            "slide). Needs the slide."
        )
        form = QFormLayout()
        form.addRow("Prediction", self.prediction)
        form.addRow("Annotation", self.annotation)
        form.addRow("", path_row)
        form.addRow("Slide", self.slide)
        form.addRow("", self.tissue_only)
        self.annotation.currentIndexChanged.connect(self._annotation_changed)
        self.prediction.currentIndexChanged.connect(self._prediction_changed)

        self.run_bar = TaskBar("Compare", self._run)

        self.show_class = QComboBox()
        self.show_class.setEnabled(False)
        self.show_class.currentIndexChanged.connect(self._show_class_changed)
        self.table = QTableWidget(0, 3)
        self.table.setHorizontalHeaderLabels(["Class", "IoU", "Dice"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self._fit_table()
        self.summary = QLabel("")
        self.summary.setWordWrap(True)

        self.colours_combo = QComboBox()
        self.colours_combo.addItems(list(COMPARISON_SCHEMES))
        self.colours_combo.setToolTip(
            "Colour-blind safe: blue, orange, reddish purple (Okabe & Ito). Paper: green, red, "
            "blue. A colour too close to a class colour on screen is replaced."
        )
        self.colours_combo.currentIndexChanged.connect(self._colours_changed)
        legend = QGroupBox("Legend")
        legend_layout = QVBoxLayout(legend)
        colours_row = QFormLayout()
        colours_row.addRow("Colours", self.colours_combo)
        legend_layout.addLayout(colours_row)
        self.colours = overlay_colours(DEFAULT_SCHEME, None, None)
        self._swatches: dict[int, QLabel] = {}
        for code, text in _LEGEND:
            line = QHBoxLayout()
            self._swatches[code] = swatch(self.colours[code])
            line.addWidget(self._swatches[code])
            line.addWidget(QLabel(text), 1)
            legend_layout.addLayout(line)

        results = QGroupBox("Slide level")
        res_layout = QVBoxLayout(results)
        show_row = QFormLayout()
        show_row.addRow("Map shows", self.show_class)
        res_layout.addLayout(show_row)
        res_layout.addWidget(self.table)
        res_layout.addWidget(self.summary)

        outer = QVBoxLayout(self)
        outer.addLayout(form)
        outer.addWidget(self.run_bar)
        outer.addWidget(results)
        outer.addWidget(legend)
        outer.addStretch(1)
        self._annotation_changed()
        self._prediction_changed()
        make_scrollable(self)  # stacked docks scroll instead of clipping

    # ------------------------------------------------------------------ colours

    def _update_colours(self) -> None:
        """Colours of the chosen scheme, apart from the compared layers' class colours."""
        annotation = self.annotation.current_layer()
        self.colours = overlay_colours(
            self.colours_combo.currentText(), self._prediction_layer, annotation
        )
        for code, box in self._swatches.items():
            paint_swatch(box, self.colours[code])

    def _colours_changed(self, _index: int = 0) -> None:
        self._update_colours()
        layer = self.overlay_layer
        if layer is not None and layer in self.viewer.layers:
            layer.colormap = overlay_colormap(self.colours)

    # ------------------------------------------------------------------ choices

    def _annotation_changed(self, _index: int = 0) -> None:
        self._path_row.setVisible(self.annotation.current_extra() == GEOJSON_ENTRY)

    def _prediction_changed(self, _index: int = 0) -> None:
        """Choose the prediction's own slide when it is open (and no slide was chosen), and
        an annotation other than the prediction (unless the user picked one)."""
        self.annotation.refresh()
        wanted = slide_path_of(self.prediction.current_layer())
        if wanted is None or self.slide.current_layer() is not None:
            return
        for layer in self.slide.layers():
            if slide_path_of(layer) == wanted:
                self.slide.setCurrentIndex(self.slide.findText(layer.name))
                return

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "QuPath GeoJSON", "", "GeoJSON (*.geojson *.json);;All files (*)"
        )
        if path:
            self.geojson_path.setText(path)

    def _truth(self) -> tuple[Any, str, Path | None] | None:
        """(what the core compares against, its name, the slide it names) or None."""
        if self.annotation.current_extra() == GEOJSON_ENTRY:
            text = self.geojson_path.text().strip()
            if not text:
                self._refuse("Choose the QuPath GeoJSON file of the annotation.")
                return None
            path = Path(text).expanduser()
            if not path.is_file():
                self._refuse(f"{path}: no such file.")
                return None
            return path, path.name, None
        layer = self.annotation.current_layer()
        if layer is None:
            self._refuse("Choose the annotation: a Labels layer or a QuPath GeoJSON file.")
            return None
        info = layer_info(layer)
        source = info.path if info is not None else None
        if (
            info is not None
            and info.kind is Kind.ANNOTATION
            and layer.multiscale  # napari cannot paint on it: the layer is still the file
            and source is not None
            and source.suffix.lower() in (".geojson", ".json")
            and source.is_file()
        ):
            # rasterise the file straight onto the prediction's grid: exact, and cheaper
            # than sampling the slide-resolution raster of the layer
            return source, layer.name, info.slide
        return layer_pyramid(layer), layer.name, None

    def _refuse(self, message: str) -> None:
        self.run_bar.status.setText(message)
        show_warning(message)

    # ------------------------------------------------------------------ running

    def _run(self) -> Task | None:
        pred = self.prediction.current_layer()
        if pred is None:
            self._refuse("Choose the prediction: a Labels layer (e.g. from Segment).")
            return None
        truth = self._truth()
        if truth is None:
            return None
        truth_arg, truth_name, truth_slide = truth
        if same_layer(self.annotation.current_layer(), pred):
            self._refuse("The prediction and the annotation are the same layer.")
            return None
        slide_layer = self.slide.current_layer()
        slide_path = slide_path_of(slide_layer) if slide_layer is not None else truth_slide
        tissue = self.tissue_only.isChecked()
        if tissue and slide_path is None:
            self._refuse("'Count tissue only' needs the slide: choose the slide layer.")
            return None
        try:
            pred_arg = layer_pyramid(pred)
        except Exception as exc:  # not a label layer the core can read
            self._refuse(str(exc))
            return None

        def make(stop):
            from napari_msunet.evaluation.compare import iter_compare

            with contextlib.ExitStack() as stack:
                the_slide = region = None
                if slide_path is not None and (tissue or isinstance(truth_arg, Path)):
                    from napari_msunet.io.slide import open_slide

                    the_slide = stack.enter_context(open_slide(slide_path))
                if tissue:
                    from napari_msunet.io.tissue import detect_tissue

                    region = detect_tissue(the_slide).mask
                return (
                    yield from iter_compare(
                        pred_arg, truth_arg, slide=the_slide, region=region, stop=stop
                    )
                )

        self._prediction_layer, self._annotation_name = pred, truth_name
        self.summary.setText("")
        return start_task(
            make, f"Comparing {pred.name} with {truth_name}", on_return=self._show_result
        )

    # ------------------------------------------------------------------ results

    def _show_result(self, comparison: Comparison | None) -> None:
        if comparison is None:
            self.run_bar.status.setText("Cancelled; no comparison added.")
            return
        self.comparison = comparison
        self._fill_table(comparison)
        self.show_class.blockSignals(True)
        self.show_class.clear()
        self.show_class.addItem(_ALL_CLASSES, None)
        for label, name in sorted(comparison.matching.names.items()):
            self.show_class.addItem(name, label)
        index = self.show_class.findData(comparison.overlay_label)
        self.show_class.setCurrentIndex(max(index, 0))
        self.show_class.setEnabled(True)
        self.show_class.blockSignals(False)
        self._add_overlay(comparison.overlay_levels, comparison.overlay_label)
        self.run_bar.status.setText(self._note(comparison))

    def _fill_table(self, comparison: Comparison) -> None:
        metrics, names = comparison.metrics, comparison.matching.names
        rows = [(c.name, c.iou, c.dice) for c in metrics.foreground_classes if c.label in names]
        if len(rows) != 1:
            fg = metrics.foreground
            rows.append(("All classes (foreground)", fg.iou, fg.dice))
        self.table.setRowCount(len(rows))
        for r, (name, iou, dice) in enumerate(rows):
            for c, text in enumerate((name, _fmt(iou), _fmt(dice))):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.table.setItem(r, c, item)
        self._fit_table()
        mpp = f" at {comparison.mpp:.3g} µm/px" if comparison.mpp else ""
        counted = metrics.counted_pixels
        excluded = metrics.excluded_pixels or 0
        text = f"Counted {counted:,} pixels{mpp} (the prediction's grid)"
        if excluded:
            text += f"; {excluded:,} left out (outside tissue or ignored)"
        self.summary.setText(text + ".")

    def _fit_table(self) -> None:
        """As tall as its rows: a small table, no empty space, no scrolling."""
        rows = sum(self.table.rowHeight(r) for r in range(self.table.rowCount()))
        header = self.table.horizontalHeader().sizeHint().height()
        self.table.setFixedHeight(header + rows + 2 * self.table.frameWidth())

    def _note(self, comparison: Comparison) -> str:
        m = comparison.matching
        fg = comparison.metrics.foreground
        text = f"Done: foreground IoU {_fmt(fg.iou)}, Dice {_fmt(fg.dice)}."
        if m.by == "single":
            text += " The two files name their only class differently; compared anyway."
        elif m.by == "label":
            text += " Classes compared by label value (a layer names no classes)."
        if m.unmatched_truth:
            text += f" Annotation classes the prediction lacks: {', '.join(m.unmatched_truth)}."
        return text

    def _show_class_changed(self, _index: int) -> None:
        if self.comparison is None or self._prediction_layer is None:
            return
        label = self.show_class.currentData()
        self._add_overlay(self.comparison.overlay(label), label)

    def _add_overlay(self, levels: Any, label: int | None) -> None:
        pred = self._prediction_layer
        assert pred is not None
        assert self.comparison is not None
        self._update_colours()
        kwargs = overlay_layer_kwargs(
            self.comparison, pred, self._annotation_name, label, self.colours
        )
        levels = list(levels)
        data = levels if len(levels) > 1 else levels[0]
        old = self.overlay_layer
        position = None
        if old is not None and old in self.viewer.layers:
            position = self.viewer.layers.index(old)
            self.viewer.layers.remove(old)
        pair = (pred.name, self._annotation_name)
        for layer in list(self.viewer.layers):  # an earlier run on the same pair
            info = layer_info(layer)
            if info is not None and info.kind is Kind.OVERLAY and info.compared == pair:
                position = self.viewer.layers.index(layer)
                self.viewer.layers.remove(layer)
        layer = self.viewer.add_labels(data, multiscale=len(levels) > 1, **kwargs)
        if position is not None:
            self.viewer.layers.move(self.viewer.layers.index(layer), position)
        self.overlay_layer = layer
