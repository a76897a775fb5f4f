"""Choosing layers in a widget, and reading what our layer records say about them.

Widgets find their inputs by the role in each layer's
:class:`~napari_msunet._napari._layer_info.LayerInfo` (``"slide"``, ``"prediction"``,
``"annotation"``, ``"labels"``, ``"overlay"``...), never by layer name: :class:`LayerCombo`
lists the layers a widget accepts, best kinds first, and follows the viewer as layers come, go
and are renamed. The helpers turn a Labels layer into the plain arrays and numbers the core
takes (:class:`~napari_msunet.evaluation.LabelPyramid`); they compute nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari.layers import Image, Labels, Layer
from qtpy.QtWidgets import QComboBox

from napari_msunet._napari._layer_info import Kind, kind_of, layer_info, set_layer_info, unwrap
from napari_msunet.evaluation.compare import LabelPyramid

__all__ = [
    "LayerCombo",
    "is_slide",
    "layer_classes",
    "layer_levels",
    "layer_mpp",
    "layer_pyramid",
    "remember_slide_mpp",
    "same_layer",
    "slide_mpp_of",
    "slide_path_of",
]

_MICRONS = {"micrometer", "micron", "um", "µm"}


def same_layer(a: Any, b: Any) -> bool:
    """Whether two references, proxied or not, are the same layer."""
    return a is not None and unwrap(a) is unwrap(b)


def is_slide(layer: Layer) -> bool:
    """Whether ``layer`` is a slide opened by our reader."""
    return isinstance(layer, Image) and kind_of(layer) is Kind.SLIDE


def layer_levels(layer: Layer) -> list[Any]:
    """The layer's arrays, finest first (one for a single-scale layer)."""
    return list(layer.data) if layer.multiscale else [layer.data]


def layer_mpp(layer: Layer) -> float | None:
    """µm per pixel of the layer's finest level: its scale when it is in µm, else our record.

    The scale wins because it is where napari draws the layer; the record only fills in for a
    layer whose units were lost.
    """
    units = getattr(layer, "units", None)
    if units is not None and len(units) and str(units[-1]) in _MICRONS:
        return float(layer.scale[-1])
    info = layer_info(layer)
    return info.mpp if info is not None else None


def layer_classes(layer: Layer) -> dict[int, str]:
    """Label -> class name from our record (empty when the layer names none)."""
    info = layer_info(layer)
    return info.class_names if info is not None else {}


def layer_pyramid(layer: Labels) -> LabelPyramid:
    """The Labels layer as the core's :class:`~napari_msunet.evaluation.LabelPyramid`."""
    return LabelPyramid(layer_levels(layer), layer_mpp(layer), layer_classes(layer), layer.name)


def slide_mpp_of(layer: Layer | None) -> float | None:
    """µm/px of a slide layer: what its file states, else what the user entered for it.

    A file that does not state its pixel size gets one in the Segment widget ("Slide µm/px");
    :func:`remember_slide_mpp` keeps it in the layer's record (``mpp_given``) so that Review
    and Fine-tune read the slide at the same scale. The layer itself stays in pixels.
    """
    info = layer_info(layer)
    return info.slide_mpp if info is not None else None


def remember_slide_mpp(layer: Layer, mpp: float) -> None:
    """Record the µm/px the user entered for a slide layer whose file does not state it."""
    info = layer_info(layer)
    if info is not None and info.mpp is None:
        set_layer_info(layer, dataclasses.replace(info, mpp_given=float(mpp)))


def slide_path_of(layer: Layer | None) -> Path | None:
    """The slide file a layer lies on: its own path for a slide, else the slide it names."""
    info = layer_info(layer)
    return info.slide if info is not None else None


