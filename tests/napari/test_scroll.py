"""Every docked widget scrolls when napari stacks it short, instead of clipping its form."""

from __future__ import annotations

import pytest

from napari_msunet._napari._compare import CompareWidget
from napari_msunet._napari._finetune import FinetuneWidget
from napari_msunet._napari._io_widget import ImportExportWidget
from napari_msunet._napari._review import ReviewWidget
from napari_msunet._napari._segment import SegmentWidget
from napari_msunet._napari._train import TrainWidget


@pytest.mark.parametrize(
    "cls",
    [SegmentWidget, CompareWidget, ReviewWidget, FinetuneWidget, TrainWidget, ImportExportWidget],
)
def test_a_short_dock_scrolls(make_napari_viewer, qtbot, cls):
    viewer = make_napari_viewer(show=True)
    widget = cls(viewer)
    viewer.window.add_dock_widget(widget, name=cls.__name__, area="right")
    area = widget.scroll_area
    widget.setFixedHeight(120)  # stacked under another dock on a small screen
    qtbot.waitUntil(lambda: area.verticalScrollBar().maximum() > 0, timeout=5000)
    # the whole form is still there, reachable by scrolling
    assert area.widget().sizeHint().height() > 120
