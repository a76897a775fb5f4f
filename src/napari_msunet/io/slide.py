"""Lazy whole-slide images: :func:`open_slide` returns a :class:`Slide`.

Opening parses only the TIFF directories (never pixel data), so a 5 GB slide opens in
milliseconds, and memory does not depend on the slide's size: every level is a dask array whose
chunks are the file's own tiles, read and decoded on demand through tifffile's zarr store.

Supported: Aperio SVS, generic pyramidal tiled TIFF, OME-TIFF with SubIFD pyramids, Hamamatsu
NDPI, and plain (non-pyramidal) TIFF, PNG and JPEG, for which the coarser levels are computed
lazily from level 0 so napari still gets a multiscale image. All levels are RGB uint8
``(Y, X, 3)``; grayscale is repeated to RGB and RGBA is composited over white.

Coordinates follow the project convention: level-0 pixels ``(y, x)``; µm only at the edges.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np

from napari_msunet.errors import SlideError
from napari_msunet.io import _slide_formats as fmt
from napari_msunet.io._slide_formats import SlideWarning

__all__ = ["LevelChoice", "Slide", "SlideWarning", "open_slide"]

#: Plain images get lazily computed levels down to about this size.
_MIN_COMPUTED_LEVEL_SIDE = 512


class LevelChoice(NamedTuple):
    """The pyramid level to read for a target resolution.

    ``scale`` is the factor to resize what is read from ``level`` by (<= 1 means shrink) to reach
    the target µm/px; 1.0 when the level matches the target within 1 %.
    """

    level: int
    mpp: float
    scale: float


@dataclass(frozen=True, eq=False)
class Slide:
    """An opened slide: a lazy pyramid of RGB uint8 levels plus what the file says about it.

    Attributes
    ----------
    path
        The file.
    format
        ``"svs"``, ``"ome-tiff"``, ``"ndpi"``, ``"tiff"`` (pyramidal or not) or ``"image"``
        (PNG/JPEG).
    levels
        Dask arrays ``(Y, X, 3)`` uint8, level 0 first; chunks are the file's tiles.
    mpp
        µm per level-0 pixel, or ``None`` when the file does not state it (never guessed).
    mpp_source
        Where ``mpp`` came from, or why it is unknown, in words a user can act on.
    magnification
        The objective magnification when the file states it (e.g. 20.0), else ``None``.
    associated
        Associated images (``"thumbnail"``, ``"label"``, ``"macro"``) as lazy RGB arrays.
    pyramidal
        ``False`` when levels beyond 0 were computed from level 0 rather than read from the file.
    """

    path: Path
    format: str
    levels: tuple[da.Array, ...]
    mpp: float | None
    mpp_source: str
    magnification: float | None = None
    associated: dict[str, da.Array] = field(default_factory=dict)
    pyramidal: bool = True
    _sources: tuple[Any, ...] = field(default=(), repr=False)
    _closers: tuple[Any, ...] = field(default=(), repr=False)

    @property
    def name(self) -> str:
        """What to call the slide: its file name, or for a DICOM WSI (a folder of files, one
        per level) the folder's name."""
        return self.path.parent.name if self.format == "openslide-dicom" else self.path.name

    # -- geometry -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        """Level-0 ``(height, width)`` in pixels."""
        return tuple(self.levels[0].shape[:2])

    @property
    def level_count(self) -> int:
        return len(self.levels)

    @property
    def level_shapes(self) -> list[tuple[int, int]]:
        return [tuple(lv.shape[:2]) for lv in self.levels]

    @property
    def downsamples(self) -> list[float]:
        """Level-0 pixels per level pixel, averaged over both axes (as OpenSlide reports)."""
        h0, w0 = self.shape
        return [(h0 / h + w0 / w) / 2 for h, w in self.level_shapes]

    @property
    def level_mpp(self) -> list[float | None]:
        """µm/px of each level, ``None`` where the slide's µm/px is unknown."""
        if self.mpp is None:
            return [None] * self.level_count
        return [self.mpp * d for d in self.downsamples]

    def level_for_mpp(self, target_mpp: float) -> LevelChoice:
        """Pick the level to read for ``target_mpp`` µm/px.

        The coarsest level that is at least as fine as the target (within 1 %) is chosen, so
        that resampling to the target only ever shrinks and never invents detail.

        Raises
        ------
        SlideError
            When the slide's µm/px is unknown: the caller must then state it (e.g. ``--mpp``).
        """
        if not target_mpp > 0:
            raise ValueError(f"target µm/px must be positive, got {target_mpp}")
        if self.mpp is None:
            raise SlideError(
                self.path,
                f"cannot choose a level for {target_mpp} µm/px: the slide's resolution is "
                f"unknown ({self.mpp_source}); state the slide's µm/px explicitly",
            )
        best = 0
        for i, m in enumerate(self.level_mpp):
            if m <= target_mpp * 1.01:
                best = i
        m = self.level_mpp[best]
        scale = 1.0 if abs(m / target_mpp - 1) <= 0.01 else m / target_mpp
        return LevelChoice(best, m, scale)

    @property
    def damaged_tiles(self) -> list[tuple[str, int, int]]:
        """JPEG tiles that reads of this slide found damaged so far, as ``(level, row,
        column)``: each was also reported once with a :class:`SlideWarning` (see
        ``docs/formats.md``, "Corrupt tiles"). Empty for a slide read without damage."""
        handle = getattr(self._sources[0], "handle", None) if self._sources else None
        return sorted(handle.damage.tiles) if handle is not None else []

    # -- pixels ---------------------------------------------------------------------------
    def read_region(
        self, level: int, y: int, x: int, h: int, w: int, fill: int = 255
    ) -> np.ndarray:
        """Read an ``(h, w, 3)`` RGB region of ``level``.

        Parameters
        ----------
        level
            Pyramid level index.
        y, x
            Top-left corner in **level-0** pixels (the project convention, as in OpenSlide);
            it is divided by the level's downsample and rounded down.
        h, w
            Size in pixels **of the level**.
        fill
            Value for the part of the region outside the slide (white, like glass).

        Only the tiles the region covers are read and decoded.
        """
        if not 0 <= level < self.level_count:
            raise IndexError(f"level {level} out of range 0..{self.level_count - 1}")
        if h < 0 or w < 0:
            raise ValueError(f"region size must be non-negative, got {h} x {w}")
        lh, lw = self.level_shapes[level]
        ly = math.floor(y * lh / self.shape[0])
        lx = math.floor(x * lw / self.shape[1])
        out = np.full((h, w, 3), fill, np.uint8)
        y0, x0, y1, x1 = max(ly, 0), max(lx, 0), min(ly + h, lh), min(lx + w, lw)
        if y1 <= y0 or x1 <= x0:
            return out
        src = self._sources[level]
        block = src[y0:y1, x0:x1] if src is not None else self.levels[level][y0:y1, x0:x1]
        out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = np.asarray(block)
        return out

    def thumbnail(self, max_side: int = 1024) -> np.ndarray:
        """The coarsest level no larger than ``max_side`` (or the coarsest), as a numpy array."""
        for lv in self.levels:
            if max(lv.shape[:2]) <= max_side:
                return np.asarray(lv)
        return np.asarray(self.levels[-1])

    # -- lifetime -------------------------------------------------------------------------
    def close(self) -> None:
        for c in self._closers:
            c()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = f"{self.mpp:.4g} µm/px" if self.mpp else "µm/px unknown"
        return (
            f"Slide({str(self.path)!r}, format={self.format!r}, {self.shape[1]} x "
            f"{self.shape[0]} px, {self.level_count} levels, {mpp})"
        )


