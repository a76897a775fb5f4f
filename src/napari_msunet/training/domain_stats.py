"""The training-data statistics a new model version records (see :mod:`napari_msunet.io.domain`).

A version trained from slides measures up to :data:`PER_SLIDE` windows of each slide's tissue
(evenly spread over the tissue grid, at the model's working resolution), held-out regions
included: they are the same tissue. A fine-tune pools the new slides' windows with its
parent's statistics, since the version has learnt from both. The prediction of a slide
compares its tissue with these (:mod:`napari_msunet.inference.domain_check`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from napari_msunet.io.domain import WINDOW, DomainStats, features_of
from napari_msunet.io.slide import open_slide
from napari_msunet.io.working_image import SlideReader, working_geometry
from napari_msunet.training.slide_dataset import SlideSpec, patch_positions

__all__ = ["FOLDER_IMAGES", "PER_SLIDE", "images_domain", "slides_domain"]

#: Windows measured per training slide.
PER_SLIDE = 48


def slides_domain(
    slides: Sequence[SlideSpec],
    mpp: float,
    parent_training: Mapping[str, Any] | None = None,
) -> DomainStats | None:
    """Statistics of ``slides``' tissue at ``mpp`` µm/px, pooled with the parent's (if any).

    ``None`` when neither the slides nor the parent give any.
    """
    rows = []
    for spec in slides:
        positions = patch_positions(spec, mpp, WINDOW, stride=WINDOW // 2)
        if not positions:
            continue
        picks = np.unique(np.linspace(0, len(positions) - 1, PER_SLIDE).round().astype(int))
        with open_slide(spec.slide) as slide:
            reader = SlideReader(slide, working_geometry(slide, mpp, spec.mpp))
            windows = [reader.read(*positions[int(i)], WINDOW, WINDOW) for i in picks]
        rows.append(features_of(windows))
    names = ", ".join(s.slide.name for s in slides[:3]) + (" ..." if len(slides) > 3 else "")
    own = DomainStats.of(
        np.concatenate(rows) if rows else np.empty((0, 0)),
        f"{len(slides)} slide{'s' if len(slides) > 1 else ''} ({names})",
    )
    parent = DomainStats.from_training(parent_training)
    if parent is None:
        return own
    if own is None:
        return parent
    return parent.pooled(own)


#: Images measured from a folder dataset (evenly spread over its sorted training images).
FOLDER_IMAGES = 400


def images_domain(paths: Sequence[Any], description: str) -> DomainStats | None:
    """Statistics of training images used as they are (a folder dataset: each image is one
    window at the model's scale); up to :data:`FOLDER_IMAGES` of them, evenly spread."""
    from PIL import Image

    paths = list(paths)
    if not paths:
        return None
    picks = np.unique(np.linspace(0, len(paths) - 1, FOLDER_IMAGES).round().astype(int))
    windows = []
    for i in picks:
        with Image.open(paths[int(i)]) as im:
            windows.append(np.asarray(im.convert("RGB")))
    return DomainStats.of(features_of(windows), description)
