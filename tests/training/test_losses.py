"""The paper's losses against small hand-computed examples."""

from __future__ import annotations

import json
import math

import pytest
import torch

from napari_msunet.errors import ConfigError
from napari_msunet.training import (
    IGNORE_INDEX,
    LossConfig,
    bootstrap_loss_map,
    bootstrap_weight,
    class_counts,
    fuzzy_boundary_weight,
    gaussian_kernel1d,
    inverse_frequency_weights,
    masked_mean,
    total_loss,
    valid_mask,
    weighted_cross_entropy_map,
)

LN3 = math.log(3.0)
LN2 = math.log(2.0)


def _logits(*pixels: tuple[float, ...]) -> torch.Tensor:
    """(1, C, 1, W) logits from per-pixel class scores."""
    return torch.tensor(pixels, dtype=torch.float64).T[None, :, None, :].contiguous()


def _rows(row: list[int], n_rows: int = 4) -> torch.Tensor:
    """(1, n_rows, W) target whose rows all equal ``row``."""
    return torch.tensor([row] * n_rows)[None]


# --- class weights (eq. 3) -------------------------------------------------------------


def test_class_counts_skip_the_ignore_label() -> None:
    a = torch.tensor([[0, 0, 1], [255, 1, 1]], dtype=torch.uint8)
    b = torch.tensor([[2, 255], [0, 0]])
    assert class_counts(a, 3).tolist() == [2, 3, 0]
    assert class_counts([a, b], 3).tolist() == [4, 3, 1]
    with pytest.raises(ConfigError, match=r"outside 0\.\.1"):
        class_counts(b, 2)


def test_inverse_frequency_weights() -> None:
    # Background:foreground = 9:1 -> weights in the inverse ratio, 1 for balanced data.
    w = inverse_frequency_weights([90, 10])
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor([100 / 180, 5.0]))
    assert w[1] / w[0] == pytest.approx(9.0)
    torch.testing.assert_close(inverse_frequency_weights([5, 5, 5]), torch.ones(3))
    torch.testing.assert_close(
        inverse_frequency_weights([3, 0, 1]), torch.tensor([4 / 9, 0, 4 / 3])
    )
    with pytest.raises(ConfigError, match="no annotated pixels"):
        inverse_frequency_weights([0, 0])
    with pytest.raises(ConfigError):
        inverse_frequency_weights([1, -1])


