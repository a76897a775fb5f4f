"""The "Review queue" box of the Review widget: suspected missing and wrong annotations.

It holds the confidence threshold, the Find button (a :class:`TaskBar` whose task the widget
starts), the ranked list of candidates (kind, classes, slide) with an "n of N" counter, the
Accept / Reject / Edit buttons and Export decisions. It knows the candidates and which one is
selected; the widget does what the buttons ask (store writes, layers, the view, the export),
as the model-history panel does for the Fine-tune widget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qtpy.QtCore import QEvent, Qt, Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QVBoxLayout,
)

from napari_msunet._napari._tasks import Task, TaskBar

__all__ = ["CandidatePanel", "describe_candidate"]


def describe_candidate(rank: int, candidate: Any) -> str:
    """One list line: rank, kind and class(es), slide, area (mm² from 0.1 mm², else µm², else
    px), confidence.

    A missing one names the class the model sees; a wrong one the annotated class and the
    model's ("Sinus → Background": annotated Sinus where the model sees none).
    """
    a = candidate.area_um2
    if a and a >= 1e5:
        area = f"{a / 1e6:.3f} mm²"
    elif a:
        area = f"{a:.0f} µm²"
    else:
        area = f"{candidate.area_px:.0f} px"
    kind = getattr(candidate, "kind", "missing")
    what = candidate.class_name
    if kind != "missing":
        what = f"{candidate.annotated_name} → {candidate.class_name}"
    slide = getattr(candidate, "slide", None)
    where = f" · {slide}" if slide else ""
    return f"{rank}. {kind}: {what} · {area} · confidence {candidate.confidence:.2f}{where}"


class CandidatePanel(QGroupBox):
    """Threshold, Find, the ranked candidates and Accept / Reject / Edit."""

    #: Row of the candidate the user selected (-1: none).
    selected = Signal(int)

    def __init__(self, find: Callable[[], Task | None], parent=None) -> None:
        super().__init__("3. Review queue: suspected missing or wrong", parent)
        self.candidates: list[Any] = []
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.1, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.8)
        self.threshold.setToolTip("Minimum bootstrap confidence w_bs = 2|p - 0.5| (paper eq. 2)")
        self.find_bar = TaskBar("Find in all open slides", find)
        self.find_bar.setToolTip(
            "Every open slide with a finished prediction and a started review: where the "
            "model is sure and the annotation is empty (missing) or another class (wrong)"
        )
        self.list = QListWidget()
        self.list.setWordWrap(True)  # a line names kind, classes, area and slide
        self.counter = QLabel("No candidates yet.")
        self.list.currentRowChanged.connect(self._count)
        self.list.currentRowChanged.connect(self.selected)
        self.accept_button = QPushButton("Accept (A)")
        self.accept_button.setToolTip("Take the model's answer (add, replace or remove)")
        self.reject_button = QPushButton("Reject (R)")
        self.reject_button.setToolTip("Keep the annotation; not suggested again")
        self.edit_button = QPushButton("Edit (E)")
        self.export_button = QPushButton("Export decisions…")
        self.export_button.setToolTip("QuPath GeoJSON per slide and a CSV of the decisions")
        box = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("Confidence ≥", self.threshold)
        box.addLayout(form)
        box.addWidget(self.find_bar)
        box.addWidget(self.list)
        box.addWidget(self.counter)
        row = QHBoxLayout()
        for b in (self.accept_button, self.reject_button, self.edit_button):
            row.addWidget(b)
        box.addLayout(row)
        box.addWidget(self.export_button)
        self.keys = QLabel("Keys (click the list first): A accept · R reject · E edit · N / P next")
        self.keys.setWordWrap(True)
        box.addWidget(self.keys)
        self._keys = {
            Qt.Key.Key_A: self.accept_button.click,  # a disabled button ignores the click
            Qt.Key.Key_R: self.reject_button.click,
            Qt.Key.Key_E: self.edit_button.click,
            Qt.Key.Key_N: lambda: self.step(1),
            Qt.Key.Key_P: lambda: self.step(-1),
        }
        for w in (self.list, self.accept_button, self.reject_button, self.edit_button):
            w.installEventFilter(self)

    def eventFilter(self, obj: Any, event: Any) -> bool:  # Qt's name
        """The queue's keys, while the list or one of its buttons has the focus.

        Not application-wide shortcuts: napari's own layer keys (R rectangle, E ellipse, P
        polygon, A select for shapes; E erase, P paint for labels) stay what they are on
        the canvas. Keys with a modifier are left alone.
        """
        plain = event.type() == QEvent.Type.KeyPress and event.modifiers() in (
            Qt.KeyboardModifier.NoModifier,
            Qt.KeyboardModifier.KeypadModifier,
        )
        if plain:
            action = self._keys.get(event.key())
            if action is not None:
                action()
                self.list.setFocus()  # the next key goes to the queue again
                return True
        return False

    def step(self, by: int) -> None:
        """Select the next (``by=1``) or previous (``-1``) candidate, staying in the list."""
        n = len(self.candidates)
        if not n:
            return
        row = self.list.currentRow()
        self.list.setCurrentRow(min(max(row + by, 0), n - 1) if row >= 0 else 0)

    def set_candidates(self, candidates: Sequence[Any]) -> None:
        """List ``candidates`` (already ranked), nothing selected."""
        self.candidates = list(candidates)
        self.list.blockSignals(True)
        self.list.clear()
        for i, c in enumerate(self.candidates, 1):
            self.list.addItem(describe_candidate(i, c))
        self.list.blockSignals(False)
        self._count(-1)

    def _count(self, row: int) -> None:
        n = len(self.candidates)
        if 0 <= row < n:
            self.counter.setText(f"{row + 1} of {n}")
        else:
            self.counter.setText(f"{n} candidates" if n else "No candidates.")

    def current(self) -> Any:
        """The selected candidate, or ``None``."""
        row = self.list.currentRow()
        return self.candidates[row] if 0 <= row < len(self.candidates) else None

    def without_current(self) -> tuple[list[Any], int]:
        """The candidates less the selected one, and the row to select next (-1: none)."""
        row = self.list.currentRow()
        remaining = [c for i, c in enumerate(self.candidates) if i != row]
        return remaining, (min(row, len(remaining) - 1) if remaining else -1)

    def enable_actions(self, enabled: bool) -> None:
        """Accept / Reject / Edit are usable when ``enabled`` and a candidate is selected."""
        usable = enabled and self.current() is not None
        for b in (self.accept_button, self.reject_button, self.edit_button):
            b.setEnabled(usable)
