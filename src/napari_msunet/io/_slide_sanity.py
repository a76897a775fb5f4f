"""Size and sanity checks on a slide's declared geometry, made when it is opened.

A TIFF states its image size in two tags and its data in two lists (offsets and byte counts);
nothing ties them together. A 313-byte file can declare 10⁷ x 10⁷ pixels in one strip, and
everything sized from the declaration then grows without bound: a dask graph of 10⁸ chunks for
the computed pyramid, a 2.8 TiB array for one strip. So before any pixel is touched, each level
of the slide is checked against what any real scan and any real codec can be:

- **Sides** of at most :data:`MAX_SIDE` pixels: 2²¹ (2,097,152), i.e. 210 mm at 0.1 µm/px,
  more than the whole glass of a 75 x 25 mm slide at the finest resolution a scanner offers.
- **One tile or strip** decodes to at most :data:`MAX_SEGMENT_BYTES` (1 GiB): a tile or strip
  is the smallest piece that can be read, so a bigger one must be decoded whole to show any
  part of the slide.
- **Enough tiles**: the file lists at least as many tiles (or strips) as the declared size
  needs.
- **Enough data**: an uncompressed tile holds at least the bytes its size needs; compressed
  data expands at most :data:`MAX_COMPRESSION_RATIO` times (no codec does better on a real
  image; deflate's limit is about 1000 : 1 and a blank JPEG tile about 300 : 1).
- **Levels** shrink monotonically and keep the aspect ratio of level 0. A level that does not
  is ignored with a :class:`SlideWarning` (it would place regions in the wrong spot), and so
  are the levels after it.

Failures raise a :class:`~napari_msunet.errors.SlideError` that names the file, the level and
what is wrong. The checks read only the tags tifffile has already parsed: they cost
microseconds, and never read pixel data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from napari_msunet.errors import SlideError

__all__ = [
    "MAX_COMPRESSION_RATIO",
    "MAX_SEGMENT_BYTES",
    "MAX_SIDE",
    "check_declared_size",
    "consistent_levels",
]

#: Largest side of a slide level, in pixels (210 mm at 0.1 µm/px).
MAX_SIDE = 1 << 21
#: Largest decoded size of one tile or strip (bytes).
MAX_SEGMENT_BYTES = 1 << 30
#: Largest plausible ratio of decoded to stored bytes over a whole level.
MAX_COMPRESSION_RATIO = 100_000
#: Tolerance on the x/y downsample of a level, relative (levels are rounded to whole pixels).
_ASPECT_TOLERANCE = 0.05

_REMEDY = (
    "convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave IN OUT.tif --tile --pyramid "
    "--compression jpeg --bigtiff`"
)


def _px(h: int, w: int) -> str:
    return f"{w:,} x {h:,} px"


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def check_declared_size(path: Path, page: Any, what: str) -> None:
    """Refuse a page whose declared size its data cannot back, or that no scan can have.

    Parameters
    ----------
    path
        The slide (for the message).
    page
        A tifffile ``TiffPage`` (the keyframe of a level).
    what
        ``"level 0"``, ``"the image"``...: how the message names the page.

    Raises
    ------
    SlideError
        Naming the file, the page and what is wrong (see the module docstring).
    """
    h, w = int(page.imagelength), int(page.imagewidth)
    if h < 1 or w < 1:
        raise SlideError(path, f"{what} declares an empty image ({_px(h, w)}): corrupt file")
    if max(h, w) > MAX_SIDE:
        raise SlideError(
            path,
            f"{what} declares {_px(h, w)}: larger than any microscope slide (at most "
            f"{MAX_SIDE:,} px a side, 210 mm at 0.1 µm/px); the file is corrupt or not a slide",
        )
    spp = int(page.samplesperpixel or 1)
    bps = int(np.max(page.bitspersample)) if page.bitspersample else 8
    separate = int(page.planarconfig) == 2
    per_px = (1 if separate else spp) * max(bps, 8) // 8
    depth = int(getattr(page, "imagedepth", 1) or 1)
    if page.is_tiled:
        sh, sw = int(page.tilelength), int(page.tilewidth)
        sd = int(getattr(page, "tiledepth", 1) or 1)
        expected = math.ceil(h / sh) * math.ceil(w / sw) * math.ceil(depth / sd)
        kind = "tile"
    else:
        sh, sw, sd = max(1, min(int(page.rowsperstrip or h), h)), w, 1
        expected = math.ceil(h / sh) * depth
        kind = "strip"
    if separate:
        expected *= spp
    segment = sh * sw * sd * per_px
    if segment > MAX_SEGMENT_BYTES:
        shape = _px(sh, sw)
        raise SlideError(
            path,
            f"{what} ({_px(h, w)}) is stored in {kind}s of {shape}: one {kind} would have to be "
            f"decoded whole ({_gb(segment)}) to read any part of it, more than the "
            f"1 GiB napari-msunet allows; {_REMEDY}",
        )
    counts = np.asarray(page.databytecounts, np.int64)
    if getattr(page, "jpegheader", None) is not None:
        return  # NDPI: tifffile splits each JPEG strip into its own pieces; counted by it
    if counts.size < expected:
        raise SlideError(
            path,
            f"is corrupt: {what} declares {_px(h, w)}, which needs {expected:,} {kind}s of "
            f"{_px(sh, sw)}, but the file lists only {counts.size:,}",
        )
    counts = counts[:expected]
    stored = counts[counts > 0]
    if not stored.size:
        return  # no data at all: every tile reads as empty (tifffile fills it)
    if int(page.compression) == 1:
        # uncompressed: every tile holds all its bytes; a strip may be short only at the end
        last_rows = h - (math.ceil(h / sh) - 1) * sh if kind == "strip" else sh
        short = int(np.count_nonzero(stored[:-1] < segment))
        short += int(stored[-1]) < min(segment, last_rows * sw * sd * per_px)
        if short:
            raise SlideError(
                path,
                f"is truncated or corrupt: {what} declares {_px(h, w)} uncompressed, but "
                f"{short:,} of its {kind}s hold fewer bytes than their size needs "
                f"({segment:,} each)",
            )
        return
    decoded = float(stored.size) * segment
    ratio = decoded / float(stored.sum())
    if ratio > MAX_COMPRESSION_RATIO:
        raise SlideError(
            path,
            f"is corrupt: {what} declares {_px(h, w)} ({_gb(decoded)} of pixels) but holds "
            f"only {int(stored.sum()):,} bytes of image data, a compression of "
            f"{ratio:,.0f} : 1 that no real image reaches (at most "
            f"{MAX_COMPRESSION_RATIO:,} : 1)",
        )


def consistent_levels(path: Path, shapes: list[tuple[int, int]]) -> int:
    """How many leading levels form a consistent pyramid; warn about the first that does not.

    A level must be no larger than the one before it and shrink x and y alike (within 5 %
    and a pixel of rounding); a level that does not would put every region read from it in
    the wrong place. It and the levels after it are ignored: the finer levels still give the
    whole slide.

    Parameters
    ----------
    path
        The slide (for the warning).
    shapes
        ``(height, width)`` of the file's levels, level 0 first.

    Returns
    -------
    int
        The number of levels to keep (at least 1).
    """
    import warnings

    from napari_msunet.io._slide_formats import SlideWarning

    h0, w0 = shapes[0]
    for i in range(1, len(shapes)):
        (ph, pw), (h, w) = shapes[i - 1], shapes[i]
        problem = None
        if h < 1 or w < 1:
            problem = "is empty"
        elif h > ph or w > pw:
            problem = f"is larger than level {i - 1} ({_px(ph, pw)})"
        else:
            dy, dx = h0 / h, w0 / w
            # a level's side is rounded to whole pixels: allow 1 px of rounding on each side
            slack = max(dy / max(h - 1, 1), dx / max(w - 1, 1)) * 2
            if abs(dy - dx) / min(dy, dx) > _ASPECT_TOLERANCE + slack:
                problem = (
                    f"is shrunk {dy:.3g}x in height but {dx:.3g}x in width relative to level 0 "
                    f"({_px(h0, w0)})"
                )
        if problem is not None:
            rest = len(shapes) - i - 1
            ignored = f"it and the {rest} level(s) after it are" if rest else "it is"
            warnings.warn(
                f"{path}: pyramid level {i} ({_px(h, w)}) {problem}; {ignored} ignored "
                f"(regions read from it would be misplaced), the finer levels are used instead",
                SlideWarning,
                stacklevel=5,
            )
            return i
    return len(shapes)


# -- plain images (PNG, JPEG): read whole ----------------------------------------------------

#: Largest plain image (PNG, JPEG) read, in pixels: 2²⁸, e.g. 16,384 x 16,384. A plain image is
#: decoded whole into memory (up to 1 GiB at this size); larger ones belong in a tiled TIFF.
MAX_PLAIN_PIXELS = 1 << 28

PLAIN_REMEDY = (
    "convert it to a tiled pyramidal TIFF, which is read tile by tile, e.g. `vips tiffsave IN "
    "OUT.tif --tile --pyramid --compression jpeg --bigtiff`"
)

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def plain_image_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's or JPEG's header, without decoding (or Pillow's
    "decompression bomb" check, which refuses what this project reads); ``None`` when the
    header cannot be parsed (Pillow then reports the fault)."""
    try:
        with path.open("rb") as f:
            head = f.read(24)
            if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
                return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            if not head.startswith(b"\xff\xd8"):
                return None
            f.seek(2)
            for _ in range(10_000):  # markers before the frame header; a file has a few
                byte = f.read(1)
                while byte == b"\xff":
                    byte = f.read(1)
                if not byte:
                    return None
                marker = byte[0]
                if marker == 0xD8 or marker == 0x01 or 0xD0 <= marker <= 0xD7:
                    continue
                size = int.from_bytes(f.read(2), "big")
                if marker in _SOF:
                    seg = f.read(5)
                    if len(seg) < 5:
                        return None
                    return int.from_bytes(seg[3:5], "big"), int.from_bytes(seg[1:3], "big")
                if marker in (0xD9, 0xDA) or size < 2:
                    return None
                f.seek(size - 2, 1)
                if f.read(1) != b"\xff":
                    return None
                f.seek(-1, 1)
    except OSError:
        return None
    return None


def check_plain_image(path: Path, kind: str, error: type[Exception] = SlideError) -> None:
    """Refuse a plain image larger than :data:`MAX_PLAIN_PIXELS`, saying how to read it, and
    let Pillow open any image up to that size (its own limit is lower).

    Raises
    ------
    SlideError (or ``error``)
        Naming the file, its size, the limit and the remedy.
    """
    from PIL import Image

    size = plain_image_size(path)
    if size is not None and size[0] * size[1] > MAX_PLAIN_PIXELS:
        w, h = size
        raise error(
            path,
            f"is a {kind.upper()} of {w:,} x {h:,} px ({w * h / 1e6:,.0f} Mpx), more than the "
            f"{MAX_PLAIN_PIXELS / 1e6:,.0f} Mpx (16,384 x 16,384) napari-msunet reads as a "
            f"plain image (a plain image is decoded whole into memory); {PLAIN_REMEDY}",
        )
    # Pillow refuses images over 2 x MAX_IMAGE_PIXELS (179 Mpx by default) as "decompression
    # bombs": raise its limit to ours (never lower it); the header check above guards it
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_PLAIN_PIXELS:
        Image.MAX_IMAGE_PIXELS = MAX_PLAIN_PIXELS
