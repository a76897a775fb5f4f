"""The CLI's one driver of long work: any core generator under a tqdm bar.

Every core generator yields :class:`~napari_msunet.progress.Progress` records (see
:mod:`napari_msunet.progress`); this driver reads their ``done``/``total``/``stage``/``message``
fields and starts a new bar when the stage changes.

Ctrl-C is deferred to the generator's next record: a ``KeyboardInterrupt`` raised in the middle
of a generator's work (a training step, a tile write) would end it there, past its ``finally``
but without the checkpoint it writes when closed at a yield. So the first Ctrl-C only asks to
stop; at the next record the driver closes the generator (which writes its resumable state and
cleans up what it had half written) and raises ``KeyboardInterrupt``. A second Ctrl-C interrupts
at once, for work that does not come back to a yield.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

from napari_msunet.progress import Progress

__all__ = ["drive"]

R = TypeVar("R")


def drive(
    gen: Generator[Progress, None, R],
    desc: str,
    *,
    on_record: Callable[[Progress], str | None] | None = None,
    stop: threading.Event | None = None,
) -> R:
    """Run ``gen`` under a tqdm bar and return its return value.

    Parameters
    ----------
    gen
        A core ``iter_<verb>`` generator.
    desc
        What the bar says before the stage ("predict case01.svs").
    on_record
        Called with every record; a string it returns is printed above the bar (a validation
        score at the end of an epoch, say).
    stop
        The generator's own stop request. When given, the first Ctrl-C sets it and the
        generator is driven on to its end, so what it returns (a cohort's table of done and
        stopped slides) still reaches the caller, who sees ``stop.is_set()``.
    """
    from tqdm import tqdm

    bar = None
    stage = None
    try:
        with _deferred_interrupt() as interrupted:
            while True:
                rec = next(gen)
                if interrupted.is_set():
                    if stop is None:
                        raise KeyboardInterrupt
                    stop.set()
                if bar is None or rec.stage != stage:
                    if bar is not None:
                        bar.close()
                    stage = rec.stage
                    bar = tqdm(
                        total=rec.total or None,
                        initial=rec.done,  # a resumed run starts part-way; rate counts from here
                        desc=f"{desc}: {stage}" if stage else desc,
                    )
                if rec.total and bar.total != rec.total:
                    bar.total = rec.total
                bar.n = rec.done
                bar.set_postfix_str(rec.message, refresh=True)
                if on_record is not None:
                    line = on_record(rec)
                    if line:
                        bar.write(line)
    except StopIteration as finished:
        return finished.value
    except KeyboardInterrupt:
        gen.close()
        raise
    finally:
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[threading.Event]:
    """While inside, the first Ctrl-C sets the event; the second raises ``KeyboardInterrupt``.

    Only the main thread can handle signals; elsewhere (a test driving the CLI in a thread)
    the event is never set and Ctrl-C behaves as usual.
    """
    asked = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return

    def on_sigint(signum, frame):
        if asked.is_set():
            raise KeyboardInterrupt
        asked.set()
        print(
            "\nstopping at the next step, keeping what is done (Ctrl-C again to stop at once)...",
            file=sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield asked
    finally:
        signal.signal(signal.SIGINT, previous)
