"""One-off costs of napari's machinery, paid in a background thread at the plugin's first use.

The first time a process makes certain napari layers it pays for work that has nothing to do
with the data (measured under Xvfb on the 2-core development VM, profiled with cProfile on the
GUI thread):

- with numba installed, a Labels layer coloured by a class-colour dict goes through code
  compiled on its first run: 1.2 s (up to 3 s on two busy cores) inside ``viewer.open`` of the
  first annotation or ``add_labels`` of the first prediction;
- the first Labels layer imports pandas for its features table (about 1 s);
- the first layer with units (µm) builds pint's unit registry: 0.16-0.46 s;
- the first image layer imports ``scipy.ndimage`` for its thumbnail: 75 ms.

:func:`warm_up` does all of it off the GUI thread, once per process, started by
:func:`~._viewer_setup.prepare_viewer` (any widget, the reader, the sample), so the actions
after the first do not stall on it.
"""

from __future__ import annotations

import threading

__all__ = ["warm_up"]

_warm = threading.Event()
_warm_lock = threading.Lock()
_warm_started = False


def _work() -> None:
    try:
        import numpy as np
        import pandas  # noqa: F401
        import scipy.ndimage  # noqa: F401
        from napari.utils._units import get_unit_registry
        from napari.utils.colormaps import DirectLabelColormap

        get_unit_registry().um  # noqa: B018 - builds the registry
        colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (1, 0, 0, 1)}
        DirectLabelColormap(color_dict=colours).map(np.zeros((2, 2), np.uint8))
    except Exception:  # an optimisation only: napari does the same later if this fails
        pass
    finally:
        _warm.set()


def warm_up() -> threading.Event:
    """Start the warm-up (once per process); return an event set when it is done."""
    global _warm_started
    with _warm_lock:
        if _warm_started:
            return _warm
        _warm_started = True
    threading.Thread(target=_work, name="msunet-warm-up", daemon=True).start()
    return _warm
