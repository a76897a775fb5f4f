"""Names of the available architectures, as stored in model files and given on the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from napari_msunet.errors import ConfigError
from napari_msunet.models.attention_unet import AttentionUNet
from napari_msunet.models.base import SegmentationModel
from napari_msunet.models.config import ModelConfig, make_config
from napari_msunet.models.msunet import MSUNet
from napari_msunet.models.unet import UNet

MODELS: Mapping[str, type[SegmentationModel]] = MappingProxyType(
    {cls.arch_name: cls for cls in (MSUNet, UNet, AttentionUNet)}
)
"""Architecture name -> class. The names are part of the model file format: never rename."""


def get_model_class(name: str) -> type[SegmentationModel]:
    """Class registered under ``name``; :class:`ConfigError` listing the valid names if none."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown architecture {name!r}; choose one of {', '.join(MODELS)}"
        ) from None


def build_model(name: str, preset: str | None = "lite", **overrides: Any) -> SegmentationModel:
    """Build an architecture by name from a preset with optional config overrides.

    Parameters
    ----------
    name
        ``"msunet"``, ``"unet"`` or ``"attention_unet"``.
    preset
        ``"lite"`` or ``"paper"`` (see :data:`~napari_msunet.models.config.PRESETS`), or
        ``None`` for the :class:`ModelConfig` defaults.
    **overrides
        :class:`ModelConfig` fields, e.g. ``n_classes=3``.

    Examples
    --------
    >>> model = build_model("msunet", preset="lite", n_classes=3)
    >>> model.downsampling_factor
    16
    """
    cls = get_model_class(name)
    return cls(make_config(preset, **overrides))


def build_from_config(name: str, config: ModelConfig) -> SegmentationModel:
    """Build an architecture by name from a complete config (as a model file stores it)."""
    return get_model_class(name)(config)
