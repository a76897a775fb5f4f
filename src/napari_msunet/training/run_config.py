"""A training run described in YAML: where the data is, where results go, and the settings.

See ``examples/train_ebhi.yaml`` for a documented example of every key. Relative paths are
resolved against the YAML file's folder, so a config travels with its data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from napari_msunet.errors import ConfigError
from napari_msunet.training.config import TrainConfig

__all__ = ["FolderSource", "RunConfig", "SlideSource", "load_run_config"]


@dataclass(frozen=True)
class FolderSource:
    """Image/mask pairs in ``path/images`` and ``path/masks`` (EBHI-Seg layout)."""

    path: Path
    val_fraction: float = 0.2
    split_seed: int = 0
    noisy: bool = False
    label_map: dict[int, int] = field(default_factory=dict)
    limit: int | None = None  # use only this many pairs (quick experiments)


@dataclass(frozen=True)
class SlideSource:
    """One slide and its annotation (a label mask or QuPath GeoJSON)."""

    slide: Path
    annotation: Path
    split: str = "train"  # "train" or "val"
    noisy: bool = False
    mpp: float | None = None  # override when the slide does not state its µm/px


@dataclass(frozen=True)
class RunConfig:
    out: Path
    train: TrainConfig
    folders: tuple[FolderSource, ...] = ()
    slides: tuple[SlideSource, ...] = ()
    sampling: str = "grid"  # slides: "grid" (50 % overlap, tissue only) or "balanced"
    patches_per_slide: int = 2000  # for "balanced" sampling


def _resolve(base: Path, value: Any, key: str, source: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{source}: {key} must be a path, got {value!r}")
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _build(cls, data: Any, key: str, source: Path, paths: tuple[str, ...], base: Path):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: each entry of {key} must be a mapping, got {data!r}")
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown keys in {key}: {', '.join(unknown)}")
    values = dict(data)
    for p in paths:
        if p not in values:
            raise ConfigError(f"{source}: {key} entry needs {p!r}")
        values[p] = _resolve(base, values[p], f"{key}.{p}", source)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: {key}: {exc}") from None


def load_run_config(path: str | Path) -> RunConfig:
    """Read and validate a run YAML; errors name the file and the key at fault."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with out, data and train")
    unknown = sorted(set(data) - {"out", "data", "train", "sampling", "patches_per_slide"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys: {', '.join(unknown)}")
    base = path.parent
    if "out" not in data:
        raise ConfigError(f"{path}: 'out' (where checkpoints go) is required")
    out = _resolve(base, data["out"], "out", path)
    d = data.get("data") or {}
    if not isinstance(d, dict) or not (d.get("folders") or d.get("slides")):
        raise ConfigError(f"{path}: data needs 'folders' and/or 'slides'")
    folders = tuple(
        _build(FolderSource, f, "data.folders", path, ("path",), base)
        for f in d.get("folders") or []
    )
    slides = tuple(
        _build(SlideSource, s, "data.slides", path, ("slide", "annotation"), base)
        for s in d.get("slides") or []
    )
    for s in slides:
        if s.split not in ("train", "val"):
            raise ConfigError(f"{path}: data.slides split must be train or val, got {s.split!r}")
    try:
        train = TrainConfig.from_dict(data.get("train") or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: train: {exc}") from None
    sampling = data.get("sampling", "grid")
    if sampling not in ("grid", "balanced"):
        raise ConfigError(f"{path}: sampling must be grid or balanced, got {sampling!r}")
    return RunConfig(
        out, train, folders, slides, sampling, int(data.get("patches_per_slide", 2000))
    )
