"""Settings of a whole-slide prediction: one frozen, validated, serialisable dataclass.

The engine, the CLI (``msunet predict --tile ... --margin ...``) and the GUI all describe a run
with :class:`InferenceConfig`, so a run can be written into the output's manifest and repeated
exactly. Values that depend on the model or the device (``"auto"`` tile, margin, batch size,
mixed precision, memory format) are resolved by the engine when it knows both; what they resolve
to is recorded in the :class:`~napari_msunet.inference.progress.PredictionResult` that
:func:`~napari_msunet.inference.engine.iter_predict_slide` returns and in the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from napari_msunet.errors import ConfigError
from napari_msunet.io.tissue import TissueSettings
from napari_msunet.models.device import AUTO

__all__ = ["AMP_MODES", "AUTO", "EXACT", "InferenceConfig"]

EXACT = "exact"
"""``margin="exact"``: the structural receptive radius, whatever the model file measured."""

AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "none")
"""Mixed-precision modes: ``auto`` is bf16 on CUDA when supported, else fp16; none elsewhere."""

Auto = Literal["auto"]

#: Largest tile the GPU auto-sizing picks: a 8192 tile with lite MS U-Net's 320 px margin
#: computes each pixel 1.16 times, and larger tiles gain little while costing memory.
MAX_AUTO_TILE = 8192


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return float(value)


def _int_or_auto(name: str, value: Any, minimum: int) -> None:
    if value == AUTO:
        return
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{name} must be 'auto' or an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class InferenceConfig:
    """How to run a model over a slide.

    Parameters
    ----------
    target_mpp
        Working resolution in µm/px (1.0, about 10x, as in the paper). The slide is read from
        the coarsest pyramid level at least this fine and shrunk to it by area averaging.
        A model file states the resolution it was trained at; callers normally pass that.
    tile
        Side of the square *output* region of each tile in working pixels, a multiple of the
        model's ``alignment``. ``"auto"``: 1024 on CPU and MPS (about 1.6 GB peak for lite
        MS U-Net), and on CUDA the largest tile (up to 8192, and small enough for cuDNN's
        2**31-element limit) whose measured activation memory fits half of the free GPU
        memory. Larger tiles waste less on margins.
    margin
        Context read on every side of a tile and discarded after the forward pass, in working
        pixels, a multiple of the model's ``alignment``. ``"auto"``: the margin measured for
        the model file (its header's ``training["margin"]``, see
        :mod:`napari_msunet.models.margin`: labels equal to the exact run on >= 99.9 % of
        calibration pixels), else the exact one. ``"exact"``: the model's structural receptive
        radius rounded up to the alignment, so the stitched result equals one whole-image
        forward pass (see :mod:`napari_msunet.inference.tiling`).
    batch_size
        Tiles per forward pass. ``"auto"``: 1 on CPU/MPS; on CUDA as many tiles as fit the
        memory budget, at most 8.
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
    amp
        Mixed precision for the forward pass: ``"auto"`` (bf16 on CUDA when the card supports
        it, else fp16; none on CPU and MPS), ``"bf16"``, ``"fp16"`` or ``"none"``.
    channels_last
        NHWC memory format for the network: ``"auto"`` uses it on CUDA and CPU, where it
        measured 1.2-1.5x faster (docs/benchmarks.md), and not on MPS.
    tissue
        Detect tissue on a low-resolution level and skip tiles without any.
    tissue_mpp
        Resolution (µm/px) at which tissue is detected.
    tissue_threshold
        Saturation threshold (0-1) for tissue; ``None``: Otsu's threshold on the slide's
        saturation, clipped to ``tissue_threshold_range``.
    tissue_threshold_range
        Bounds for the Otsu threshold. Without them a slide that is all tissue would be split
        into its pale and dark parts, and a slide that is all glass would get tissue from noise.
    tissue_min_area_um2, tissue_hole_area_um2
        Tissue pieces smaller than this are removed (dust, debris); holes smaller than this are
        filled (pale lumina inside tissue). In µm².
    read_workers
        Threads that read, decode, resample and normalise tiles ahead of the model.
        ``"auto"``: 2 on CPU (the model uses the cores), else up to 8.
    prefetch
        Batches read ahead of the model; bounds the memory of the read queue.
    write_workers
        Threads that write finished tiles to the outputs; the model never waits for a write
        unless ``2 * write_workers`` tiles are queued.
    chunk
        Chunk side of the OME-Zarr outputs, in pixels.
    save_probabilities
        Also write the per-class probabilities (uint8, ``round(p * 255)``), not only the label
        map.
    labels_on_tissue_only
        Set the label map to background wherever the tissue mask says glass, also inside
        computed tiles (a network never trained on glass may call it anything). The
        probabilities are kept as computed.
    """

    target_mpp: float = 1.0
    tile: int | Auto = AUTO
    margin: int | Auto | Literal["exact"] = AUTO
    batch_size: int | Auto = AUTO
    device: str = AUTO
    amp: str = AUTO
    channels_last: bool | Auto = AUTO
    tissue: bool = True
    tissue_mpp: float = TissueSettings.mpp
    tissue_threshold: float | None = TissueSettings.threshold
    tissue_threshold_range: tuple[float, float] = TissueSettings.threshold_range
    tissue_min_area_um2: float = TissueSettings.min_area_um2
    tissue_hole_area_um2: float = TissueSettings.hole_area_um2
    read_workers: int | Auto = AUTO
    prefetch: int = 2
    write_workers: int = 2
    chunk: int = 512
    save_probabilities: bool = True
    labels_on_tissue_only: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_mpp", _positive_number("target_mpp", self.target_mpp))
        _int_or_auto("tile", self.tile, 1)
        if self.margin != EXACT:
            _int_or_auto("margin", self.margin, 0)
        _int_or_auto("batch_size", self.batch_size, 1)
        _int_or_auto("read_workers", self.read_workers, 1)
        dev = self.device
        if not isinstance(dev, str) or not (
            dev in (AUTO, "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            raise ConfigError(
                f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {dev!r}"
            )
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.channels_last not in (True, False, AUTO):
            raise ConfigError(
                f"channels_last must be true, false or 'auto': {self.channels_last!r}"
            )
        for name in ("tissue", "save_probabilities", "labels_on_tissue_only"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        _positive_number("tissue_mpp", self.tissue_mpp)
        lo_hi = self.tissue_threshold_range
        try:
            lo, hi = (float(v) for v in lo_hi)
        except (TypeError, ValueError):
            raise ConfigError(f"tissue_threshold_range must be two numbers: {lo_hi!r}") from None
        if not 0 <= lo <= hi <= 1:
            raise ConfigError(f"tissue_threshold_range must be 0 <= low <= high <= 1: {lo_hi!r}")
        object.__setattr__(self, "tissue_threshold_range", (lo, hi))
        t = self.tissue_threshold
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= 1
        ):
            raise ConfigError(f"tissue_threshold must be None or a number in 0..1, got {t!r}")
        for name in ("tissue_min_area_um2", "tissue_hole_area_um2"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf:
                raise ConfigError(f"{name} must be a non-negative number, got {v!r}")
        for name, minimum in (("prefetch", 1), ("write_workers", 1), ("chunk", 16)):
            v = getattr(self, name)
            if not _is_int(v) or v < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {v!r}")

    # -- serialisation ---------------------------------------------------------------------
    @property
    def tissue_settings(self) -> TissueSettings:
        """The ``tissue_*`` settings as the tissue detector takes them."""
        return TissueSettings(
            mpp=self.tissue_mpp,
            threshold=self.tissue_threshold,
            threshold_range=self.tissue_threshold_range,
            min_area_um2=self.tissue_min_area_um2,
            hole_area_um2=self.tissue_hole_area_um2,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists); :meth:`from_dict` inverts it."""
        d = asdict(self)
        d["tissue_threshold_range"] = list(self.tissue_threshold_range)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceConfig:
        """Build from a mapping such as :meth:`to_dict` output or parsed YAML/JSON.

        Unknown keys are an error rather than ignored: a misspelt setting would otherwise
        silently fall back to its default.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"an inference config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown inference setting(s): {', '.join(map(str, unknown))}; "
                f"valid: {', '.join(sorted(known))}"
            )
        values = dict(data)
        if "tissue_threshold_range" in values and isinstance(
            values["tissue_threshold_range"], list
        ):
            values["tissue_threshold_range"] = tuple(values["tissue_threshold_range"])
        return cls(**values)
