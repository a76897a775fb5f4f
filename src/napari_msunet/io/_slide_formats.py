"""Format-specific parts of slide opening: recognising files, finding levels and metadata.

Kept apart from :mod:`napari_msunet.io.slide` so that the :class:`~napari_msunet.io.slide.Slide`
data model stays small. Every failure here is turned into a :class:`SlideError` that names the
file and the reason.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import threading
import warnings
import weakref
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

from napari_msunet.errors import SlideError
from napari_msunet.io._jpeg_tiles import DamageLog, install_strict_jpeg
from napari_msunet.io._slide_sanity import (
    check_declared_size,
    check_plain_image,
    consistent_levels,
)


class SlideWarning(UserWarning):
    """Something about a slide was repaired, ignored or is unknown (e.g. its µm/px)."""


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_TIFF_SUFFIXES = {".svs", ".ndpi", ".tif", ".tiff", ".btf", ".tf8", ".qptiff", ".scn", ".bif"}
_PLAIN_SUFFIXES = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}
_ASSOCIATED = {"thumbnail": "thumbnail", "label": "label", "macro": "macro"}
#: µm/px outside this range are not a microscope scan (e.g. a 72 dpi screen default).
_PLAUSIBLE_MPP = (0.01, 100.0)
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def sniff(path: Path) -> str:
    """Return ``"tiff"``, ``"png"`` or ``"jpeg"`` from the file's first bytes."""
    if not path.exists():
        raise SlideError(path, _why_missing(path))
    if path.is_dir():
        raise SlideError(path, "is a folder, not a slide file")
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise SlideError(path, f"cannot be read: {exc.strerror or exc}") from exc
    if not head:
        raise SlideError(path, "file is empty (0 bytes); was the copy interrupted?")
    if head[:4] in _TIFF_MAGIC:
        kind = "tiff"
    elif head.startswith(_PNG_MAGIC):
        kind = "png"
    elif head.startswith(_JPEG_MAGIC):
        kind = "jpeg"
    else:
        raise SlideError(
            path,
            "not a supported slide format: expected a TIFF-based slide (SVS, NDPI, OME-TIFF, "
            "TIFF), PNG or JPEG, or a format OpenSlide reads (MRXS, SCN, BIF, VMS, DICOM; "
            "pip install 'napari-msunet[openslide]'); convert others (CZI, VSI, ...) to "
            "OME-TIFF, e.g. with QuPath or bfconvert",
        )
    suffix = path.suffix.lower()
    expected = "tiff" if suffix in _TIFF_SUFFIXES else _PLAIN_SUFFIXES.get(suffix)
    if expected is not None and expected != kind:
        raise SlideError(
            path,
            f"the file's content is a {kind.upper()} image but its name ends in {suffix}; "
            f"this usually means a mix-up of files: rename it if it really is the slide",
        )
    return kind


