"""Which of a slide's predictions is on screen: the newest, or the one before it.

Two outlined predictions of one slide drawn together (another model, a fine-tuned version's
re-prediction) mix into one picture (issue 15). A new one therefore hides the others of its
slide, which stay in the layer list; Before / after swaps the two newest, to see on the same
tissue what a version changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari.utils.notifications import show_info

from napari_msunet._napari._layer_info import layer_info, prediction_layers

__all__ = ["hide_superseded", "toggle_before_after"]


def toggle_before_after(viewer: Any, slide: str | Path | None) -> Any | None:
    """Show the slide's previous prediction instead of its newest, or the newest again.

    The two newest prediction layers of the slide (a fine-tuned version's re-prediction and
    the one before it, say) swap visibility; returns the layer now shown, ``None`` when the
    slide has fewer than two.
    """
    layers = prediction_layers(viewer, slide)
    if len(layers) < 2:
        return None
    newest, previous = layers[-1], layers[-2]
    show_newest = not newest.visible or previous.visible
    newest.visible = show_newest
    previous.visible = not show_newest
    return newest if show_newest else previous


def hide_superseded(viewer: Any, slide: Path) -> None:
    """Hide the slide's other predictions: a new one supersedes them on screen.

    Two outlined predictions of one slide (another model, a fine-tuned version) drawn
    together mix into one picture (issue 15). The older ones stay in the layer list: their
    eye icons compare the two versions, before and after.
    """
    hidden = [
        layer
        for layer in prediction_layers(viewer)
        if layer.visible and (info := layer_info(layer)) is not None and info.slide == slide
    ]
    for layer in hidden:
        layer.visible = False
    if hidden:
        show_info(
            f"Hid the earlier prediction of {Path(slide).name} "
            f"({', '.join(layer.name for layer in hidden)}); its eye icon shows it again, to "
            "compare the two."
        )
