"""Batch norms folded into their convolutions: same outputs, fewer passes, caller untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_msunet.models import build_model
from napari_msunet.models.bundled import bundled_model_path
from napari_msunet.models.checkpoint import load_model
from napari_msunet.models.fold import folded_for_inference


def _with_running_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random, non-trivial norm statistics and affine parameters (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.1)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.mark.parametrize("name", ["msunet", "unet", "attention_unet"])
def test_folded_network_computes_the_same_logits(name):
    torch.manual_seed(0)
    model = _with_running_stats(build_model(name, preset="lite", n_classes=3, widths=[8, 16, 32]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    net = folded_for_inference(model)
    x = torch.randn(1, 3, 128, 128)
    with torch.inference_mode():
        ref, out = model(x), net(x)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())  # all folded
    # the caller's model is untouched: its norms and weights are what they were
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bundled_model_folds_to_the_same_labels():
    model, _ = load_model(bundled_model_path())
    net = folded_for_inference(model)
    x = torch.rand(1, 3, 256, 256)
    with torch.inference_mode():
        ref, out = model.eval()(x), net(x)
    assert (out - ref).abs().max() < 1e-4
    assert torch.equal(out.argmax(1), ref.argmax(1))


def test_group_norm_is_left_alone():
    torch.manual_seed(1)
    model = build_model("msunet", preset="lite", n_classes=2, widths=[8, 16, 32], norm="group")
    model.eval()
    net = folded_for_inference(model)
    assert sum(isinstance(m, nn.GroupNorm) for m in net.modules()) == sum(
        isinstance(m, nn.GroupNorm) for m in model.modules()
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(net(x), model(x))
