"""The working image: a slide seen at the target resolution, read one window at a time.

The engine never builds the working image; it reads windows of it (a tile plus its margin) in
background threads. For stitched tiles to agree with each other and with a whole-image pass,
every window must see the *same* working image, whichever tile it belongs to. So the working
image is defined globally:

- it is pyramid level ``level`` shrunk by ``k`` level pixels per working pixel (``k >= 1``);
  working pixel ``(i, j)`` is the area average of the level's square
  ``[i k, (i + 1) k) x [j k, (j + 1) k)`` (area averaging is the right filter for shrinking:
  it uses every source pixel once and cannot alias fine texture into false patterns);
- outside the slide the level is white (255, glass), so windows that reach past an edge read
  white there: the engine's padding convention, which a whole-image reference must share;
- values are rounded to uint8, like the slide itself.

``k`` is snapped to an integer when within 1 % of one (e.g. a 0.5 µm/px scan read at 1 µm/px),
which makes the shrink an integer block mean aligned to the working grid; otherwise Pillow's box
filter (area averaging with fractional edge weights, in C, GIL released) computes it. A level
that matches the target within 1 % is read as is (``k = 1``), as ``Slide.level_for_mpp``
decides.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from napari_msunet.errors import ConfigError, SlideError
from napari_msunet.io.slide import Slide

__all__ = [
    "ArrayReader",
    "SlideReader",
    "WindowReader",
    "WorkingGeometry",
    "working_geometry",
    "working_window",
]

FILL = 255
"""Value of everything outside the slide: white, like glass (see the module docstring)."""

_SNAP = 0.01


@dataclass(frozen=True)
class WorkingGeometry:
    """How the working image relates to the slide.

    Attributes
    ----------
    level
        Pyramid level read.
    level_shape
        ``(height, width)`` of that level.
    k
        Level pixels per working pixel (>= 1; 1 means the level is used as is).
    shape
        ``(height, width)`` of the working image: the whole slide at the working resolution
        (the last row/column may be partly outside the slide).
    mpp
        µm per working pixel: the output's resolution (the target within 1 %).
    downsample
        Level-0 pixels per working pixel along ``(y, x)``: working pixel ``(i, j)`` covers
        level-0 ``[i dy, (i + 1) dy) x [j dx, (j + 1) dx)``.
    slide_mpp
        µm per level-0 pixel that was used (the file's, or the caller's override).
    """

    level: int
    level_shape: tuple[int, int]
    k: float
    shape: tuple[int, int]
    mpp: float
    downsample: tuple[float, float]
    slide_mpp: float

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["level_shape"], d["shape"] = list(self.level_shape), list(self.shape)
        d["downsample"] = list(self.downsample)
        return d


def working_geometry(slide: Slide, target_mpp: float, mpp: float | None = None) -> WorkingGeometry:
    """Choose the level to read and the shrink factor for ``target_mpp``.

    Parameters
    ----------
    slide
        The opened slide.
    target_mpp
        Working resolution in µm/px.
    mpp
        µm per level-0 pixel, overriding the file's (required when the file does not state
        it: guessing would silently change the scale the model sees).

    Raises
    ------
    SlideError
        When the slide's µm/px is unknown and no ``mpp`` is given.
    """
    if mpp is not None:
        if isinstance(mpp, bool) or not isinstance(mpp, int | float) or not 0 < mpp < math.inf:
            raise ConfigError(f"slide µm/px must be a positive number, got {mpp!r}")
        slide = dataclasses.replace(slide, mpp=float(mpp), mpp_source="given by the caller")
    elif slide.mpp is None:
        raise SlideError(
            slide.path,
            f"the slide's resolution is unknown ({slide.mpp_source}); pass its µm per pixel "
            "(msunet predict --mpp, or mpp= in Python), e.g. 0.25 for a 40x scan",
        )
    choice = slide.level_for_mpp(target_mpp)
    k = 1.0 / choice.scale
    if abs(k - round(k)) <= _SNAP * k:
        k = float(round(k))
    lh, lw = slide.level_shapes[choice.level]
    h0, w0 = slide.shape
    oh, ow = (max(1, math.ceil(n / k - 1e-9)) for n in (lh, lw))
    return WorkingGeometry(
        level=choice.level,
        level_shape=(lh, lw),
        k=k,
        shape=(oh, ow),
        mpp=choice.mpp * k,
        downsample=(h0 / lh * k, w0 / lw * k),
        slide_mpp=float(slide.mpp if mpp is None else mpp),
    )


def working_window(
    geometry: WorkingGeometry, region: Any, slide_shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """The working-pixel box ``(y0, x0, y1, x1)`` covering a level-0 region.

    Parameters
    ----------
    geometry
        The working image.
    region
        Level-0 ``(y0, x0, h, w)``; clipped to the slide (a view may reach past its edge).
    slide_shape
        Level-0 ``(height, width)`` of the slide.

    Raises
    ------
    ConfigError
        When ``region`` is not four integers with a positive size, or lies outside the slide.
    """
    try:
        y0, x0, h, w = (int(v) for v in region)
        ok = len(region) == 4 and all(float(v) == int(v) for v in region)
    except (TypeError, ValueError):
        ok = False
    if not ok or h <= 0 or w <= 0:
        raise ConfigError(
            f"region must be level-0 (y0, x0, height, width) with a positive size, got {region!r}"
        )
    H, W = slide_shape
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y0 + h, H), min(x0 + w, W)
    if cy1 <= cy0 or cx1 <= cx0:
        raise ConfigError(f"region {tuple(region)} lies outside the slide of {H} x {W} pixels")
    (dy, dx), (oh, ow) = geometry.downsample, geometry.shape
    # working pixel i covers level-0 [i dy, (i + 1) dy): take every pixel the region touches
    return (
        min(oh - 1, math.floor(cy0 / dy)),
        min(ow - 1, math.floor(cx0 / dx)),
        min(oh, math.ceil(cy1 / dy - 1e-9)),
        min(ow, math.ceil(cx1 / dx - 1e-9)),
    )


class WindowReader(Protocol):
    """Reads an ``(h, w, 3)`` uint8 window of a working image at working pixel ``(y, x)``;
    the window may reach outside the image, where it is :data:`FILL`."""

    shape: tuple[int, int]

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray: ...


class ArrayReader:
    """Windows of an in-memory ``(H, W, 3)`` uint8 image (the working image itself)."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.shape = (int(image.shape[0]), int(image.shape[1]))

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return _crop_filled(self.image, y, x, h, w)


