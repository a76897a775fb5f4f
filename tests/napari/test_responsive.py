"""Work napari needs back synchronously runs in a thread while the window keeps drawing."""

from __future__ import annotations

import threading
import time

import pytest
from qtpy.QtCore import QTimer

from napari_msunet._napari._responsive import wait_responsively


def test_the_event_loop_turns_while_the_work_runs(qtbot):
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    worker = []

    def work():
        worker.append(threading.current_thread())
        time.sleep(0.6)  # the sample slide being written
        return 42

    assert wait_responsively("test-slow", work) == 42
    timer.stop()
    assert worker[0] is not threading.main_thread()
    assert len(ticks) >= 10  # the GUI thread kept answering its timers (no freeze)


def test_an_error_reaches_the_caller():
    def work():
        raise ValueError("corrupt sample")

    with pytest.raises(ValueError, match="corrupt sample"):
        wait_responsively("test-error", work)


def test_a_second_call_while_the_first_waits_shares_its_result(qtbot):
    runs = []
    results = []

    def work():
        runs.append(1)
        time.sleep(0.4)
        return "built"

    # the menu clicked again while the first build runs (its event loop turns)
    QTimer.singleShot(50, lambda: results.append(wait_responsively("test-twice", work)))
    results.append(wait_responsively("test-twice", work))
    qtbot.waitUntil(lambda: len(results) == 2, timeout=3000)
    assert results == ["built", "built"]
    assert len(runs) == 1
