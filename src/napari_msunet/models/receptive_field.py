"""Measure how much context a network needs: its receptive radius, from input gradients.

The tiling engine reads each tile with a margin of at least this radius on every side and
keeps only the centre, so the stitched result equals running the network on the whole slide.
The radius is measured rather than derived by hand so that it stays right for any
architecture in the registry (dilated, strided, interpolated and gated paths included).
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from napari_msunet.errors import ConfigError
from napari_msunet.models.config import ModelConfig

_CACHE: dict[tuple[Any, ...], int] = {}
_PHASES_PER_PASS = 16

_NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)
_NONLOCAL_NORM_TYPES = (nn.GroupNorm, nn.InstanceNorm2d, nn.LayerNorm)


def _replace_modules(module: nn.Module, structural: bool) -> None:
    """In place: max-pool -> average pool (same footprint, gradient to every input) and norms
    -> identity (all of them when ``structural``, else only the ones with spatial statistics)."""
    kill = _NORM_TYPES if structural else _NONLOCAL_NORM_TYPES
    for name, child in module.named_children():
        if structural and isinstance(child, nn.MaxPool2d):
            setattr(
                module,
                name,
                nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode),
            )
        elif isinstance(child, kill):
            setattr(module, name, nn.Identity())
        else:
            _replace_modules(child, structural)


@torch.no_grad()
def _make_positive(module: nn.Module) -> None:
    """Averaging weights and zero biases: with a positive input every activation and every
    path gradient is positive, so no ReLU, max or cancellation hides part of the footprint."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.weight.fill_(1.0 / m.weight[0].numel())
        elif isinstance(m, nn.ConvTranspose2d):
            m.weight.fill_(1.0 / m.weight.shape[0])
        else:
            continue
        if m.bias is not None:
            m.bias.zero_()


def _narrow(config: ModelConfig) -> ModelConfig:
    """The cheapest config with the same footprint: topology kept, 3 channels per level."""
    return replace(
        config, widths=(3,) * len(config.widths), norm="none", in_channels=1, n_classes=2
    )


def _surrogate(model: nn.Module, structural: bool) -> nn.Module:
    config = getattr(model, "config", None)
    if structural and isinstance(config, ModelConfig):
        twin = type(model)(_narrow(config))
    else:
        twin = copy.deepcopy(model)
    _replace_modules(twin, structural)
    if structural:
        _make_positive(twin)
    return twin.eval().to(device="cpu", dtype=torch.float64)


def _reach(
    model: nn.Module, axis: int, in_channels: int, period: int, factor: int, positive: bool
) -> int:
    """Largest reach, along one axis (0 = y, 1 = x), of the receptive field of an output
    pixel, over the ``period`` phases a pixel can have relative to the network's grid.

    One batch element per phase, each seeding the gradient at one output pixel; eval mode
    keeps the batch elements independent. The other axis is kept as narrow as the model
    allows: the footprint is a product of per-axis footprints, so its extent along ``axis``
    does not depend on the other size.
    """
    gen = torch.Generator().manual_seed(0)
    other = factor
    size = -(-max(8 * period, 256) // period) * period
    while size <= 1 << 16:
        c0 = (size // period // 2) * period
        worst, touched = 0, False
        for first in range(0, period, _PHASES_PER_PASS):
            phases = torch.arange(first, min(first + _PHASES_PER_PASS, period))
            shape = [len(phases), in_channels, other, other]
            shape[2 + axis] = size
            x = torch.rand(shape, generator=gen, dtype=torch.float64)
            x = x + 0.5 if positive else 2 * x - 1
            x.requires_grad_(True)
            with torch.enable_grad():
                y = model(x).movedim(2 + axis, 2)
                picked = y[torch.arange(len(phases)), :, c0 + phases]
                seed = (
                    torch.ones_like(picked)
                    if positive
                    else torch.randn(picked.shape, generator=gen, dtype=picked.dtype)
                )
                (grad,) = torch.autograd.grad((picked * seed).sum(), x)
            profiles = grad.abs().movedim(2 + axis, 2).sum(dim=(1, 3))  # (phases, size)
            for p, profile in zip(phases.tolist(), profiles, strict=True):
                hit = torch.nonzero(profile).flatten()
                if hit.numel() == 0:
                    continue  # every path to this pixel is a dead ReLU for this input: no reach
                lo, hi = int(hit.min()), int(hit.max())
                if lo == 0 or hi == size - 1:
                    touched = True
                    break
                worst = max(worst, c0 + p - lo, hi - c0 - p)
            if touched:
                break
        if not touched:
            return worst
        size *= 2
    raise ConfigError("receptive field wider than 65536 pixels; is the model spatially local?")


def measure_receptive_radius(model: nn.Module, *, structural: bool = True) -> int:
    """Receptive radius in pixels: how far any output pixel's receptive field reaches.

    Takes the gradient of one output pixel in the middle of a large input (eval mode,
    float64) with respect to the input, once for each of the ``alignment`` phases a pixel can
    have relative to the network's strided grid, and returns the largest distance from the
    pixel to a non-zero gradient over the four directions. Contract for tiling: in a tile whose
    offset in the image is a multiple of ``model.alignment``, every output pixel at least this
    many pixels from the tile's edges equals the whole-image result.

    Parameters
    ----------
    model
        A network with ``downsampling_factor`` (and optionally ``alignment`` and ``config``).
    structural
        ``True`` (default): the bound for *any* weights of this architecture. It is measured
        on a copy with averaging positive weights, average- instead of max-pooling and no
        normalisation, where every connection carries gradient; for registry models the copy
        is 3 channels wide (same footprint, far cheaper) and the result is cached per
        architecture and config. ``False``: the footprint of these very weights (non-zero
        gradients only; a lower bound of the structural radius, for diagnostics).

    Notes
    -----
    Group and instance norm compute statistics over the whole tile, so with them every
    output depends a little on every input pixel; the radius then describes the
    convolutional footprint only (those norms are replaced by identity for the measurement).
    """
    config = getattr(model, "config", None)
    key = None
    if structural and isinstance(config, ModelConfig):
        key = (type(model), _narrow(config))
        if key in _CACHE:
            return _CACHE[key]
    factor = int(model.downsampling_factor)
    period = int(getattr(model, "alignment", factor))
    twin = _surrogate(model, structural)
    twin_config = getattr(twin, "config", None)
    in_channels = twin_config.in_channels if isinstance(twin_config, ModelConfig) else 3
    radius = max(
        _reach(twin, axis, in_channels, period, factor, positive=structural) for axis in (0, 1)
    )
    if key is not None:
        _CACHE[key] = radius
    return radius