def _crop_filled(image: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    H, W = image.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
    if y0 == y and x0 == x and y1 == y + h and x1 == x + w:
        return np.ascontiguousarray(image[y0:y1, x0:x1])
    out = np.full((h, w, 3), FILL, np.uint8)
    if y1 > y0 and x1 > x0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
    return out


class SlideReader:
    """Windows of a slide's working image (see the module docstring for the definition)."""

    def __init__(self, slide: Slide, geometry: WorkingGeometry) -> None:
        self.slide = slide
        self.geometry = geometry
        self.shape = geometry.shape

    def _read_level(self, ly: int, lx: int, h: int, w: int) -> np.ndarray:
        """Level pixels ``[ly, ly + h) x [lx, lx + w)``, white outside the level."""
        g = self.geometry
        (lh, lw), (h0, w0) = g.level_shape, self.slide.shape
        # read_region takes level-0 corners and floors them to level pixels: the smallest
        # level-0 coordinate that maps to ly is ceil(ly * h0 / lh) (exact integer arithmetic)
        y0 = -((-ly * h0) // lh)
        x0 = -((-lx * w0) // lw)
        return self.slide.read_region(g.level, y0, x0, h, w, fill=FILL)

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        k = self.geometry.k
        if k == 1.0:
            return self._read_level(y, x, h, w)
        if k.is_integer():
            n = int(k)
            block = self._read_level(y * n, x * n, h * n, w * n)
            return _block_mean(block, n)
        # fractional shrink: read the level pixels the window's area touches, then let the box
        # filter average exactly the area [y k, (y + h) k) (box coordinates are in the read)
        fy0, fx0 = y * k, x * k
        ly, lx = math.floor(fy0), math.floor(fx0)
        ly1, lx1 = math.ceil((y + h) * k), math.ceil((x + w) * k)
        block = self._read_level(ly, lx, ly1 - ly, lx1 - lx)
        img = Image.fromarray(block)
        box = (fx0 - lx, fy0 - ly, fx0 - lx + w * k, fy0 - ly + h * k)
        return np.asarray(img.resize((w, h), Image.Resampling.BOX, box=box))


def _block_mean(block: np.ndarray, n: int) -> np.ndarray:
    """Mean of each ``n x n`` block as uint8.

    Pillow's ``reduce`` works in C on integers (20x faster than NumPy here): the rounded mean
    exactly for powers of two, within one grey level otherwise (fixed-point division). It
    depends only on the block's pixels, so every window sees the same values.
    """
    return np.asarray(Image.fromarray(block).reduce(n))
