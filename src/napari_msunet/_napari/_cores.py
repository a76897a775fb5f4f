"""Torch threads for the GUI's long work: every core while the user is away, one left when not.

A forward pass or a training step in a task's worker is torch's intra-op work, which uses as
many threads as it is told. The CLI uses every core. The GUI used to leave one core to its own
thread for the whole run, so on a 2-core laptop Segment computed on one core and took twice
the CLI's time (issue 14: 150.8 s against 67.7 s) while the user, most of that time, only
watched the progress bar.

So the thread count follows the user: the application's input events (keys, mouse buttons,
the wheel, drags) are noted on the GUI thread by an event filter that only stores a
timestamp; before each step of a task (each batch of tiles, each training step) its worker
sets torch's threads to every core when there was no input for :data:`IDLE_S`, else to every
core but one. Painting, panning or clicking through a review thus gets a core within one
step, and a run the user waits for goes at the CLI's speed. Waiting on an idle GUI is cheap:
the window then only redraws the progress bar, a few milliseconds a second.

Threads are set in the worker thread itself: torch (through OpenMP) keeps the intra-op thread
count per calling thread once that thread has run a parallel operation, so setting it from the
GUI thread would not reach a pooled worker thread that already computed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Generator
from typing import Any

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QApplication

__all__ = ["IDLE_S", "ThreadPacer", "UserActivity", "cores_for_work", "paced", "user_activity"]

#: Seconds without input after which the user counts as away (a task then uses every core).
IDLE_S = 1.0

# Input that means the user is working in the window. Plain mouse moves are not in it (a
# resting hand moves the pointer; napari's hover work is small); moves with a button down are.
_INPUT = {
    QEvent.Type.KeyPress,
    QEvent.Type.KeyRelease,
    QEvent.Type.MouseButtonPress,
    QEvent.Type.MouseButtonRelease,
    QEvent.Type.MouseButtonDblClick,
    QEvent.Type.Wheel,
    QEvent.Type.TouchBegin,
    QEvent.Type.TouchUpdate,
}


class UserActivity(QObject):
    """Notes when the user last gave input to the application (an application event filter).

    The filter runs on the GUI thread for every event, so it does nothing but compare the
    type and store a float; workers read :attr:`last_input` without a lock (a float is
    read and written atomically under the GIL).
    """

    def __init__(self) -> None:
        super().__init__()
        self.last_input = -float("inf")

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # Qt names it
        kind = event.type()
        if kind in _INPUT or (
            kind == QEvent.Type.MouseMove and bool(event.buttons())  # type: ignore[attr-defined]
        ):
            self.last_input = time.monotonic()
        return False

    def idle_for(self) -> float:
        """Seconds since the last input."""
        return time.monotonic() - self.last_input


_activity: UserActivity | None = None


def user_activity() -> UserActivity:
    """The application's activity filter, installed on first use (call on the GUI thread)."""
    global _activity
    if _activity is None:
        _activity = UserActivity()
        app = QApplication.instance()
        if app is not None:
            app.installEventFilter(_activity)
    return _activity


def cores_for_work() -> int:
    """The threads a run may use at most: what torch uses on this (GUI) thread.

    That is what the CLI uses: every core, or ``OMP_NUM_THREADS`` / ``torch.set_num_threads``
    where a user or an administrator set fewer (a shared server).
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return max(1, torch.get_num_threads())
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count() or 1


class ThreadPacer:
    """Sets torch's threads in the calling (worker) thread from the user's activity.

    ``cores`` is the most it sets (default :func:`cores_for_work`, read when the task starts).

    ``used`` records every thread count set, in order (one entry per change), so a run can
    say what it computed with.
    """

    def __init__(self, activity: UserActivity, cores: int | None = None) -> None:
        self.activity = activity
        self.cores = cores or cores_for_work()
        self.used: list[int] = []
        self._current: int | None = None

    def wanted(self) -> int:
        """Every core while the user is away, every core but one while they work."""
        if self.cores == 1 or self.activity.idle_for() >= IDLE_S:
            return self.cores
        return self.cores - 1

    def pace(self) -> None:
        """Set the thread count for the next step (torch only if it is loaded)."""
        torch = sys.modules.get("torch")
        if torch is None:
            return
        n = self.wanted()
        if n != self._current or torch.get_num_threads() != n:
            torch.set_num_threads(n)
            self._current = n
            self.used.append(n)


def paced(gen: Generator[Any, Any, Any], pacer: ThreadPacer) -> Generator[Any, Any, Any]:
    """``gen`` with the threads paced before each of its steps (same values, sends, result)."""
    value = None
    try:
        while True:
            pacer.pace()
            try:
                record = gen.send(value)
            except StopIteration as stop:
                return stop.value
            value = yield record
    finally:
        gen.close()
