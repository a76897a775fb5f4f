"""Reading slides safely (issue 12, items 7, 9 and 15): damaged JPEG tiles are reported, hostile
declared sizes are refused at open, symbolic-link loops and oversized plain images get a message
that says what is wrong and what to do.

The hostile files are crafted byte by byte (a few hundred bytes declaring 10⁷ x 10⁷ px) and
opened by ``msunet info`` in a subprocess under a 4 GiB address-space limit and a timeout, as a
user would meet them: before the checks, such files grew without bound or raised numpy's
``ArrayMemoryError``.
"""

from __future__ import annotations

import os
import resource
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_msunet.errors import AnnotationError, SlideError
from napari_msunet.io._jpeg_tiles import MAX_REPORTED
from napari_msunet.io.masks import open_mask
from napari_msunet.io.slide import SlideWarning, open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

SPEC = SyntheticSlideSpec(2048, 2048, seed=1, mpp=0.5)


# -- item 7: damaged JPEG tiles ---------------------------------------------------------------


@pytest.fixture(scope="module")
def svs(tmp_path_factory) -> Path:
    """A JPEG-tiled SVS: 8 x 8 tiles of 256 px at level 0."""
    return write_synthetic_slide(tmp_path_factory.mktemp("svs") / "clean.svs", SPEC, "svs")


