"""Seeded label corruption: boundary noise and missing regions, as documented."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msunet.errors import ConfigError
from napari_msunet.training.label_noise import LabelNoise, corrupt_mask


def _discs(n=12, size=256, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), np.uint8)
    for k in range(n):
        cy, cx = 20 + (k // 4) * 70, 20 + (k % 4) * 62
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(12, 20) ** 2] = 1
    return mask


def test_no_noise_is_the_identity():
    mask = _discs()
    out, rep = corrupt_mask(mask, LabelNoise((0, 0), 0, 0.0), 1)
    assert np.array_equal(out, mask)
    assert rep.regions == 12
    assert rep.dropped == rep.vanished == rep.changed_pixels == 0


def test_same_seed_same_corruption_other_seed_other():
    mask = _discs()
    a, _ = corrupt_mask(mask, LabelNoise(), 3)
    b, _ = corrupt_mask(mask, LabelNoise(), 3)
    c, _ = corrupt_mask(mask, LabelNoise(), 4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_boundary_noise_moves_outlines_by_the_drawn_amount():
    mask = _discs()
    out, rep = corrupt_mask(mask, LabelNoise((2, 8), 0, 0.0), 0)
    assert rep.dropped == 0
    diff = out != mask
    assert diff.any()
    # every changed pixel lies within 8 px (+1 for rasterising) of an original outline
    from scipy import ndimage

    m = mask.astype(bool)
    edge = m ^ ndimage.binary_erosion(m)
    dist = ndimage.distance_transform_edt(~edge)
    assert dist[diff].max() <= 9


def test_missing_regions_are_dropped_at_about_the_given_rate():
    dropped = total = 0
    for seed in range(20):
        _, rep = corrupt_mask(_discs(seed=seed), LabelNoise((0, 0), 0, 0.3), seed)
        dropped, total = dropped + rep.dropped, total + rep.regions
    assert 0.2 < dropped / total < 0.4


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError):
        LabelNoise((8, 2))
    with pytest.raises(ConfigError):
        LabelNoise(drop_fraction=1.0)
    with pytest.raises(ValueError, match="2D integer"):
        corrupt_mask(np.zeros((4, 4), float), LabelNoise(), 0)


def test_systematic_under_segmentation_only_erodes():
    mask = _discs()
    out, rep = corrupt_mask(mask, LabelNoise((2, 4), 0, 0.0, erode_only=True), 5)
    assert not (out.astype(bool) & ~mask.astype(bool)).any()  # nothing outside the truth
    assert out.astype(bool).sum() < mask.astype(bool).sum()
    assert rep.dropped == 0
    mixed, _ = corrupt_mask(mask, LabelNoise((2, 4), 0, 0.0), 5)
    assert (mixed.astype(bool) & ~mask.astype(bool)).any()  # the mixed arm also dilates


def test_a_partly_annotated_image_marks_the_rest_not_annotated():
    mask = _discs()
    noise = LabelNoise((0, 0), 0, 0.3, partial_fraction=1.0)
    out, rep = corrupt_mask(mask, noise, 2)
    assert rep.dropped > 0
    assert set(np.unique(out)) == {1, 255}  # no background left: nothing said "no gland"
    kept = out == 1
    assert np.array_equal(kept, mask.astype(bool) & kept)
    # the defaults add no draw: masks corrupted before these options existed stay the same
    plain, _ = corrupt_mask(mask, LabelNoise((0, 0), 0, 0.3), 2)
    assert np.array_equal(plain == 1, kept)
    assert "partial_fraction" not in LabelNoise().to_dict()
    assert LabelNoise(partial_fraction=0.5).to_dict()["partial_fraction"] == 0.5
    with pytest.raises(ConfigError, match="partial_fraction"):
        LabelNoise(partial_fraction=1.5)
