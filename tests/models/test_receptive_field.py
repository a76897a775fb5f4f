"""Receptive radius and alignment: what the tiling engine relies on."""

from __future__ import annotations

import pytest
import torch

from napari_msunet.models import build_model, measure_receptive_radius
from napari_msunet.models.receptive_field import _CACHE

TINY = {"preset": None, "widths": (3, 6, 12)}


def _randomise_batch_norm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)


def test_radius_of_a_one_pool_unet_matches_hand_count() -> None:
    # Output row c (c even): the decoder conv reads rows c-1..c+1; the skip path's two convs
    # widen that to c-3..c+3; the up-conv maps c-1..c+1 to level-1 rows c/2-1..c/2, two
    # level-1 convs widen that to c/2-3..c/2+2, the pool maps it to rows c-6..c+5 and the two
    # level-0 convs to c-8..c+7. Row c+1 mirrors it (c-6..c+9). Radius: 8.
    torch.manual_seed(0)  # 4 channels: unlucky weights can leave a pixel with no live path
    model = build_model("unet", preset=None, widths=(4, 8))
    assert model.alignment == 2
    assert model.receptive_radius == 8
    assert measure_receptive_radius(model.eval(), structural=False) == 8


def test_radius_is_measured_once_per_config_and_cached() -> None:
    model = build_model("msunet", **TINY)
    r = model.receptive_radius
    keys = [key for key in _CACHE if key[0] is type(model) and len(key[1].widths) == 3]
    assert len(keys) == 1
    # Widths, classes, channels and norm do not change the footprint: one cache entry.
    wider = build_model(
        "msunet", preset=None, widths=(9, 18, 36), n_classes=5, in_channels=1, norm="group"
    )
    assert wider.receptive_radius == r
    assert [key for key in _CACHE if key[0] is type(model) and len(key[1].widths) == 3] == keys


def test_multi_scale_blocks_widen_the_receptive_field() -> None:
    r_unet = build_model("unet", **TINY).receptive_radius
    r_att = build_model("attention_unet", **TINY).receptive_radius
    r_ms = build_model("msunet", **TINY).receptive_radius
    assert r_att == r_unet  # 1x1 gates add no context
    assert r_ms > 2 * r_unet


@pytest.mark.parametrize("name", ["unet", "msunet"])
def test_actual_footprint_is_within_the_structural_radius(name: str) -> None:
    model = build_model(name, **TINY).eval()
    assert measure_receptive_radius(model, structural=False) <= model.receptive_radius


@pytest.mark.parametrize("name", ["unet", "attention_unet", "msunet"])
def test_aligned_tiles_with_radius_margin_equal_whole_image(name: str) -> None:
    model = build_model(name, **TINY).eval().double()
    _randomise_batch_norm(model)
    r, a, f = model.receptive_radius, model.alignment, model.downsampling_factor
    size = 2 * r + 32
    size += -size % f
    x = torch.randn(1, 3, 3 * a + size + a, 2 * a + size, dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        for y0, x0 in [(a, 2 * a), (3 * a, a)]:
            tile = model(x[..., y0 : y0 + size, x0 : x0 + size])
            inner = tile[..., r : size - r, r : size - r]
            ref = full[..., y0 + r : y0 + size - r, x0 + r : x0 + size - r]
            torch.testing.assert_close(inner, ref, rtol=0, atol=1e-10)
        if a > f:
            # MS U-Net: a tile offset by the downsampling factor but not by the alignment
            # sees the stride-4 kernels on another grid, and the result differs.
            y0 = a + f
            tile = model(x[..., y0 : y0 + size, a : a + size])
            inner = tile[..., r : size - r, r : size - r]
            ref = full[..., y0 + r : y0 + size - r, a + r : a + size - r]
            assert (inner - ref).abs().max() > 1e-6


def test_presets_radius_grows_with_depth() -> None:
    lite = build_model("unet", preset="lite").receptive_radius
    paper = build_model("unet", preset="paper").receptive_radius
    assert 0 < lite < paper