def _level0_tiles(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].keyframe
        across = -(-page.imagewidth // page.tilewidth)
        return np.array(page.dataoffsets), np.array(page.databytecounts), across


def _scan_middle(tile: bytes) -> int:
    """Where the middle of a JPEG's entropy-coded data is (past its headers and tables)."""
    sos = tile.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(tile[sos + 2 : sos + 4], "big")
    return (start + len(tile) - 2) // 2


def _damage(src: Path, dst: Path, tiles: range, seed: int = 0) -> Path:
    """Copy ``src`` with 8 random bytes written into the middle of the compressed pixel data
    of each of ``tiles`` (what a bad sector or a broken transfer does). No 0xFF among them: that
    would start a JPEG marker, which libjpeg cannot get past (the tile then fails to read, as
    ``test_slide.py::test_corrupt_tile_data_fails_on_read`` shows)."""
    data = bytearray(src.read_bytes())
    offsets, counts, _ = _level0_tiles(src)
    rng = np.random.default_rng(seed)
    for i in tiles:
        at = int(offsets[i]) + _scan_middle(bytes(data[offsets[i] : offsets[i] + counts[i]]))
        data[at : at + 8] = rng.integers(0, 255, 8, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def _read_all(path: Path) -> tuple[np.ndarray, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(path) as slide:
            pixels = slide.read_region(0, 0, 0, *slide.shape)
            again = slide.read_region(0, 0, 0, *slide.shape)  # a second read reports nothing new
            damaged = slide.damaged_tiles
    np.testing.assert_array_equal(pixels, again)
    reported = [w for w in caught if " is damaged: " in str(w.message)]
    assert len(damaged) >= len(reported)  # all of them, also those past the 20 reported
    messages = [str(w.message) for w in caught if issubclass(w.category, SlideWarning)]
    return pixels, [m for m in messages if " is damaged: " in m or "damaged JPEG tiles" in m]


def test_clean_jpeg_slide_reads_without_warning_and_as_tifffile_does(svs):
    pixels, messages = _read_all(svs)
    assert messages == []
    np.testing.assert_array_equal(pixels, tifffile.imread(svs))


def test_damaged_jpeg_tiles_are_reported_by_level_and_tile(svs, tmp_path):
    damaged = range(5, 25)
    path = _damage(svs, tmp_path / "damaged.svs", damaged)
    pixels, messages = _read_all(path)
    # the pixels are what tifffile (and so every viewer) decodes: only the report is new
    np.testing.assert_array_equal(pixels, tifffile.imread(path))
    _, _, across = _level0_tiles(path)
    expected = {f"tile row {i // across} column {i % across} " for i in damaged}
    named = set()
    for msg in messages:
        assert msg.startswith(f"{path}: level 0, tile row ")
        assert "is damaged" in msg
        assert "Corrupt JPEG data" in msg
        named |= {e for e in expected if e in msg}
    assert len(named) == len(messages)  # each warning names a damaged tile, each once
    # libjpeg cannot notice every overwrite (random bytes may still decode to the end); with
    # this seed it notices 14 of 20
    assert len(messages) >= len(damaged) // 2


def test_many_damaged_tiles_are_summarised(svs, tmp_path):
    path = _damage(svs, tmp_path / "ruined.svs", range(64), seed=1)
    _, messages = _read_all(path)
    assert len(messages) == MAX_REPORTED + 1
    assert f"more than {MAX_REPORTED} damaged JPEG tiles" in messages[-1]


def _jpeg_segments(jpeg: bytes) -> list[bytes]:
    """The marker segments of a JPEG up to the start of scan, then the rest whole."""
    out, i = [jpeg[:2]], 2
    while i < len(jpeg):
        marker, size = jpeg[i + 1], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker == 0xDA:
            out.append(jpeg[i:])
            break
        out.append(jpeg[i : i + 2 + size])
        i += 2 + size
    return out


def _aperio_like(src: Path, dst: Path, damaged: range) -> Path:
    """A tiled TIFF as Aperio writes them: RGB (not YCbCr) JPEG tiles without a JFIF or Adobe
    marker, their tables in the JPEGTables tag. tifffile forces RGB for these; libjpeg alone
    would take them for YCbCr."""
    img = tifffile.imread(src)
    tifffile.imwrite(
        dst.with_suffix(".tmp.tif"),
        img,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"outcolorspace": "rgb"},
    )
    with tifffile.TiffFile(dst.with_suffix(".tmp.tif")) as tif:
        page = tif.pages[0]
        tiles = []
        for off, n in zip(page.dataoffsets, page.databytecounts, strict=True):
            tif.filehandle.seek(off)
            tiles.append(tif.filehandle.read(n))
    tables, abbreviated = b"", []
    for t in tiles:
        segs = _jpeg_segments(t)
        keep = [s for s in segs[1:] if s[1] not in (0xDB, 0xC4, 0xEE)]  # DQT, DHT, APP14
        tables = b"\xff\xd8" + b"".join(s for s in segs[1:] if s[1] in (0xDB, 0xC4)) + b"\xff\xd9"
        abbreviated.append(b"\xff\xd8" + b"".join(keep))
    rng = np.random.default_rng(3)
    for i in damaged:
        t = bytearray(abbreviated[i])
        at = _scan_middle(bytes(t))
        t[at : at + 8] = rng.integers(0, 255, 8, dtype=np.uint8).tobytes()
        abbreviated[i] = bytes(t)
    tifffile.imwrite(
        dst,
        iter(abbreviated),
        shape=img.shape,
        dtype=np.uint8,
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"outcolorspace": "rgb"},  # tags: RGB, not YCbCr
        extratags=[(347, 7, len(tables), tables, True)],  # JPEGTables
    )
    return dst


def test_rgb_jpeg_tiles_with_shared_tables_are_checked_too(svs, tmp_path):
    clean = _aperio_like(svs, tmp_path / "aperio.tif", range(0))
    with tifffile.TiffFile(clean) as tif:
        page = tif.pages[0]
        assert page.photometric == 2
        assert not page.is_jfif
        assert page.jpegtables is not None
    pixels, messages = _read_all(clean)
    assert messages == []
    np.testing.assert_array_equal(pixels, tifffile.imread(clean))
    assert np.abs(pixels.astype(int) - tifffile.imread(svs)).mean() < 4  # colours kept
    damaged = _aperio_like(svs, tmp_path / "aperio-damaged.tif", range(10, 20))
    pixels, messages = _read_all(damaged)
    np.testing.assert_array_equal(pixels, tifffile.imread(damaged))
    assert messages
    assert all("is damaged" in m for m in messages)


# -- item 9: declared sizes --------------------------------------------------------------------


def _tiff(
    path: Path,
    width: int,
    height: int,
    *,
    data: bytes,
    compression: int = 8,
    spp: int = 3,
    rows: int | None = None,
    tile: int | None = None,
    count: int | None = None,
) -> Path:
    """A little-endian classic TIFF of one image whose strips or tiles all point at ``data``.

    Nothing ties a TIFF's declared size to its data: this writes any declaration.
    """
    if tile:
        n = count if count is not None else -(-width // tile) * -(-height // tile)
        layout = [(322, 4, [tile]), (323, 4, [tile])]
        offsets_tag, counts_tag = 324, 325
    else:
        r = rows or height
        n = count if count is not None else -(-height // r)
        layout = [(278, 4, [r])]
        offsets_tag, counts_tag = 273, 279
    tags = [
        (256, 4, [width]),
        (257, 4, [height]),
        (258, 3, [8] * spp),
        (259, 3, [compression]),
        (262, 3, [2 if spp == 3 else 1]),
        (277, 3, [spp]),
        *layout,
    ]
    n_tags = len(tags) + 2
    data_at = 8 + 2 + 12 * n_tags + 4
    tags += [(offsets_tag, 4, None), (counts_tag, 4, [len(data)] * n)]
    tags.sort(key=lambda t: t[0])
    ifd, extra = bytearray(struct.pack("<H", n_tags)), bytearray(data)
    for code, typ, values in tags:
        packed = (
            np.full(n, data_at, "<u4").tobytes()
            if values is None
            else np.asarray(values, "<u2" if typ == 3 else "<u4").tobytes()
        )
        count_ = len(packed) // (2 if typ == 3 else 4)
        if len(packed) <= 4:
            ifd += struct.pack("<HHI", code, typ, count_) + packed.ljust(4, b"\0")
        else:
            extra += b"\0" * (len(extra) % 2)
            ifd += struct.pack("<HHII", code, typ, count_, data_at + len(extra))
            extra += packed
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + bytes(ifd) + bytes(extra))
    return path


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def _info(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore::UserWarning"}
    return subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", "info", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
        env=env,
    )


_BLANK = zlib.compress(b"\xff" * 1000)

HOSTILE = {
    # 10⁷ x 10⁷ px in one deflate strip of a few bytes: the file is 160 bytes
    "side": (
        dict(width=10**7, height=10**7, spp=1, data=_BLANK),
        "10,000,000 x 10,000,000 px: larger than any microscope slide",
    ),
    "strip": (
        dict(width=2_000_000, height=2_000_000, data=_BLANK),
        "stored in strips of 2,000,000 x 2,000,000 px: one strip would have to be decoded whole",
    ),
    "uncompressed": (
        dict(width=10**6, height=10**6, compression=1, rows=1, data=b"\0" * 16),
        "declares 1,000,000 x 1,000,000 px uncompressed, but 1,000,000 of its strips hold "
        "fewer bytes",
    ),
    "count": (
        dict(width=100_000, height=100_000, tile=256, count=3, data=_BLANK),
        "needs 152,881 tiles of 256 x 256 px, but the file lists only 3",
    ),
    "ratio": (
        dict(width=10**6, height=10**6, tile=1024, data=b"x" * 10),
        "a compression of 314,573 : 1 that no real image reaches",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_declared_size_is_refused_at_open(tmp_path, case):
    kwargs, reason = HOSTILE[case]
    path = _tiff(tmp_path / f"{case}.tif", **kwargs)
    done = _info(path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"msunet info: error: {path}: "), done.stderr
    assert reason in done.stderr


def test_large_flat_tiff_opens_at_once(tmp_path):
    """500k x 500k px without a pyramid in 3.8 million tiles (a 30 MB file of tile offsets):
    the computed levels are lazy sources, opened in about a second. They were a dask rechunk
    of every tile, which took 85 s here and grew with the tile count."""
    blank_tile = zlib.compress(b"\xff" * (256 * 256 * 3), 9)
    path = _tiff(tmp_path / "flat.tif", 500_000, 500_000, tile=256, data=blank_tile)
    done = _info(path, "--json", timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    import json

    record = json.loads(done.stdout)
    assert record["pyramidal"] is False
    assert [lv["width"] for lv in record["levels"]][:3] == [500_000, 250_000, 125_000]
    assert record["levels"][-1]["width"] <= 512
    with open_slide(path) as slide:  # and a computed level reads: blank is white
        assert (slide.read_region(2, 250_000, 250_000, 300, 300) == 255).all()


def test_inconsistent_pyramid_level_is_ignored_with_a_warning(tmp_path):
    img = SPEC.image(2)
    path = tmp_path / "bent.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(img, subifds=2, tile=(256, 256), photometric="rgb", metadata={})
        tif.write(img[::2, ::2], subfiletype=1, tile=(256, 256), photometric="rgb")
        tif.write(img[::4, ::16], subfiletype=1, tile=(256, 256), photometric="rgb")
    with pytest.warns(SlideWarning, match="level 2 .* is shrunk 4x in height but 16x in width"):
        slide = open_slide(path)
    assert slide.level_shapes == [img.shape[:2], img[::2, ::2].shape[:2]]


# -- item 15: symbolic-link loops, plain images too large to read whole ------------------------


def test_symlink_loop_and_dangling_link_say_so(tmp_path):
    (tmp_path / "a.svs").symlink_to(tmp_path / "b.svs")
    (tmp_path / "b.svs").symlink_to(tmp_path / "a.svs")
    (tmp_path / "gone.svs").symlink_to(tmp_path / "moved-away.svs")
    with pytest.raises(SlideError, match="is a loop of symbolic links") as info:
        open_slide(tmp_path / "a.svs")
    assert str(tmp_path / "a.svs") in str(info.value)
    with pytest.raises(SlideError, match="lies in a folder that is a loop"):
        open_slide(tmp_path / "a.svs" / "x.svs")
    with pytest.raises(SlideError, match=r"symbolic link to .*moved-away\.svs.*does not exist"):
        open_slide(tmp_path / "gone.svs")
    done = _info(tmp_path / "a.svs")
    assert "is a loop of symbolic links" in done.stderr
    assert "not found" not in done.stderr


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares ``width x height`` (grey, 8-bit) with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr
    chunk += struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND\xaeB`\x82")
    return path


def _jpeg_header(path: Path, width: int, height: int) -> Path:
    """A JPEG whose frame header declares ``width x height`` (after an APP0 and a comment)."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    com = b"\xff\xfe" + struct.pack(">H", 7) + b"hello"
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    path.write_bytes(b"\xff\xd8" + app0 + com + sof + b"\xff\xd9")
    return path


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_plain_image_over_the_limit_is_refused_with_the_remedy(tmp_path, kind):
    make = _png_header if kind == "png" else _jpeg_header
    path = make(tmp_path / f"big.{'png' if kind == 'png' else 'jpg'}", 20_000, 14_000)
    with pytest.raises(SlideError) as info:
        open_slide(path)
    msg = str(info.value)
    assert msg.startswith(str(path))
    assert "20,000 x 14,000 px (280 Mpx)" in msg
    assert "268 Mpx (16,384 x 16,384)" in msg
    assert "tiled pyramidal TIFF" in msg
    assert "vips tiffsave" in msg
    assert "decompression bomb" not in msg.lower()


def test_plain_image_under_the_limit_is_not_a_decompression_bomb(tmp_path):
    """Pillow refuses more than 179 Mpx; the project reads up to 268 Mpx. This header-only file
    of 225 Mpx has no pixels, so it fails, but on its data, not on Pillow's limit."""
    path = _png_header(tmp_path / "225mpx.png", 15_000, 15_000)
    with pytest.raises(SlideError) as info:
        open_slide(path).levels[0].compute()
    assert "decompression bomb" not in str(info.value).lower()
    Image.open(path).close()  # Pillow's own limit was raised to the project's


def test_plain_mask_over_the_limit_is_refused(tmp_path):
    path = _png_header(tmp_path / "mask.png", 20_000, 14_000)
    with pytest.raises(AnnotationError, match=r"20,000 x 14,000 px .*tiled pyramidal TIFF"):
        open_mask(path)
