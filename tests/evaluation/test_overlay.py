"""TP/FP/FN maps: codes at known pixels, laziness, pyramids, colours and the PNG."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from PIL import Image

from napari_msunet.errors import WriterError
from napari_msunet.evaluation.overlay import (
    FN,
    FP,
    OVERLAY_COLORS,
    OVERLAY_COLORS_RGBA8,
    OVERLAY_NAMES,
    TN,
    TP,
    render_overlay,
    tpfpfn_codes,
    tpfpfn_map,
    tpfpfn_pyramid,
    write_overlay_png,
)

RNG = np.random.default_rng(5)


def test_codes_are_the_papers_and_colours_colour_blind_safe():
    assert (TN, TP, FP, FN) == (0, 1, 2, 3)
    assert OVERLAY_NAMES == {0: "TN", 1: "TP", 2: "FP", 3: "FN"}
    # the default is colour-blind safe (Okabe & Ito): blue TP, orange FP, reddish purple FN;
    # the paper's green / red / blue is a scheme of napari_msunet.palette
    assert OVERLAY_COLORS[TN][3] == 0.0  # transparent
    assert OVERLAY_COLORS_RGBA8 == {
        0: (0, 0, 0, 0),
        1: (0, 114, 178, 255),
        2: (230, 159, 0, 255),
        3: (204, 121, 167, 255),
    }
    for code in (TP, FP, FN):
        assert OVERLAY_COLORS[code] == tuple(v / 255 for v in OVERLAY_COLORS_RGBA8[code])


def test_codes_at_known_pixels():
    pred = np.array([[0, 1, 1, 0, 2, 2, 255]], np.uint8)
    truth = np.array([[0, 1, 0, 1, 2, 1, 255]], np.uint8)
    # any foreground: non-zero against non-zero (the ignore label counts as a label here)
    np.testing.assert_array_equal(tpfpfn_codes(pred, truth), [[TN, TP, FP, FN, TP, TP, TP]])
    # one class
    np.testing.assert_array_equal(tpfpfn_codes(pred, truth, 1), [[TN, TP, FP, FN, TN, FN, TN]])
    np.testing.assert_array_equal(tpfpfn_codes(pred, truth, 2), [[TN, TN, TN, TN, TP, FP, TN]])
    # ignored truth pixels are 0 whatever the prediction says
    np.testing.assert_array_equal(
        tpfpfn_codes(pred, truth, ignore_label=255), [[TN, TP, FP, FN, TP, TP, TN]]
    )
    valid = np.array([[1, 1, 0, 1, 1, 0, 1]], bool)
    np.testing.assert_array_equal(
        tpfpfn_codes(pred, truth, 1, valid=valid), [[TN, TP, TN, FN, TN, TN, TN]]
    )
    with pytest.raises(ValueError, match="differ in shape"):
        tpfpfn_codes(pred, truth[:, :3])


def test_map_is_lazy_and_matches_the_codes():
    pred = RNG.integers(0, 3, (300, 410), dtype=np.uint8)
    truth = RNG.integers(0, 3, (300, 410), dtype=np.uint8)
    calls = []

    def spy(block):
        calls.append(block.shape)
        return block

    p = da.from_array(pred, chunks=(64, 100)).map_blocks(spy, meta=pred[:0, :0])
    m = tpfpfn_map(p, da.from_array(truth, chunks=(33, 77)), 2)
    assert isinstance(m, da.Array)
    assert m.dtype == np.uint8
    assert not calls  # nothing computed yet
    assert m.chunks == p.chunks
    np.testing.assert_array_equal(m.compute(), tpfpfn_codes(pred, truth, 2))
    # a window reads only the prediction chunks it covers
    calls.clear()
    m[:64, :100].compute()
    assert calls == [(64, 100)]


def test_map_with_region_same_shape_and_coarse():
    pred = RNG.integers(0, 2, (200, 260), dtype=np.uint8)
    truth = RNG.integers(0, 2, (200, 260), dtype=np.uint8)
    region = RNG.random((200, 260)) < 0.5
    np.testing.assert_array_equal(
        tpfpfn_map(pred, truth, region=region, chunks=64).compute(),
        tpfpfn_codes(pred, truth, valid=region),
    )
    coarse = RNG.random((50, 65)) < 0.5
    full = np.repeat(np.repeat(coarse, 4, 0), 4, 1)
    np.testing.assert_array_equal(
        tpfpfn_map(pred, truth, region=coarse, chunks=(64, 50)).compute(),
        tpfpfn_codes(pred, truth, valid=full),
    )
    with pytest.raises(ValueError, match="truth is"):
        tpfpfn_map(pred, truth[:10])


def test_pyramid_from_level_zero_subsamples():
    pred = RNG.integers(0, 2, (2100, 1500), dtype=np.uint8)
    truth = RNG.integers(0, 2, (2100, 1500), dtype=np.uint8)
    levels = tpfpfn_pyramid(pred, truth, min_side=200, chunk=256)
    shapes = [lv.shape for lv in levels]
    # halved (ceil) until the shorter side is below min_side
    assert shapes == [(2100, 1500), (1050, 750), (525, 375), (263, 188)]
    codes = tpfpfn_codes(pred, truth)
    for k, lv in enumerate(levels):
        np.testing.assert_array_equal(lv.compute(), codes[:: 2**k, :: 2**k])
    assert levels[3].chunksize == (256, 188)  # rechunked, not 1024 / 2**3 = 128


def test_pyramid_uses_given_levels_of_equal_shape():
    p0 = RNG.integers(0, 2, (600, 640), dtype=np.uint8)
    t0 = RNG.integers(0, 2, (600, 640), dtype=np.uint8)
    # level 1 deliberately not a subsample of level 0, to see which one is used
    p1 = np.ones((300, 320), np.uint8)
    t1 = np.zeros((300, 320), np.uint8)
    t1[:, :160] = 1
    levels = tpfpfn_pyramid([p0, p1], [t0, t1], min_side=128)
    assert [lv.shape for lv in levels] == [(600, 640), (300, 320), (150, 160), (75, 80)]
    l1 = levels[1].compute()
    assert (l1[:, :160] == TP).all()
    assert (l1[:, 160:] == FP).all()
    np.testing.assert_array_equal(levels[2].compute(), l1[::2, ::2])
    # the truth pyramid stops matching after level 0: the rest is subsampled
    levels = tpfpfn_pyramid([p0, p1], [t0, np.zeros((10, 10), np.uint8)], min_side=128)
    np.testing.assert_array_equal(levels[1].compute(), tpfpfn_codes(p0, t0)[::2, ::2])
    with pytest.raises(ValueError, match="prediction is"):
        tpfpfn_pyramid(p0, t1)


def test_render_overlay_colours_and_legend(tmp_path):
    codes = np.zeros((100, 160), np.uint8)
    codes[10:20, 10:20] = TP
    codes[30:40, 10:20] = FP
    codes[50:60, 10:20] = FN
    img = render_overlay(codes, scores=[("GC", 0.5, 2 / 3)], title="slide.svs", min_side=1)
    assert img.mode == "RGB"
    assert img.height > 100  # legend below the map
    px = np.asarray(img)
    assert tuple(px[15, 15]) == OVERLAY_COLORS_RGBA8[TP][:3]
    assert tuple(px[35, 15]) == OVERLAY_COLORS_RGBA8[FP][:3]
    assert tuple(px[55, 15]) == OVERLAY_COLORS_RGBA8[FN][:3]
    assert tuple(px[80, 100]) == (255, 255, 255)
    # over a slide thumbnail (any size) the colours are blended half and half
    thumb = np.full((50, 80, 3), 100, np.uint8)
    px = np.asarray(render_overlay(codes, thumb, min_side=1))
    assert tuple(px[15, 15]) == (50, 107, 139)  # TP (0, 114, 178) half over grey 100
    assert tuple(px[80, 100]) == (100, 100, 100)
    # small maps are enlarged for legibility
    assert render_overlay(codes, min_side=512).width == 480
    path = write_overlay_png(img, tmp_path / "overlay.png")
    with Image.open(path) as back:
        assert back.size == img.size
    with pytest.raises(WriterError, match="already exists"):
        write_overlay_png(img, path)
    write_overlay_png(img, path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png"]
    with pytest.raises(ValueError, match="2-D"):
        render_overlay(np.zeros((0, 3), np.uint8))