def _why_missing(path: Path) -> str:
    """Why ``path`` cannot be found: ``Path.exists`` is False for a loop of symbolic links and
    for a link to nothing too, and "file not found" would send the user looking elsewhere."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            where = "is" if path.is_symlink() else "lies in a folder that is"
            return (
                f"{where} a loop of symbolic links (a link that leads, through other links, "
                f"back to itself); point the link at the slide file"
            )
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"cannot be read: {exc.strerror} (check the folder's permissions)"
    return "file not found"


def file_token(path: Path) -> str:
    """A short id that changes when the file changes (names dask arrays for napari's cache)."""
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


class _RGBConverter:
    """Turns a raw block of a given layout and sample count into RGB uint8 ``(y, x, 3)``.

    A class rather than a closure so that level sources pickle (dask workers reopen them).
    """

    def __init__(self, layout: str, samples: int, path: Path) -> None:
        if samples not in (1, 2, 3, 4):
            raise SlideError(
                path,
                f"has no RGB image: its main image has {samples} channels (is it a "
                f"fluorescence or multiplex image?); napari-msunet reads 8-bit brightfield RGB "
                f"or grayscale",
            )
        self.layout, self.samples = layout, samples

    def __call__(self, block: np.ndarray) -> np.ndarray:
        if self.layout == "syx":
            block = np.moveaxis(block, 0, -1)
        elif self.layout == "yx":
            block = block[..., None]
        if self.samples in (1, 2):
            gray = block[..., :1]
            block = np.concatenate([gray, gray, gray, block[..., 1:2]], axis=-1)
        if block.shape[-1] == 4:
            # composite over white: transparent areas are glass, not black
            rgb = block[..., :3].astype(np.uint16)
            a = block[..., 3:4].astype(np.uint16)
            block = ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
        return np.ascontiguousarray(block[..., :3])


class _TiffHandle:
    """One open TiffFile per process, shared by the levels of a slide; reopened after pickling."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._tif: tifffile.TiffFile | None = None
        self._pid = os.getpid()
        self.damage = DamageLog(path)  # the slide's damaged JPEG tiles, reported once each

    def get(self) -> tifffile.TiffFile:
        with self._lock:
            if self._tif is not None and self._pid != os.getpid():
                # a forked child (e.g. a DataLoader worker) must not share the parent's file
                # offset: concurrent seeks would interleave reads and corrupt tiles
                self._tif = None
            if self._tif is None:
                self._pid = os.getpid()
                self._tif = tifffile.TiffFile(self.path)
                # close the file when the slide is garbage-collected without close()
                weakref.finalize(self, self._tif.close)
            return self._tif

    def close(self) -> None:
        with self._lock:
            if self._tif is not None:
                self._tif.close()
                self._tif = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


class TiffLevelSource:
    """Array-like view of one pyramid level in RGB: ``shape``, ``dtype``, ``__getitem__``.

    Reads go through tifffile's zarr store, so only the tiles a request covers are decoded.
    """

    def __init__(
        self,
        handle: _TiffHandle,
        series: int,
        level: int,
        raw_shape: tuple[int, ...],
        axes: str,
        tile: tuple[int, int],
        name: str,
    ) -> None:
        self.handle, self.series, self.level, self.name = handle, series, level, name
        # Leading axes other than Y, X, S (focal planes, time...) are read at index 0.
        core = axes.lstrip("ZTICQ")
        self.prefix = (0,) * (len(axes) - len(core))
        if core in ("YXS", "YX"):
            layout = "yxs" if core == "YXS" else "yx"
            h, w = raw_shape[len(self.prefix)], raw_shape[len(self.prefix) + 1]
            samples = raw_shape[-1] if core == "YXS" else 1
        elif core in ("SYX", "CYX"):
            layout = "syx"
            samples, h, w = raw_shape[len(self.prefix) :]
        else:
            raise SlideError(handle.path, f"unsupported image axes {axes!r} (shape {raw_shape})")
        self.layout = layout
        self.shape = (int(h), int(w), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.tile = tile
        self._convert = _RGBConverter(layout, int(samples), handle.path)
        self.level0_shape = self.shape[:2]  # set by the caller for levels beyond 0
        self._zarr: Any = None
        self._zarr_owner: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_zarr"] = state["_zarr_owner"] = None
        return state

    def _array(self) -> Any:
        tif = self.handle.get()  # a new TiffFile after a fork: rebuild the store on it
        if self._zarr is None or self._zarr_owner is not tif:
            keyframe = tif.series[self.series].levels[self.level].keyframe
            install_strict_jpeg(keyframe, self.name, self.level0_shape, self.handle.damage)
            store = tif.series[self.series].aszarr(level=self.level)
            self._zarr = zarr.open_array(store, mode="r")
            self._zarr_owner = tif
        return self._zarr

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs = key[0], key[1]
        idx = (
            (*self.prefix, slice(None), ys, xs) if self.layout == "syx" else (*self.prefix, ys, xs)
        )
        try:
            block = self._array()[idx]
        except Exception as exc:
            raise SlideError(
                self.handle.path,
                f"cannot read {self.name} rows {ys.start}:{ys.stop} columns {xs.start}:{xs.stop}"
                f": the tile data is corrupt or truncated ({type(exc).__name__}: {exc})",
            ) from exc
        rgb = self._convert(block)
        return rgb if len(key) < 3 else rgb[:, :, key[2]]


class _TifffileComplaints(logging.Handler):
    """Collects what tifffile logs while a file is parsed (it logs, not raises, on a broken
    IFD chain, and would otherwise silently return fewer pages)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _TifffileComplaints:
        logging.getLogger("tifffile").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("tifffile").removeHandler(self)


@dataclass
class TiffInfo:
    format: str
    levels: list[TiffLevelSource]
    associated: dict[str, TiffLevelSource] = field(default_factory=dict)
    mpp: float | None = None
    mpp_source: str = ""
    magnification: float | None = None
    close: Any = None


def _check_page(path: Path, page: tifffile.TiffPage, size: int, what: str) -> tuple[int, int]:
    """Validate dtype and data extents of a page; return its tile (or strip) shape."""
    if page.dtype is None or page.dtype != np.uint8:
        bits = page.bitspersample
        raise SlideError(
            path,
            f"{what} has {bits}-bit {page.dtype} pixels; napari-msunet reads 8-bit RGB "
            f"brightfield slides (convert to 8-bit first)",
        )
    check_declared_size(path, page, what)
    offsets = np.asarray(page.dataoffsets, np.int64)
    counts = np.asarray(page.databytecounts, np.int64)
    if offsets.size:
        end = int((offsets + counts)[offsets > 0].max(initial=0))
        if end > size:
            raise SlideError(
                path,
                f"is truncated: {what} needs data up to byte {end:,} but the file has only "
                f"{size:,} bytes (an interrupted copy or download?)",
            )
    if page.is_tiled:
        return int(page.tilelength), int(page.tilewidth)
    rows = int(page.rowsperstrip or page.imagelength)
    return max(1, min(rows, page.imagelength)), int(page.imagewidth)


def _series_sources(
    path: Path, handle: _TiffHandle, tif: tifffile.TiffFile, index: int, size: int, main: int
) -> list[TiffLevelSource]:
    series = tif.series[index]
    levels = series.levels
    if index == main:  # associated images use their first level only
        shapes = [(int(lv.keyframe.imagelength), int(lv.keyframe.imagewidth)) for lv in levels]
        levels = levels[: consistent_levels(path, shapes)]
    sources = []
    for lv, level in enumerate(levels):
        what = f"level {lv}" if len(series.levels) > 1 else "the image"
        tile = _check_page(path, level.keyframe, size, what)
        for page in level.pages[1:2]:  # a second focal plane, when present, must be whole too
            if page is not None:
                _check_page(path, page.keyframe, size, what)
        sources.append(
            TiffLevelSource(handle, index, lv, level.shape, level.axes, tile, f"level {lv}")
        )
        sources[-1].level0_shape = sources[0].shape[:2]
    return sources


def read_tiff_info(path: Path) -> TiffInfo:
    """Open a TIFF-based slide: its levels, associated images and physical metadata."""
    size = path.stat().st_size
    handle = _TiffHandle(path)
    try:
        with _TifffileComplaints() as complaints:
            tif = handle.get()
            all_series = list(tif.series)
        broken = [m for m in complaints.messages if "offset" in m or "truncat" in m]
        if broken:
            raise SlideError(
                path,
                f"is truncated or corrupt: the TIFF directory chain is broken ({broken[0]}); "
                f"an interrupted copy or download?",
            )
    except SlideError:
        handle.close()
        raise
    except Exception as exc:
        handle.close()
        raise SlideError(
            path, f"is not a readable TIFF (truncated or corrupt?): {type(exc).__name__}: {exc}"
        ) from exc
    try:
        if not all_series:
            raise SlideError(path, "contains no image")
        main = _main_series(all_series)
        fmt = (
            "svs" if tif.is_svs else "ome-tiff" if tif.is_ome else "ndpi" if tif.is_ndpi else "tiff"
        )
        levels = _series_sources(path, handle, tif, main, size, main)
        associated = {}
        for i, s in enumerate(all_series):
            name = _ASSOCIATED.get((s.name or "").strip().lower())
            if i != main and name and name not in associated:
                try:
                    associated[name] = _series_sources(path, handle, tif, i, size, main)[0]
                    associated[name].name = f"the {name} image"
                except SlideError as exc:
                    # a broken label or macro image must not block the slide itself
                    warnings.warn(
                        f"{path}: associated image {name!r} ignored: {exc.reason}",
                        SlideWarning,
                        stacklevel=4,
                    )
        mpp, source, mag = _physical(path, tif, fmt, main)
    except SlideError:
        handle.close()
        raise
    except Exception as exc:
        handle.close()
        raise SlideError(path, f"cannot be read: {type(exc).__name__}: {exc}") from exc
    return TiffInfo(fmt, levels, associated, mpp, source, mag, handle.close)


def _main_series(all_series: list[Any]) -> int:
    """The largest series that is not an associated image."""
    best, area = 0, -1
    for i, s in enumerate(all_series):
        if (s.name or "").strip().lower() in _ASSOCIATED:
            continue
        shape = s.levels[0].keyframe.shape
        a = int(shape[0]) * int(shape[1]) if len(shape) >= 2 else 0
        if a > area:
            best, area = i, a
    return best


def _plausible(mpp: float | None, where: str) -> tuple[float | None, str]:
    lo, hi = _PLAUSIBLE_MPP
    if mpp is None:
        return None, f"µm/px unknown: {where}"
    if not lo <= mpp <= hi:
        return None, (
            f"µm/px unknown: {where} gives {mpp:.4g} µm/px, which is not a microscope scan "
            f"(probably a screen or print default)"
        )
    return mpp, where


def _physical(path: Path, tif: Any, fmt: str, main: int) -> tuple[float | None, str, float | None]:
    page = tif.series[main].levels[0].keyframe
    if fmt == "svs":
        desc = page.description or ""
        m = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", desc)
        g = re.search(r"AppMag\s*=\s*([0-9.eE+-]+)", desc)
        mag = float(g.group(1)) if g else None
        if m:
            mpp, src = _plausible(float(m.group(1)), "Aperio description (MPP =)")
            return mpp, src, mag
        mpp, src = _resolution_mpp(page)
        return mpp, src, mag
    if fmt == "ome-tiff":
        got = _ome_physical(tif.ome_metadata or "", main)
        if got is not None:
            return got
    mpp, src = _resolution_mpp(page)
    mag = None
    if fmt == "ndpi":
        value = page.tags.valueof(65421)
        mag = float(value) if value and float(value) > 0 else None
    return mpp, src, mag


def _resolution_mpp(page: Any) -> tuple[float | None, str]:
    unit = int(page.tags.valueof(296, 2))  # ResolutionUnit, TIFF default inch
    xres = page.tags.valueof(282)
    if xres is None:
        return None, "µm/px unknown: the file has no resolution tags"
    px_per_unit = xres[0] / xres[1] if isinstance(xres, tuple) else float(xres)
    per_unit_um = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}.get(unit)
    if per_unit_um is None or px_per_unit <= 0:
        return None, "µm/px unknown: the resolution tags have no physical unit"
    return _plausible(per_unit_um / px_per_unit, "TIFF resolution tags")


