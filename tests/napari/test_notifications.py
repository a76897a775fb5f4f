"""napari's toasts close after a few seconds even when napari's own timer never runs."""

from __future__ import annotations

import time

from napari._qt.dialogs.qt_notification import NapariQtNotification
from qtpy.QtWidgets import QWidget

from napari_msunet._napari._notifications import LIFETIME_S, expire_notifications


def test_a_toast_shown_in_an_inactive_window_still_closes(qtbot):
    canvas = QWidget()
    canvas.resize(800, 600)
    qtbot.addWidget(canvas)
    canvas.show()
    toast = NapariQtNotification("slide aligned", "info", parent=canvas)
    toast.show()  # the window is not the active one (Xvfb): napari starts no timer
    assert not toast.timer.isActive()
    now = time.monotonic()
    assert expire_notifications(now) == 0  # first seen now: kept
    assert expire_notifications(now + LIFETIME_S / 2) == 0
    assert expire_notifications(now + LIFETIME_S + 0.1) == 1  # then closed with a fade
    qtbot.waitUntil(lambda: toast not in NapariQtNotification._instances, timeout=3000)
