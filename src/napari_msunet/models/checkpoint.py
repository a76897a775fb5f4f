"""The model file: safetensors weights plus a JSON header, loaded without unpickling.

A model file is a plain safetensors file whose metadata holds one entry, ``napari_msunet``,
with a JSON document (:class:`ModelHeader`): the format name and version, the architecture and
its config, class names and colours, the input resolution, the normalisation, the training
tile size and free-form training provenance. Loading parses that JSON, rebuilds the network
from the registry and copies in tensors whose names and shapes must match exactly. Nothing in
the file can run code: ``torch.load`` and pickle are never used.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

from napari_msunet import __version__
from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import ConfigError, ModelFileError, brief
from napari_msunet.models.base import SegmentationModel
from napari_msunet.models.config import ModelConfig
from napari_msunet.models.registry import MODELS, build_from_config

FORMAT_NAME = "napari-msunet-model"
FORMAT_VERSION = 1
METADATA_KEY = "napari_msunet"
"""Key of the safetensors metadata entry that holds the JSON header."""

DEFAULT_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)


_MAX_REASON = 400
"""Longest reason a header error keeps: a header is untrusted input and may hold megabytes."""


def _float_tuple(name: str, values: Any, n: int) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a list of numbers, got {brief(values)}") from None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ConfigError(
            f"{name} must hold {n} finite numbers (one per input channel): {brief(out)}"
        )
    return out


@dataclass(frozen=True)
class ModelHeader:
    """Everything a model file says about its network besides the weights.

    Parameters
    ----------
    architecture
        Registry name: ``"msunet"``, ``"unet"`` or ``"attention_unet"``.
    config
        The architecture's :class:`ModelConfig`.
    class_names
        One name per output class, background first (``config.n_classes`` of them).
    input_um_per_px
        Physical pixel size (µm/px) of the images the model was trained on; inference
        resamples the slide to it.
    norm_mean, norm_std
        Per-channel normalisation applied to the input scaled to 0..1:
        ``(rgb / 255 - mean) / std``.
    class_colours
        RGB (0-255) display colour per class; ``None`` picks a default palette.
    tile_size
        Side of the square training patches, in pixels (``None`` if unknown).
    training
        Free-form, JSON-serialisable provenance: data, epochs, losses and their settings,
        metrics, parent model, ...
    package_version
        napari-msunet version that wrote the file.
    stored_dtype
        Set by :func:`load_model`, never written: the dtype the file stores its floating-point
        weights in (``"float16"``, ``"float64"``, ...; ``None`` for a header not read from a
        file). Weights are always loaded as float32, the dtype every inference and training
        path feeds the network, so a half- or double-precision export works like any other;
        this says what the file held.
    """

    architecture: str
    config: ModelConfig
    class_names: tuple[str, ...]
    input_um_per_px: float
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    class_colours: tuple[tuple[int, int, int], ...] | None = None
    tile_size: int | None = None
    training: Mapping[str, Any] = field(default_factory=dict)
    package_version: str = __version__
    stored_dtype: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or self.architecture not in MODELS:
            raise ConfigError(
                f"unknown architecture {brief(self.architecture)}; known: {', '.join(MODELS)}"
            )
        if not isinstance(self.config, ModelConfig):
            raise ConfigError(f"config must be a ModelConfig, got {type(self.config).__name__}")
        n = self.config.n_classes
        if isinstance(self.class_names, str) or not isinstance(self.class_names, Sequence):
            raise ConfigError(f"class_names must be a list of names, got {brief(self.class_names)}")
        names = tuple(self.class_names)
        if len(names) != n or not all(isinstance(s, str) and s for s in names):
            raise ConfigError(
                f"class_names must be {n} non-empty strings (one per class of the network), "
                f"got {brief(names)}"
            )
        object.__setattr__(self, "class_names", names)
        colours = self.class_colours
        if colours is None:
            colours = tuple(DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)] for i in range(n))
        try:
            colours = tuple(tuple(int(v) for v in c) for c in colours)
        except (TypeError, ValueError):
            raise ConfigError(f"class_colours must be RGB triples, got {brief(colours)}") from None
        if len(colours) != n or not all(
            len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colours
        ):
            raise ConfigError(f"class_colours must be {n} RGB triples of 0..255: {brief(colours)}")
        object.__setattr__(self, "class_colours", colours)
        um = self.input_um_per_px
        if isinstance(um, bool) or not isinstance(um, int | float) or not 0 < um < math.inf:
            raise ConfigError(f"input_um_per_px must be a positive number, got {brief(um)}")
        object.__setattr__(self, "input_um_per_px", float(um))
        c = self.config.in_channels
        object.__setattr__(self, "norm_mean", _float_tuple("norm_mean", self.norm_mean, c))
        std = _float_tuple("norm_std", self.norm_std, c)
        if not all(s > 0 for s in std):
            raise ConfigError(f"norm_std must be positive, got {std}")
        object.__setattr__(self, "norm_std", std)
        ts = self.tile_size
        if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int) or ts < 1):
            raise ConfigError(f"tile_size must be a positive integer or None, got {brief(ts)}")
        if not isinstance(self.training, Mapping):
            raise ConfigError(f"training must be a mapping, got {type(self.training).__name__}")
        try:
            training = json.loads(json.dumps(dict(self.training), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"training provenance is not JSON-serialisable: {exc}") from None
        object.__setattr__(self, "training", training)
        if not isinstance(self.package_version, str):
            raise ConfigError(f"package_version must be a string: {brief(self.package_version)}")

    @classmethod
    def for_model(cls, model: SegmentationModel, **fields: Any) -> ModelHeader:
        """Header for ``model``, taking architecture and config from it."""
        return cls(architecture=model.arch_name, config=model.config, **fields)

    def to_dict(self) -> dict[str, Any]:
        """The JSON document stored in the file (format name and version included)."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "config": self.config.to_dict(),
            "class_names": list(self.class_names),
            "class_colours": [list(c) for c in self.class_colours or ()],
            "input_um_per_px": self.input_um_per_px,
            "norm_mean": list(self.norm_mean),
            "norm_std": list(self.norm_std),
            "tile_size": self.tile_size,
            "training": dict(self.training),
            "package_version": self.package_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelHeader:
        """Validate and parse :meth:`to_dict` output; raises :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"the header must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME:
            raise ConfigError(f"header format is {brief(data.get('format'))}, not {FORMAT_NAME!r}")
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigError(f"invalid format_version {brief(version)}")
        if version > FORMAT_VERSION:
            raise ConfigError(
                f"format version {version} is newer than this napari-msunet reads "
                f"({FORMAT_VERSION}); upgrade napari-msunet"
            )
        fields_ = dict(data)
        del fields_["format"], fields_["format_version"]
        required = {"architecture", "config", "class_names", "input_um_per_px"}
        required |= {"norm_mean", "norm_std"}
        missing = sorted(required - set(fields_))
        if missing:
            raise ConfigError(f"header lacks {', '.join(missing)}")
        allowed = required | {"class_colours", "tile_size", "training", "package_version"}
        unknown = sorted(set(fields_) - allowed)
        if unknown:
            shown = ", ".join(k if len(k) <= 60 else f"{k[:40]}..." for k in unknown[:5])
            more = f", ... ({len(unknown)} in all)" if len(unknown) > 5 else ""
            raise ConfigError(f"header has unknown keys {shown}{more}")
        fields_["config"] = ModelConfig.from_dict(fields_["config"])
        fields_.setdefault("package_version", "unknown")
        return cls(**fields_)

    def to_json(self) -> str:
        """Compact JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)