def _ome_physical(xml: str, index: int) -> tuple[float | None, str, float | None] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None

    def local(el: ET.Element) -> str:
        return el.tag.rsplit("}", 1)[-1]

    images = [el for el in root if local(el) == "Image"]
    mags = {
        ob.get("ID"): ob.get("NominalMagnification")
        for ob in root.iter()
        if local(ob) == "Objective"
    }
    if not images:
        return None
    image = images[min(index, len(images) - 1)]
    pixels = next((el for el in image if local(el) == "Pixels"), None)
    mag = None
    for el in image:
        if local(el) == "ObjectiveSettings" and mags.get(el.get("ID")):
            mag = float(mags[el.get("ID")])
    if mag is None and len(mags) == 1:
        value = next(iter(mags.values()))
        mag = float(value) if value else None
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None, "µm/px unknown: the OME metadata has no PhysicalSizeX", mag
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    factor = _UM_PER_UNIT.get(unit)
    if factor is None:
        return None, f"µm/px unknown: OME PhysicalSizeXUnit {unit!r} is not a length", mag
    mpp, src = _plausible(float(pixels.get("PhysicalSizeX")) * factor, "OME PhysicalSizeX")
    return mpp, src, mag


class PlainImageSource:
    """A PNG or JPEG, decoded whole on first access and kept (these are small by nature)."""

    def __init__(self, path: Path, kind: str) -> None:
        from PIL import Image

        self.path, self.kind = path, kind
        check_plain_image(path, kind)
        try:
            with Image.open(path) as img:
                if kind == "png":
                    img.verify()  # checks chunk CRCs without decoding: catches truncation early
            with Image.open(path) as img:
                self.mode = img.mode
                w, h = img.size
                self._dpi = img.info.get("dpi")
        except Exception as exc:
            raise SlideError(path, f"is not a readable {kind.upper()}: {exc}") from exc
        if self.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
            raise SlideError(
                path,
                f"has 16/32-bit pixels ({self.mode}); napari-msunet reads 8-bit RGB or "
                f"grayscale images",
            )
        self.shape = (int(h), int(w), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.tile = (1024, 1024)
        self._lock = threading.Lock()
        self._data: np.ndarray | None = None

    def mpp(self) -> tuple[float | None, str]:
        if not self._dpi:
            return None, "µm/px unknown: the image states no resolution"
        return _plausible(25400.0 / float(self._dpi[0]), f"{self.kind.upper()} dpi")

    def _load(self) -> np.ndarray:
        from PIL import Image

        with self._lock:
            if self._data is None:
                try:
                    with Image.open(self.path) as img:
                        img.load()
                        if img.mode not in ("RGB", "L", "RGBA", "LA"):
                            img = img.convert(
                                "RGBA" if "A" in img.mode or "transparency" in img.info else "RGB"
                            )
                        arr = np.asarray(img)
                except Exception as exc:
                    raise SlideError(
                        self.path, f"cannot be decoded (truncated or corrupt?): {exc}"
                    ) from exc
                layout = "yx" if arr.ndim == 2 else "yxs"
                samples = 1 if arr.ndim == 2 else arr.shape[-1]
                self._data = _RGBConverter(layout, samples, self.path)(arr)
            return self._data

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_data"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return self._load()[key]
