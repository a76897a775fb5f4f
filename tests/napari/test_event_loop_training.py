"""The window never freezes while a model fine-tunes: the GUI event loop keeps ticking.

A QTimer asks for a tick every 10 ms on the GUI thread while the Fine-tune widget runs a real
fine-tune in its worker (reading patches and labels, class-weight sampling, forward/backward
passes, the live loss plot painted on the GUI thread, the final model save), from the Run
click to the end of the task. The largest stretch without a tick is how long the window
could not react. (The inference counterpart lives in ``test_event_loop.py``.)

What the bound is about: stalls our process causes, i.e. the GUI thread busy, or blocked on
the GIL or a lock held by the worker. On Linux each tick also reads the GUI thread's
scheduler statistics (``/proc/thread-self/schedstat``), which say how long the thread waited
in the run queue for a free core: time the operating system gave both cores to other
processes. That wait is subtracted from each gap; the raw gaps are printed as well.

The bound asserted is loose (``MAX_GAP_S``, 1 s): a regression such as a full garbage
collection, a model load or a file read on the GUI thread exceeds it; the noise of a busy CI
machine does not. The design target, 100 ms, is measured by ``benchmarks/bench_gui.py``
(figures in docs/benchmarks.md). When the bound fails, the message says where the GUI thread
was during the longest gap (``StackSampler``).
"""

from __future__ import annotations

from event_loop_probe import MAX_GAP_S, MAX_RAW_GAP_S, EventLoopProbe, StackSampler
from finetune_case import make_case, open_in_viewer

from napari_msunet._napari._finetune import FinetuneWidget


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

    probe = EventLoopProbe()
    sampler = StackSampler().start()  # says where the GUI thread was if the bound fails
    try:
        probe.run()
        qtbot.wait(1000)  # the window has painted and the timer runs before the work starts
        probe.mark_start()
        widget.taskbar.button.click()
        qtbot.waitUntil(lambda: widget.task.done, timeout=300_000)
        probe.mark_end()
        qtbot.wait(50)
    finally:
        probe.stop()
        sampler.stop()

    assert widget.task.error is None, widget.task.error
    assert widget.result.steps == 20
    assert widget.plot.redraws > 0  # the plot was painted on the GUI thread meanwhile
    gaps = probe.gaps()
    assert gaps.ticks > 10
    record_property("max_event_loop_gap_ms", round(gaps.raw * 1000, 1))
    record_property("max_event_loop_gap_less_run_queue_ms", round(gaps.ours * 1000, 1))
    print(f"\nfine-tune: {gaps.describe()}")
    where = sampler.describe(probe.worst_gap())
    assert gaps.ours < MAX_GAP_S, f"the GUI stalled {gaps.ours * 1000:.0f} ms in training\n{where}"
    assert gaps.raw < MAX_RAW_GAP_S, f"the GUI stalled for {gaps.raw * 1000:.0f} ms (raw)"
