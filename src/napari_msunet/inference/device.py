"""Where and how the network runs: device choice, mixed precision, memory format, normalisation.

Kept apart from the engine so that the GUI makes the same choices (the device choice itself,
:func:`~napari_msunet.models.device.select_device`, lives with the models, below training):
bf16 autocast on CUDA cards that support it (same
exponent range as float32, so no overflow in unnormalised logits), fp16 otherwise; channels_last
where it is faster. Nothing here changes torch's global state.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from napari_msunet.errors import ConfigError
from napari_msunet.inference.config import AUTO, InferenceConfig
from napari_msunet.models.device import select_device

__all__ = [
    "DeviceSettings",
    "Normalization",
    "resolve_device_settings",
]


@dataclass(frozen=True)
class DeviceSettings:
    """The resolved execution settings of a run.

    Attributes
    ----------
    device
        Where the network runs.
    amp_dtype
        Autocast dtype (``torch.bfloat16``/``torch.float16``) or ``None`` for float32.
    channels_last
        Whether the network and its input use the NHWC memory format.
    normalise_on_device
        Tiles travel to an accelerator as uint8 and are normalised there (4x less to copy,
        no float work on the host); on the CPU the reader threads normalise them instead so
        that the compute thread only runs the network.
    """

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def normalise_on_device(self) -> bool:
        return self.device.type != "cpu"

    @property
    def amp_name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "none")

    def autocast(self) -> Any:
        """The autocast context of the forward pass (disabled for float32)."""
        return torch.autocast(
            device_type=self.device.type,
            dtype=self.amp_dtype or torch.float32,
            enabled=self.amp_dtype is not None,
        )

    def synchronize(self) -> None:
        """Wait for queued device work (timings; CPU work is synchronous anyway)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()

    def describe(self) -> str:
        """One line for logs and the result: device name, precision, memory format."""
        name = str(self.device)
        if self.device.type == "cuda":
            name += f" ({torch.cuda.get_device_name(self.device)})"
        elif self.device.type == "cpu":
            name += f" ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
        return f"{name}, amp {self.amp_name}, channels_last {self.channels_last}"


def resolve_device_settings(config: InferenceConfig) -> DeviceSettings:
    """Turn the ``auto`` values of ``config`` into concrete settings for this machine."""
    device = select_device(config.device)
    amp = config.amp
    if amp == AUTO:
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            amp = "none"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    channels_last = config.channels_last
    if channels_last == AUTO:
        channels_last = device.type in ("cuda", "cpu")
    return DeviceSettings(device, amp_dtype, bool(channels_last))


def prepare_model(model: nn.Module, settings: DeviceSettings) -> nn.Module:
    """Put ``model`` in eval mode on the device, in the chosen memory format.

    The module is changed in place (no copy of the weights); the caller's training mode is
    restored by the engine when it finishes.
    """
    model.eval()
    model.to(settings.device)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


class Normalization(NamedTuple):
    """Per-channel input normalisation: ``(rgb / 255 - mean) / std``.

    Build it from a model file's header with :meth:`of` (which also accepts a header, a
    ``(mean, std)`` pair or an existing instance).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def of(cls, value: Any) -> Normalization:
        """Normalisation from a :class:`~napari_msunet.models.ModelHeader`, a
        ``Normalization`` or a ``(mean, std)`` pair of 3-sequences.

        Raises
        ------
        ConfigError
            When it does not hold three finite means and three positive standard deviations.
        """
        if isinstance(value, Normalization):
            mean, std = value
        elif hasattr(value, "norm_mean") and hasattr(value, "norm_std"):
            mean, std = value.norm_mean, value.norm_std
        else:
            try:
                mean, std = value
            except (TypeError, ValueError):
                raise ConfigError(
                    "normalisation must be a model header, a Normalization or a (mean, std) "
                    f"pair, got {value!r}"
                ) from None
        m, s = _three("mean", mean), _three("std", std)
        if not all(v > 0 for v in s):
            raise ConfigError(f"normalisation std must be positive, got {s}")
        return cls(m, s)

    def scale_shift(self) -> tuple[list[float], list[float]]:
        """``a, b`` such that the normalised value is ``u8 * a - b`` per channel."""
        a = [1.0 / (255.0 * s) for s in self.std]
        b = [m / s for m, s in zip(self.mean, self.std, strict=True)]
        return a, b


def _three(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"normalisation {name} must be 3 numbers, got {values!r}") from None
    if len(out) != 3 or not all(torch.isfinite(torch.tensor(out))):
        raise ConfigError(
            f"normalisation {name} must be 3 finite numbers (one per RGB channel), got {out}"
        )
    return out  # type: ignore[return-value]