# -- opening ---------------------------------------------------------------------------------


def open_slide(path: str | Path) -> Slide:
    """Open a whole-slide image lazily.

    Parameters
    ----------
    path
        An SVS, NDPI, (OME-)TIFF, PNG or JPEG file, read with tifffile. The format is
        recognised from the file's content; an extension that contradicts the content is an
        error, since it usually means a mix-up of files. MIRAX (``.mrxs``), Leica SCN,
        Ventana BIF, Hamamatsu VMS/VMU and DICOM WSI (``.dcm``), and any other file
        tifffile cannot read but OpenSlide can, are read through OpenSlide when it is
        installed (:mod:`napari_msunet.io._openslide_backend`).

    Raises
    ------
    SlideError
        When the file is missing, empty, truncated, corrupt, of an unsupported kind or with no
        8-bit RGB/grayscale image. The message names the file and the reason.
    """
    from napari_msunet.io import _openslide_backend as osb

    path = Path(path)
    if path.suffix.lower() in osb.OPENSLIDE_SUFFIXES:
        return osb.open_with_openslide(path)
    try:
        kind = fmt.sniff(path)
    except SlideError:
        # a format of OpenSlide's under another name (an SVSlide, a DICOM file without .dcm)
        if path.is_file() and osb.openslide_can_open(path):
            return osb.open_with_openslide(path)
        raise
    if kind == "tiff":
        return _open_tiff(path)
    return _open_plain_image(path, kind)


