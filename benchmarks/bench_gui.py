"""Benchmark: how long the napari window stops reacting during the plugin's main actions.

A QTimer asks for a tick every 10 ms on the GUI thread (the probe of the event-loop tests,
``tests/napari/event_loop_probe.py``); the largest gap between two ticks is the longest time
the window could not react to the user. Each gap is also given less the time the operating
system kept the GUI thread waiting for a core (``/proc/thread-self/schedstat``): on a loaded
2-core machine that wait is the machine's, not the plugin's.

Target: no gap over 100 ms (less run-queue wait) in any scenario. The CI tests
(``tests/napari/test_event_loop*.py``) only assert a loose bound (1 s) that catches a real
regression: a wall-clock figure this close to what the machine can do does not belong in CI.

Scenarios, each in a fresh ``napari.Viewer(show=True)`` drawn for real, with the small inputs
of the GUI tests (``tests/napari/segment_case.py``, ``finetune_case.py``):

- inference: Segment's Run click (it makes the prediction layer, napari draws it), then the
  prediction itself (tile 64, about 70 tiles, CPU) until the task is done;
- fine-tune: Fine-tune's Run (20 steps, batch 2, CPU, no re-prediction), click to done;
- for both, also the second after the task ends (the task runner lets the garbage collector
  scan the whole heap again then);
- open slide: ``viewer.open`` of a synthetic SVS with the napari-msunet reader;
- drop GeoJSON: ``viewer.open`` of the QuPath GeoJSON lying beside the slide (rasterised
  as a labels layer on that slide), and of the same file under another name (placed on the
  open slide its coordinates fit);
- open sample: File > Open Sample (the EBHI-Seg sample slide and its annotation, written
  to a fresh cache first, as at a first use);
- review, draw a rectangle: Review's "Draw a rectangle" click and one rectangle added to
  the layer (the drag itself is napari's); then "Edit region", which opens it for painting.

The synchronous actions (open, drop, draw) are measured from the call until 1 s after it, so
the napari redraws that follow belong to them.

Usage (a display is needed; the script starts one under ``xvfb-run``, or ``Xvfb``, when
``DISPLAY`` is unset)::

    xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python benchmarks/bench_gui.py --repeat 3

``--stacks`` also samples the GUI thread's Python stack every 3 ms and prints, for every gap
over ``--stack-threshold`` ms, where the GUI thread was (the way to find a stall's cause on a
loaded machine, where the gap figures themselves are noisy).
"""

from __future__ import annotations

import argparse
import atexit
import faulthandler
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "napari"))  # the probe and the case builders

TARGET_MS = 100.0
SETTLE_MS = 1000  # after a synchronous action: napari's redraws that follow belong to it
SAMPLE_KEY = "ebhi_mosaic"  # napari.yaml's sample_data key


