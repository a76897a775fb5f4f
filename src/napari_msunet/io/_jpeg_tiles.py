"""Corrupt JPEG tiles made visible: strict decoding, and one warning per damaged tile.

JPEG has no checksum. When bytes inside a tile's compressed data are damaged (a bad disk
sector, a broken transfer), libjpeg notices only that the data stop making sense: it says
"Corrupt JPEG data: premature end of data segment" or "N extraneous bytes before marker", fills
what it cannot decode, and carries on. imagecodecs, which tifffile decodes tiles with, discards
those messages, so a slide with 20 damaged tiles used to read without a word while the
prediction differed from the clean slide on 2 % of its pixels.

So JPEG tiles are decoded here by libjpeg-turbo through simplejpeg in *strict* mode, which turns
those messages into errors. The hot path decodes every tile once, as before (simplejpeg is as
fast as imagecodecs; the tests check that the pixels are identical to tifffile's). A tile that
strict decoding rejects is decoded again by tifffile's own lenient decoder, so its pixels are
what every other viewer shows, and it is reported once with a
:class:`~napari_msunet.io._slide_formats.SlideWarning` naming the file, the level, the tile's
row and column and the level-0 pixels it covers. A tile that cannot be decoded at all still
raises a :class:`~napari_msunet.errors.SlideError` on reading (see ``TiffLevelSource``).

Not every damage shows: random bytes can form valid codes and end exactly where the data end
(about a third of 8-byte overwrites in the tests). No decoder can see those; a damaged file
is best replaced from its source once one tile is reported.

Tiles that strict decoding cannot take exactly as tifffile would (JPEG strips that tifffile
splits itself, as in NDPI; colour models other than YCbCr, RGB and grey; tiles coded smaller
than the tile size) are left to tifffile, unchecked.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # a declared dependency; without it tiles are decoded as before, unchecked
    import simplejpeg
except ImportError:  # pragma: no cover - depends on the installation
    simplejpeg = None

__all__ = ["DamageLog", "install_strict_jpeg"]

#: Damaged tiles reported one by one per slide; after that one warning says there are more.
MAX_REPORTED = 20

# An Adobe APP14 segment with transform 0: tells libjpeg that 3 components are RGB, not YCbCr
# (what tifffile tells imagecodecs for Aperio's RGB tiles that carry no JFIF marker)
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_JPEG = 7  # TIFF Compression tag: JPEG ("new style")


class DamageLog:
    """The damaged tiles of one slide: reported once each, at most :data:`MAX_REPORTED`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.tiles: dict[tuple[str, int, int], str] = {}

    def report(self, where: tuple[str, int, int], region: str, reason: str) -> None:
        """Record a damaged tile and warn about it, unless it was reported before."""
        with self._lock:
            if where in self.tiles:
                return
            self.tiles[where] = reason
            n = len(self.tiles)
        level, row, col = where
        if n <= MAX_REPORTED:
            msg = (
                f"{self.path}: {level}, tile row {row} column {col} ({region}) is damaged: "
                f"libjpeg reports '{reason}'; it was decoded as far as possible, so its pixels "
                f"(and any prediction there) may be wrong; replace the file from its source"
            )
        elif n == MAX_REPORTED + 1:
            msg = (
                f"{self.path}: more than {MAX_REPORTED} damaged JPEG tiles; further ones are not "
                f"reported one by one (the file is badly damaged: replace it from its source)"
            )
        else:
            return
        warnings.warn(msg, _slide_warning(), stacklevel=2)

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


def _slide_warning() -> type[Warning]:
    from napari_msunet.io._slide_formats import SlideWarning

    return SlideWarning


def _output_colorspace(page: Any) -> tuple[str, bool] | None:
    """simplejpeg's colour space for ``page`` and whether RGB must be forced, or ``None``
    when strict decoding cannot give exactly tifffile's pixels."""
    from tifffile.tifffile import jpeg_decode_colorspace

    if int(page.planarconfig) != 1 or int(page.bitspersample) != 8:
        return None
    spp = int(page.samplesperpixel)
    colorspace, out = jpeg_decode_colorspace(
        int(page.photometric), int(page.planarconfig), page.extrasamples, page.is_jfif
    )
    if spp == 3 and out == 2 and colorspace in (None, 2):
        return "RGB", colorspace == 2
    if spp == 1 and out is None and colorspace is None and int(page.photometric) in (0, 1):
        return "GRAY", False
    return None


