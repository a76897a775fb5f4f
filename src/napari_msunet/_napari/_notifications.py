"""napari's notifications, made short-lived.

napari shows each notification as a toast in the canvas's bottom-right corner, over the scale
bar, and dismisses it after 4 s, but only when the window is the active one, and it stops
the timers of the older toasts whenever a new one shows: a toast shown while the user was in
another program, or under a newer one, stays until it is clicked (issue 15: notifications
lingering over the scale bar). A timer here closes every toast :data:`LIFETIME_S` after it
appeared, unless the pointer rests on it (the widgets keep their errors in their status lines
too). Private napari API: if it is missing, nothing is done.
"""

from __future__ import annotations

import time
import weakref

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QWidget

from napari_msunet._napari._activity_spinner import app_timer

__all__ = ["LIFETIME_S", "expire_notifications", "install_notification_expiry"]

#: Seconds a toast stays on screen (napari's own: 4 s, when its timer runs at all).
LIFETIME_S = 8.0

_first_seen: weakref.WeakKeyDictionary[QWidget, float] = weakref.WeakKeyDictionary()
_timer: QTimer | None = None


def _toasts() -> list[QWidget]:
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # pragma: no cover - napari moved it: leave napari's behaviour
        return []
    return list(getattr(NapariQtNotification, "_instances", []))


def expire_notifications(now: float | None = None) -> int:
    """Close the toasts shown longer than their lifetime; return how many were closed."""
    now = time.monotonic() if now is None else now
    closed = 0
    for toast in _toasts():
        try:
            if not toast.isVisible():
                continue
            seen = _first_seen.setdefault(toast, now)
            if toast.underMouse():  # being read: wait
                _first_seen[toast] = now
                continue
            if now - seen >= LIFETIME_S:
                toast.close_with_fade()
                closed += 1
        except RuntimeError:  # its Qt object is gone already
            continue
    return closed


def install_notification_expiry(interval_s: float = 1.0) -> None:
    """Start the expiry timer once per application (call on the GUI thread)."""
    global _timer
    if _timer is None:
        _timer = app_timer(interval_s, expire_notifications)
