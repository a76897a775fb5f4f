"""Long work from the GUI: a core generator in a napari worker, with progress and Cancel.

Every widget runs its compute the same way (GUIDE: "Long work is a generator"): the core
generator (``iter_predict_slide``, ``iter_evaluate``, ``train``, ``finetune`` ...) runs in a
:func:`napari.qt.threading.create_worker` thread; each record it yields moves a napari progress
bar (the activity dock) and is handed to the widget on the GUI thread; its return value arrives
through ``returned``. Cancel sets a :class:`threading.Event` that the core checks before each
batch or step, so the generator *returns* normally with what it finished (partial outputs
stay valid and a rerun resumes) instead of being killed.

The GUI thread only receives signals here; nothing in this module computes.
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_msunet._napari._cores import ThreadPacer, paced, user_activity
from napari_msunet.progress import Progress

__all__ = ["Task", "TaskBar", "import_quietly", "one_step", "start_task"]

# How many tasks run now; while any does, the objects that existed at its start are frozen out
# of garbage collection (see start_task).
_gc_holds = 0


def _hold_gc() -> None:
    global _gc_holds
    if _gc_holds == 0:
        gc.freeze()
    _gc_holds += 1


def _release_gc() -> None:
    global _gc_holds
    _gc_holds = max(0, _gc_holds - 1)
    if _gc_holds == 0:
        gc.unfreeze()


_import_lock = threading.Lock()


def import_quietly(*names: str) -> None:
    """Import modules from a task's worker without garbage collections meanwhile.

    A large first import in the worker makes hundreds of thousands of objects; the
    collector then runs full collections over them (everything made since the task froze
    the heap), each holding the GIL for 40-130 ms, so the window stops. Fine-tuning meets
    this at its first step: torch's optimisers import ``torch._dynamo`` (about 800 modules)
    on first use. Importing with the collector off, then freezing what the import made (it
    lives as long as the process; :func:`_release_gc` unfreezes it with the rest), takes
    those collections away. Modules already imported cost nothing.
    """
    import importlib

    missing = [name for name in names if name not in sys.modules]
    if not missing:
        return
    with _import_lock:
        enabled = gc.isenabled()
        gc.disable()
        try:
            for name in missing:
                importlib.import_module(name)
        finally:
            if enabled:
                gc.enable()
            if _gc_holds:  # outside a task nothing was frozen, so nothing to add to
                gc.freeze()


@dataclass
class Task:
    """A running piece of long work: its worker (signals), its stop event and its bar."""

    description: str
    worker: GeneratorWorker
    stop: threading.Event
    bar: Any = None
    pacer: ThreadPacer | None = None
    last: Any = None
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    showing: bool = False  # the progress bar is being updated (see _show_on_bar)
    listeners: list[Callable[[Task], None]] = field(default_factory=list)

    def cancel(self) -> None:
        """Ask the generator to stop at its next batch or step; it returns what it finished."""
        self.stop.set()

    @property
    def cancelled(self) -> bool:
        return self.stop.is_set()


def _show_on_bar(task: Task, description: str) -> None:
    """Move the napari progress bar to the newest record, until no newer one arrives."""
    shown = None
    while task.last is not shown and not task.done:  # never reopen a bar after the end
        shown = task.last
        done, total, text = shown.done, shown.total, shown.message
        if not total:
            return
        bar = task.bar
        if bar is None:
            bar = progress(total=total, desc=description)
            if task.done:  # `finished` ran inside the bar's creation: it had none to close
                bar.close()
                return
            task.bar = bar
        bar.total = total
        bar.n = done
        bar.set_description(f"{description}: {text}")
        if not task.done:  # `finished` may have closed it inside set_description
            bar.refresh()


def start_task(
    make: Callable[[threading.Event], Generator[Progress, None, Any]],
    description: str,
    *,
    on_yield: Callable[[Any], None] | None = None,
    on_return: Callable[[Any], None] | None = None,
    on_error: Callable[[BaseException], None] | None = None,
    on_finish: Callable[[Task], None] | None = None,
) -> Task:
    """Start ``make(stop_event)`` (a generator) in a napari worker thread.

    Parameters
    ----------
    make
        Builds the generator; receives the stop event to pass to the core as ``stop=``.
        Called in the worker thread, so opening files or loading a model there does not
        block the GUI either.
    description
        Shown on the progress bar and in messages ("Segmenting case01.svs").
    on_yield, on_return, on_error
        Called on the GUI thread with each record, the generator's return value, or the
        exception (also shown as a napari notification).
    on_finish
        Called on the GUI thread once the worker has finished, whatever the outcome.
    """
    stop = threading.Event()
    # torch threads follow the user: every core while they are away (see _cores)
    pacer = ThreadPacer(user_activity())

    def work():
        return (yield from paced(make(stop), pacer))

    # errors are ours to show (errored below); napari would otherwise re-raise them on the
    # GUI thread
    worker = create_worker(work, _start_thread=False, _ignore_errors=True)
    task = Task(description, worker, stop, pacer=pacer)

    def yielded(record):
        task.last = record
        # the widget first: napari's progress bar below calls processEvents, so later
        # records (even `finished`) can be handled inside it, and they must reach the widget
        # after this one (a loss plot would otherwise draw steps out of order)
        if on_yield is not None:
            on_yield(record)
        for fn in task.listeners:
            fn(task)
        if task.showing:
            # re-entered from the bar's own processEvents: the outer call shows task.last
            # when it gets control back (creating a bar per nested record recursed without
            # end when a fast core yielded faster than the activity dock could draw)
            return
        task.showing = True
        try:
            _show_on_bar(task, description)
        finally:
            task.showing = False

    def returned(value):
        task.result = value
        if on_return is not None:
            on_return(value)

    def errored(exc):
        task.error = exc
        show_error(f"{description} failed: {exc}")
        if on_error is not None:
            on_error(exc)

    def finished():
        task.done = True
        _release_gc()
        if task.bar is not None:
            task.bar.close()
            task.bar = None
        if task.cancelled and task.error is None:
            show_info(f"{description}: cancelled; what finished is kept")
        if on_finish is not None:
            on_finish(task)
        for fn in task.listeners:
            fn(task)

    worker.yielded.connect(yielded)
    worker.returned.connect(returned)
    worker.errored.connect(errored)
    worker.finished.connect(finished)
    # A full garbage collection over napari's ~700k objects holds the GIL for 0.3-0.6 s, and
    # the worker's allocations (models, batches, dask graphs) trigger one early in a run: the
    # window would freeze. What exists now (viewer, layers, torch) is long-lived; freezing it
    # keeps collections small until the last running task finishes (measured by the
    # fine-tune widget's event-loop test).
    _hold_gc()
    worker.start()
    return task


def one_step(fn: Callable[[], Any], message: str) -> Callable[[threading.Event], Generator]:
    """A task for :func:`start_task` that runs ``fn()`` once in the worker and returns it.

    For short work that cannot stop part-way (open a file, write one edit): one progress
    record with ``message``, then the result.
    """

    def make(_stop):
        yield Progress(0, 1, "run", message)
        return fn()

    return make


class TaskBar(QWidget):
    """A Run button that turns into Cancel while its task runs, with a progress line.

    The owner passes ``run`` (a callable that starts a :class:`Task` or returns ``None``
    when it refused to start, e.g. a missing layer); the bar handles the rest.
    ``cancelled_text`` is what the status line says after a Cancel: resumable work keeps
    its finished parts, an export publishes nothing.
    """

    def __init__(
        self,
        label: str,
        run: Callable[[], Task | None],
        parent=None,
        *,
        cancelled_text: str = "Cancelled; finished parts are kept.",
    ) -> None:
        super().__init__(parent)
        self._label, self._run = label, run
        self._cancelled_text = cancelled_text
        self._progress_text = ""
        self.task: Task | None = None
        self.button = QPushButton(label)
        self.button.clicked.connect(self._clicked)
        self.bar = QProgressBar()
        # the bar appearing or the status growing must not relayout the dock: that resizes
        # and repaints the napari canvas as a run starts
        policy = self.bar.sizePolicy()
        policy.setRetainSizeWhenHidden(True)
        self.bar.setSizePolicy(policy)
        self.bar.setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setMinimumHeight(2 * self.status.fontMetrics().lineSpacing())
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.button)
        row.addWidget(self.bar, 1)
        outer.addLayout(row)
        outer.addWidget(self.status)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done

    def set_label(self, label: str) -> None:
        """The Run button's text from now on (e.g. "Resume (step 40)"); shown when idle."""
        self._label = label
        if not self.running:
            self.button.setText(label)

    def _clicked(self) -> None:
        if self.running:
            self.task.cancel()
            self.button.setEnabled(False)
            self.button.setText("Cancelling…")
            return
        task = self._run()
        if task is None:
            return
        self.task = task
        self.button.setText("Cancel")
        self.bar.setVisible(True)
        self.bar.setRange(0, 0)
        task.listeners.append(self._update)

    def _update(self, task: Task) -> None:
        if task.done:
            self.bar.setVisible(False)
            self.button.setEnabled(True)
            self.button.setText(self._label)
            if task.error is not None:
                self.status.setText(f"Failed: {task.error}")
            elif task.cancelled:
                self.status.setText(self._cancelled_text)
            elif self.status.text() == self._progress_text:
                # the widget wrote no result line of its own: do not leave "step 5/6" there
                self.status.setText("Done.")
            return
        rec = task.last
        done, total, text = rec.done, rec.total, rec.message or f"{rec.done}/{rec.total}"
        if total:
            self.bar.setRange(0, total)
            self.bar.setValue(done)
        self._progress_text = text
        self.status.setText(text)