def save_model(
    path: str | os.PathLike[str],
    model: SegmentationModel,
    header: ModelHeader,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``model``'s weights and ``header`` to ``path`` atomically.

    The file is written to a temporary name in the same folder and renamed over ``path``, so
    a crash never leaves a half-written model. An existing ``path`` is refused unless
    ``overwrite`` (model versions are new files). Returns the path written.
    """
    path = Path(path)
    if header.architecture != model.arch_name or header.config != model.config:
        raise ConfigError(
            f"header describes {header.architecture} {header.config}, but the model is "
            f"{model.arch_name} {model.config}"
        )
    if path.exists() and not overwrite:
        raise ModelFileError(path, "already exists; choose a new name (or pass overwrite=True)")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = safetensors_save(tensors, metadata={METADATA_KEY: header.to_json()})
    return atomic_write_bytes(path, data, overwrite=True)


def _sniff(path: Path) -> None:
    """Refuse files that are plainly not safetensors, with a message saying what they are.

    A safetensors file starts with the little-endian length of its JSON header, then ``{``.
    """
    if path.is_dir():
        raise ModelFileError(path, "is a folder, not a model file")
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(9)
    except FileNotFoundError:
        raise ModelFileError(path, "does not exist") from None
    except OSError as exc:
        raise ModelFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    if size == 0:
        raise ModelFileError(path, "is empty")
    n = int.from_bytes(head[:8], "little")
    if len(head) == 9 and head[8:9] == b"{" and n + 8 <= size:
        return
    zip_archive = head.startswith(b"PK\x03\x04")  # torch.save's default since 1.6
    pickle_v2plus = len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
    if zip_archive or pickle_v2plus:
        raise ModelFileError(
            path,
            "looks like a PyTorch/pickle checkpoint (.pt/.pth). napari-msunet never unpickles "
            "model files, since pickle can run arbitrary code; export the weights to a "
            "napari-msunet model file (safetensors with header) in a trusted environment",
        )
    if len(head) == 9 and head[8:9] == b"{":
        raise ModelFileError(
            path, f"is truncated (its header says {n} bytes, the file has only {size - 8})"
        )
    raise ModelFileError(path, f"is truncated or not a safetensors model file ({size} bytes)")


def _open(path: Path) -> Any:
    """Open ``path`` with safetensors after :func:`_sniff`; a context manager."""
    _sniff(path)
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as exc:
        raise ModelFileError(
            path, f"is not a valid safetensors file or is truncated ({exc})"
        ) from None


def _parse_header(path: Path, handle: Any) -> ModelHeader:
    meta = handle.metadata() or {}
    text = meta.get(METADATA_KEY)
    if text is None:
        raise ModelFileError(
            path,
            f"is a safetensors file but not a napari-msunet model (no {METADATA_KEY!r} header)",
        )
    try:
        return ModelHeader.from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise ModelFileError(path, f"has a header that is not valid JSON ({exc})") from None
    except ConfigError as exc:
        raise ModelFileError(path, f"has an invalid header: {_cut(str(exc))}") from None
    except (TypeError, ValueError) as exc:
        raise ModelFileError(path, f"has an invalid header ({_cut(str(exc))})") from None
    except RecursionError:  # JSON nested ~1000 deep: Python's decoder gives up
        raise ModelFileError(path, "has a header nested too deeply to be decoded") from None


def _cut(reason: str) -> str:
    """``reason`` cut to :data:`_MAX_REASON` characters: the last guard on header errors.

    The header's own checks already shorten what they echo (:func:`brief`); this keeps any
    other message about a hostile header (the architecture's config, a TypeError naming an
    argument) to a few lines too.
    """
    if len(reason) <= _MAX_REASON:
        return reason
    return f"{reason[: _MAX_REASON - 40]}... ({len(reason)} characters in all)"


def read_header(path: str | os.PathLike[str]) -> ModelHeader:
    """The validated :class:`ModelHeader` of a model file, without loading its weights."""
    path = Path(path)
    with _open(path) as handle:
        return _parse_header(path, handle)


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[SegmentationModel, ModelHeader]:
    """Load a model file written by :func:`save_model`, in eval mode on ``device``.

    Raises :class:`~napari_msunet.errors.ModelFileError`, naming the file and the problem, for
    anything that is not a complete model file of ours: missing, empty, random bytes, pickle
    checkpoints, truncated files, plain safetensors without our header, invalid headers, and
    weights whose names, shapes or values (NaN/inf) do not fit the architecture the header
    names. Never unpickles. A bioimage.io package this tool exported is read through the
    model file it carries (:func:`~napari_msunet.models.bioimageio.extract_model_file`).
    """
    path = Path(path)
    from napari_msunet.models.bioimageio import extract_model_file, is_package

    if is_package(path):
        path = extract_model_file(path)
    with _open(path) as handle:
        header = _parse_header(path, handle)
        try:
            with torch.device("meta"):  # shapes only: the weights come from the file
                model = build_from_config(header.architecture, header.config)
        except ConfigError as exc:
            raise ModelFileError(path, f"names a model that cannot be built: {exc}") from None
        state, dtypes = _read_state(path, handle, header, model.state_dict())
    model.load_state_dict(state, strict=True, assign=True)
    header = dataclasses.replace(header, stored_dtype=", ".join(sorted(dtypes)) or None)
    return model.to(device).eval(), header


def _read_state(
    path: Path, handle: Any, header: ModelHeader, expected: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Tensors of the file, checked against the architecture's own ``expected`` state.

    Tensors stored in another dtype of the same kind are cast to the expected one (float16,
    bfloat16 or float64 weights to float32; an int32 counter to int64): a network with
    float16 weights fails on the first float32 tile with a dtype error deep in torch.
    Returns the state and the floating-point dtypes the file stored.
    """
    present = set(handle.keys())
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected, e.g. {', '.join(unexpected[:3])}")
        raise ModelFileError(
            path, f"weights do not match {header.architecture} ({'; '.join(parts)})"
        )
    state = {}
    dtypes: set[str] = set()
    for name, ref in expected.items():
        try:
            shape = tuple(handle.get_slice(name).get_shape())
            if shape != tuple(ref.shape):
                raise ModelFileError(
                    path,
                    f"tensor {name!r} has shape {shape} but {header.architecture} with this "
                    f"config needs {tuple(ref.shape)}; the header does not match the weights",
                )
            tensor = handle.get_tensor(name)
        except ModelFileError:
            raise
        except Exception as exc:
            raise ModelFileError(path, f"tensor {name!r} cannot be read ({exc})") from None
        if tensor.is_floating_point() != ref.is_floating_point():
            raise ModelFileError(
                path, f"tensor {name!r} has dtype {tensor.dtype}, need {ref.dtype}"
            )
        if tensor.is_floating_point():
            dtypes.add(str(tensor.dtype).removeprefix("torch."))
            if not bool(torch.isfinite(tensor).all()):
                raise ModelFileError(path, f"tensor {name!r} contains NaN or infinite values")
        if tensor.dtype != ref.dtype:
            tensor = tensor.to(ref.dtype)
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise ModelFileError(
                    path,
                    f"tensor {name!r} holds values too large for "
                    f"{str(ref.dtype).removeprefix('torch.')} (the dtype the network runs in)",
                )
        state[name] = tensor
    return state, dtypes
