"""The GUI never freezes while the engine runs: a 10 ms QTimer keeps ticking.

A real prediction runs from the Segment widget's Run button (worker thread, reader and writer
threads, the live pyramid, the growing Labels layer and its throttled redraws on the GUI
thread) while a QTimer ticks every 10 ms on the GUI thread. The largest gap between two ticks
while the worker runs is how long the GUI was unable to react (less the time the OS kept the
GUI thread waiting for a core: see ``event_loop_probe``).

The bound asserted here is loose (``MAX_GAP_S``, 1 s): it catches a real regression (a model
load or a full garbage collection on the GUI thread) and never the noise of a busy CI
machine. The design target, 100 ms, is measured by ``benchmarks/bench_gui.py`` (figures in
docs/benchmarks.md); the figures of this run are printed and recorded as properties.

The click itself makes the prediction layer and napari draws it (layer list row, controls,
canvas): a fraction of a second of napari's own work, as when any layer is opened. That is
the click's visible reaction; it is measured and printed but not part of the bound. From
then on, while the worker loads the model and computes every tile, the bound holds.
"""

from __future__ import annotations

import time

from event_loop_probe import MAX_GAP_S, MAX_RAW_GAP_S, EventLoopProbe, StackSampler
from qtpy.QtWidgets import QApplication
from segment_case import make_case

from napari_msunet._napari._predict_run import prediction_layers
from napari_msunet._napari._segment import SegmentWidget
from napari_msunet._napari._warm_up import warm_up


def test_gui_stays_responsive_during_inference(
    make_napari_viewer, qtbot, tmp_path, record_property
):
    case = make_case(tmp_path)
    viewer = make_napari_viewer(show=True)  # drawn for real, so redraws cost what they cost
    viewer.open(str(case.slide), plugin="napari-msunet")
    widget = SegmentWidget(viewer)  # starts the background warm-up of napari's Labels code
    viewer.window.add_dock_widget(widget, name="Segment")  # its progress line redraws too
    widget.set_model(case.model)
    widget.tile_spin.setValue(64)  # about 70 tiles: seconds of work on two busy cores
    widget.device_combo.setCurrentText("cpu")
    qtbot.waitUntil(warm_up().is_set, timeout=60_000)
    probe = EventLoopProbe()
    sampler = StackSampler().start()  # says where the GUI thread was if the bound fails
    try:
        probe.run()
        qtbot.wait(200)  # the timer runs steadily before the work starts
        t0 = time.perf_counter()
        widget.taskbar.button.click()  # makes the layer, starts the worker
        QApplication.processEvents()  # napari draws the new layer: the click's visible reaction
        click = time.perf_counter() - t0
        task = widget.taskbar.task
        probe.mark_start()
        qtbot.waitUntil(lambda: task.done, timeout=120_000)
        probe.mark_end()
        qtbot.wait(50)
    finally:
        probe.stop()
        sampler.stop()
    assert task.error is None
    # nobody touched the window: the run computed with every core the CLI would use, and the
    # GUI still kept ticking (the bound below)
    assert task.pacer.used == [task.pacer.cores]
    run = task.result
    assert run.completed
    assert run.result.tiles_computed >= 50  # seconds of real work, not a blink
    assert prediction_layers(viewer) == [run.layer]
    gaps = probe.gaps()
    record_property("max_event_loop_gap_ms", round(gaps.raw * 1000, 1))
    record_property("max_event_loop_gap_less_run_queue_ms", round(gaps.ours * 1000, 1))
    print(
        f"\nRun click (makes and draws the layer): {click * 1000:.0f} ms; then prediction "
        f"({run.result.tiles_computed} tiles): {gaps.describe()}"
    )
    where = sampler.describe(probe.worst_gap())
    assert gaps.ours < MAX_GAP_S, f"the GUI stalled for {gaps.ours * 1000:.0f} ms\n{where}"
    assert gaps.raw < MAX_RAW_GAP_S, f"the GUI stalled for {gaps.raw * 1000:.0f} ms (raw)"
