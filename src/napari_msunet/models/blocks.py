"""Building blocks of the three networks: convolutions, the multi-scale convolution of MS U-Net,
the decoder step and the additive attention gate.

All blocks keep the spatial size of their input (``padding = dilation`` on 3×3 kernels), so a
network built from them maps an ``H×W`` input to an ``H×W`` output whenever ``H`` and ``W`` are
multiples of its downsampling factor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_msunet.errors import ConfigError

MS_SCALES: tuple[int, ...] = (1, 2, 4)
"""Stride (= dilation) of the three kernel sets of a multi-scale convolution (paper III.A)."""


def largest_divisor_at_most(n: int, limit: int) -> int:
    """Largest divisor of ``n`` that is ``<= limit`` (group count for GroupNorm)."""
    for d in range(min(n, limit), 0, -1):
        if n % d == 0:
            return d
    return 1


def make_norm(kind: str, channels: int, groups: int = 8) -> nn.Module:
    """Normalisation layer named by :attr:`ModelConfig.norm` for ``channels`` channels."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(largest_divisor_at_most(channels, groups), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown normalisation {kind!r}")


def split_channels(total: int, parts: int = len(MS_SCALES)) -> tuple[int, ...]:
    """Split ``total`` channels over the kernel sets; the full-resolution set takes the remainder.

    ``63 -> (21, 21, 21)``, ``16 -> (6, 5, 5)``.
    """
    if total < parts:
        raise ConfigError(
            f"a multi-scale convolution needs at least {parts} output channels (one per kernel "
            f"set), got {total}"
        )
    base = total // parts
    return (total - base * (parts - 1),) + (base,) * (parts - 1)


class ConvNormAct(nn.Sequential):
    """3×3 convolution, normalisation, ReLU; the bias is dropped when a norm follows."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch", groups: int = 8) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"),
            make_norm(norm, c_out, groups),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """The U-Net encoder block: two :class:`ConvNormAct`."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch", groups: int = 8) -> None:
        super().__init__(
            ConvNormAct(c_in, c_out, norm, groups), ConvNormAct(c_out, c_out, norm, groups)
        )


class MultiScaleConv(nn.Module):
    """First convolution of an MS U-Net encoder block (paper section III.A, Fig. 1).

    Three sets of 3×3 kernels see the block's input at stride = dilation = 1, 2 and 4. The
    half- and quarter-resolution outputs are upsampled bilinearly back to the block's
    resolution and concatenated with the full-resolution set, then normalised and rectified.
    The parameter count equals that of a plain 3×3 convolution with the same output width, so
    MS U-Net and U-Net of the same config have the same number of parameters.

    Upsampling uses a fixed ``scale_factor`` followed by a crop (rather than a target size),
    so the result is translation-equivariant for shifts by multiples of 4 and tiled inference
    can match whole-image inference.
    """

    def __init__(self, c_in: int, c_out: int, norm: str = "batch", groups: int = 8) -> None:
        super().__init__()
        self.scales = MS_SCALES
        self.split = split_channels(c_out, len(MS_SCALES))
        self.branches = nn.ModuleList(
            nn.Conv2d(c_in, c, 3, stride=s, dilation=s, padding=s, bias=norm == "none")
            for s, c in zip(MS_SCALES, self.split, strict=True)
        )
        self.norm = make_norm(norm, c_out, groups)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Concatenate the three scales' feature maps at the input's resolution."""
        h, w = x.shape[-2:]
        outs = []
        for scale, conv in zip(self.scales, self.branches, strict=True):
            y = conv(x)
            if scale > 1:
                y = F.interpolate(y, scale_factor=scale, mode="bilinear", align_corners=False)
                y = y[..., :h, :w]
            outs.append(y)
        return self.act(self.norm(torch.cat(outs, dim=1)))


class MultiScaleBlock(nn.Sequential):
    """The MS U-Net encoder block: :class:`MultiScaleConv` then a plain :class:`ConvNormAct`."""

    def __init__(self, c_in: int, c_out: int, norm: str = "batch", groups: int = 8) -> None:
        super().__init__(
            MultiScaleConv(c_in, c_out, norm, groups), ConvNormAct(c_out, c_out, norm, groups)
        )


class AttentionGate(nn.Module):
    """Additive attention gate on a skip connection (Oktay et al. 2018, eq. 1-2).

    ``alpha = sigmoid(psi(relu(W_x x + W_g g)))`` and the gate returns ``x * alpha``. Here the
    gating signal ``g`` is the up-convolved decoder feature, which already has the skip's
    resolution, so no resampling of ``x`` or ``alpha`` is needed (as in the common PyTorch
    ports; Oktay's reference code instead strides ``x`` down to ``g``'s grid). This keeps the
    gate translation-equivariant at the network's downsampling factor.
    """

    def __init__(
        self, c_x: int, c_g: int, c_inter: int, norm: str = "batch", groups: int = 8
    ) -> None:
        super().__init__()
        self.w_x = nn.Sequential(
            nn.Conv2d(c_x, c_inter, 1, bias=False), make_norm(norm, c_inter, groups)
        )
        self.w_g = nn.Sequential(
            nn.Conv2d(c_g, c_inter, 1, bias=norm == "none"), make_norm(norm, c_inter, groups)
        )
        self.psi = nn.Conv2d(c_inter, 1, 1, bias=True)

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        """Skip features ``x`` scaled by attention coefficients computed from ``x`` and ``g``."""
        alpha = torch.sigmoid(self.psi(F.relu(self.w_x(x) + self.w_g(g))))
        return x * alpha


class DecoderBlock(nn.Module):
    """One decoder level: 2×2 up-convolution, concatenation with the skip, 3×3 convolutions.

    Parameters
    ----------
    c_below
        Channels coming up from the coarser level.
    c_skip
        Channels of the encoder features at this level; also the up-convolution's and the
        block's output width.
    n_convs
        Convolutions after the concatenation (the paper uses one).
    attention
        Gate the skip with an :class:`AttentionGate` (Attention U-Net).
    """

    def __init__(
        self,
        c_below: int,
        c_skip: int,
        n_convs: int = 1,
        norm: str = "batch",
        groups: int = 8,
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_below, c_skip, 2, stride=2)
        self.gate = (
            AttentionGate(c_skip, c_skip, max(c_skip // 2, 1), norm, groups) if attention else None
        )
        convs = [ConvNormAct(2 * c_skip, c_skip, norm, groups)]
        convs += [ConvNormAct(c_skip, c_skip, norm, groups) for _ in range(n_convs - 1)]
        self.convs = nn.Sequential(*convs)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Upsample ``x`` 2×, fuse it with ``skip`` and convolve."""
        up = self.up(x)
        if self.gate is not None:
            skip = self.gate(skip, up)
        return self.convs(torch.cat([up, skip], dim=1))
