"""The domain check of a prediction: the slide's tissue against the model's training data.

Statistics and limits are :mod:`napari_msunet.io.domain`'s; this picks the windows. They are
the centres of up to :data:`~napari_msunet.io.domain.CHECK_WINDOWS` of the tiles the run
computes (tissue only, and inside the region of a current-view run), spread evenly over the
plan, read at the working resolution the network sees. Cost on the 2-core development VM,
7168² EBHI-Seg mosaic SVS (JPEG tiles): 0.25 s cold, 0.12 s warm, against about 8 s for the
prediction itself (measured with a throwaway script timing :func:`slide_domain`); that real
slide passes (RMS 0.54).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_msunet.inference.tiling import TilePlan
from napari_msunet.io.domain import CHECK_WINDOWS, WINDOW, DomainCheck, DomainStats, check_domain
from napari_msunet.io.working_image import WindowReader
from napari_msunet.progress import Progress

__all__ = ["DOMAIN", "DomainProgress", "slide_domain"]

#: Tiles narrower than this (working px) are not measured.
MIN_SIDE = 32

#: Stage of the one record a prediction yields when the slide is unlike the training data.
DOMAIN = "domain"


@dataclass(frozen=True)
class DomainProgress(Progress):
    """The record of stage :data:`DOMAIN`; ``check`` words the warning with the model's
    name (:meth:`~napari_msunet.io.domain.DomainCheck.message`)."""

    check: DomainCheck | None = None


def slide_domain(norm: Any, reader: WindowReader, plan: TilePlan) -> DomainCheck | None:
    """The check of the planned tissue against ``norm``'s training statistics.

    ``None`` when the model header has none (a model made before they were recorded, or a
    normalisation pair instead of a header) or no tile has enough tissue.
    """
    stats = DomainStats.from_training(getattr(norm, "training", None))
    # a tile clipped to a thin strip at the image's edge says little about the tissue
    tiles = [t for t in plan.tiles if min(t.h, t.w) >= MIN_SIDE]
    if stats is None or not tiles:
        return None
    picks = np.unique(np.linspace(0, len(tiles) - 1, CHECK_WINDOWS).round().astype(int))
    windows = []
    for i in picks:
        t = tiles[int(i)]
        h, w = min(WINDOW, t.h), min(WINDOW, t.w)
        windows.append(reader.read(t.y + (t.h - h) // 2, t.x + (t.w - w) // 2, h, w))
    return check_domain(stats, windows)
