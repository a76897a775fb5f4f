"""The paper's augmentations (section III.B), on batched tensors so they run in a DataLoader
worker or on the GPU alike.

- **Rotation without artificial background.** The dataset reads a context square
  :func:`context_size` (about sqrt(2) x the patch) around each patch; :func:`rotate_crop`
  rotates it by a random angle about its centre and keeps the central patch, which always lies
  inside the context, so no padding ever enters the patch.
- **Flips**, horizontal and vertical.
- **Colour jitter** of brightness, contrast, saturation and hue, 0.15 each as in the paper.

Geometry moves image and mask together: the image is resampled bilinearly, the mask by
nearest neighbour (labels, including the ignore label, are never blended). Colour changes only
the image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from napari_msunet.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "augment_batch",
    "color_jitter",
    "context_size",
    "flip",
    "rotate_crop",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply and how strongly (paper defaults)."""

    rotate: bool = True
    flip: bool = True
    brightness: float = 0.15
    contrast: float = 0.15
    saturation: float = 0.15
    hue: float = 0.15

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0 <= v < 1:
                raise ConfigError(f"augment.{name} must be in [0, 1), got {v}")
        if not 0 <= self.hue <= 0.5:
            raise ConfigError(f"augment.hue must be in [0, 0.5], got {self.hue}")

    def to_dict(self) -> dict:
        return asdict(self)


def context_size(patch: int) -> int:
    """Side of the square to read around a ``patch``-sized patch so any rotation stays inside.

    The patch's corners lie ``(patch - 1) / sqrt(2)`` from its centre along each axis after a
    45° turn; one more pixel covers the bilinear neighbours. Even, so the patch stays centred.
    """
    side = math.ceil((patch - 1) * math.sqrt(2)) + 2
    return side + side % 2 if patch % 2 == 0 else side + (1 - side % 2)


def rotate_crop(
    images: Tensor, masks: Tensor | None, angles: Tensor, out: int
) -> tuple[Tensor, Tensor | None]:
    """Rotate each context square by its angle about the centre and keep the central patch.

    Parameters
    ----------
    images
        ``(N, C, S, S)`` float.
    masks
        ``(N, S, S)`` integer labels, or ``None``.
    angles
        ``(N,)`` radians, counter-clockwise as seen in the image.
    out
        Patch side; ``S`` must be at least :func:`context_size` ``(out)``.
    """
    n, _, s, s2 = images.shape
    if s != s2:
        raise ValueError(f"context must be square, got {s} x {s2}")
    if s < context_size(out) and not torch.all(angles == 0):
        raise ValueError(
            f"context {s} too small to rotate a {out} patch (need {context_size(out)})"
        )
    if (s - out) % 2:
        raise ValueError(f"context {s} and patch {out} must have the same parity to stay centred")
    dev, dt = images.device, images.dtype
    half_out, half_s = (out - 1) / 2, (s - 1) / 2
    coords = torch.arange(out, device=dev, dtype=dt) - half_out
    v, u = torch.meshgrid(coords, coords, indexing="ij")  # v: rows, u: columns
    cos = torch.cos(angles).to(dt).view(n, 1, 1)
    sin = torch.sin(angles).to(dt).view(n, 1, 1)
    # image y points down: a counter-clockwise turn on screen samples the source at R(-θ)
    src_x = cos * u - sin * v + half_s
    src_y = sin * u + cos * v + half_s
    grid = torch.stack([src_x / (s - 1) * 2 - 1, src_y / (s - 1) * 2 - 1], dim=-1)
    rot = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    if masks is None:
        return rot, None
    m = F.grid_sample(
        masks[:, None].to(dt), grid, mode="nearest", padding_mode="border", align_corners=True
    )
    return rot, m[:, 0].round().to(masks.dtype)


