"""What the plugin sets up once in a viewer it works in, from any of its entry points.

A viewer meets the plugin through a widget (docked from the Plugins menu), the reader (a
slide or GeoJSON dropped on it) or the sample; whichever comes first sets up the same four
things: the plugin's label layers drawn as outlines (:mod:`._overlay_style`), napari's
activity spinner stopped when nothing runs (:mod:`._activity_spinner`), napari's
notifications closed after a few seconds (:mod:`._notifications`) and napari's one-off costs
(numba, pandas, pint) paid in a background thread (:mod:`._warm_up`).
"""

from __future__ import annotations

from typing import Any

from napari_msunet._napari._activity_spinner import install_spinner_check
from napari_msunet._napari._notifications import install_notification_expiry
from napari_msunet._napari._overlay_style import watch_viewer
from napari_msunet._napari._warm_up import warm_up

__all__ = ["prepare_viewer"]


def prepare_viewer(viewer: Any) -> None:
    """Set the plugin's viewer behaviour up in ``viewer`` (idempotent; GUI thread)."""
    warm_up()
    install_spinner_check()
    install_notification_expiry()
    watch_viewer(viewer)
