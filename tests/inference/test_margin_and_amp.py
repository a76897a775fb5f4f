"""A measured margin per model file, and bf16 on CPUs that have it (issue 14, items 1-2)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from inference_helpers import NORM, header_for, make_model

from napari_msunet.cli import build_parser
from napari_msunet.errors import ConfigError
from napari_msunet.inference import InferenceConfig
from napari_msunet.inference.array import predict_array
from napari_msunet.inference.device import (
    BF16_AGREEMENT,
    confirm_amp,
    cpu_has_bf16,
    resolve_device_settings,
)
from napari_msunet.inference.tiling import resolve_tiling
from napari_msunet.io.synthetic import SyntheticSlideSpec
from napari_msunet.models.margin import measure_margin, measured_margin


@pytest.fixture(scope="module")
def tissue():
    return SyntheticSlideSpec(512, 512, seed=3, mpp=1.0, n_regions=12).image()


@pytest.fixture(scope="module")
def model(tissue):
    return make_model("msunet", seed=1, calibrate=tissue)


def test_the_measured_margin_is_the_smallest_that_agrees(model, tissue):
    record = measure_margin(model, NORM, [tissue], description="synthetic")
    align = model.alignment
    structural = -(-model.receptive_radius // align) * align
    assert record.structural == structural
    assert record.margin % align == 0
    assert record.margin <= structural
    assert record.agreement >= 0.999
    assert record.prob_diff_p999 <= 0.05
    assert record.pixels == tissue.shape[0] * tissue.shape[1]
    assert record.images == "synthetic"
    if record.margin > align:  # the margin one alignment smaller did not agree enough
        config = InferenceConfig(
            tile=record.tile, margin=record.margin - align, device="cpu", amp="none", tissue=False
        )
        exact = InferenceConfig(
            tile=record.tile, margin=structural, device="cpu", amp="none", tissue=False
        )
        lab, p = predict_array(tissue, model, NORM, config, probabilities="float32")
        lab0, p0 = predict_array(tissue, model, NORM, exact, probabilities="float32")
        worse = (lab == lab0).mean() < 0.999 or np.quantile(np.abs(p - p0).max(0), 0.999) > 0.05
        assert worse


def test_auto_uses_the_headers_margin_and_exact_the_structural_one(model):
    header = header_for(model)
    assert measured_margin(header) is None
    recorded = dataclasses.replace(header, training={"margin": {"margin": 64}})
    assert measured_margin(recorded) == 64
    settings = resolve_device_settings(InferenceConfig(device="cpu"))
    structural = -(-model.receptive_radius // model.alignment) * model.alignment
    auto = resolve_tiling(InferenceConfig(device="cpu"), model, settings, (2048, 2048), 64)
    assert auto.margin == 64
    exact = InferenceConfig(device="cpu", margin="exact")
    assert resolve_tiling(exact, model, settings, (2048, 2048), 64).margin == structural
    # a header without a record: auto is exact, as before
    assert resolve_tiling(InferenceConfig(device="cpu"), model, settings, (64, 64)).margin == (
        structural
    )
    with pytest.raises(ConfigError):
        InferenceConfig(margin="loose")


def test_the_cli_takes_margin_exact_and_amp():
    args = build_parser().parse_args(
        ["predict", "s.svs", "--model", "m", "--out", "o", "--margin", "exact", "--amp", "none"]
    )
    assert args.margin == "exact"
    assert args.amp == "none"
    assert (
        build_parser()
        .parse_args(["predict", "s", "--model", "m", "--out", "o", "--margin", "64"])
        .margin
        == 64
    )


def test_bf16_is_kept_only_when_it_labels_as_float32_does(model, tissue):
    settings = resolve_device_settings(InferenceConfig(device="cpu"))
    assert settings.check_amp == cpu_has_bf16()
    assert (settings.amp_dtype is torch.bfloat16) == cpu_has_bf16()
    forced = dataclasses.replace(settings, amp_dtype=torch.bfloat16, check_amp=True)
    checked = confirm_amp(model.eval(), forced, NORM, tissue[:256, :256])
    assert not checked.check_amp
    assert 0.0 <= checked.amp_agreement <= 1.0
    expected = torch.bfloat16 if checked.amp_agreement >= BF16_AGREEMENT else None
    assert checked.amp_dtype is expected
    assert "as float32 on the first tile" in checked.describe()
    # settings that need no check are left alone
    plain = resolve_device_settings(InferenceConfig(device="cpu", amp="none"))
    assert confirm_amp(model, plain, NORM, tissue) is plain
    assert plain.amp_dtype is None


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has no native bf16")
def test_auto_predicts_in_bf16_here_and_agrees_with_float32(model, tissue):
    config = InferenceConfig(device="cpu", tile=256, margin=128, tissue=False)
    fast, _ = predict_array(tissue, model, NORM, config)
    exact, _ = predict_array(tissue, model, NORM, dataclasses.replace(config, amp="none"))
    assert (fast == exact).mean() >= 0.99
