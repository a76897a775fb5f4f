"""The working image (level choice, shrinking, white outside) and tissue detection."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SLIDE_SPEC

from napari_msunet.errors import ConfigError
from napari_msunet.inference import InferenceConfig, detect_tissue, working_geometry
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.io.tissue import TissueMask, tissue_from_rgb
from napari_msunet.io.working_image import SlideReader


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    """Small lossless pyramidal TIFFs (levels /2) at two scan resolutions."""
    d = tmp_path_factory.mktemp("working")
    paths = {}
    for mpp in (0.3, 0.5):
        paths[mpp] = d / f"s{mpp}.tif"
        spec = SyntheticSlideSpec(1500, 1000, seed=2, mpp=mpp)
        write_synthetic_slide(paths[mpp], spec, "tiff", compression="zlib", tile=128)
    return paths


@pytest.mark.parametrize(
    ("mpp", "target", "level", "k", "shape"),
    [
        (0.5, 1.0, 1, 1.0, (750, 500)),  # a level at the target: read as is
        (0.5, 0.7, 0, 1.4, (1072, 715)),  # fractional shrink from the finer level
        (0.3, 1.0, 1, 10 / 6, (450, 300)),  # 0.6 µm/px level shrunk by 1.67
        (0.5, 2.0, 2, 1.0, (375, 250)),
    ],
)
def test_geometry_and_window_consistency(lossless, mpp, target, level, k, shape):
    with open_slide(lossless[mpp]) as slide:
        g = working_geometry(slide, target)
        assert (g.level, g.shape) == (level, shape)
        assert g.k == pytest.approx(k)
        assert g.mpp == pytest.approx(target)
        assert g.downsample[0] == pytest.approx(target / mpp)
        reader = SlideReader(slide, g)
        # overlapping windows (one reaching past the top-left corner) see the same pixels
        a = reader.read(-40, -24, 300, 260)
        b = reader.read(60, 36, 200, 200)
        assert np.array_equal(a[100:300, 60:260], b)
        assert (a[:40] == 255).all()
        assert (a[:, :24] == 255).all()
        whole = reader.read(0, 0, *g.shape)
        assert np.array_equal(whole[60:260, 36:236], b)
        # past the bottom-right edge it is white
        assert (reader.read(g.shape[0], g.shape[1], 16, 16) == 255).all()


def test_integer_shrink_is_the_block_mean(tmp_path):
    """A 0.5 µm/px SVS (levels /4) read at 1 µm/px: level 0 shrunk 2 x 2."""
    spec = SyntheticSlideSpec(1024, 768, seed=3, mpp=0.5)
    path = write_synthetic_slide(tmp_path / "s.svs", spec, "svs", compression="zlib")
    with open_slide(path) as slide:
        g = working_geometry(slide, 1.0)
        assert (g.level, g.k, g.shape) == (0, 2.0, (512, 384))
        got = SlideReader(slide, g).read(0, 0, 512, 384)
        level0 = slide.read_region(0, 0, 0, 1024, 768).astype(np.uint32)
    mean = (level0.reshape(512, 2, 384, 2, 3).sum((1, 3)) + 2) // 4
    assert np.array_equal(got, mean.astype(np.uint8))


def test_mpp_override_and_errors(slide_path):
    with open_slide(slide_path) as slide:
        g = working_geometry(slide, 1.0, mpp=0.5)  # claim a 20x scan instead of 40x
        assert g.slide_mpp == 0.5
        assert g.level == 0
        assert g.k == 2.0
        assert g.shape == (2048, 2048)
        with pytest.raises(ConfigError, match="positive"):
            working_geometry(slide, 1.0, mpp=-1)


def test_tissue_on_the_synthetic_slide(slide_path):
    """The mask matches the slide's known tissue (IoU > 0.9) and misses no labelled region."""
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide, InferenceConfig().tissue_settings)
    assert tissue.mpp == pytest.approx(8.0)
    h, w = tissue.mask.shape
    d = tissue.downsample[0]
    truth_rgb, truth_labels = SLIDE_SPEC.render(0, 0, h, w, d)
    truth = (truth_rgb.astype(int).min(-1) < 235) | (truth_labels > 0)
    iou = (tissue.mask & truth).sum() / (tissue.mask | truth).sum()
    assert iou > 0.9, iou
    assert tissue.mask[truth_labels > 0].mean() > 0.99
    assert 0.03 <= tissue.threshold <= 0.08
    assert tissue.any_in(0, 0, 4096, 4096)
    assert not tissue.any_in(0, 0, 64, 64)


def test_tissue_cleanup_and_degenerate_inputs():
    rgb = np.full((200, 200, 3), 245, np.uint8)
    rgb[20:120, 20:120] = (200, 100, 160)  # tissue ...
    rgb[60:64, 60:64] = 245  # ... with a small hole
    rgb[180:182, 180:182] = (200, 100, 160)  # a speck of dust
    mask, t = tissue_from_rgb(rgb, 4.0, min_area_um2=500, hole_area_um2=500)
    assert mask[20:120, 20:120].all()
    assert mask.sum() == 100 * 100
    # an all-glass image has no tissue; an all-tissue image is all tissue
    assert not tissue_from_rgb(np.full((50, 50, 3), 240, np.uint8), 8.0)[0].any()
    assert tissue_from_rgb(np.full((50, 50, 3), (150, 60, 160), np.uint8), 8.0)[0].all()
    m = TissueMask(mask, (2.0, 2.0), 8.0, t)
    assert m.any_in(40, 40, 42, 42)
    assert not m.any_in(300, 0, 398, 30)
