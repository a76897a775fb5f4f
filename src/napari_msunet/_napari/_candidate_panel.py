"""The "Suspected missing annotations" box of the Review widget: the queue to work through.

It holds the confidence threshold, the Find button (a :class:`TaskBar` whose task the widget
starts), the ranked list of candidates and the Accept / Reject / Edit buttons. It knows the
candidates and which one is selected; the widget does what the buttons ask (store writes,
layers, the view), as the model-history panel does for the Fine-tune widget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QPushButton,
    QVBoxLayout,
)

from napari_msunet._napari._tasks import Task, TaskBar

__all__ = ["CandidatePanel", "describe_candidate"]


def describe_candidate(rank: int, candidate: Any) -> str:
    """One list line: rank, class, area (mm² from 0.1 mm², else µm², else px), confidence."""
    a = candidate.area_um2
    if a and a >= 1e5:
        area = f"{a / 1e6:.3f} mm²"
    elif a:
        area = f"{a:.0f} µm²"
    else:
        area = f"{candidate.area_px:.0f} px"
    return f"{rank}. {candidate.class_name}: {area}, confidence {candidate.confidence:.2f}"


class CandidatePanel(QGroupBox):
    """Threshold, Find, the ranked candidates and Accept / Reject / Edit."""

    #: Row of the candidate the user selected (-1: none).
    selected = Signal(int)

    def __init__(self, find: Callable[[], Task | None], parent=None) -> None:
        super().__init__("3. Suspected missing annotations", parent)
        self.candidates: list[Any] = []
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.1, 0.99)
        self.threshold.setSingleStep(0.05)
        self.threshold.setValue(0.8)
        self.threshold.setToolTip("Minimum bootstrap confidence w_bs = 2|p - 0.5| (paper eq. 2)")
        self.find_bar = TaskBar("Find suspected missing annotations", find)
        self.list = QListWidget()
        self.list.currentRowChanged.connect(self.selected)
        self.accept_button = QPushButton("Accept")
        self.reject_button = QPushButton("Reject")
        self.edit_button = QPushButton("Edit")
        box = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("Confidence ≥", self.threshold)
        box.addLayout(form)
        box.addWidget(self.find_bar)
        box.addWidget(self.list)
        row = QHBoxLayout()
        for b in (self.accept_button, self.reject_button, self.edit_button):
            row.addWidget(b)
        box.addLayout(row)

    def set_candidates(self, candidates: Sequence[Any]) -> None:
        """List ``candidates`` (already ranked), nothing selected."""
        self.candidates = list(candidates)
        self.list.blockSignals(True)
        self.list.clear()
        for i, c in enumerate(self.candidates, 1):
            self.list.addItem(describe_candidate(i, c))
        self.list.blockSignals(False)

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