def _ensure_display() -> None:
    """Run under a virtual X server when there is no display."""
    if os.environ.get("DISPLAY") or sys.platform != "linux":
        return
    if shutil.which("xvfb-run") and not os.environ.get("_BENCH_GUI_XVFB"):
        os.environ["_BENCH_GUI_XVFB"] = "1"
        argv = ["xvfb-run", "-a", "-s", "-screen 0 1920x1080x24", sys.executable, *sys.argv]
        os.execvp("xvfb-run", argv)
    if shutil.which("Xvfb"):
        for n in range(99, 140):
            if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
                break
        server = subprocess.Popen(
            ["Xvfb", f":{n}", "-screen", "0", "1920x1080x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        atexit.register(server.terminate)
        for _ in range(100):
            if Path(f"/tmp/.X11-unix/X{n}").exists():
                break
            time.sleep(0.05)
        os.environ["DISPLAY"] = f":{n}"
        return
    sys.exit("No display: install Xvfb (xvfb-run) or run with a DISPLAY")


def spin(ms: int) -> None:
    """Run the Qt event loop for ``ms`` milliseconds (as the user's window would)."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def wait_until(done: Callable[[], bool], timeout_s: float = 300.0) -> None:
    deadline = time.perf_counter() + timeout_s
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError("the scenario did not finish in time")
        spin(10)


@dataclass
class Row:
    scenario: str
    raw_ms: float
    ours_ms: float
    ticks: int
    seconds: float


class Session:
    """One scenario's viewer, probe and (optionally) stack sampler."""

    def __init__(self, sampler, stack_threshold_ms: float) -> None:
        from event_loop_probe import EventLoopProbe

        import napari

        self.viewer = napari.Viewer(show=True)
        self.probe = EventLoopProbe()
        self.sampler = sampler
        self.threshold_s = stack_threshold_ms / 1000
        self.rows: list[Row] = []
        self.probe.run()

    def measure(self, scenario: str, start, end) -> Row:
        gaps = self.probe.gaps(start, end)
        row = Row(scenario, gaps.raw * 1000, gaps.ours * 1000, gaps.ticks, gaps.seconds)
        self.rows.append(row)
        if self.sampler is not None:
            for gap in self.probe.long_gaps(self.threshold_s, start, end):
                print(f"[{scenario}] {self.sampler.describe(gap)}", flush=True)
        return row

    def close(self) -> None:
        self.probe.stop()
        self.viewer.close()
        spin(200)


def _settled_action(session: Session, scenario: str, action: Callable[[], object]) -> None:
    """Measure a synchronous action from the call until :data:`SETTLE_MS` after it."""
    start = session.probe.now()
    action()
    spin(SETTLE_MS)
    session.measure(scenario, start, session.probe.now())


def bench_inference(session: Session, work: Path) -> None:
    import segment_case
    from qtpy.QtWidgets import QApplication

    from napari_msunet._napari._segment import SegmentWidget
    from napari_msunet._napari._warm_up import warm_up

    case = segment_case.make_case(work)
    viewer = session.viewer
    viewer.open(str(case.slide), plugin="napari-msunet")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.set_model(case.model)
    widget.tile_spin.setValue(64)
    widget.device_combo.setCurrentText("cpu")
    wait_until(warm_up().is_set, 60)
    spin(500)
    start = session.probe.now()
    widget.taskbar.button.click()  # makes the layer, starts the worker
    QApplication.processEvents()  # napari draws the new layer
    clicked = session.probe.now()
    task = widget.taskbar.task
    wait_until(lambda: task.done)
    end = session.probe.now()
    spin(SETTLE_MS)
    if task.error is not None:
        raise RuntimeError(f"inference failed: {task.error}")
    session.measure("inference: Run click (layer made and drawn)", start, clicked)
    session.measure("inference: prediction (after the click)", clicked, end)
    session.measure("inference: the second after it ends", end, session.probe.now())


def bench_finetune(session: Session, work: Path) -> None:
    import finetune_case

    from napari_msunet._napari._finetune import FinetuneWidget

    case = finetune_case.make_case(work)
    viewer = session.viewer
    finetune_case.open_in_viewer(viewer, case)
    widget = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Fine-tune")
    widget.set_model_file(case.parent)
    widget.steps.setValue(20)
    widget.batch.setValue(2)
    widget.device.setCurrentText("cpu")
    widget.repredict.setChecked(False)
    spin(1000)
    start = session.probe.now()
    widget.taskbar.button.click()
    wait_until(lambda: widget.task.done)
    end = session.probe.now()
    spin(SETTLE_MS)
    if widget.task.error is not None:
        raise RuntimeError(f"fine-tune failed: {widget.task.error}")
    session.measure("fine-tune: Run, 20 steps (click to done)", start, end)
    session.measure("fine-tune: the second after it ends", end, session.probe.now())


def bench_open_slide(session: Session, work: Path) -> None:
    import segment_case

    case = segment_case.make_case(work)
    spin(500)
    _settled_action(
        session,
        "open slide (viewer.open .svs)",
        lambda: session.viewer.open(str(case.slide), plugin="napari-msunet"),
    )


def bench_drop_geojson(session: Session, work: Path) -> None:
    import finetune_case

    case = finetune_case.make_case(work)
    session.viewer.open(str(case.slide), plugin="napari-msunet")
    spin(1000)
    _settled_action(
        session,
        "drop GeoJSON (beside its slide)",
        lambda: session.viewer.open(str(case.geojson), plugin="napari-msunet"),
    )


def bench_drop_renamed_geojson(session: Session, work: Path) -> None:
    import finetune_case

    case = finetune_case.make_case(work)
    renamed = case.geojson.with_name("exported by a colleague.geojson")
    renamed.write_bytes(case.geojson.read_bytes())
    session.viewer.open(str(case.slide), plugin="napari-msunet")
    spin(1000)
    _settled_action(
        session,
        "drop GeoJSON (another name: placed by its coordinates)",
        lambda: session.viewer.open(str(renamed), plugin="napari-msunet"),
    )


def bench_sample(session: Session, work: Path) -> None:
    os.environ["NAPARI_MSUNET_CACHE"] = str(work / "cache")  # written fresh, as a first use
    spin(500)
    _settled_action(
        session,
        "open sample (File > Open Sample)",
        lambda: session.viewer.open_sample("napari-msunet", SAMPLE_KEY),
    )


def bench_review(session: Session, work: Path) -> None:
    import finetune_case
    import numpy as np

    from napari_msunet._napari._review import ReviewWidget

    case = finetune_case.make_case(work)
    viewer = session.viewer
    viewer.open(str(case.slide), plugin="napari-msunet")
    viewer.open(str(case.geojson), plugin="napari-msunet")
    widget = ReviewWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Review")
    task = widget.start_review()
    if task is None:
        raise RuntimeError(f"review did not start: {widget.status.text()}")
    wait_until(lambda: task.done, 120)
    if task.error is not None:
        raise RuntimeError(f"review failed to start: {task.error}")
    spin(1000)

    def draw() -> None:
        widget.draw_button.click()
        # the user's drag: one rectangle, in the slide's level-0 pixels
        widget.rect_layer.add_rectangles(np.array([[[300, 300], [500, 520]]], float))

    _settled_action(session, "review: draw a rectangle", draw)
    start = session.probe.now()
    widget.edit_button.click()
    wait_until(lambda: widget.edit_layer is not None and not widget._busy_now(), 120)
    spin(SETTLE_MS)
    session.measure("review: Edit region (opened for painting)", start, session.probe.now())


SCENARIOS = {
    "inference": bench_inference,
    "finetune": bench_finetune,
    "open": bench_open_slide,
    "geojson": bench_drop_geojson,
    "geojson-renamed": bench_drop_renamed_geojson,
    "sample": bench_sample,
    "review": bench_review,
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs of each scenario")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(SCENARIOS), help="run only these scenarios"
    )
    parser.add_argument("--workdir", type=Path, help="where the inputs go (default: a temp dir)")
    parser.add_argument("--stacks", action="store_true", help="print where long gaps went")
    parser.add_argument("--stack-threshold", type=float, default=50.0, help="ms (--stacks)")
    args = parser.parse_args(argv)
    _ensure_display()
    faulthandler.enable()  # a crash in Qt or GL code still says where it happened

    import torch
    from event_loop_probe import StackSampler
    from napari.qt import get_qapp

    import napari

    get_qapp()
    load_before = _load()
    sampler = StackSampler().start() if args.stacks else None
    names = args.only or list(SCENARIOS)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-gui-") as tmp:
        root = args.workdir or Path(tmp)
        for r in range(args.repeat):
            for name in names:
                work = root / f"{name}-{r}"
                work.mkdir(parents=True, exist_ok=True)
                session = Session(sampler, args.stack_threshold)
                try:
                    SCENARIOS[name](session, work)
                finally:
                    session.close()
                for row in session.rows:
                    print(
                        f"run {r + 1}: {row.scenario}: max gap {row.raw_ms:.0f} ms raw, "
                        f"{row.ours_ms:.0f} ms less run-queue wait, {row.ticks} ticks over "
                        f"{row.seconds:.1f} s",
                        flush=True,
                    )
                rows += session.rows
    if sampler is not None:
        sampler.stop()
    load_after = _load()

    print()
    print(
        f"Machine: {_cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"napari {napari.__version__}, torch {torch.__version__}, Qt platform "
        f"{os.environ.get('QT_QPA_PLATFORM', 'xcb')} (DISPLAY {os.environ.get('DISPLAY')})"
    )
    print(f"Load average (1, 5, 15 min): {load_before} before, {load_after} after")
    print(f"Target: max event-loop gap (less run-queue wait) < {TARGET_MS:.0f} ms")
    print(f"Runs per scenario: {args.repeat}; worst run shown, median in brackets")
    print()
    print("| scenario | raw max gap ms | less run-queue max gap ms | ticks | target | result |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    failed = False
    for scenario in dict.fromkeys(row.scenario for row in rows):
        mine = [row for row in rows if row.scenario == scenario]
        worst = max(mine, key=lambda row: row.ours_ms)
        raw = [row.raw_ms for row in mine]
        ours = [row.ours_ms for row in mine]
        ok = worst.ours_ms < TARGET_MS
        failed |= not ok
        med = (
            (f" ({statistics.median(raw):.0f})", f" ({statistics.median(ours):.0f})")
            if len(mine) > 1
            else ("", "")
        )
        print(
            f"| {scenario} | {max(raw):.0f}{med[0]} | {worst.ours_ms:.0f}{med[1]} | "
            f"{worst.ticks} | {TARGET_MS:.0f} ms | {'pass' if ok else 'FAIL'} |"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
