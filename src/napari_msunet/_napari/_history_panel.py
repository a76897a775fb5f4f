"""The "Model history" box of the Fine-tune widget: a model's versions, one to pick.

It shows what :func:`~napari_msunet._napari._model_history.model_history` found (the root
model and its ``-ftN`` versions, each with its date, steps, parent and held-out Dice against
the parent's), marks in bold the version the prediction on screen was made with, draws a
version that got worse than its parent in red with a warning sign, and asks for a version to
be used through :attr:`ModelHistoryPanel.use_requested`: "Use this model", or "Roll back to
its parent" for the selected version's parent. The widget does the predicting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qtpy.QtCore import Qt, Signal
from qtpy.QtGui import QBrush, QColor, QFont
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
    #: The user asked to switch between the slide's newest prediction and the one before.
    before_after_requested = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__("Model history", parent)
        self._versions: dict[Path, ModelVersion] = {}
        self.list = QListWidget()
        self.list.setMinimumHeight(90)
        self.list.setWordWrap(True)  # long names wrap instead of scrolling sideways
        self.list.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.list.itemDoubleClicked.connect(lambda _item: self.request_use())
        self.use_button = QPushButton("Use this model")
        self.use_button.setToolTip("Predict the current view with the selected version")
        self.use_button.clicked.connect(self.request_use)
        self.rollback_button = QPushButton("Roll back to its parent")
        self.rollback_button.setToolTip(
            "Make the selected version's parent the current model again and predict the "
            "current view with it (no file is deleted)"
        )
        self.rollback_button.clicked.connect(self.request_rollback)
        self.rollback_button.setEnabled(False)
        self.list.currentItemChanged.connect(lambda *_: self._update_rollback())
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.refresh_requested)
        self.before_after_button = QPushButton("Before / after")
        self.before_after_button.setToolTip(
            "Show the slide's previous prediction instead of the newest one, and back: the "
            "two versions on the same view"
        )
        self.before_after_button.clicked.connect(self.before_after_requested)
        buttons = QHBoxLayout()
        buttons.addWidget(self.use_button)
        buttons.addWidget(self.rollback_button)
        buttons.addWidget(refresh)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list)
        layout.addLayout(buttons)
        layout.addWidget(self.before_after_button)

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
        self._versions = {v.path: v for v in versions}
        for version in versions:
            item = QListWidgetItem(version.label())
            item.setData(Qt.ItemDataRole.UserRole, version.path)
            item.setToolTip(str(version.path))
            if version.got_worse:  # red text and a warning sign, not colour alone
                item.setForeground(QBrush(QColor(230, 90, 70)))
                item.setToolTip(
                    f"{version.path}\nWorse than its parent on the held-out regions: "
                    "consider rolling back to the parent"
                )
            if in_use is not None and version.path == in_use:
                font = QFont(item.font())
                font.setBold(True)
                item.setFont(font)
                item.setToolTip(f"{version.path}\n(shown in {in_use_by})")
            self.list.addItem(item)
            if version.path == selected:
                self.list.setCurrentItem(item)
        self._update_rollback()

    def paths(self) -> list[Path]:
        """The model files listed, in order."""
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]

    def selected(self) -> Path | None:
        item = self.list.currentItem()
        return None if item is None else item.data(Qt.ItemDataRole.UserRole)

    def parent_of_selected(self) -> Path | None:
        """The parent model file of the selected version, when it is there to roll back to."""
        version = self._versions.get(self.selected())
        parent = version.parent if version is not None else None
        return parent if parent is not None and parent.is_file() else None

    def _update_rollback(self) -> None:
        parent = self.parent_of_selected()
        self.rollback_button.setEnabled(parent is not None)
        if parent is not None:
            self.rollback_button.setToolTip(f"Use {parent.name} again (no file is deleted)")

    def request_rollback(self) -> None:
        """Ask for the selected version's parent (emits :attr:`use_requested`)."""
        parent = self.parent_of_selected()
        if parent is not None:
            self.use_requested.emit(parent)

    def request_use(self) -> None:
        """Ask for the selected version (emits :attr:`use_requested`)."""
        path = self.selected()
        if path is not None:
            self.use_requested.emit(path)
