"""The window never freezes while a model fine-tunes: the GUI event loop keeps ticking.

A QTimer asks for a tick every 10 ms on the GUI thread while the Fine-tune widget runs a real
fine-tune in its worker (reading patches and labels, class-weight sampling, forward/backward
passes, the live loss plot painted on the GUI thread, the final model save), from the Run
click to the end of the task. Any stretch over 100 ms without a tick would be a visible stall.
(The inference counterpart lives in ``test_event_loop.py``.)

What the bound is about: stalls our process causes, i.e. the GUI thread busy, or blocked on
the GIL or a lock held by the worker. On Linux each tick also reads the GUI thread's
scheduler statistics (``/proc/thread-self/schedstat``), which say how long the thread waited
in the run queue for a free core: time the operating system gave both cores to other
processes (on the 2-core development machine a background training job is always running).
That wait is subtracted from each gap; the raw gaps are printed as well.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from finetune_case import make_case, open_in_viewer
from qtpy.QtCore import QTimer

from napari_msunet._napari._finetune import FinetuneWidget

MAX_GAP_S = 0.100
_SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _run_queue_wait() -> float:
    """Seconds the calling thread has spent waiting for a core (0 where unknown)."""
    try:
        return int(_SCHEDSTAT.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def test_gui_stays_responsive_during_training(make_napari_viewer, qtbot, tmp_path, record_property):
    case = make_case(tmp_path)
    viewer = make_napari_viewer(show=True)  # drawn for real, so redraws cost what they cost
    open_in_viewer(viewer, case)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.set_model_file(case.parent)
    widget.steps.setValue(20)
    widget.batch.setValue(2)
    widget.device.setCurrentText("cpu")
    widget.repredict.setChecked(False)  # training only; inference has its own test

    ticks: list[tuple[float, float]] = []  # (time, run-queue wait so far)
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: ticks.append((time.perf_counter(), _run_queue_wait())))
    timer.start()
    qtbot.wait(1000)  # the window has painted and the timer runs before the work starts
    start = (time.perf_counter(), _run_queue_wait())
    widget.taskbar.button.click()
    qtbot.waitUntil(lambda: widget.task.done, timeout=300_000)
    end = (time.perf_counter(), _run_queue_wait())
    qtbot.wait(50)
    timer.stop()

    assert widget.task.error is None, widget.task.error
    assert widget.result.steps == 20
    assert widget.plot.redraws > 0  # the plot was painted on the GUI thread meanwhile
    during = [t for t in ticks if start[0] <= t[0] <= end[0]]
    assert len(during) > 10
    gaps = [  # (gap, gap less the run-queue wait, when)
        (b[0] - a[0], (b[0] - a[0]) - (b[1] - a[1]), a[0] - start[0])
        for a, b in itertools.pairwise([start, *during, end])
    ]
    raw = max(gaps)
    ours = max(gaps, key=lambda g: g[1])
    record_property("max_event_loop_gap_ms", round(raw[0] * 1000, 1))
    record_property("max_event_loop_gap_less_run_queue_ms", round(ours[1] * 1000, 1))
    print(
        f"\nfine-tune {end[0] - start[0]:.1f} s, {len(during)} ticks; max event-loop gap "
        f"{raw[0] * 1000:.0f} ms raw (at {raw[2]:.2f} s), {ours[1] * 1000:.0f} ms less the "
        f"time the GUI thread waited for a core (at {ours[2]:.2f} s)"
    )
    assert ours[1] < MAX_GAP_S, f"the GUI stalled for {ours[1] * 1000:.0f} ms during training"
