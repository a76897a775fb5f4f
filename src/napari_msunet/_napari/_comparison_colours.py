"""The TP/FP/FN colours Compare draws and its legend shows, apart from the classes on screen.

The rule itself (schemes, distances, replacements) is :mod:`napari_msunet.palette`'s; here it
meets the layers: the class colours of the two layers compared, the napari colormap of the
overlay, and the legend's swatches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from qtpy.QtWidgets import QLabel

from napari_msunet._napari._layer_info import layer_info
from napari_msunet.evaluation.overlay import FN, FP, OVERLAY_COLORS, TP
from napari_msunet.palette import as_rgba_floats, comparison_colours

__all__ = ["overlay_colormap", "overlay_colours", "paint_swatch", "swatch"]

Colour = tuple[int, int, int]
_CLEAR = (0.0, 0.0, 0.0, 0.0)


def _class_colours(layer: Any) -> list[Colour]:
    """The class colours a layer draws with (none for layers we did not make)."""
    info = layer_info(layer)
    if info is None:
        return []
    return [tuple(int(v) for v in c.color)[:3] for c in info.classes if c.color is not None]


def overlay_colours(scheme: str, prediction: Any, annotation: Any) -> dict[int, Colour]:
    """TP / FP / FN colours of ``scheme``, apart from the class colours of both layers
    (:func:`napari_msunet.palette.comparison_colours`)."""
    avoid = _class_colours(prediction) + _class_colours(annotation)
    named = comparison_colours(scheme, avoid)
    return {TP: named["TP"], FP: named["FP"], FN: named["FN"]}


def overlay_colormap(colours: Mapping[int, Colour] | None) -> dict[Any, tuple[float, ...]]:
    """The overlay layer's napari colormap (TN and unknown values clear); default colours
    (:data:`~napari_msunet.evaluation.overlay.OVERLAY_COLORS`) for ``None``."""
    coloured = dict(OVERLAY_COLORS) if colours is None else as_rgba_floats(colours)
    return {0: _CLEAR, None: _CLEAR, **coloured}


def paint_swatch(box: QLabel, rgb: Colour) -> None:
    """Fill a legend swatch with ``rgb``."""
    r, g, b = rgb
    box.setStyleSheet(f"background-color: rgb({r}, {g}, {b}); border: 1px solid #888;")


def swatch(rgb: Colour) -> QLabel:
    """A 14-pixel legend swatch of ``rgb``."""
    box = QLabel()
    box.setFixedSize(14, 14)
    paint_swatch(box, rgb)
    return box
