"""One-off costs of napari's machinery, paid in a background thread at the plugin's first use.

The first time a process makes certain napari layers it pays for work that has nothing to do
with the data (measured under Xvfb on the 2-core development VM, profiled with cProfile on the
GUI thread):

- with numba installed, a Labels layer coloured by a class-colour dict goes through code
  compiled on its first run: 1.2 s (up to 3 s on two busy cores) inside ``viewer.open`` of the
  first annotation or ``add_labels`` of the first prediction;
- the first Labels layer imports pandas for its features table (about 1 s);
- the first layer with units (µm) builds pint's unit registry: 0.16-0.46 s;
- the first image layer imports ``scipy.ndimage`` for its thumbnail: 75 ms;
- the first Shapes layer (Review's rectangle) compiles napari's triangulation: 60 ms.

:func:`warm_up` does all of it off the GUI thread, once per process, started by
:func:`~._viewer_setup.prepare_viewer` (any widget, the reader, the sample), so the actions
after the first do not stall on it. The reader and the sample, whose layers napari makes as
soon as they return, wait for what their layers need with the event loop turning
(:func:`~._responsive.wait_for`): a first slide opened waits a fraction of a second for the
units, a first annotation a second or two for the Labels colouring, with the window drawing
instead of frozen.
"""

from __future__ import annotations

import threading

__all__ = ["warm_up"]

_images = threading.Event()  # what the first image layer needs is ready
_labels = threading.Event()  # ... and the first Labels layer (set last: everything is)
_warm_lock = threading.Lock()
_warm_started = False


def _work() -> None:
    try:
        import scipy.ndimage  # noqa: F401
        from napari.utils._units import get_unit_registry

        get_unit_registry().um  # noqa: B018 - builds the registry
    except Exception:  # an optimisation only: napari does the same later if this fails
        pass
    finally:
        _images.set()
    try:
        import numpy as np
        import pandas  # noqa: F401
        from napari.utils.colormaps import DirectLabelColormap

        colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0), 1: (1, 0, 0, 1)}
        DirectLabelColormap(color_dict=colours).map(np.zeros((2, 2), np.uint8))
        from napari.layers.shapes import _accelerated_triangulate_dispatch as shapes

        shapes.warmup_numba_cache()  # napari runs it in the first Shapes layer (Review)
    except Exception:
        pass
    finally:
        _labels.set()


def warm_up(kind: str = "labels") -> threading.Event:
    """Start the warm-up (once per process); return an event set when what a layer of
    ``kind`` needs is ready: ``"image"`` (units, thumbnails: a fraction of a second) or
    ``"labels"`` (also the Labels colouring; set last, when all is done)."""
    global _warm_started
    with _warm_lock:
        if not _warm_started:
            _warm_started = True
            threading.Thread(target=_work, name="msunet-warm-up", daemon=True).start()
    return _images if kind == "image" else _labels
