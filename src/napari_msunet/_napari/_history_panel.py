"""The "Model history" box of the Fine-tune widget: a model's versions, one to pick.

It shows what :func:`~napari_msunet._napari._model_history.model_history` found (the root
model and its ``-ftN`` versions, each with its date, steps and parent), marks in bold the
version the prediction on screen was made with, and asks for a version to be used through
:attr:`ModelHistoryPanel.use_requested`; the widget does the predicting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QFont
from qtpy.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)

from napari_msunet._napari._model_history import ModelVersion

__all__ = ["ModelHistoryPanel"]


class ModelHistoryPanel(QGroupBox):
    """A list of model versions with "Use this model" and "Refresh" buttons."""

    #: A version to predict the current view with (its path).
    use_requested = Signal(object)
    #: The user asked to look for versions again.
    refresh_requested = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__("Model history", parent)
        self.list = QListWidget()
        self.list.setMinimumHeight(90)
        self.list.setWordWrap(True)  # long names wrap instead of scrolling sideways
        self.list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.list.itemDoubleClicked.connect(lambda _item: self.request_use())
        self.use_button = QPushButton("Use this model")
        self.use_button.setToolTip("Predict the current view with the selected version")
        self.use_button.clicked.connect(self.request_use)
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.use_button)
        buttons.addWidget(refresh)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addLayout(buttons)

    def show_versions(
        self,
        versions: Sequence[ModelVersion],
        *,
        selected: Path | None = None,
        in_use: Path | None = None,
        in_use_by: str = "",
    ) -> None:
        """List ``versions``; select ``selected``; mark ``in_use`` (shown in ``in_use_by``)."""
        self.list.clear()
        for version in versions:
            item = QListWidgetItem(version.label())
            item.setData(Qt.ItemDataRole.UserRole, version.path)
            item.setToolTip(str(version.path))
            if in_use is not None and version.path == in_use:
                font = QFont(item.font())
                font.setBold(True)
                item.setFont(font)
                item.setToolTip(f"{version.path}\n(shown in {in_use_by})")
            self.list.addItem(item)
            if version.path == selected:
                self.list.setCurrentItem(item)

    def paths(self) -> list[Path]:
        """The model files listed, in order."""
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]

    def selected(self) -> Path | None:
        item = self.list.currentItem()
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def request_use(self) -> None:
        """Ask for the selected version (emits :attr:`use_requested`)."""
        path = self.selected()
        if path is not None:
            self.use_requested.emit(path)
