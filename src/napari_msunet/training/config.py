"""Training configuration: one frozen dataclass, validated, to and from plain dicts (YAML)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from napari_msunet.errors import ConfigError
from napari_msunet.training.augment import AugmentConfig
from napari_msunet.training.losses import LossConfig

__all__ = ["TrainConfig"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training or fine-tuning run needs besides its data.

    Parameters
    ----------
    architecture, preset, model_overrides
        The network: registry name, width preset and any :class:`ModelConfig` overrides
        (e.g. ``{"widths": [8, 16, 32]}``). Ignored when fine-tuning from a model file.
    class_names, class_colours
        One per output class, background first.
    mpp
        µm/px of the training images (written into the model file: inference resamples to it).
    patch
        Side of the training patches; a multiple of the model's downsampling factor.
    batch_size, epochs, steps_per_epoch
        ``steps_per_epoch=None`` runs through the training set once per epoch.
    lr
        Adam learning rate (paper: 1e-3).
    lr_schedule, warmup_steps
        ``"constant"`` (the paper's; default) or ``"cosine"``: after ``warmup_steps`` of
        linear warm-up the rate falls along a half cosine to 0 at the last step, so that the
        last epochs settle instead of swinging. A function of the step, so a resumed run
        continues on the same curve. Left out of :meth:`to_dict` at their defaults, so the
        records of runs made before they existed still match.
    class_weights
        ``"auto"`` (inverse class frequency over the training masks), ``None`` (all 1) or a
        list, one per class.
    loss
        Fuzzy boundaries, bootstrap period, centre-crop margin, ignore label (eq. 1-4).
    augment
        The paper's augmentations.
    norm_mean, norm_std
        Input normalisation, ``(rgb / 255 - mean) / std``, stored in the model file.
    seed
        Seeds weights, sampling order and augmentation: a CPU run is reproducible.
    device
        ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
    amp
        Mixed precision on CUDA (bf16 where supported, else fp16).
    num_workers
        DataLoader worker processes.
    validate_every
        Validate every this many epochs (and after the last).
    """

    class_names: tuple[str, ...] = ("Background", "Region")
    class_colours: tuple[tuple[int, int, int], ...] | None = None
    mpp: float = 1.0
    architecture: str = "msunet"
    preset: str = "lite"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    patch: int = 128
    batch_size: int = 8
    epochs: int = 10
    steps_per_epoch: int | None = None
    lr: float = 1e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    class_weights: str | tuple[float, ...] | None = "auto"
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    norm_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    norm_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    validate_every: int = 1

    def __post_init__(self) -> None:
        names = tuple(self.class_names)
        if len(names) < 2 or not all(isinstance(n, str) and n for n in names):
            raise ConfigError(f"class_names: at least 2 non-empty names needed, got {names}")
        object.__setattr__(self, "class_names", names)
        if self.class_colours is not None:
            object.__setattr__(
                self, "class_colours", tuple(tuple(int(v) for v in c) for c in self.class_colours)
            )
        if not self.mpp > 0:
            raise ConfigError(f"mpp must be positive, got {self.mpp}")
        for name in ("patch", "batch_size", "epochs", "validate_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if self.steps_per_epoch is not None and (
            not isinstance(self.steps_per_epoch, int) or self.steps_per_epoch < 1
        ):
            raise ConfigError("steps_per_epoch must be a positive integer or null")
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr must be in (0, 1), got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError(f"lr_schedule must be constant or cosine, not {self.lr_schedule!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(
                f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}"
            )
        cw = self.class_weights
        if isinstance(cw, str):
            if cw != "auto":
                raise ConfigError(f"class_weights must be 'auto', null or a list, got {cw!r}")
        elif cw is not None:
            cw = tuple(float(w) for w in cw)
            if len(cw) != len(names) or any(w < 0 for w in cw):
                raise ConfigError(f"class_weights: {len(names)} non-negative numbers needed")
            object.__setattr__(self, "class_weights", cw)
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith(
            "cuda:"
        ):
            raise ConfigError(f"device must be auto, cpu, cuda or mps, got {self.device!r}")
        for name in ("norm_mean", "norm_std"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3:
                raise ConfigError(f"{name} needs 3 values (R, G, B), got {v}")
            object.__setattr__(self, name, v)
        if any(s <= 0 for s in self.norm_std):
            raise ConfigError("norm_std must be positive")
        if not isinstance(self.loss, LossConfig):
            object.__setattr__(self, "loss", LossConfig(**dict(self.loss)))
        if not isinstance(self.augment, AugmentConfig):
            object.__setattr__(self, "augment", AugmentConfig(**dict(self.augment)))
        if self.num_workers < 0:
            raise ConfigError("num_workers must be >= 0")

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate of optimisation step ``step`` (0-based) of ``total_steps``."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        span = max(total_steps - self.warmup_steps, 1)
        done = min(max(step - self.warmup_steps, 0), span)
        return self.lr * 0.5 * (1 + math.cos(math.pi * done / span))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["loss"] = asdict(self.loss)
        d["augment"] = asdict(self.augment)
        for name, default in (("lr_schedule", "constant"), ("warmup_steps", 0)):
            if d[name] == default:  # see the class docstring: old run records still match
                del d[name]
        return _plain(d)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a plain dict (e.g. parsed YAML); unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training settings: {', '.join(unknown)}")
        data = dict(data)
        try:
            if isinstance(data.get("loss"), dict):
                loss = dict(data["loss"])
                if loss.get("class_weights") is not None:
                    loss["class_weights"] = tuple(loss["class_weights"])
                data["loss"] = LossConfig(**loss)
            if isinstance(data.get("augment"), dict):
                data["augment"] = AugmentConfig(**data["augment"])
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid training settings: {exc}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