def test_weighted_cross_entropy_by_hand() -> None:
    # Pixel 0: p = (1/4, 3/4), target 1 -> w1 * -ln(3/4); pixel 1: target 0 -> w0 * -ln(1/4);
    # pixel 2: unannotated -> 0.
    logits = _logits((0.0, LN3), (0.0, LN3), (5.0, -5.0))
    target = torch.tensor([[[1, 0, IGNORE_INDEX]]])
    got = weighted_cross_entropy_map(logits, target, class_weights=[0.5, 10.0])
    expected = torch.tensor([[[10 * math.log(4 / 3), 0.5 * math.log(4), 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)
    unweighted = weighted_cross_entropy_map(logits, target)
    torch.testing.assert_close(
        unweighted[0, 0, :2], torch.tensor([math.log(4 / 3), math.log(4)], dtype=torch.float64)
    )
    with pytest.raises(ConfigError, match="3 class weights given for 2 classes"):
        weighted_cross_entropy_map(logits, target, class_weights=[1, 1, 1])


# --- fuzzy boundary (eq. 1) ---------------------------------------------------------------


def test_gaussian_kernel_follows_opencv_sigma_rule() -> None:
    k = gaussian_kernel1d(3, dtype=torch.float64)  # sigma = 0.3 * (1 - 1) + 0.8 = 0.8
    e = math.exp(-1 / (2 * 0.8**2))
    torch.testing.assert_close(k, torch.tensor([e, 1, e], dtype=torch.float64) / (1 + 2 * e))
    k21 = gaussian_kernel1d(21, dtype=torch.float64)
    x = torch.arange(21, dtype=torch.float64) - 10
    ref = torch.exp(-(x**2) / (2 * 3.5**2))
    torch.testing.assert_close(k21, ref / ref.sum())
    with pytest.raises(ConfigError, match="odd"):
        gaussian_kernel1d(4)


def test_fuzzy_boundary_weight_by_hand_binary() -> None:
    # Step 0 0 1 1 along x, k = 3 (sigma 0.8, taps e/(1+2e), 1/(1+2e), e/(1+2e)):
    # g = 0, a, 1 - a, 1 with a = e/(1+2e), so w = 1 - |t - g| = 1, 1 - a, 1 - a, 1.
    e = math.exp(-1 / (2 * 0.8**2))
    a = e / (1 + 2 * e)
    w = fuzzy_boundary_weight(_rows([0, 0, 1, 1]), 2, kernel_clean=3)
    assert w.shape == (1, 4, 4)
    expected = torch.tensor([1.0, 1 - a, 1 - a, 1.0]).expand(1, 4, 4)
    torch.testing.assert_close(w, expected)


def test_fuzzy_boundary_weight_by_hand_three_classes() -> None:
    # Row 0 0 1 2: at the lone class-1 pixel, |t_1 - g_1| = 1 - 1/(1+2e) = 2a is the largest
    # class difference, so w = 1 - 2a there; its neighbours see one foreign pixel: 1 - a.
    e = math.exp(-1 / (2 * 0.8**2))
    a = e / (1 + 2 * e)
    w = fuzzy_boundary_weight(_rows([0, 0, 1, 2]), 3, kernel_clean=3)
    torch.testing.assert_close(w[0, 0], torch.tensor([1.0, 1 - a, 1 - 2 * a, 1 - a]))


def test_fuzzy_boundary_ignores_unannotated_pixels() -> None:
    # The edge of an unannotated area is not a class boundary: weight stays 1 next to it.
    w = fuzzy_boundary_weight(_rows([0, 0, 255, 255, 1, 1]), 2, kernel_clean=3)
    assert torch.equal(w[0, :, :2], torch.ones(4, 2))
    assert torch.equal(w[0, :, 4:], torch.ones(4, 2))


def test_fuzzy_boundary_is_one_far_from_edges_lowest_on_them_and_wider_when_noisy() -> None:
    half = torch.zeros(128, 128, dtype=torch.long)
    half[:, 64:] = 1
    target = torch.stack([half, half])
    w = fuzzy_boundary_weight(target, 2, noisy=torch.tensor([False, True]))
    clean, noisy = w[0, 0], w[1, 0]  # profiles along x (constant along y)
    assert torch.equal(w[:, 0], w[:, 77])
    for profile, k in ((clean, 21), (noisy, 61)):
        # Exactly 1 beyond the kernel's half width from the boundary, below 1 within it.
        below = torch.nonzero(profile < 1).flatten()
        assert below.tolist() == list(range(64 - k // 2, 64 + k // 2))
        assert profile[: 64 - k // 2].eq(1).all()
        assert profile[64 + k // 2 :].eq(1).all()
        # Lowest on the two pixels either side of the boundary, about 0.5 there.
        assert set(torch.argsort(profile)[:2].tolist()) == {63, 64}
        assert profile[63].item() == pytest.approx(profile[64].item(), abs=1e-6)
        assert 0.5 <= profile[63].item() < 0.6
    assert (noisy <= clean + 1e-6).all()
    assert noisy[50] < clean[50] == 1.0


def test_fuzzy_boundary_noisy_flags_select_kernels_per_sample() -> None:
    t = torch.zeros(3, 64, 64, dtype=torch.long)
    t[:, 20:44, 20:44] = 1
    mixed = fuzzy_boundary_weight(t, 2, noisy=torch.tensor([True, False, True]))
    clean = fuzzy_boundary_weight(t[:1], 2)
    noisy = fuzzy_boundary_weight(t[:1], 2, noisy=torch.tensor([True]))
    torch.testing.assert_close(mixed[1], clean[0])
    torch.testing.assert_close(mixed[0], noisy[0])
    torch.testing.assert_close(mixed[2], noisy[0])
    with pytest.raises(ConfigError, match="one flag per sample"):
        fuzzy_boundary_weight(t, 2, noisy=torch.tensor([True]))


# --- bootstrap (eq. 2 and 4) ------------------------------------------------------------


def test_bootstrap_by_hand() -> None:
    # p = (1/4, 3/4): hard prediction 1, l_bs = -ln(3/4), w_bs = 2|0.5 - 0.75| = 0.5.
    # p = (1/2, 1/2): w_bs = 0. Three classes, p = (1/4, 1/4, 1/2): l_bs = ln 2 and
    # w_bs = (1/2 - 1/3) / (1 - 1/3) = 1/4.
    two = _logits((0.0, LN3), (0.0, 0.0), (LN3, 0.0))
    torch.testing.assert_close(
        bootstrap_weight(two)[0, 0], torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    )
    bs = bootstrap_loss_map(two)[0, 0]
    torch.testing.assert_close(
        bs, torch.tensor([0.5 * math.log(4 / 3), 0.0, 0.5 * math.log(4 / 3)], dtype=torch.float64)
    )
    three = _logits((0.0, 0.0, LN2))
    assert bootstrap_weight(three).item() == pytest.approx(0.25)
    assert bootstrap_loss_map(three).item() == pytest.approx(0.25 * LN2)


def test_bootstrap_weight_is_eq2_for_two_classes() -> None:
    logits = torch.randn(2, 2, 8, 8)
    p = torch.softmax(logits, dim=1)[:, 1]
    torch.testing.assert_close(bootstrap_weight(logits), 2 * (0.5 - p).abs())


def test_bootstrap_targets_and_weights_carry_no_gradient() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    assert not bootstrap_weight(logits).requires_grad
    bootstrap_loss_map(logits).sum().backward()
    # d/dz of w * CE(z, argmax z) with w constant: w * (softmax(z) - onehot(argmax z)).
    z = logits.detach()
    p = torch.softmax(z, dim=1)
    onehot = torch.nn.functional.one_hot(z.argmax(1), 3).permute(0, 3, 1, 2)
    torch.testing.assert_close(logits.grad, bootstrap_weight(z)[:, None] * (p - onehot))


# --- masks, crop, total (eq. 4) ----------------------------------------------------------


def test_valid_mask_crop_and_ignore() -> None:
    target = torch.zeros(2, 8, 10, dtype=torch.long)
    target[0, 4, 4] = IGNORE_INDEX
    m = valid_mask(target, crop_margin=2)
    assert m.shape == (2, 8, 10)
    assert m[1].sum() == 4 * 6
    assert m[0].sum() == 4 * 6 - 1
    assert not m[:, :2].any()
    assert not m[:, :, -2:].any()
    with pytest.raises(ConfigError, match="crop_margin 4 leaves nothing"):
        valid_mask(target, crop_margin=4)


def test_masked_mean_of_empty_mask_is_zero_with_graph() -> None:
    v = torch.ones(1, 2, 2, requires_grad=True)
    out = masked_mean(v, torch.zeros(1, 2, 2, dtype=torch.bool))
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(v.grad, torch.zeros(1, 2, 2))


def test_total_loss_by_hand() -> None:
    # Pixels: (p=(1/4,3/4), t=1), (p=(1/4,3/4), t=0), (unannotated). Class weights (1, 2).
    # l_wce mean over the 2 annotated pixels = (2 ln(4/3) + ln 4) / 2.
    # Bootstrap: both predict class 1 with w_bs = 0.5: mean = 0.5 ln(4/3).
    logits = _logits((0.0, LN3), (0.0, LN3), (9.0, 0.0))
    target = torch.tensor([[[1, 0, IGNORE_INDEX]]])
    cfg = LossConfig(class_weights=(1.0, 2.0), fuzzy_boundary=False, bootstrap_after=2)
    wce = (2 * math.log(4 / 3) + math.log(4)) / 2
    before = total_loss(logits, target, cfg, epoch=2)
    assert before.wce.item() == pytest.approx(wce)
    assert before.bootstrap.item() == 0.0
    assert before.total.item() == pytest.approx(wce)
    as_uint8 = total_loss(logits, target.to(torch.uint8), cfg, epoch=2)
    assert torch.equal(as_uint8.total, before.total)
    after = total_loss(logits, target, cfg, epoch=3)
    assert after.bootstrap.item() == pytest.approx(0.5 * math.log(4 / 3))
    assert after.total.item() == pytest.approx(wce + 0.5 * math.log(4 / 3))


def test_total_loss_with_fuzzy_boundary_is_mean_of_weighted_map() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 32, 32)
    target = torch.randint(0, 3, (2, 32, 32))
    target[:, :5] = IGNORE_INDEX
    noisy = torch.tensor([False, True])
    cfg = LossConfig(class_weights=(1.0, 2.0, 3.0))
    w_fb = fuzzy_boundary_weight(target, 3, noisy)
    wce = weighted_cross_entropy_map(logits, target, cfg.class_weights)
    expected = (wce * w_fb).sum() / (target != IGNORE_INDEX).sum()
    got = total_loss(logits, target, cfg, noisy=noisy)
    torch.testing.assert_close(got.total, expected)


def test_bootstrap_term_is_exactly_zero_before_epoch_n() -> None:
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 16, 16, requires_grad=True)
    target = torch.randint(0, 2, (2, 16, 16))
    cfg = LossConfig(bootstrap_after=3)
    ref = total_loss(logits, target, LossConfig(bootstrap_after=None), epoch=99)
    (ref_grad,) = torch.autograd.grad(ref.total, logits)
    for epoch in (1, 2, 3):
        terms = total_loss(logits, target, cfg, epoch=epoch)
        assert terms.bootstrap.item() == 0.0
        assert torch.equal(terms.total, terms.wce)
        (grad,) = torch.autograd.grad(terms.total, logits)
        assert torch.equal(grad, ref_grad)
    assert total_loss(logits, target, cfg, epoch=4).bootstrap.item() > 0
    assert cfg.bootstrap_active(4)
    assert not cfg.bootstrap_active(3)
    assert LossConfig(bootstrap_after=0).bootstrap_active(1)


def test_crop_margin_is_ignored() -> None:
    torch.manual_seed(2)
    logits = torch.randn(1, 2, 16, 16)
    target = torch.randint(0, 2, (1, 16, 16))
    cfg = LossConfig(crop_margin=3, bootstrap_after=0)
    changed = logits.clone()
    changed[..., :3, :] = 50.0 * torch.randn(1, 2, 3, 16)
    changed[..., :, -3:] = -50.0
    a, b = total_loss(logits, target, cfg), total_loss(changed, target, cfg)
    assert torch.equal(a.total, b.total)
    changed[:, 0, 3, 3] += 1.0  # the first pixel inside the crop does count
    assert total_loss(changed, target, cfg).total != a.total


def test_ignore_label_is_ignored_by_every_term() -> None:
    torch.manual_seed(3)
    logits = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, 3, (2, 16, 16))
    target[0, 4:9, 2:12] = IGNORE_INDEX
    unannotated = target == IGNORE_INDEX
    changed = torch.where(unannotated[:, None], 30.0 * torch.randn_like(logits), logits)
    cfg = LossConfig(class_weights=(0.5, 1.0, 2.0), bootstrap_after=0)
    a = total_loss(logits, target, cfg, noisy=torch.tensor([True, False]))
    b = total_loss(changed, target, cfg, noisy=torch.tensor([True, False]))
    torch.testing.assert_close(a.total, b.total, rtol=0, atol=0)
    assert a.bootstrap > 0


def test_total_loss_all_ignored_is_zero() -> None:
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)
    target = torch.full((1, 8, 8), IGNORE_INDEX)
    terms = total_loss(logits, target, LossConfig(bootstrap_after=0))
    assert terms.total.item() == 0.0
    terms.total.backward()


def test_total_loss_shape_mismatch() -> None:
    with pytest.raises(ConfigError, match="do not match"):
        total_loss(torch.randn(1, 2, 8, 8), torch.zeros(1, 8, 9, dtype=torch.long))


def test_loss_config_validation_and_dict() -> None:
    cfg = LossConfig(class_weights=[1, 10], bootstrap_after=8, crop_margin=64)
    assert cfg.class_weights == (1.0, 10.0)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["class_weights"] == [1.0, 10.0]
    assert d["kernel_clean"] == 21
    assert d["kernel_noisy"] == 61
    for bad in (
        {"kernel_clean": 20},
        {"kernel_noisy": 0},
        {"bootstrap_after": -1},
        {"crop_margin": -1},
        {"class_weights": (1.0,)},
        {"class_weights": (1.0, float("nan"))},
        {"ignore_index": 300},
    ):
        with pytest.raises(ConfigError):
            LossConfig(**bad)


def test_bootstrap_unannotated_learns_from_ignored_pixels():
    from napari_msunet.training.losses import IGNORE_INDEX, LossConfig, bootstrap_loss_map
    from napari_msunet.training.losses import total_loss as _total

    torch.manual_seed(0)
    logits = torch.randn(2, 2, 16, 16)
    target = torch.full((2, 16, 16), IGNORE_INDEX, dtype=torch.long)
    target[:, :4] = 0  # a small corrected area
    on = LossConfig(bootstrap_after=0, bootstrap_unannotated=True, fuzzy_boundary=False)
    off = LossConfig(bootstrap_after=0, fuzzy_boundary=False)
    t_on = _total(logits, target, on, epoch=1)
    t_off = _total(logits, target, off, epoch=1)
    assert torch.isclose(t_on.bootstrap, bootstrap_loss_map(logits).mean())  # all pixels
    assert torch.isclose(t_off.bootstrap, bootstrap_loss_map(logits)[:, :4].mean())
    assert torch.isclose(t_on.wce, t_off.wce)  # the cross-entropy still sees only annotations
