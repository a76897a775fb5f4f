"""The accelerator code paths, exercised on the CPU where possible and on CUDA when present.

On an accelerator, tiles travel as uint8 and are normalised on the device; that path is forced
on the CPU here (only the pinned memory is CUDA-specific) and must give the same result as the
CPU path. Autocast is exercised with bf16 on the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from inference_helpers import NORM, make_model, whole_image_reference

from napari_msunet.inference import InferenceConfig, predict_array
from napari_msunet.inference.device import DeviceSettings
from napari_msunet.inference.pipeline import argmax_channels
from napari_msunet.io.synthetic import SyntheticSlideSpec


@pytest.fixture(scope="module")
def image():
    return SyntheticSlideSpec(1600, 1600, seed=8).image(2.0)  # 800 x 800


@pytest.fixture(scope="module")
def model(image):
    return make_model("unet", calibrate=image[:256, :256])


@pytest.mark.parametrize("channels_last", [True, False])
def test_uint8_transfer_and_device_normalisation(monkeypatch, image, model, channels_last):
    cfg = InferenceConfig(tile=256, device="cpu", channels_last=channels_last, batch_size=3)
    host = predict_array(image, model, NORM, cfg, probabilities="float32")
    monkeypatch.setattr(DeviceSettings, "normalise_on_device", property(lambda self: True))
    dev = predict_array(image, model, NORM, cfg, probabilities="float32")
    assert np.abs(dev[1] - host[1]).max() < 1e-5
    assert (dev[0] == host[0]).mean() > 0.9999


def test_bf16_autocast_on_cpu(image, model):
    ref = whole_image_reference(model, image, 96)
    labels, probs = predict_array(
        image,
        model,
        NORM,
        InferenceConfig(tile=256, device="cpu", amp="bf16"),
        probabilities="float32",
    )
    # bf16 keeps 8 bits of mantissa, and the calibrated head amplifies the error of the
    # features: pixels near the decision boundary flip
    assert (labels == ref.argmax(0)).mean() > 0.95
    assert np.abs(probs - ref).mean() < 0.1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(image, model):
    cpu = predict_array(
        image, model, NORM, InferenceConfig(tile=256, device="cpu"), probabilities="float32"
    )
    for amp in ("none", "auto"):
        cfg = InferenceConfig(tile=256, device="cuda", amp=amp)
        labels, probs = predict_array(image, model, NORM, cfg, probabilities="float32")
        if amp == "none":
            # no autocast, but cuDNN convolutions run in TF32 (PyTorch's default
            # allow_tf32): measured on an H200, max |dp| 0.018, typical 1e-4
            diff = np.abs(probs - cpu[1])
            assert diff.max() < 0.05
            assert diff.mean() < 1e-3
            assert (labels == cpu[0]).mean() > 0.995
        else:
            assert np.abs(probs - cpu[1]).mean() < 0.1
            assert (labels == cpu[0]).mean() > 0.95
    # auto tile and batch on CUDA: measured from a probe, and still the same result
    labels, probs = predict_array(image, model, NORM, InferenceConfig(device="cuda", amp="none"))
    assert (labels == cpu[0]).mean() > 0.995
    model.to("cpu")


@pytest.mark.parametrize("n_classes", [2, 3, 7])
def test_argmax_channels_matches_torch_argmax(n_classes):
    p = torch.softmax(torch.randn(2, n_classes, 64, 80), dim=1)
    p[0, :, :5, :5] = 1.0 / n_classes  # ties: the first class wins, as in argmax
    expected = p.argmax(dim=1).to(torch.uint8)
    assert torch.equal(argmax_channels(p), expected)
    cl = p.contiguous(memory_format=torch.channels_last)
    assert torch.equal(argmax_channels(cl), expected)
