"""Augmentations keep image and mask aligned and never let artificial background in."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_msunet.errors import ConfigError
from napari_msunet.training.augment import (
    AugmentConfig,
    augment_batch,
    color_jitter,
    context_size,
    flip,
    rotate_crop,
)

P = 64


def checkerboard(size: int, block: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (((yy // block) + (xx // block)) % 2).astype(np.int64)


def context_pair(s: int):
    """A checkerboard mask and an image whose colour encodes it exactly (0.2 or 0.8)."""
    mask = torch.from_numpy(checkerboard(s))[None]
    image = (0.2 + 0.6 * mask.float())[:, None].repeat(1, 3, 1, 1)
    return image, mask


@pytest.mark.parametrize("patch", [63, 64, 224, 1024])
def test_context_size_covers_any_rotation(patch):
    s = context_size(patch)
    assert (s - patch) % 2 == 0
    assert s >= math.sqrt(2) * (patch - 1) + 1
    assert s <= math.sqrt(2) * patch + 4


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_right_angle_rotation_is_exact(k):
    s = context_size(P)
    image, mask = context_pair(s)
    mask = mask * 3 + torch.from_numpy(np.indices((s, s))[0] % 3)[None]  # asymmetric labels
    image = mask[:, None].float().repeat(1, 3, 1, 1) / 10
    o = (s - P) // 2
    rot_img, rot_mask = rotate_crop(image, mask, torch.tensor([k * math.pi / 2]), P)
    expected = np.rot90(mask[0, o : o + P, o : o + P].numpy(), k=k)
    np.testing.assert_array_equal(rot_mask[0].numpy(), expected)
    np.testing.assert_allclose(rot_img[0, 0].numpy(), expected / 10, atol=1e-5)


def test_flips_are_exact():
    image, mask = context_pair(P)
    img2, mask2 = flip(
        image.repeat(2, 1, 1, 1),
        mask.repeat(2, 1, 1),
        torch.tensor([True, False]),
        torch.tensor([False, True]),
    )
    np.testing.assert_array_equal(mask2[0].numpy(), mask[0].numpy()[:, ::-1])
    np.testing.assert_array_equal(mask2[1].numpy(), mask[0].numpy()[::-1])
    np.testing.assert_array_equal(img2[0, 0].numpy(), image[0, 0].numpy()[:, ::-1])


def test_checkerboard_survives_any_rotation_and_flip_aligned():
    s = context_size(P)
    image, mask = context_pair(s)
    g = torch.Generator().manual_seed(0)
    cfg = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0)
    for _ in range(20):
        img, m = augment_batch(image, mask, P, cfg, g)
        # the image, thresholded, says the same as the mask wherever it is not blended at an edge
        agree = ((img[0, 0] > 0.5).long() == m[0]).float().mean().item()
        assert agree > 0.97
        assert set(np.unique(m.numpy())) <= {0, 1}  # nearest: no invented labels


def test_ignore_label_is_kept_not_blended():
    s = context_size(P)
    mask = torch.full((1, s, s), 255, dtype=torch.long)
    mask[:, : s // 2] = 1
    image = torch.rand(1, 3, s, s)
    for angle in np.linspace(0, 2 * math.pi, 13):
        _, m = rotate_crop(image, mask, torch.tensor([angle], dtype=torch.float32), P)
        assert set(np.unique(m.numpy())) <= {1, 255}


def test_no_artificial_background_at_any_angle():
    s = context_size(P)
    image = torch.ones(1, 3, s, s)  # tissue everywhere in the context
    for angle in np.linspace(0, 2 * math.pi, 97):
        rot, _ = rotate_crop(image, None, torch.tensor([angle], dtype=torch.float32), P)
        assert rot.min().item() > 0.999  # nothing from outside the context
    # the sampling grid itself stays inside the context for every angle
    rot, _ = rotate_crop(torch.zeros(1, 3, s, s), None, torch.tensor([math.pi / 4]), P)
    assert rot.abs().max() == 0


def test_too_small_context_is_refused():
    with pytest.raises(ValueError, match="too small"):
        rotate_crop(torch.zeros(1, 3, P + 2, P + 2), None, torch.tensor([0.3]), P)


def test_color_jitter_ranges_and_mask_untouched():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(8, 3, 16, 16)
    out = color_jitter(image, generator=g)
    assert out.shape == image.shape
    assert out.min() >= 0
    assert out.max() <= 1
    assert not torch.allclose(out, image)
    # hue shift of zero and factors of one leave the image unchanged
    same = color_jitter(image, 0, 0, 0, 0)
    torch.testing.assert_close(same, image)
    s = context_size(16)
    masks = torch.randint(0, 3, (8, s, s))
    imgs = torch.rand(8, 3, s, s)
    cfg = AugmentConfig(rotate=False, flip=False)
    _, m = augment_batch(imgs, masks, 16, cfg, g)
    o = (s - 16) // 2
    torch.testing.assert_close(m, masks[:, o : o + 16, o : o + 16])


def test_hue_shift_full_turn_is_identity():
    from napari_msunet.training.augment import _shift_hue

    image = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(_shift_hue(image, torch.zeros(2)), image, atol=1e-5, rtol=0)
    torch.testing.assert_close(_shift_hue(image, torch.ones(2)), image, atol=1e-5, rtol=0)
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1
    green = _shift_hue(red, torch.tensor([1 / 3]))
    torch.testing.assert_close(green[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5, rtol=0)


def test_reproducible_with_seed():
    s = context_size(P)
    image, mask = torch.rand(4, 3, s, s), torch.randint(0, 2, (4, s, s))
    a = augment_batch(image, mask, P, generator=torch.Generator().manual_seed(5))
    b = augment_batch(image, mask, P, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])


def test_bad_config():
    with pytest.raises(ConfigError):
        AugmentConfig(brightness=1.5)
    with pytest.raises(ConfigError):
        AugmentConfig(hue=0.7)
