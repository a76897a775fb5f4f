"""Slides tifffile cannot read, through OpenSlide: MIRAX, Leica SCN, Ventana BIF, Hamamatsu
VMS/VMU, DICOM WSI and others (OpenSlide 4, ``openslide-python`` + ``openslide-bin``).

The result is the same lazy :class:`~napari_msunet.io.slide.Slide` as tifffile's: one dask
array per level, RGB uint8, chunked like the file's tiles, read only where asked; µm/px and
magnification from OpenSlide's standard properties (never guessed); the associated images.
Where both backends read a file, tifffile stays the default (it is faster; see
``docs/benchmarks.md``); :func:`open_with_openslide` can be called on any file OpenSlide reads.

OpenSlide gives RGBA, transparent outside the scanned area; it is composited over white, as
glass is elsewhere in the package.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_msunet.errors import SlideError

__all__ = ["OPENSLIDE_SUFFIXES", "open_with_openslide", "openslide_can_open"]

#: Formats read only through OpenSlide (by name: several are TIFF inside, but laid out in ways
#: a generic TIFF reader gets wrong, or an index file beside a folder of tiles).
OPENSLIDE_SUFFIXES = {
    ".mrxs": "MIRAX",
    ".scn": "Leica SCN",
    ".bif": "Ventana BIF",
    ".vms": "Hamamatsu VMS",
    ".vmu": "Hamamatsu VMU",
    ".dcm": "DICOM WSI",
    ".svslide": "Sakura SVSlide",
}
#: Chunk side when the file does not state its tile size.
DEFAULT_TILE = 512
#: Smallest chunk side: files with tiny tiles are read a few tiles at a time.
MIN_CHUNK = 256


def _module(path: Path) -> Any:
    try:
        import openslide
    except ImportError as exc:  # the package, or its native library (openslide-bin)
        what = OPENSLIDE_SUFFIXES.get(path.suffix.lower(), "this format")
        raise SlideError(
            path,
            f"{what} slides are read through OpenSlide, which is not installed ({exc}): "
            "pip install 'napari-msunet[openslide]' (openslide-python and openslide-bin)",
        ) from None
    return openslide


def openslide_can_open(path: Path) -> bool:
    """Whether OpenSlide is installed and recognises ``path`` (False when it is not installed)."""
    try:
        import openslide
    except ImportError:
        return False
    try:
        return openslide.OpenSlide.detect_format(str(path)) is not None
    except Exception:
        return False


def _over_white(rgba: np.ndarray) -> np.ndarray:
    """RGB of an RGBA array composited over white (transparent = glass)."""
    rgb, alpha = rgba[..., :3], rgba[..., 3:4]
    if alpha.min(initial=255) == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class OpenSlideLevel:
    """One level of an OpenSlide handle as a level source: ``shape``, ``dtype``, ``tile`` and
    ``[y0:y1, x0:x1]`` reads (what :func:`~napari_msunet.io.slide._as_dask` wraps)."""

    def __init__(self, handle: Any, level: int) -> None:
        self.handle, self.level = handle, level
        w, h = handle.level_dimensions[level]
        self.shape = (int(h), int(w), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        props = handle.properties
        th = int(props.get(f"openslide.level[{level}].tile-height") or DEFAULT_TILE)
        tw = int(props.get(f"openslide.level[{level}].tile-width") or DEFAULT_TILE)
        # whole tiles of at least MIN_CHUNK (a VMS "tile" is one 8-px row of JPEG blocks)
        self.tile = (
            min(th * -(-MIN_CHUNK // th), int(h)),
            min(tw * -(-MIN_CHUNK // tw), int(w)),
        )
        self.downsample = float(handle.level_downsamples[level])

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        ys, xs = (*key, slice(None), slice(None))[:2]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        if y1 <= y0 or x1 <= x0:
            out = np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)
        else:
            # the location is in level-0 pixels; OpenSlide divides it by the downsample again
            loc = (round(x0 * self.downsample), round(y0 * self.downsample))
            image = self.handle.read_region(loc, self.level, (x1 - x0, y1 - y0))
            out = _over_white(np.asarray(image))
        rest = key[2:]
        return out[(slice(None), slice(None), *rest)] if rest else out


class _AssociatedImage:
    def __init__(self, image: Any) -> None:
        self.array = _over_white(np.asarray(image.convert("RGBA")))
        self.shape, self.dtype, self.ndim = self.array.shape, self.array.dtype, 3
        self.tile = self.array.shape[:2]

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.array[key]


def _mpp(handle: Any) -> tuple[float | None, str]:
    props = handle.properties
    try:
        x, y = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
    except (KeyError, ValueError):
        return None, "µm/px unknown: the file states none (OpenSlide found no openslide.mpp-x)"
    if not (0.01 <= x <= 100 and 0.01 <= y <= 100):
        return None, f"µm/px unknown: the file states {x:g} x {y:g}, not a microscope's"
    return (x + y) / 2, f"the file ({props.get('openslide.vendor', 'OpenSlide')}), via OpenSlide"


def open_with_openslide(path: Path) -> Any:
    """Open ``path`` through OpenSlide as a :class:`~napari_msunet.io.slide.Slide`.

    Raises
    ------
    SlideError
        OpenSlide is not installed (the message says what to install), does not know the
        file, or finds it damaged; the message names the file.
    """
    from napari_msunet.io.slide import Slide, _as_dask

    openslide = _module(path)
    if not path.exists():
        raise SlideError(path, "file not found")
    try:
        handle = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(path, "not a slide format OpenSlide knows") from None
    except openslide.OpenSlideError as exc:
        raise SlideError(path, f"OpenSlide cannot read it: {exc}") from None
    sources = tuple(OpenSlideLevel(handle, i) for i in range(handle.level_count))
    levels = tuple(_as_dask(src, path, f"openslide-{i}") for i, src in enumerate(sources))
    associated = {}
    for name, image in handle.associated_images.items():
        associated[name] = _as_dask(_AssociatedImage(image), path, f"openslide-assoc-{name}")
    mpp, source = _mpp(handle)
    if mpp is None:
        warnings.warn(f"{path}: {source}", _slide_warning(), stacklevel=3)
    power = handle.properties.get("openslide.objective-power")
    try:
        magnification = float(power) if power else None
    except ValueError:
        magnification = None
    vendor = handle.properties.get("openslide.vendor", "unknown")
    return Slide(
        path=path,
        format=f"openslide-{vendor}",
        levels=levels,
        mpp=mpp,
        mpp_source=source,
        magnification=magnification,
        associated=associated,
        pyramidal=len(levels) > 1,
        _sources=sources,
        _closers=(handle.close,),
    )


def _slide_warning() -> type[Warning]:
    from napari_msunet.io._slide_formats import SlideWarning

    return SlideWarning
