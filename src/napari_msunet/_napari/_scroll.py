"""Docked widgets that scroll instead of clipping when napari stacks them.

napari docks plugin widgets as they are: two of ours stacked on the right of a 1080-pixel
screen cut the Segment form (combo boxes and buttons half hidden, issue 15). Each widget
therefore moves its content into a :class:`~qtpy.QtWidgets.QScrollArea` once built: the
dock can be as short as the user makes it, and the content scrolls.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QFrame, QScrollArea, QVBoxLayout, QWidget

__all__ = ["make_scrollable"]


class _VerticalScrollArea(QScrollArea):
    """Scrolls vertically only; keeps the widget it fills as wide as the content needs.

    The width is set on the docked widget each time it is shown or restyled (napari's
    stylesheet arrives with the dock and widens buttons and fonts), since the dock takes
    its minimum width from the widget, not from a size hint inside it.
    """

    def __init__(self, owner: QWidget) -> None:
        super().__init__()
        self._owner = owner
        owner.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # Qt's name
        if obj is self._owner and event.type() in (
            QEvent.Type.Show,
            QEvent.Type.StyleChange,
            QEvent.Type.PolishRequest,
        ):
            self.fit_width()
        return False

    def fit_width(self) -> None:
        content = self.widget()
        if content is not None:
            bar = self.verticalScrollBar().sizeHint().width()
            self._owner.setMinimumWidth(content.minimumSizeHint().width() + bar)


def make_scrollable(widget: QWidget) -> QScrollArea:
    """Move ``widget``'s layout (and its children) into a scroll area filling ``widget``.

    Call at the end of the widget's ``__init__``; attributes keep pointing at the same child
    widgets (only their parent changes).
    """
    content = QWidget()
    content.setObjectName("msunet_scroll_content")
    content.setLayout(widget.layout())  # takes the layout and reparents its widgets
    area = _VerticalScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setWidget(content)
    # vertical scrolling only: the dock stays as wide as the form needs (a horizontal
    # scroll bar clipped buttons and labels at the right edge instead)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    area.fit_width()
    widget.scroll_area = area  # type: ignore[attr-defined]
    return area