def flip(
    images: Tensor, masks: Tensor | None, horizontal: Tensor, vertical: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Flip the samples whose flags are set (``(N,)`` bool each), image and mask alike."""
    h = horizontal.view(-1, 1, 1, 1)
    v = vertical.view(-1, 1, 1, 1)
    images = torch.where(h, images.flip(-1), images)
    images = torch.where(v, images.flip(-2), images)
    if masks is not None:
        masks = torch.where(h[:, 0], masks.flip(-1), masks)
        masks = torch.where(v[:, 0], masks.flip(-2), masks)
    return images, masks


def _gray(images: Tensor) -> Tensor:
    r, g, b = images[:, 0:1], images[:, 1:2], images[:, 2:3]
    return 0.299 * r + 0.587 * g + 0.114 * b


def _shift_hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate hue by ``shift`` (fraction of a turn, ``(N,)``) through HSV, vectorised."""
    r, g, b = images.unbind(1)
    maxc, _ = images.max(1)
    minc, _ = images.min(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    h = torch.where(
        maxc == r,
        ((g - b) / safe) % 6,
        torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0 * maxc)
    h = (h + shift.view(-1, 1, 1)) % 1.0
    # HSV -> RGB
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    f = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return maxc[:, None] - (maxc * s)[:, None] * f


def color_jitter(
    images: Tensor,
    brightness: float = 0.15,
    contrast: float = 0.15,
    saturation: float = 0.15,
    hue: float = 0.15,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random brightness, contrast, saturation and hue per sample, on RGB in ``[0, 1]``.

    Factors are drawn uniformly from ``[1 - x, 1 + x]`` (hue: a shift in ``[-x, x]`` of a full
    turn), as torchvision's ``ColorJitter`` does, applied in that fixed order.
    """
    n = images.shape[0]

    def factor(x: float) -> Tensor:
        u = torch.rand(n, generator=generator, device="cpu").to(images.device, images.dtype)
        return (1 - x + 2 * x * u).view(n, 1, 1, 1)

    out = images
    if brightness:
        out = (out * factor(brightness)).clamp(0, 1)
    if contrast:
        mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
        out = (mean + (out - mean) * factor(contrast)).clamp(0, 1)
    if saturation:
        gray = _gray(out)
        out = (gray + (out - gray) * factor(saturation)).clamp(0, 1)
    if hue:
        u = torch.rand(n, generator=generator, device="cpu").to(images.device, images.dtype)
        out = _shift_hue(out, (2 * u - 1) * hue).clamp(0, 1)
    return out


def augment_batch(
    images: Tensor,
    masks: Tensor | None,
    out: int,
    config: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Apply the paper's augmentations to a batch of context squares.

    Parameters
    ----------
    images
        ``(N, 3, S, S)``, uint8 or float in ``[0, 1]``; ``S >= context_size(out)`` when rotating,
        else ``S >= out`` (the centre is cropped).
    masks
        ``(N, S, S)`` labels or ``None``.
    out
        Patch side.
    config
        Which augmentations; defaults to the paper's.
    generator
        Random source (CPU generator), for reproducible runs.

    Returns
    -------
    images, masks
        ``(N, 3, out, out)`` float in ``[0, 1]`` and ``(N, out, out)`` labels.
    """
    cfg = config or AugmentConfig()
    if images.dtype == torch.uint8:
        images = images.float() / 255
    n, s = images.shape[0], images.shape[-1]
    if cfg.rotate:
        angles = torch.rand(n, generator=generator) * (2 * math.pi)
        images, masks = rotate_crop(images, masks, angles.to(images.device), out)
    else:
        o = (s - out) // 2
        images = images[..., o : o + out, o : o + out]
        masks = None if masks is None else masks[..., o : o + out, o : o + out]
    if cfg.flip:
        hv = torch.rand(2, n, generator=generator) < 0.5
        images, masks = flip(images, masks, hv[0].to(images.device), hv[1].to(images.device))
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
        images = color_jitter(
            images, cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, generator
        )
    return images.contiguous(), None if masks is None else masks.contiguous()
