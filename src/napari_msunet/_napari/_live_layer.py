"""The live side of a growing prediction layer: keeping its levels current, redrawing it.

Two small pieces between the engine's worker and the napari layer (see
:mod:`napari_msunet._napari._predict_run`): :class:`Poller`, a thread next to the worker that
copies finished tiles into the coarse levels, and :class:`Redraw`, a Qt timer on the GUI
thread that redraws the layer when tiles were added. :class:`Shown` is the counter between
them.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

__all__ = ["POLL_INTERVAL", "REFRESH_INTERVAL", "Poller", "Redraw", "Shown"]

#: Seconds between two redraws of a growing prediction layer (when new tiles arrived).
REFRESH_INTERVAL = 0.3
#: Seconds between two looks at the writer's progress record for finished tiles.
POLL_INTERVAL = 0.25


class Shown:
    """How many times the worker side has added finished tiles to the store's levels (an int
    that only the poller thread increments and the GUI thread only reads)."""

    def __init__(self) -> None:
        self.version = 0


class Poller:
    """Keeps a :class:`~napari_msunet.inference.live.LivePyramid` current from a thread.

    The engine yields a record after *submitting* a batch to its writer threads; the tiles
    land on disk a moment later, and the next record may be many seconds away on a CPU. So a
    small thread looks at the writer's progress record every :data:`POLL_INTERVAL` seconds
    instead. It is the only one that writes the coarse levels, and it is stopped before the
    engine builds the final pyramid (which rewrites them).
    """

    def __init__(self, pyramid: Any, shown: Shown) -> None:
        self.pyramid, self.shown = pyramid, shown
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="msunet-live", daemon=True)
        self._thread.start()

    def _update(self) -> None:
        if self.pyramid.update():
            self.shown.version += 1

    def _run(self) -> None:
        while not self._stop.wait(POLL_INTERVAL):
            try:
                self._update()
            except Exception:  # display only: the engine's own outputs are unaffected
                return

    def stop(self, final_update: bool = False) -> None:
        """Stop the thread (and then pick up the last finished tiles, once)."""
        self._stop.set()
        self._thread.join()
        if final_update:
            with contextlib.suppress(Exception):  # display only: never hide the run's outcome
                self._update()


class Redraw:
    """Redraws a growing layer on a timer, when new tiles have arrived.

    A Qt timer looks every :data:`REFRESH_INTERVAL` seconds whether the worker side added
    tiles, and redraws then, in an event of its own, so a redraw (slicing the new pixels and
    repainting the canvas) never piles onto the handling of a progress record.
    """

    def __init__(self, layer: Any, shown: Shown) -> None:
        from qtpy.QtCore import QTimer

        self.layer, self.shown = layer, shown
        self._seen = shown.version
        self.timer = QTimer()
        self.timer.setInterval(int(REFRESH_INTERVAL * 1000))
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        version = self.shown.version
        if version != self._seen:
            self._seen = version
            # the layer-list thumbnail (the whole coarsest level, recoloured) waits for the end
            self.layer.refresh(thumbnail=False)

    def stop(self) -> None:
        """Stop the timer and draw the final state."""
        self.timer.stop()
        self.layer.refresh()