class _StrictDecode:
    """Stands in for ``page.decode`` (tifffile's per-page decode function) on a JPEG page."""

    def __init__(
        self,
        lenient: Callable[..., Any],
        colorspace: str,
        force_rgb: bool,
        locate: Callable[[int], tuple[tuple[str, int, int], str]],
        log: DamageLog,
    ) -> None:
        self.lenient, self.colorspace, self.force_rgb = lenient, colorspace, force_rgb
        self.locate, self.log = locate, log

    def _stream(self, data: bytes, tables: bytes | None) -> bytes | None:
        data = bytes(data)
        if not data.startswith(_SOI):
            return None
        if tables is not None:  # abbreviated tile: its tables are in the JPEGTables tag
            tables = bytes(tables)
            if not (tables.startswith(_SOI) and tables.endswith(_EOI)):
                return None
            data = tables[:-2] + data[2:]
        if self.force_rgb:
            head = data[: data.find(b"\xff\xda")]  # up to the start of the scan
            at = head.find(b"\xff\xee")  # APP14: FF EE, length, "Adobe", ..., transform
            while at >= 0 and head[at + 4 : at + 9] != b"Adobe":
                at = head.find(b"\xff\xee", at + 2)
            if at >= 0:  # an Adobe marker already: fine if it says RGB, else leave it
                return data if head[at + 15 : at + 16] == b"\x00" else None
            data = _SOI + _ADOBE_RGB + data[2:]
        return data

    def __call__(
        self,
        data: bytes | None,
        index: int,
        /,
        *,
        jpegtables: bytes | None = None,
        jpegheader: bytes | None = None,
        _fullsize: bool = False,
    ) -> Any:
        args = {"jpegtables": jpegtables, "jpegheader": jpegheader, "_fullsize": _fullsize}
        stream = None if data is None or jpegheader is not None else self._stream(data, jpegtables)
        if stream is None:
            return self.lenient(data, index, **args)
        # where the tile goes and the shape tifffile returns (padded to a whole tile when
        # _fullsize: zarr's chunks are whole tiles, the last strip of an image is not)
        _, segmentindex, shape = self.lenient(None, index, _fullsize=_fullsize)
        if max(shape[1:3]) >= 65500:
            return self.lenient(data, index, **args)
        try:
            pixels = simplejpeg.decode_jpeg(stream, colorspace=self.colorspace, strict=True)
        except ValueError as exc:
            result = self.lenient(data, index, **args)  # raises when it is beyond repair
            where, region = self.locate(index)
            self.log.report(where, region, str(exc).strip())
            return result
        if pixels.shape != tuple(shape[1:]) or shape[0] != 1:
            return self.lenient(data, index, **args)  # coded smaller: tifffile pads it
        return pixels.reshape(shape), segmentindex, tuple(shape)


def install_strict_jpeg(
    page: Any, name: str, level0_shape: tuple[int, int], log: DamageLog
) -> None:
    """Make tifffile decode ``page``'s JPEG tiles strictly, reporting damaged ones to ``log``.

    Parameters
    ----------
    page
        The level's keyframe (a tifffile ``TiffPage``): every read of the level decodes
        through its ``decode``, which is replaced on this object only.
    name
        The level as the warnings name it (``"level 0"``).
    level0_shape
        ``(height, width)`` of level 0, to give the tile's place in level-0 pixels.
    log
        Where damaged tiles are recorded (one per slide).
    """
    if (
        simplejpeg is None
        or int(page.compression) != _JPEG
        or isinstance(page.__dict__.get("decode"), _StrictDecode)
    ):
        return
    mode = _output_colorspace(page)
    if mode is None:
        return
    h, w = int(page.imagelength), int(page.imagewidth)
    if page.is_tiled:
        th, tw = int(page.tilelength), int(page.tilewidth)
    else:
        th, tw = max(1, min(int(page.rowsperstrip or h), h)), w
    across = -(-w // tw)
    down = -(-h // th)
    sy, sx = level0_shape[0] / h, level0_shape[1] / w

    def locate(index: int) -> tuple[tuple[str, int, int], str]:
        row, col = (index // across) % down, index % across
        y0, x0 = row * th, col * tw
        y1, x1 = min(y0 + th, h), min(x0 + tw, w)
        region = (
            f"level-0 pixels y {round(y0 * sy)}-{round(y1 * sy)}, "
            f"x {round(x0 * sx)}-{round(x1 * sx)}"
        )
        return (name, int(row), int(col)), region

    lenient = page.decode  # tifffile's own (a cached property: computed once per page)
    page.__dict__["decode"] = _StrictDecode(lenient, mode[0], mode[1], locate, log)
