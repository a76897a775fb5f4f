"""Torch threads in the GUI's tasks follow the user: every core while away, one left when not."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tifffile
import torch
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QLineEdit, QWidget

from napari_msunet._napari._activity_spinner import SPINNER_CHECK_S
from napari_msunet._napari._cores import (
    IDLE_S,
    ThreadPacer,
    cores_for_work,
    paced,
    user_activity,
)
from napari_msunet._napari._tasks import start_task
from napari_msunet.progress import Progress


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _threads_seen(stop, n=3):
    """Yields the torch threads of the thread it runs in, step by step."""
    seen = []
    for i in range(n):
        seen.append(torch.get_num_threads())
        torch.ones(64, 64) @ torch.ones(64, 64)  # a parallel op: the thread's count is now fixed
        yield Progress(done=i + 1, total=n, stage="run", message="")
    return seen


def test_a_key_press_leaves_a_core_and_idleness_gives_it_back(qtbot):
    activity = user_activity()
    pacer = ThreadPacer(activity, cores=4)
    activity.last_input = time.monotonic() - 2 * IDLE_S
    assert pacer.wanted() == 4  # the user is away: every core
    field = QLineEdit()
    qtbot.addWidget(field)
    qtbot.keyClick(field, Qt.Key.Key_A)  # real input through the application's event filter
    assert activity.idle_for() < IDLE_S
    assert pacer.wanted() == 3  # working in the window: one core left to it
    assert ThreadPacer(activity, cores=1).wanted() == 1  # never zero


def test_paced_keeps_values_sends_and_result_and_sets_threads_in_its_thread(restore_threads):
    activity = user_activity()
    activity.last_input = -float("inf")
    pacer = ThreadPacer(activity, cores=2)
    out = {}

    def run():
        gen = paced(_threads_seen(threading.Event(), 3), pacer)
        out["records"] = []
        try:
            while True:
                out["records"].append(gen.send(None).done)
        except StopIteration as stop:
            out["result"] = stop.value

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert out["records"] == [1, 2, 3]
    assert out["result"] == [2, 2, 2]  # set in the worker thread itself, before each step
    assert pacer.used == [2]  # set once, not at every step


def test_a_task_computes_with_every_core_while_nobody_touches_the_window(qtbot):
    user_activity().last_input = -float("inf")
    task = start_task(_threads_seen, "Threads")
    qtbot.waitUntil(lambda: task.done, timeout=10_000)
    assert task.error is None
    assert task.result == [cores_for_work()] * 3
    assert task.pacer.used == [cores_for_work()]


def test_the_activity_spinner_stops_once_napari_has_opened_a_file(
    make_napari_viewer, qtbot, tmp_path
):
    """napari's own "Opening Files" bar leaves the spinner turning; the plugin stops it."""
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, np.zeros((256, 256, 3), np.uint8), photometric="rgb")
    viewer = make_napari_viewer(show=True)
    viewer.open(str(path), plugin="napari-msunet")
    dialogs = [w for top in QApplication.topLevelWidgets() for w in top.findChildren(QWidget)
               if type(w).__name__ == "QtActivityDialog"]  # fmt: skip
    assert dialogs
    spinners = [d._toggleButton._inProgressIndicator for d in dialogs]
    qtbot.waitUntil(
        lambda: not any(s.isVisible() for s in spinners), timeout=int(3 * SPINNER_CHECK_S * 1000)
    )