def _open_tiff(path: Path) -> Slide:
    info = fmt.read_tiff_info(path)
    sources = tuple(info.levels)
    levels = tuple(_as_dask(src, path, i) for i, src in enumerate(sources))
    pyramidal = len(levels) > 1
    if not pyramidal:
        levels, sources = _computed_pyramid(path, sources[0], levels[0])
    associated = {
        name: _as_dask(src, path, f"assoc-{name}") for name, src in info.associated.items()
    }
    if info.mpp is None:
        warnings.warn(f"{path}: {info.mpp_source}", SlideWarning, stacklevel=3)
    return Slide(
        path=path,
        format=info.format,
        levels=levels,
        mpp=info.mpp,
        mpp_source=info.mpp_source,
        magnification=info.magnification,
        associated=associated,
        pyramidal=pyramidal,
        _sources=sources,
        _closers=(info.close,),
    )


def _open_plain_image(path: Path, kind: str) -> Slide:
    src = fmt.PlainImageSource(path, kind)
    mpp, source = src.mpp()
    if mpp is None:
        warnings.warn(f"{path}: {source}", SlideWarning, stacklevel=3)
    level0 = _as_dask(src, path, 0, chunk=1024)
    levels, sources = _computed_pyramid(path, src, level0)
    return Slide(
        path=path,
        format="image",
        levels=levels,
        mpp=mpp,
        mpp_source=source,
        pyramidal=False,
        _sources=sources,
    )


def _as_dask(src: Any, path: Path, tag: object, chunk: int | None = None) -> da.Array:
    """Wrap a level source (shape, dtype, __getitem__) as a dask array chunked like its tiles."""
    th, tw = src.tile if chunk is None else (chunk, chunk)
    token = fmt.file_token(path)
    return da.from_array(
        src,
        chunks=(th, tw, 3),
        name=f"slide-{token}-{tag}",
        asarray=True,
        fancy=False,
        lock=False,
        inline_array=True,
        meta=np.empty((0, 0, 3), np.uint8),
    )


def _downsample2(block: np.ndarray) -> np.ndarray:
    h, w = block.shape[0] // 2 * 2, block.shape[1] // 2 * 2
    b = block[:h, :w].astype(np.uint16)
    out = (b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2] + 2) // 4
    return out.astype(np.uint8)


class HalvedLevel:
    """Level ``n + 1`` of a computed pyramid: the 2 x 2 means of level ``n``, made on demand.

    An array-like (``shape``, ``dtype``, ``__getitem__``) over its parent level's source, like
    the file's levels, so that opening a slide costs the same whatever its size: a dask
    ``rechunk`` of level 0 (as this once was) builds a graph of every tile, which for a
    500k x 500k px flat TIFF took seconds and gigabytes before anything was shown. A read is
    computed in blocks of :attr:`BLOCK` x :attr:`BLOCK` pixels, so that memory stays bounded
    however large the region; every value equals the 2 x 2 mean (rounded) of the level above.
    """

    #: Side of the blocks a read is computed in (pixels of this level).
    BLOCK = 2048

    def __init__(self, parent: Any) -> None:
        self.parent = parent
        ph, pw = parent.shape[:2]
        self.shape = (ph // 2, pw // 2, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.tile = (1024, 1024)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        y0, y1, _ = key[0].indices(self.shape[0])
        x0, x1, _ = key[1].indices(self.shape[1])
        out = np.empty((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        b = self.BLOCK
        for by in range(y0, y1, b):
            ey = min(by + b, y1)
            for bx in range(x0, x1, b):
                ex = min(bx + b, x1)
                block = self.parent[2 * by : 2 * ey, 2 * bx : 2 * ex]
                out[by - y0 : ey - y0, bx - x0 : ex - x0] = _downsample2(np.asarray(block))
        return out if len(key) < 3 else out[:, :, key[2]]


def _computed_sources(level0: Any) -> tuple[Any, ...]:
    """Levels /2, /4, ... of a non-pyramidal image, down to about 512 px, as lazy sources."""
    sources = [level0]
    while max(sources[-1].shape[:2]) > _MIN_COMPUTED_LEVEL_SIDE:
        sources.append(HalvedLevel(sources[-1]))
    return tuple(sources)


def _computed_pyramid(
    path: Path, level0_source: Any, level0: da.Array
) -> tuple[tuple[da.Array, ...], tuple[Any, ...]]:
    """The dask levels of a non-pyramidal image and their sources: level 0 as given, the
    coarser ones computed from it (:class:`HalvedLevel`)."""
    sources = _computed_sources(level0_source)
    computed = [_as_dask(src, path, f"computed-{i}") for i, src in enumerate(sources[1:], 1)]
    return (level0, *computed), sources
