"""Architecture configuration shared by the three segmentation networks, and its presets.

One frozen dataclass describes the encoder-decoder skeleton that U-Net, Attention U-Net and
MS U-Net share (widths per level, number of classes, normalisation), so that the three can be
compared at equal depth and width and so that a model file can rebuild the network from its
JSON header alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from types import MappingProxyType
from typing import Any

from napari_msunet.errors import ConfigError

NORMS: tuple[str, ...] = ("batch", "group", "instance", "none")
"""Normalisation layers a config may name. Only ``batch`` (in eval mode) and ``none`` are
spatially local; ``group`` and ``instance`` normalise over each tile, so tiled inference is
then not identical to whole-image inference."""

MAX_CLASSES = 255
"""Class ids must stay below the default ignore label (255) of the losses and masks."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of an encoder-decoder segmentation network.

    Parameters
    ----------
    widths
        Channels of the encoder block at each level, from full resolution down to the
        bottleneck. ``len(widths) - 1`` max-pool steps separate the levels, so the network
        downsamples by ``2 ** (len(widths) - 1)``. The decoder mirrors the widths.
    in_channels
        Channels of the input image (3 for RGB).
    n_classes
        Output classes, background included (2 for a binary task: the losses use a softmax).
    norm
        Normalisation after each convolution: one of :data:`NORMS`.
    norm_groups
        Target number of groups for ``norm="group"``; each layer uses the largest divisor of
        its channel count that is not larger, so odd widths such as 63 still work.
    decoder_convs
        3×3 convolutions after each up-convolution and skip concatenation. The paper uses one
        ("passed through single convolutional layer", section III.A).
    """

    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    in_channels: int = 3
    n_classes: int = 2
    norm: str = "batch"
    norm_groups: int = 8
    decoder_convs: int = 1

    def __post_init__(self) -> None:
        widths = self.widths
        if isinstance(widths, str) or not hasattr(widths, "__iter__"):
            raise ConfigError(f"widths must be a sequence of channel counts, got {widths!r}")
        widths = tuple(widths)
        object.__setattr__(self, "widths", widths)
        if len(widths) < 2:
            raise ConfigError(
                f"widths needs at least two levels (one downsampling), got {list(widths)}"
            )
        if len(widths) > 9:
            raise ConfigError(f"widths has {len(widths)} levels; at most 9 are supported")
        if not all(_is_int(w) and w >= 1 for w in widths):
            raise ConfigError(f"widths must be positive integers, got {list(widths)}")
        if not _is_int(self.in_channels) or self.in_channels < 1:
            raise ConfigError(f"in_channels must be a positive integer, got {self.in_channels!r}")
        if not _is_int(self.n_classes) or not 2 <= self.n_classes <= MAX_CLASSES:
            raise ConfigError(
                f"n_classes must be an integer from 2 to {MAX_CLASSES} (background counts as a "
                f"class), got {self.n_classes!r}"
            )
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {', '.join(NORMS)}; got {self.norm!r}")
        if not _is_int(self.norm_groups) or self.norm_groups < 1:
            raise ConfigError(f"norm_groups must be a positive integer, got {self.norm_groups!r}")
        if not _is_int(self.decoder_convs) or not 1 <= self.decoder_convs <= 4:
            raise ConfigError(f"decoder_convs must be 1 to 4, got {self.decoder_convs!r}")

    @property
    def n_pools(self) -> int:
        """Number of 2× max-pool steps between the input and the bottleneck."""
        return len(self.widths) - 1

    @property
    def downsampling_factor(self) -> int:
        """Total downsampling of the encoder; input sizes must be multiples of it."""
        return 2**self.n_pools

    @property
    def spatially_local(self) -> bool:
        """Whether each output pixel depends only on its receptive field (no per-tile
        statistics), which tiled inference relies on to match whole-image inference."""
        return self.norm in ("batch", "none")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (widths as a list)."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from :meth:`to_dict` output; unknown keys are an error, not ignored."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a model config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model config keys: {', '.join(map(str, unknown))}")
        return cls(**dict(data))

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Inverse of :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # Wide, close to the authors' public code: 5 downsamplings. 63 = 3 × 21, so the three
        # kernel sets of the first MS U-Net block get 21 channels each.
        "paper": MappingProxyType({"widths": (63, 120, 270, 360, 480, 480)}),
        # Small enough to train and run on a CPU: 4 downsamplings.
        "lite": MappingProxyType({"widths": (16, 32, 64, 128, 256)}),
    }
)
"""Named architecture sizes; any :class:`ModelConfig` field can be overridden on top."""


def make_config(preset: str | None = "lite", **overrides: Any) -> ModelConfig:
    """Config of a named preset with some fields overridden.

    Parameters
    ----------
    preset
        A key of :data:`PRESETS`, or ``None`` to start from the :class:`ModelConfig` defaults.
    **overrides
        Fields of :class:`ModelConfig` to change, e.g. ``n_classes=3, norm="group"``.
    """
    if preset is None:
        base = ModelConfig()
    elif preset in PRESETS:
        base = ModelConfig(**PRESETS[preset])
    else:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(
            f"unknown model config option(s): {', '.join(unknown)}; valid: {', '.join(known)}"
        )
    return replace(base, **overrides)
