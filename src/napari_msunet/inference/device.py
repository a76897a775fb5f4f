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
    "BF16_AGREEMENT",
    "DeviceSettings",
    "Normalization",
    "confirm_amp",
    "cpu_has_bf16",
    "resolve_device_settings",
]

#: Share of a tile's labels bf16 must give as float32 does for ``amp="auto"`` to keep it on CPU.
BF16_AGREEMENT = 0.995
#: Side of the square that the check compares (the centre of the first tile's window).
CHECK_SIDE = 512


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): Linux ``/proc/cpuinfo``.

    Elsewhere (or unreadable) False: emulated bf16 is slower than float32.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


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
    check_amp: bool = False  # bf16 chosen by "auto" on a CPU: confirm_amp compares it first
    amp_agreement: float | None = None  # what confirm_amp measured

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
        amp = self.amp_name
        if self.amp_agreement is not None:
            amp += f" (labels {self.amp_agreement:.2%} as float32 on the first tile)"
        return f"{name}, amp {amp}, channels_last {self.channels_last}"


def resolve_device_settings(config: InferenceConfig) -> DeviceSettings:
    """Turn the ``auto`` values of ``config`` into concrete settings for this machine."""
    device = select_device(config.device)
    amp = config.amp
    check = False
    if amp == AUTO:
        if device.type == "cuda":
            amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu" and cpu_has_bf16():
            amp, check = "bf16", True  # measured 2x float32 on Zen 4 (docs/benchmarks.md)
        else:
            amp = "none"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[amp]
    channels_last = config.channels_last
    if channels_last == AUTO:
        channels_last = device.type in ("cuda", "cpu")
    return DeviceSettings(device, amp_dtype, bool(channels_last), check_amp=check)


def confirm_amp(
    model: nn.Module, settings: DeviceSettings, norm: Normalization, window: Any
) -> DeviceSettings:
    """Keep bf16 picked by ``amp="auto"`` on a CPU only if it labels ``window`` as float32 does.

    ``window``: the first tile's input, RGB uint8 ``(H, W, 3)``. Both precisions predict
    its central :data:`CHECK_SIDE` square (the whole window would cost two tiles of the run);
    with at least :data:`BF16_AGREEMENT` of the labels equal bf16 stays, else the run
    uses float32. The agreement is kept in the settings (:meth:`DeviceSettings.describe`).
    Settings not needing the check are returned as they are.
    """
    import dataclasses

    import numpy as np

    if not settings.check_amp or window is None:
        return settings
    h, w = window.shape[:2]
    c = min(CHECK_SIDE, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2  # the centre: the part of the tile that is kept
    window = window[y0 : y0 + c, x0 : x0 + c]
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    x = torch.from_numpy(np.array(window, copy=True)).permute(2, 0, 1)[None].float() / 255
    x = ((x - mean) / std).to(settings.device)
    if settings.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        exact = model(x, pad=True).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = model(x, pad=True).float().argmax(1)
    agreement = float((exact == fast).float().mean())
    dtype = torch.bfloat16 if agreement >= BF16_AGREEMENT else None
    return dataclasses.replace(
        settings, amp_dtype=dtype, check_amp=False, amp_agreement=round(agreement, 6)
    )


def prepare_model(model: nn.Module, settings: DeviceSettings, *, fold: bool = False) -> nn.Module:
    """The network to run: ``model`` in eval mode on the device, in the chosen memory format.

    Without ``fold`` the module itself is changed in place (no copy of the weights; the
    engine restores the caller's training mode when it finishes). With ``fold`` the result is
    an eval-mode copy whose batch norms are folded into their convolutions
    (:func:`~napari_msunet.models.fold.folded_for_inference`: about 1.2x faster on the CPU,
    float32 logits within rounding) and ``model`` is not touched.
    """
    if fold:
        from napari_msunet.models.fold import folded_for_inference

        model = folded_for_inference(model)
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
