"""Waiting for work that napari needs synchronously, with the window still drawing.

napari calls a sample function on the GUI thread and needs its layers back from the call, so
work it cannot do without (building the sample slide at its first use: 1.5-1.9 s) cannot
move to a napari worker. :func:`wait_responsively` runs it in a thread and keeps the Qt
event loop turning meanwhile: the window repaints, timers and napari's progress run, and
the user's clicks and keys are answered, as in any modal wait. A second call for the same
work while the first waits (the menu clicked twice) waits for the same result instead of
running the work twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import TypeVar

from qtpy.QtCore import QThread
from qtpy.QtWidgets import QApplication

__all__ = ["wait_for", "wait_responsively"]

T = TypeVar("T")

#: Seconds between two turns of the event loop while waiting.
POLL_S = 0.01

_running: dict[Hashable, Future] = {}
_lock = threading.Lock()


def wait_responsively(key: Hashable, work: Callable[[], T]) -> T:
    """Run ``work`` in a thread and return (or raise) its result, turning the Qt event
    loop while it runs. Off the GUI thread, or without a Qt application, it just runs it."""
    app = QApplication.instance()
    if app is None or QThread.currentThread() is not app.thread():
        return work()
    with _lock:
        future = _running.get(key)
        if future is None:
            future = _running[key] = Future()

            def run() -> None:
                try:
                    future.set_result(work())
                except BaseException as exc:  # handed to the waiting caller
                    future.set_exception(exc)
                finally:
                    with _lock:
                        _running.pop(key, None)

            threading.Thread(target=run, name=f"msunet-{key}", daemon=True).start()
    while not future.done():
        app.processEvents()
        time.sleep(POLL_S)
    return future.result()


def wait_for(event: threading.Event) -> None:
    """Return when ``event`` is set, turning the Qt event loop meanwhile (see the module)."""
    app = QApplication.instance()
    if app is None or QThread.currentThread() is not app.thread():
        event.wait()
        return
    while not event.is_set():
        app.processEvents()
        time.sleep(POLL_S)
