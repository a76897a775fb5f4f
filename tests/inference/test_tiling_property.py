"""The core property of the engine: tiled, stitched prediction == one whole-image forward pass.

On a 2048 x 2048 image, for MS U-Net and U-Net (lite depth, narrow widths, random weights with
a fixed seed, eval mode), at several tile sizes and margins, default and not, the stitched
labels agree with the whole-image pass on >= 99.9 % of pixels and the probabilities within
1e-4 (float32) or one grey level (uint8). The whole-image pass pads with white like the engine
(see napari_msunet.inference.tiling). A too-small margin must show a difference, so the test
could fail.
"""

from __future__ import annotations

import numpy as np
import pytest
from inference_helpers import NORM, make_model, whole_image_reference

from napari_msunet.errors import ConfigError
from napari_msunet.inference import InferenceConfig, plan_tiles, predict_array
from napari_msunet.io.synthetic import SyntheticSlideSpec

SIZE = 2048


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    img = SyntheticSlideSpec(2 * SIZE, 2 * SIZE, seed=11).image(2.0)
    assert img.shape == (SIZE, SIZE, 3)
    return img


@pytest.fixture(scope="module", params=["msunet", "unet"])
def case(request, image):
    """(arch, model, auto margin, reference probabilities) per architecture."""
    arch = request.param
    model = make_model(arch, calibrate=image[:512, :512])
    a = model.alignment
    margin = -(-model.receptive_radius // a) * a
    ref = whole_image_reference(model, image, margin)
    # the classes must really split the image, or agreement of argmaxes means nothing
    share = (ref.argmax(0) == 1).mean()
    assert 0.05 < share < 0.95, share
    return arch, model, margin, ref


# (tile, margin) per architecture: a smaller tile, the CPU default, and a non-default pair
SETTINGS = {
    "msunet": [(768, "auto"), ("auto", "auto"), (1280, 384)],
    "unet": [(256, "auto"), ("auto", "auto"), (400, 128)],
}


@pytest.mark.parametrize("which", [0, 1, 2])
def test_tiled_equals_whole_image(case, image, which):
    arch, model, _auto_margin, ref = case
    tile, margin = SETTINGS[arch][which]
    cfg = InferenceConfig(tile=tile, margin=margin, device="cpu", batch_size=2, amp="none")
    labels, probs = predict_array(image, model, NORM, cfg, probabilities="float32")
    assert labels.shape == (SIZE, SIZE)
    assert probs.shape == (2, SIZE, SIZE)
    agree = (labels == ref.argmax(0)).mean()
    assert agree >= 0.999, (arch, tile, margin, agree)
    assert np.abs(probs - ref).max() < 1e-4


def test_too_small_margin_is_detected(case, image):
    """Without a margin the tiles disagree at their seams: the check has teeth. (Random
    weights reach far less than the structural radius: a margin of one alignment already
    agrees to about 5e-4 here, see docs/benchmarks.md.)"""
    _arch, model, _, ref = case
    cfg = InferenceConfig(tile=1024, margin=0, device="cpu", amp="none")
    _, probs = predict_array(image, model, NORM, cfg, probabilities="float32")
    assert np.abs(probs - ref).max() > 1e-3


def test_non_square_image_with_ragged_edges():
    """Sizes that are not multiples of the tile or the alignment: the clipped edge tiles."""
    img = SyntheticSlideSpec(1200, 1900, seed=4).image(1.0)[:601, :947]
    model = make_model("unet", calibrate=img[:256, :256])
    ref = whole_image_reference(model, img, 96)
    cfg = InferenceConfig(tile=256, device="cpu", amp="none")  # the property holds in float32
    labels, probs = predict_array(img, model, NORM, cfg, probabilities="float32")
    assert labels.shape == img.shape[:2]
    assert np.abs(probs - ref).max() < 1e-4
    assert (labels == ref.argmax(0)).mean() >= 0.999
    # the default uint8 output is round(p * 255)
    labels8, probs8 = predict_array(img, model, NORM, cfg)
    assert probs8.dtype == np.uint8
    assert np.array_equal(labels8, labels)
    assert np.abs(probs8.astype(np.float32) - ref * 255).max() <= 0.51


def test_deterministic():
    img = SyntheticSlideSpec(1024, 1024, seed=4).image(1.0)[:512, :512]
    model = make_model("unet")
    cfg = InferenceConfig(tile=256, device="cpu")
    a = predict_array(img, model, NORM, cfg)
    b = predict_array(img, model, NORM, cfg)
    assert np.array_equal(a[0], b[0])
    assert np.array_equal(a[1], b[1])


def test_tile_must_be_a_multiple_of_the_alignment():
    model = make_model("msunet")
    img = np.full((256, 256, 3), 200, np.uint8)
    msg = r"tile 1000 is not a multiple of msunet's alignment 64.*use 960 or 1024"
    with pytest.raises(ConfigError, match=msg):
        predict_array(img, model, NORM, InferenceConfig(tile=1000, device="cpu"))
    with pytest.raises(ConfigError, match="margin 100 is not a multiple"):
        predict_array(img, model, NORM, InferenceConfig(tile=512, margin=100, device="cpu"))


def test_plan_geometry_and_overhead():
    plan = plan_tiles((1000, 2100), 512, 320, 64)
    assert plan.tile == (512, 512)
    assert plan.window == (1152, 1152)
    assert [(t.y, t.x, t.h, t.w) for t in plan.tiles[:5]] == [
        (0, 0, 512, 512),
        (0, 512, 512, 512),
        (0, 1024, 512, 512),
        (0, 1536, 512, 512),
        (0, 2048, 512, 52),
    ]
    assert plan.n_total == 2 * 5
    assert plan.nominal_overhead == pytest.approx((1152 / 512) ** 2)
    assert plan.overhead() == pytest.approx(10 * 1152**2 / (1000 * 2100))
    # a small image shrinks the tile to the image, rounded up to the alignment
    small = plan_tiles((100, 130), 1024, 64, 64)
    assert small.tile == (128, 192)
    assert len(small.tiles) == 1
    # skipping
    skip = plan_tiles((1024, 1024), 512, 0, 64, keep=lambda y0, x0, y1, x1: x0 == 0)
    assert len(skip.tiles) == 2
    assert len(skip.skipped) == 2
    assert plan.conflict_free(512)
    assert not plan_tiles((1000, 1000), 448, 0, 64).conflict_free(512)
