"""How the plugin's label layers are drawn over tissue: outlines by default, fill on demand.

A filled overlay at 0.5-0.7 opacity hides the tissue a pathologist needs to see under it,
and several of them (old and new prediction, the annotation, the comparison) mix into one
colour. So predictions, annotations, label masks and the TP/FP/FN comparison are drawn as
**outlines** (napari's Labels ``contour``, :data:`OUTLINE_PX` pixels of the level on screen)
at full opacity: the tissue inside every region stays visible, and the outline's colour
still says the class. To see a layer filled, set its **contour** to 0 in napari's layer
controls (and back to 2 for the outline). The layer being painted in the Review widget stays
filled, lighter (:data:`EDIT_OPACITY`), since painting needs to show each stroke.

Layers come from two places: the widgets (which call :func:`outline` on the layers they
make) and the reader (drag and drop, File > Open), which returns layer data without a
viewer; :func:`watch_viewer` styles those as they are inserted. napari's ``Labels`` takes no
``contour`` argument, so it is set on the layer after it is made.
"""

from __future__ import annotations

import weakref
from typing import Any

from napari_msunet._napari._layer_info import Kind, layer_info

__all__ = ["EDIT_OPACITY", "OUTLINED", "OUTLINE_PX", "outline", "watch_viewer"]

#: Outline width, in pixels of the pyramid level on screen.
OUTLINE_PX = 2
#: Opacity of the region open for painting (Review): strokes visible, tissue too.
EDIT_OPACITY = 0.4
#: The kinds of layer drawn as outlines.
OUTLINED = frozenset({Kind.PREDICTION, Kind.ANNOTATION, Kind.LABELS, Kind.OVERLAY})

_watched: weakref.WeakSet[Any] = weakref.WeakSet()


def outline(layer: Any) -> Any:
    """Draw ``layer`` (a napari Labels layer of an outlined kind) as outlines; return it."""
    info = layer_info(layer)
    if info is None or info.kind not in OUTLINED or not hasattr(layer, "contour"):
        return layer
    layer.contour = OUTLINE_PX
    layer.opacity = 1.0
    return layer


def watch_viewer(viewer: Any) -> None:
    """Outline the plugin's label layers as they enter ``viewer`` (once per viewer)."""
    if viewer is None or viewer in _watched:
        return
    _watched.add(viewer)

    def inserted(event: Any) -> None:
        outline(event.value)

    viewer.layers.events.inserted.connect(inserted)
    for layer in viewer.layers:
        outline(layer)
