"""A small picture of a prediction: class colours over the slide's thumbnail, with a legend.

Written by ``msunet predict`` next to its outputs so a prediction can be checked at a glance
without opening napari.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from napari_msunet.io.masks import open_mask
from napari_msunet.io.slide import Slide

__all__ = ["prediction_preview"]


def _smallest_level(levels, max_side: int):
    for lv in levels:
        if max(lv.shape[:2]) <= max_side:
            return np.asarray(lv)
    return np.asarray(levels[-1])


def prediction_preview(
    slide: Slide,
    labels: str | Path,
    class_names: Sequence[str],
    class_colours: Sequence[Sequence[int]],
    *,
    max_side: int = 1024,
    alpha: float = 0.45,
) -> Image.Image:
    """Blend the predicted classes (background left clear) over the slide thumbnail."""
    mask = open_mask(labels)
    lab = _smallest_level(mask.levels, max_side)
    thumb = Image.fromarray(slide.thumbnail(max(max_side, 2 * max(lab.shape)))).convert("RGB")
    thumb = thumb.resize((lab.shape[1], lab.shape[0]), Image.Resampling.BOX)
    base = np.asarray(thumb).astype(np.float32)
    out = base.copy()
    for label, colour in enumerate(class_colours):
        if label == 0:
            continue
        sel = lab == label
        out[sel] = (1 - alpha) * base[sel] + alpha * np.asarray(colour[:3], np.float32)
    img = Image.fromarray(out.round().astype(np.uint8))
    # legend strip under the image
    rows = [n for i, n in enumerate(class_names) if i > 0]
    strip = Image.new("RGB", (img.width, 8 + 18 * max(1, len(rows))), "white")
    draw = ImageDraw.Draw(strip)
    for i, name in enumerate(rows, start=1):
        y = 4 + 18 * (i - 1)
        draw.rectangle([6, y + 2, 20, y + 14], fill=tuple(int(v) for v in class_colours[i][:3]))
        draw.text((26, y + 2), name, fill="black")
    canvas = Image.new("RGB", (img.width, img.height + strip.height), "white")
    canvas.paste(img, (0, 0))
    canvas.paste(strip, (0, img.height))
    return canvas
