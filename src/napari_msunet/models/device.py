"""Which torch device to run on: CUDA first, then Apple's MPS, then the CPU.

Lives with the models (the lowest layer that knows torch) so that inference and training make
the same choice without training importing inference.
"""

from __future__ import annotations

import torch

from napari_msunet.errors import ConfigError

__all__ = ["AUTO", "select_device"]

AUTO = "auto"
"""The device setting that picks the best available device."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(device: str | torch.device = AUTO) -> torch.device:
    """Return the torch device to run on.

    Parameters
    ----------
    device
        ``"auto"`` picks CUDA when available, then MPS, then the CPU. An explicit device that
        is not available is an error rather than a silent fallback: a user who asked for the
        GPU should learn that it is not used.

    Raises
    ------
    ConfigError
        When the requested device is not available in this torch build or machine.
    """
    if isinstance(device, torch.device):
        device = str(device)
    if device == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} requested but CUDA is not available (torch "
                f"{torch.__version__}; a CPU-only build or no GPU); use --device cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
    elif dev.type == "mps" and not _mps_available():
        raise ConfigError(f"device {device!r} requested but MPS is not available here")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device type {dev.type!r}; use cpu, cuda or mps")
    return dev