class LayerCombo(QComboBox):
    """A combo box of the viewer's layers that ``accept`` takes, ranked by ``rank``.

    Parameters
    ----------
    viewer
        The viewer to follow.
    accept
        Which layers are listed.
    rank
        Sort key (lower first; ties keep the viewer's order, newest first), e.g. predictions
        before any other Labels layer.
    extra
        Fixed entries listed after the layers (e.g. "QuPath GeoJSON file…"); their text is
        what :meth:`current_layer` returns ``None`` for and :meth:`current_extra` returns.
    none_text
        An entry meaning "no layer", listed first (e.g. "(none)").
    auto
        Which layers may be chosen without the user picking them (default: any listed);
        otherwise the first fixed entry is.
    """

    def __init__(
        self,
        viewer: Any,
        accept: Callable[[Layer], bool],
        rank: Callable[[Layer], int] = lambda _layer: 0,
        *,
        extra: Sequence[str] = (),
        none_text: str | None = None,
        auto: Callable[[Layer], bool] | None = None,
        parent: Any = None,
    ) -> None:
        super().__init__(parent)
        self._viewer, self._accept, self._rank = viewer, accept, rank
        self._auto = auto or (lambda _layer: True)
        self._extra, self._none = list(extra), none_text
        self._layers: list[Layer | None] = []
        self._chosen = False  # the user picked an entry: keep it while it exists
        self.activated.connect(self._on_activated)
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            emitter = getattr(events, name, None)
            if emitter is not None:
                emitter.connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._refresh)
        self._refresh()

    def _on_layers_changed(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if isinstance(layer, Layer) and event.type == "inserted":
            layer.events.name.connect(self._refresh)
        self._refresh()

    def _refresh(self, _event: Any = None) -> None:
        previous = self.current_layer()
        previous_extra = self.current_extra()
        layers = [ly for ly in reversed(list(self._viewer.layers)) if self._accept(ly)]
        layers.sort(key=self._rank)  # stable: newest first within a rank
        self.blockSignals(True)
        try:
            self.clear()
            self._layers = []
            if self._none is not None:
                self.addItem(self._none)
                self._layers.append(None)
            for ly in layers:
                self.addItem(ly.name)
                self._layers.append(ly)
            for text in self._extra:
                self.addItem(text)
                self._layers.append(None)
            if previous is not None and previous in self._layers:
                index = self._layers.index(previous)
            elif self._chosen and previous_extra is not None and self.findText(previous_extra) >= 0:
                index = self.findText(previous_extra)  # "none" or an extra entry stays chosen
            elif any(self._auto(ly) for ly in layers):
                best = next(ly for ly in layers if self._auto(ly))  # the best-ranked layer
                index = self._layers.index(best)
            elif None in self._layers:
                index = self._layers.index(None)  # "none", else the first extra entry
            else:
                index = 0
            self.setCurrentIndex(index)
        finally:
            self.blockSignals(False)
        self.currentIndexChanged.emit(self.currentIndex())

    def _on_activated(self, _index: int) -> None:
        self._chosen = True

    def refresh(self) -> None:
        """List the layers again (the combo follows the viewer by itself; for tests)."""
        self._refresh()

    def layers(self) -> list[Layer]:
        """The layers listed, in order."""
        return [ly for ly in self._layers if ly is not None]

    def current_layer(self) -> Layer | None:
        i = self.currentIndex()
        return self._layers[i] if 0 <= i < len(self._layers) else None

    def current_extra(self) -> str | None:
        """The text of the chosen fixed entry ("none" or an ``extra``), else ``None``."""
        i = self.currentIndex()
        if 0 <= i < len(self._layers) and self._layers[i] is None:
            return self.itemText(i)
        return None

    def set_layer(self, layer: Layer) -> None:
        """Choose ``layer`` (ignored when it is not listed)."""
        if layer in self._layers:
            self._chosen = True
            self.setCurrentIndex(self._layers.index(layer))

    def set_extra(self, text: str) -> None:
        """Choose the fixed entry ``text`` ("none" or an ``extra``)."""
        i = self.findText(text)
        if i >= 0 and self._layers[i] is None:
            self._chosen = True
            self.setCurrentIndex(i)
