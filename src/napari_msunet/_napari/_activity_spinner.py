"""napari's "in progress..." spinner, stopped when nothing is in progress.

napari 0.9 starts the animated spinner in its status bar for every progress bar and hides it
when the bar is destroyed, if no other bar is visible. After ``viewer.open`` (its own
"Opening Files" bar) the spinner keeps turning with no bar at all, forever: 30 repaints of the
whole window a second. With a software OpenGL (a remote desktop, a VM) that cost 0.8 of a core
while nothing ran (under Xvfb with Mesa llvmpipe: 4.4 CPU seconds in 5 s of an idle window,
0.07 s once hidden) and slowed any run on two cores. napari's own check
(``maybe_hide_progress_indicator``) gives the right answer when called later, so a timer calls
it every :data:`SPINNER_CHECK_S` seconds. Private napari API: anything missing is skipped.
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QWidget

__all__ = ["SPINNER_CHECK_S", "app_timer", "install_spinner_check", "stop_idle_spinners"]

#: Seconds between two checks for an activity spinner left running with nothing in progress.
SPINNER_CHECK_S = 2.0


def stop_idle_spinners() -> int:
    """Hide napari's spinner where no progress bar is left (see the module docstring);
    return how many were hidden."""
    for top in QApplication.topLevelWidgets():  # a new napari window: look in it once
        if top not in _scanned:
            _scanned.add(top)
            _dialogs.update(
                w for w in top.findChildren(QWidget) if type(w).__name__ == "QtActivityDialog"
            )
    hidden = 0
    for dialog in list(_dialogs):
        toggle = getattr(dialog, "_toggleButton", None)
        indicator = getattr(toggle, "_inProgressIndicator", None)
        check = getattr(dialog, "maybe_hide_progress_indicator", None)
        try:
            if indicator is None or check is None or not indicator.isVisible():
                continue
            check()
            hidden += not indicator.isVisible()
        except RuntimeError:  # its window was closed: the Qt object is gone
            _dialogs.discard(dialog)
    return hidden


# napari's activity dialogs, found once per top-level window (a full search of a napari
# window's thousands of widgets every 2 s would be work for nothing)
_dialogs: weakref.WeakSet[QWidget] = weakref.WeakSet()
_scanned: weakref.WeakSet[QWidget] = weakref.WeakSet()

_timer: QTimer | None = None


def install_spinner_check() -> None:
    """Start the check's timer once per application (call on the GUI thread)."""
    global _timer
    if _timer is None:
        _timer = app_timer(SPINNER_CHECK_S, stop_idle_spinners)


def app_timer(interval_s: float, callback) -> QTimer | None:
    """A repeating timer owned by the Qt application (``None`` without one): the plugin's
    housekeeping that runs for the whole session (this check, notification expiry)."""
    app = QApplication.instance()
    if app is None:
        return None
    timer = QTimer(app)
    timer.setInterval(int(interval_s * 1000))
    timer.timeout.connect(callback)
    timer.start()
    return timer
