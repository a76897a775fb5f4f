"""Shared helpers for the inference tests: narrow random models and a whole-image reference.

The models keep the lite presets' depth (so their alignment and receptive radius, which the
margin rule uses, are the real ones) but are narrow, so that exact margins stay cheap on two
CPU cores. Random weights give nearly constant outputs, which would make an argmax comparison
trivial; :func:`make_model` therefore rescales the head so that the two classes split the image
and the logit differences spread over several units.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_msunet.inference import Normalization
from napari_msunet.models import ModelHeader, build_model

NARROW = (4, 8, 8, 16, 16)
NORM = Normalization((0.8, 0.6, 0.75), (0.15, 0.2, 0.15))


def normalise(image: np.ndarray, norm: Normalization = NORM) -> torch.Tensor:
    """``(H, W, 3)`` uint8 -> ``(1, 3, H, W)`` float32, as the engine normalises."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    return (x - mean) / std


def make_model(arch: str, seed: int = 0, calibrate: np.ndarray | None = None, **overrides):
    """A narrow lite-depth model in eval mode with a fixed seed.

    With ``calibrate`` (an RGB image), the head is rescaled so that on that image the logit
    difference of class 1 over class 0 has median 0 and spread of about 3.
    """
    torch.manual_seed(seed)
    model = build_model(arch, preset="lite", **{"widths": NARROW, **overrides}).eval()
    if calibrate is not None:
        with torch.inference_mode():
            logits = model(normalise(calibrate), pad=True)
        d = (logits[0, 1] - logits[0, 0]).flatten()
        scale = 3.0 / float(d.std())
        median = float(d.median())
        with torch.no_grad():
            model.head.weight.mul_(scale)
            model.head.bias.mul_(scale)
            model.head.bias[1] -= scale * median
    return model


def whole_image_reference(model, image: np.ndarray, margin: int, norm=NORM) -> np.ndarray:
    """Probabilities ``(C, H, W)`` of ONE forward pass over the whole image, padded with white
    by ``margin`` on every side (the engine's padding convention), cropped back."""
    h, w = image.shape[:2]
    f = model.downsampling_factor
    ph = h + 2 * margin + (-(h + 2 * margin) % f)
    pw = w + 2 * margin + (-(w + 2 * margin) % f)
    padded = np.full((ph, pw, 3), 255, np.uint8)
    padded[margin : margin + h, margin : margin + w] = image
    with torch.inference_mode():
        p = torch.softmax(model(normalise(padded, norm)), dim=1)
    return p[0, :, margin : margin + h, margin : margin + w].numpy()


def header_for(model, **kw) -> ModelHeader:
    return ModelHeader.for_model(
        model,
        class_names=tuple(kw.pop("class_names", ("background", "region"))),
        input_um_per_px=1.0,
        norm_mean=NORM.mean,
        norm_std=NORM.std,
        **kw,
    )
