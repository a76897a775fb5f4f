"""InferenceConfig validation and serialisation, device selection, normalisation, layering."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from inference_helpers import make_model

from napari_msunet.errors import ConfigError
from napari_msunet.inference import InferenceConfig, Normalization, select_device
from napari_msunet.inference.device import cpu_has_bf16, resolve_device_settings
from napari_msunet.inference.tiling import resolve_tiling
from napari_msunet.models import ModelHeader


def test_defaults_round_trip_through_json():
    cfg = InferenceConfig()
    assert cfg.target_mpp == 1.0
    assert cfg.tile == "auto"
    assert cfg.margin == "auto"
    again = InferenceConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    custom = InferenceConfig(tile=512, margin=64, batch_size=4, device="cuda:1", amp="bf16")
    assert InferenceConfig.from_dict(custom.to_dict()) == custom


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("target_mpp", 0, "target_mpp must be positive"),
        ("target_mpp", float("nan"), "finite"),
        ("tile", 0, "tile must be 'auto' or an integer >= 1"),
        ("tile", "big", "tile must be"),
        ("margin", -64, "margin must be"),
        ("batch_size", 1.5, "batch_size must be"),
        ("device", "gpu", "device must be"),
        ("amp", "fp8", "amp must be one of"),
        ("channels_last", "yes", "channels_last"),
        ("tissue", 1, "tissue must be true or false"),
        ("tissue_threshold", 2.0, "tissue_threshold"),
        ("tissue_threshold_range", (0.2, 0.1), "tissue_threshold_range"),
        ("tissue_min_area_um2", -1, "tissue_min_area_um2"),
        ("prefetch", 0, "prefetch must be an integer >= 1"),
        ("chunk", 8, "chunk must be an integer >= 16"),
    ],
)
def test_invalid_values_are_rejected(field, value, match):
    with pytest.raises(ConfigError, match=match):
        InferenceConfig(**{field: value})


def test_unknown_keys_are_an_error():
    with pytest.raises(ConfigError, match=r"unknown inference setting.*tiles"):
        InferenceConfig.from_dict({"tiles": 512})


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        assert auto.type in ("cpu", "mps")
        with pytest.raises(ConfigError, match="CUDA is not available"):
            select_device("cuda")


def test_cpu_settings_and_auto_tiling():
    s = resolve_device_settings(InferenceConfig(device="cpu"))
    # bf16 where the CPU computes it natively (checked against float32 on the first tile)
    assert (s.amp_dtype is torch.bfloat16) == cpu_has_bf16() == s.check_amp
    assert s.channels_last
    assert not s.normalise_on_device
    model = make_model("msunet")
    t = resolve_tiling(InferenceConfig(device="cpu"), model, s, (5000, 5000))
    assert (t.tile, t.margin, t.batch_size, t.alignment) == (1024, 320, 1, 64)
    assert t.receptive_radius == 310
    # batch never exceeds the number of tiles; tiles shrink to small images
    t = resolve_tiling(InferenceConfig(device="cpu", batch_size=8), model, s, (700, 700))
    assert t.batch_size == 1
    assert resolve_device_settings(InferenceConfig(device="cpu", amp="bf16")).amp_name == "bf16"


def test_normalization_from_header_and_pairs():
    model = make_model("unet")
    header = ModelHeader.for_model(
        model,
        class_names=("a", "b"),
        input_um_per_px=1.0,
        norm_mean=(0.5, 0.5, 0.5),
        norm_std=(0.25, 0.25, 0.25),
    )
    n = Normalization.of(header)
    assert n == Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert Normalization.of(((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))) == n
    a, b = n.scale_shift()
    assert 255 * a[0] - b[0] == pytest.approx((1 - 0.5) / 0.25)
    with pytest.raises(ConfigError, match="3 finite numbers"):
        Normalization.of(((0.5, 0.5), (1, 1)))
    with pytest.raises(ConfigError, match="must be a model header"):
        Normalization.of(3)


def test_inference_imports_without_gui():
    code = (
        "import sys\nimport napari_msunet.inference\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
