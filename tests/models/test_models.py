"""Architectures: shapes, gradients, the multi-scale block, input checks, config, registry."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from napari_msunet.errors import ConfigError, InputShapeError
from napari_msunet.models import (
    MODELS,
    PRESETS,
    AttentionUNet,
    ModelConfig,
    MSUNet,
    UNet,
    build_model,
    get_model_class,
    make_config,
    pad_to_multiple,
)
from napari_msunet.models.blocks import AttentionGate, MultiScaleConv, split_channels

NAMES = ["msunet", "unet", "attention_unet"]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("preset", ["lite", "paper"])
@pytest.mark.parametrize("name", NAMES)
def test_output_shape_per_model_and_preset(name: str, preset: str) -> None:
    model = build_model(name, preset=preset).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 2, 64, 64)
    assert model.config.widths == PRESETS[preset]["widths"]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_non_square_input_and_more_classes(name: str) -> None:
    model = build_model(name, preset="lite", n_classes=4, in_channels=1).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 80))
    assert out.shape == (2, 4, 32, 80)


def test_downsampling_factor_and_alignment() -> None:
    assert build_model("unet", preset="lite").downsampling_factor == 16
    assert build_model("attention_unet", preset="paper").downsampling_factor == 32
    ms = build_model("msunet", preset="paper")
    assert ms.downsampling_factor == 32
    # The bottleneck block's quarter-resolution kernel set strides 4 more.
    assert ms.alignment == 128
    assert build_model("unet", preset="paper").alignment == 32


@pytest.mark.parametrize(
    ("name", "preset", "size"),
    [(n, "lite", 16) for n in NAMES] + [("msunet", "paper", 32)],
)
def test_gradients_reach_every_parameter(name: str, preset: str, size: int) -> None:
    model = build_model(name, preset=preset).train()
    x = torch.randn(2, 3, size, size)
    target = torch.randint(0, 2, (2, size, size))
    F.cross_entropy(model(x), target).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("norm", ["group", "instance", "none"])
@pytest.mark.parametrize("name", NAMES)
def test_other_normalisations_train(name: str, norm: str) -> None:
    model = build_model(name, preset=None, widths=(6, 12, 24), norm=norm).train()
    out = model(torch.randn(1, 3, 16, 16))
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_group_norm_handles_widths_not_divisible_by_groups() -> None:
    model = build_model("msunet", preset="paper", norm="group")
    groups = {
        m.num_channels: m.num_groups for m in model.modules() if isinstance(m, torch.nn.GroupNorm)
    }
    assert (groups[63], groups[120], groups[270]) == (7, 8, 6)


def test_ms_block_computes_three_scales() -> None:
    model = build_model("msunet", preset="paper").eval()
    ms_convs = [m for m in model.modules() if isinstance(m, MultiScaleConv)]
    assert len(ms_convs) == len(model.encoders) == 6
    first = ms_convs[0]
    assert [c.stride for c in first.branches] == [(1, 1), (2, 2), (4, 4)]
    assert [c.dilation for c in first.branches] == [(1, 1), (2, 2), (4, 4)]
    assert [c.kernel_size for c in first.branches] == [(3, 3)] * 3
    assert [c.out_channels for c in first.branches] == [21, 21, 21]

    seen: dict[tuple[int, int], tuple[int, ...]] = {}
    hooks = []
    for level, block in enumerate(ms_convs):
        block_out = block.register_forward_hook(
            lambda m, i, o, level=level: seen.__setitem__((level, -1), tuple(o.shape))
        )
        hooks.append(block_out)
        for b, conv in enumerate(block.branches):
            hooks.append(
                conv.register_forward_hook(
                    lambda m, i, o, key=(level, b): seen.__setitem__(key, tuple(o.shape))
                )
            )
    with torch.no_grad():
        model(torch.randn(1, 3, 128, 128))
    for h in hooks:
        h.remove()
    for level, block in enumerate(ms_convs):
        s = 128 >> level  # the block's own resolution
        c = block.split
        assert seen[(level, 0)] == (1, c[0], s, s)
        assert seen[(level, 1)] == (1, c[1], -(-s // 2), -(-s // 2))
        assert seen[(level, 2)] == (1, c[2], -(-s // 4), -(-s // 4))
        # Upsampled back to the block's resolution and concatenated.
        assert seen[(level, -1)] == (1, sum(c), s, s)


def test_ms_conv_upsamples_coarse_sets_bilinearly() -> None:
    conv = MultiScaleConv(1, 3, norm="none").eval()
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        out = conv(x)
        quarter = conv.branches[2](x)
        expected = F.interpolate(quarter, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(out[:, 2:3], F.relu(expected))


def test_channel_split() -> None:
    assert split_channels(63) == (21, 21, 21)
    assert split_channels(16) == (6, 5, 5)
    with pytest.raises(ConfigError, match="at least 3"):
        split_channels(2)
    with pytest.raises(ConfigError):
        MSUNet(ModelConfig(widths=(2, 4)))


def test_msunet_has_as_many_parameters_as_unet() -> None:
    for preset in ("lite", "paper"):
        n = [
            sum(p.numel() for p in build_model(a, preset).parameters()) for a in ("unet", "msunet")
        ]
        assert n[0] == n[1]


def test_attention_unet_gates_every_skip() -> None:
    model = build_model("attention_unet", preset="lite")
    gates = [m for m in model.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == model.config.n_pools
    plain = build_model("unet", preset="lite")
    assert not any(isinstance(m, AttentionGate) for m in plain.modules())


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name: str) -> None:
    model = build_model(name, preset="lite").eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_channels_last_gives_same_result(name: str) -> None:
    model = build_model(name, preset="lite").eval()
    x = torch.randn(1, 3, 32, 16)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_size_not_multiple_of_downsampling_is_refused(name: str) -> None:
    model = build_model(name, preset="lite").eval()
    with pytest.raises(InputShapeError, match=r"50×64 .* downsampling factor 16"):
        model(torch.randn(1, 3, 50, 64))
    with pytest.raises(ValueError, match="pad=True"):  # also a ValueError
        model(torch.randn(1, 3, 64, 8))


def test_pad_true_pads_explicitly_and_crops_back() -> None:
    model = build_model("msunet", preset="lite").eval()
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        out = model(x, pad=True)
        padded, size = pad_to_multiple(x, 16)
        manual = model(padded)[..., : size[0], : size[1]]
    assert out.shape == (1, 2, 50, 70)
    assert padded.shape == (1, 3, 64, 80)
    assert torch.equal(out, manual)
    # Reflect padding at the bottom/right: the origin stays put.
    assert torch.equal(padded[..., :50, :70], x)
    assert torch.equal(padded[..., 50, :70], x[..., 48, :])


def test_pad_falls_back_to_replicate_for_tiny_inputs() -> None:
    padded, size = pad_to_multiple(torch.arange(3.0).reshape(1, 1, 1, 3), 8)
    assert size == (1, 3)
    assert padded.shape == (1, 1, 8, 8)
    assert torch.equal(padded[0, 0, 7], torch.tensor([0.0, 1, 2, 2, 2, 2, 2, 2]))


def test_wrong_channels_or_rank_are_refused() -> None:
    model = build_model("unet", preset="lite")
    with pytest.raises(InputShapeError, match="3 input channels, got 1"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(InputShapeError, match="4-D"):
        model(torch.randn(3, 32, 32))


def test_registry() -> None:
    assert set(MODELS) == {"msunet", "unet", "attention_unet"}
    assert get_model_class("msunet") is MSUNet
    assert get_model_class("unet") is UNet
    assert get_model_class("attention_unet") is AttentionUNet
    with pytest.raises(ConfigError, match=r"unknown architecture 'resnet'.*msunet"):
        get_model_class("resnet")
    model = build_model("unet", preset="lite", n_classes=3, norm="group")
    assert isinstance(model, UNet)
    assert model.config == ModelConfig(widths=(16, 32, 64, 128, 256), n_classes=3, norm="group")
    with pytest.raises(ConfigError, match="unknown model config option"):
        build_model("unet", preset="lite", width=3)
    with pytest.raises(ConfigError, match="unknown preset"):
        build_model("unet", preset="huge")


def test_config_round_trip_and_frozen() -> None:
    cfg = make_config("paper", n_classes=3, norm="instance", decoder_convs=2)
    assert cfg.widths == (63, 120, 270, 360, 480, 480)
    assert (cfg.n_pools, cfg.downsampling_factor) == (5, 32)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["widths"] == [63, 120, 270, 360, 480, 480]
    assert ModelConfig(widths=[8, 16]).widths == (8, 16)  # lists are frozen to tuples
    with pytest.raises(AttributeError):
        cfg.n_classes = 4  # type: ignore[misc]
    assert hash(cfg) == hash(ModelConfig.from_dict(cfg.to_dict()))
    assert not cfg.spatially_local
    assert make_config("lite").spatially_local


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": (16,)}, "at least two levels"),
        ({"widths": (16, 0)}, "positive integers"),
        ({"widths": (16, 2.5)}, "positive integers"),
        ({"widths": "16"}, "sequence"),
        ({"n_classes": 1}, "n_classes"),
        ({"n_classes": 256}, "n_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"norm": "layer"}, "norm must be one of"),
        ({"norm_groups": 0}, "norm_groups"),
        ({"decoder_convs": 0}, "decoder_convs"),
        ({"n_classes": True}, "n_classes"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="unknown model config keys: depth"):
        ModelConfig.from_dict({"widths": [8, 16], "depth": 2})
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json("{")
