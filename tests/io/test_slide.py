"""open_slide on every supported format, against tifffile reading the same pages directly."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_msunet.errors import SlideError
from napari_msunet.io.slide import SlideWarning, open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

SPEC = SyntheticSlideSpec(1200, 1700, seed=3, mpp=0.5)
FORMATS = {"svs": ".svs", "ome-tiff": ".ome.tif", "tiff": ".tif", "ndpi": ".ndpi"}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("slides")
    return {
        fmt: write_synthetic_slide(root / f"slide{ext}", SPEC, fmt, tile=128)
        for fmt, ext in FORMATS.items()
    }


def _tifffile_level(path, level):
    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_pyramid_levels_match_tifffile(slides, fmt):
    with open_slide(slides[fmt]) as slide:
        assert slide.format == fmt
        assert slide.pyramidal
        assert slide.shape == SPEC.shape
        assert slide.level_count >= 3
        assert slide.downsamples[0] == 1.0
        assert all(b > a for a, b in zip(slide.downsamples, slide.downsamples[1:], strict=False))
        for lv in range(slide.level_count):
            ref = _tifffile_level(slides[fmt], lv)
            level = slide.levels[lv]
            assert level.dtype == np.uint8
            assert level.shape == ref.shape
            assert level.chunks[0][0] == min(128, ref.shape[0])  # the file's tiles
            assert level.chunks[1][0] == min(128, ref.shape[1])
            np.testing.assert_array_equal(level.compute(), ref)
            h, w = ref.shape[:2]
            d = slide.downsamples[lv]
            # read_region: level-0 corner, level-sized box
            y, x = round(h // 3 * d), round(w // 4 * d)
            region = slide.read_region(lv, y, x, h // 3, w // 2)
            ly, lx = int(y * h / slide.shape[0]), int(x * w / slide.shape[1])
            np.testing.assert_array_equal(region, ref[ly : ly + h // 3, lx : lx + w // 2])


@pytest.mark.parametrize(
    ("fmt", "mag", "assoc"),
    [
        ("svs", 40.0, {"thumbnail", "label", "macro"}),
        ("ome-tiff", None, {"macro"}),
        ("tiff", None, set()),
        ("ndpi", 40.0, {"macro"}),
    ],
)
def test_metadata(slides, fmt, mag, assoc):
    with open_slide(slides[fmt]) as slide:
        assert slide.mpp == pytest.approx(0.5)
        assert slide.level_mpp[1] == pytest.approx(0.5 * slide.downsamples[1])
        assert slide.magnification == mag
        assert set(slide.associated) == assoc
        for image in slide.associated.values():
            arr = image.compute()
            assert arr.ndim == 3
            assert arr.shape[2] == 3
        assert fmt in repr(slide)


def test_read_region_outside_is_white(slides):
    with open_slide(slides["svs"]) as slide:
        region = slide.read_region(0, -50, SPEC.width - 20, 100, 100)
        ref = _tifffile_level(slides["svs"], 0)
        assert (region[:50] == 255).all()
        assert (region[:, 20:] == 255).all()
        np.testing.assert_array_equal(region[50:, :20], ref[:50, -20:])
        assert slide.read_region(0, 10**6, 10**6, 8, 8).min() == 255


def test_level_for_mpp(slides):
    with open_slide(slides["ome-tiff"]) as slide:  # 0.5, 1, 2, 4 ... µm/px
        assert slide.level_for_mpp(1.0) == (1, 1.0, 1.0)
        assert slide.level_for_mpp(1.5).level == 1  # read finer, then shrink
        assert slide.level_for_mpp(1.5).scale == pytest.approx(1 / 1.5)
        assert slide.level_for_mpp(0.25).level == 0  # finer than the scan: best available
        with pytest.raises(ValueError, match="positive"):
            slide.level_for_mpp(0)


def test_levels_are_lazy_and_picklable(slides):
    with open_slide(slides["svs"]) as slide:
        level = slide.levels[0]
        assert level.npartitions > 50  # tiles, not one block
        # a pickled level (as sent to a dask worker) reopens the file on its own
        clone = pickle.loads(pickle.dumps(level))
        np.testing.assert_array_equal(
            clone[100:300, 200:400].compute(), level[100:300, 200:400].compute()
        )


def _write_plain_tiff(path, data, **kw):
    tifffile.imwrite(path, data, metadata=None, **kw)
    return path


def test_non_pyramidal_tiff_gets_computed_pyramid(tmp_path):
    img = SPEC.image()
    path = _write_plain_tiff(tmp_path / "flat.tif", img, tile=(256, 256))
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlideWarning)
        with pytest.raises(SlideWarning, match="µm/px unknown"):
            open_slide(path)
    with pytest.warns(SlideWarning):
        slide = open_slide(path)
    assert not slide.pyramidal
    assert slide.mpp is None
    assert slide.level_count == 3  # 1200x1700 -> 600x850 -> 300x425
    np.testing.assert_array_equal(slide.levels[0].compute(), img)
    l1 = slide.levels[1].compute()
    expect = img[0::2, 0::2].astype(int) + img[1::2, 0::2] + img[0::2, 1::2] + img[1::2, 1::2] + 2
    np.testing.assert_array_equal(l1, (expect // 4).astype(np.uint8))
    np.testing.assert_array_equal(slide.read_region(1, 400, 600, 50, 60), l1[200:250, 300:360])
    with pytest.raises(SlideError, match="resolution is unknown"):
        slide.level_for_mpp(1.0)


def test_striped_grayscale_tiff_is_rgb(tmp_path):
    gray = SPEC.image()[..., 1]
    path = _write_plain_tiff(
        tmp_path / "gray.tif",
        gray,
        rowsperstrip=64,
        resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER",
    )
    slide = open_slide(path)
    assert slide.mpp == pytest.approx(0.5)
    got = slide.read_region(0, 100, 200, 300, 300)
    np.testing.assert_array_equal(got, np.repeat(gray[100:400, 200:500, None], 3, axis=2))


def test_planar_ome_tiff(tmp_path):
    img = SPEC.image()
    path = tmp_path / "planar.ome.tif"
    tifffile.imwrite(
        path,
        np.moveaxis(img, -1, 0),
        photometric="rgb",
        planarconfig="separate",
        tile=(256, 256),
        metadata={"axes": "SYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm"},
    )
    slide = open_slide(path)
    assert slide.format == "ome-tiff"
    assert slide.mpp == pytest.approx(0.25)
    np.testing.assert_array_equal(slide.read_region(0, 10, 20, 200, 300), img[10:210, 20:320])


def test_png_jpeg_and_rgba(tmp_path):
    img = SPEC.image()
    Image.fromarray(img).save(tmp_path / "a.png", dpi=(25400 / 0.5, 25400 / 0.5))
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    rgba[:100, :100, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "rgba.png")

    png = open_slide(tmp_path / "a.png")
    assert png.format == "image"
    assert png.mpp == pytest.approx(0.5, rel=1e-3)
    np.testing.assert_array_equal(png.levels[0].compute(), img)
    assert png.level_count == 3

    with pytest.warns(SlideWarning):
        jpg = open_slide(tmp_path / "a.jpg")
    assert np.abs(jpg.read_region(0, 0, 0, 300, 300).astype(int) - img[:300, :300]).mean() < 3

    with pytest.warns(SlideWarning):
        rgba_slide = open_slide(tmp_path / "rgba.png")
    got = rgba_slide.read_region(0, 0, 0, 200, 200)
    assert (got[:100, :100] == 255).all()  # transparent is white glass
    np.testing.assert_array_equal(got[100:, 100:], img[100:200, 100:200])


def test_implausible_resolution_is_unknown(tmp_path):
    path = _write_plain_tiff(
        tmp_path / "dpi.tif", SPEC.image(), resolution=(72, 72), resolutionunit="INCH"
    )
    with pytest.warns(SlideWarning, match="not a microscope scan"):
        slide = open_slide(path)
    assert slide.mpp is None


# -- bad input --------------------------------------------------------------------------------


def _assert_slide_error(path, match):
    with pytest.raises(SlideError, match=match) as info:
        open_slide(path)
    assert str(path) in str(info.value)


def test_missing_empty_folder(tmp_path):
    _assert_slide_error(tmp_path / "nope.svs", "not found")
    (tmp_path / "empty.svs").write_bytes(b"")
    _assert_slide_error(tmp_path / "empty.svs", "empty")
    _assert_slide_error(tmp_path, "folder")


def test_png_renamed_svs(tmp_path):
    path = tmp_path / "slide.svs"
    Image.fromarray(SPEC.image(8)).save(path, format="PNG")
    _assert_slide_error(path, "PNG image but its name ends in .svs")


def test_not_an_image(tmp_path):
    path = tmp_path / "slide.czi"  # (a .mrxs goes to OpenSlide: test_openslide_backend.py)
    path.write_bytes(b"this is not a slide at all" * 10)
    _assert_slide_error(path, "not a supported slide format")


def test_truncated_tiff(slides, tmp_path):
    data = slides["svs"].read_bytes()
    for frac in (0.3, 0.6):
        path = tmp_path / f"cut{frac}.svs"
        path.write_bytes(data[: int(len(data) * frac)])
        _assert_slide_error(path, "truncated|corrupt|not a readable")
    # only the macro image (written last) cut: the slide opens, the macro is dropped
    path = tmp_path / "cutmacro.svs"
    path.write_bytes(data[:-100])
    with pytest.warns(SlideWarning, match="macro"):
        slide = open_slide(path)
    assert "macro" not in slide.associated
    path = tmp_path / "header.svs"
    path.write_bytes(data[:200])
    _assert_slide_error(path, "truncated|corrupt|not a readable")


def test_corrupt_tile_data_fails_on_read(slides, tmp_path):
    path = tmp_path / "corrupt.svs"
    path.write_bytes(slides["svs"].read_bytes())
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].levels[0].keyframe
        off, n = page.dataoffsets[5], page.databytecounts[5]
    with path.open("r+b") as f:
        f.seek(off)
        f.write(b"\x00" * n)
    slide = open_slide(path)
    with pytest.raises(SlideError, match="corrupt") as info:
        slide.read_region(0, 0, 0, 256, 1024)
    assert str(path) in str(info.value)


def test_16_bit_and_multichannel(tmp_path):
    _write_plain_tiff(tmp_path / "deep.tif", np.zeros((64, 64, 3), np.uint16), photometric="rgb")
    _assert_slide_error(tmp_path / "deep.tif", "16-bit")
    _write_plain_tiff(
        tmp_path / "fluo.tif",
        np.zeros((5, 64, 64), np.uint8),
        photometric="minisblack",
        planarconfig="separate",
    )
    with pytest.raises(SlideError):
        open_slide(tmp_path / "fluo.tif")
    Image.fromarray(np.zeros((32, 32), np.uint16)).save(tmp_path / "deep.png")
    _assert_slide_error(tmp_path / "deep.png", "16/32-bit")


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(SPEC.image(4)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError) as info:
        open_slide(path).levels[0].compute()
    assert str(path) in str(info.value)


def test_forked_children_read_their_own_file_handle(slides):
    """DataLoader workers fork after the parent has read: each needs its own file offset."""
    import multiprocessing as mp

    global _SHARED
    _SHARED = open_slide(slides["svs"])
    expected = [_read_shared(i) for i in range(8)]  # the parent opens and uses the file
    with mp.get_context("fork").Pool(2) as pool:  # children inherit the open slide
        results = pool.map(_read_shared, range(8))
    for r, e in zip(results, expected, strict=True):
        np.testing.assert_array_equal(r, e)


_SHARED = None


def _read_shared(i):
    return _SHARED.read_region(0, (i % 4) * 256, (i // 4) * 512, 256, 512)
