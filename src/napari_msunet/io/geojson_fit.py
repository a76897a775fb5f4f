"""Does a QuPath GeoJSON belong to this slide? Refuse annotations made on another one.

:func:`~napari_msunet.io.geojson.read_geojson` with ``slide_shape`` clips whatever reaches
outside the slide, with a warning: right for a polygon drawn a few pixels over the edge, but
a file exported from another (larger) slide, or in another coordinate system (µm, a downsampled
level), would be silently cut into something wrong. :func:`read_geojson_for_slide` therefore
refuses annotations that reach *well* beyond the slide, naming the file and both sizes, and
only then clips the small overhangs.
"""

from __future__ import annotations

import os
from pathlib import Path

import shapely

from napari_msunet.errors import AnnotationError
from napari_msunet.io.annotations import AnnotationSet
from napari_msunet.io.geojson import read_geojson

__all__ = ["check_fits_slide", "read_geojson_for_slide"]

#: Annotations may reach this fraction of the slide's side (plus a few pixels) beyond it,
#: as hand-drawn outlines near the edge do; anything further belongs to another slide.
SLACK_FRACTION = 0.01
SLACK_PX = 2.0


def check_fits_slide(
    annotations: AnnotationSet,
    slide_shape: tuple[int, int],
    source: str | os.PathLike[str] | None = None,
) -> None:
    """Raise unless the annotations lie on a slide of level-0 ``(height, width)``.

    Raises
    ------
    AnnotationError
        Some annotation reaches beyond the slide by more than 1 % of its side (or starts
        well before it, at negative coordinates): the file probably belongs to another
        slide, or is not in level-0 pixels.
    """
    if len(annotations) == 0:
        return
    h, w = (int(v) for v in slide_shape)
    x0, y0, x1, y1 = (float(v) for v in shapely.total_bounds([a.geometry for a in annotations]))
    sx, sy = SLACK_FRACTION * w + SLACK_PX, SLACK_FRACTION * h + SLACK_PX
    if x1 > w + sx or y1 > h + sy or x0 < -sx or y0 < -sy:
        raise AnnotationError(
            source,
            f"annotations span x = {x0:.0f} .. {x1:.0f}, y = {y0:.0f} .. {y1:.0f} (level-0 "
            f"pixels), beyond the slide's {w} x {h} pixels: is this the GeoJSON of another "
            "slide, or not in level-0 pixel coordinates?",
        )


def read_geojson_for_slide(
    path: str | os.PathLike[str], slide_shape: tuple[int, int]
) -> AnnotationSet:
    """Read a QuPath GeoJSON made on a slide of level-0 ``(height, width)``.

    Annotations reaching a little outside the slide are clipped to it (with the usual
    :class:`~napari_msunet.io.annotations.AnnotationWarning`).

    Raises
    ------
    AnnotationError
        The file is malformed (see :func:`~napari_msunet.io.geojson.read_geojson`) or does
        not fit the slide (see :func:`check_fits_slide`).
    """
    path = Path(path)
    annotations = read_geojson(path)
    check_fits_slide(annotations, slide_shape, path)
    h, w = (int(v) for v in slide_shape)
    if len(annotations) == 0:
        return annotations
    x0, y0, x1, y1 = shapely.total_bounds([a.geometry for a in annotations])
    if x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h:
        return annotations
    return read_geojson(path, slide_shape=slide_shape)  # rare: parse again, clipping
