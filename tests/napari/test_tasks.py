"""The GUI's task runner: a real napari worker, real signals, Cancel through the stop event."""

from __future__ import annotations

import gc
import time

import numpy as np

from napari_msunet._napari._tasks import TaskBar, start_task
from napari_msunet.progress import Progress


def _counting(stop, n=50, delay=0.01):
    done = 0
    for i in range(n):
        if stop.is_set():
            break
        time.sleep(delay)
        done = i + 1
        yield Progress(done=done, total=n, stage="count", message=f"{done}/{n}")
    return done


def test_task_runs_to_completion_and_returns(qtbot):
    seen = []
    task = start_task(lambda stop: _counting(stop, 10, 0.001), "Counting", on_yield=seen.append)
    qtbot.waitUntil(lambda: task.done, timeout=10_000)
    assert task.result == 10
    assert [p.done for p in seen] == list(range(1, 11))
    assert task.done
    assert not task.cancelled
    assert task.error is None


def test_cancel_stops_at_next_step_and_keeps_the_return_value(qtbot):
    task = start_task(lambda stop: _counting(stop, 1000, 0.01), "Counting")
    qtbot.waitUntil(lambda: task.last is not None and task.last.done >= 3, timeout=10_000)
    assert gc.get_freeze_count() > 0  # no full collections stall the window during a run
    task.cancel()
    qtbot.waitUntil(lambda: task.done, timeout=10_000)
    assert task.cancelled
    assert 3 <= task.result < 1000
    assert gc.get_freeze_count() == 0


def test_errors_reach_the_widget_with_their_message(qtbot):
    errors = []

    def broken(stop):
        yield Progress(done=0, total=1, stage="read", message="reading")
        raise ValueError("case01.svs: truncated file")

    task = start_task(broken, "Segmenting", on_error=errors.append)
    qtbot.waitUntil(lambda: task.done, timeout=10_000)
    assert isinstance(task.error, ValueError)
    assert "case01.svs" in str(errors[0])


def test_taskbar_button_runs_then_cancels(qtbot):
    bar = TaskBar("Run", lambda: start_task(lambda stop: _counting(stop, 1000, 0.01), "Count"))
    qtbot.addWidget(bar)
    bar.button.click()
    assert bar.running
    assert bar.button.text() == "Cancel"
    qtbot.waitUntil(lambda: bar.task.last is not None, timeout=10_000)
    bar.button.click()
    qtbot.waitUntil(lambda: not bar.running, timeout=10_000)
    assert bar.button.text() == "Run"
    assert "Cancelled" in bar.status.text()


def test_taskbar_shows_a_training_steps_progress(qtbot):
    """A training record is a Progress: the bar shows its done/total and its message."""
    import threading

    from napari_msunet.training.trainer import TrainStep

    release = threading.Event()

    def training(stop):
        yield TrainStep(
            done=3,
            total=10,
            stage="train",
            message="step 3/10, loss 0.500",
            epoch=0,
            step=3,
            loss=0.5,
            wce=0.5,
            bootstrap=0.0,
            data_wait_s=0.0,
            step_s=0.1,
        )
        release.wait(10)
        return 3

    bar = TaskBar("Train", lambda: start_task(training, "Training"))
    qtbot.addWidget(bar)
    bar.button.click()
    qtbot.waitUntil(lambda: bar.task.last is not None, timeout=10_000)
    qtbot.waitUntil(lambda: bar.bar.value() == 3, timeout=10_000)
    assert bar.bar.maximum() == 10
    assert bar.status.text() == "step 3/10, loss 0.500"
    release.set()
    qtbot.waitUntil(lambda: not bar.running, timeout=10_000)
    assert bar.task.result == 3


def test_records_reach_the_widget_in_order(qtbot):
    # napari's progress bar processes events inside the yielded handler; records must still
    # arrive at the widget in the order they were yielded
    seen = []
    task = start_task(lambda stop: _counting(stop, 200, 0.0005), "Counting", on_yield=seen.append)
    qtbot.waitUntil(lambda: task.done, timeout=20_000)
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    assert len(seen) == 200


def test_taskbar_says_done_when_the_widget_wrote_nothing(qtbot):
    bar = TaskBar("Run", lambda: start_task(lambda stop: _counting(stop, 5, 0.001), "Count"))
    qtbot.addWidget(bar)
    bar.button.click()
    qtbot.waitUntil(lambda: not bar.running, timeout=10_000)
    assert bar.status.text() == "Done."


def test_same_layer_sees_through_napari_proxies(make_napari_viewer):
    from napari.utils._proxies import PublicOnlyProxy

    from napari_msunet._napari._layers import same_layer

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((4, 4), np.uint8))
    proxied = PublicOnlyProxy(viewer)
    assert proxied.layers[0] is not layer
    assert same_layer(proxied.layers[0], layer)
    assert not same_layer(None, layer)


def test_a_core_that_yields_faster_than_the_bar_draws(make_napari_viewer, qtbot):
    """Thousands of records with no pause: the bar shows the newest, nothing recurses."""
    make_napari_viewer()  # its activity dock draws each progress bar (and processes events)
    seen = []
    task = start_task(lambda stop: _counting(stop, 3000, 0.0), "Counting", on_yield=seen.append)
    qtbot.waitUntil(lambda: task.done, timeout=60_000)
    assert task.error is None
    assert task.result == 3000
    assert [p.done for p in seen] == list(range(1, 3001))
    assert task.bar is None  # closed at the end, none left open
