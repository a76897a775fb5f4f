"""Export a model file to formats other tools run: ONNX, TorchScript, a bioimage.io package.

Every export holds the same computation, so that a tool needs nothing of ours to run it:

- **input** ``(N, 3, H, W)`` float32 RGB in ``[0, 1]`` (pixel value / 255), ``H`` and ``W``
  multiples of the network's alignment (64 for the bundled model), at the model's µm/px;
- the model's own **normalisation** (mean, std) and a **softmax** are inside the graph;
- **output** ``(N, C, H, W)`` float32 class probabilities, channel ``c`` = class ``c`` of the
  header (0 = background).

A tile's border is less certain than its centre (the network sees less context there): tile
with an overlap of the model's margin (:func:`export_margin`) and keep the centres, as
``msunet predict`` does.

Before anything is written each export is run on a real H&E test tile (from the bundled
EBHI-Seg sample) by its own runtime (onnxruntime, ``torch.jit.load``) and compared with the
torch model: an export whose largest probability difference exceeds ``tolerance`` is refused.
Files are written atomically; an existing one only with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_msunet._atomic import atomic_write_bytes, check_new_file
from napari_msunet.errors import ConfigError, MsunetError
from napari_msunet.models.checkpoint import ModelHeader, load_model
from napari_msunet.models.margin import measured_margin

__all__ = ["FORMATS", "ExportNet", "ExportResult", "check_tile", "export_model"]

FORMATS = ("bioimageio", "onnx", "torchscript")
#: Largest |Δp| between an export and torch accepted on the test tile.
TOLERANCE = 1e-3
#: ONNX opset of the exports.
OPSET = 18


class ExportNet(nn.Module):
    """The network with its normalisation and softmax: RGB in [0, 1] to probabilities."""

    def __init__(self, net: nn.Module, header: ModelHeader) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(header.norm_mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(header.norm_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean.view(1, 3, 1, 1)) / self.std.view(1, 3, 1, 1)
        return torch.softmax(self.net(x), dim=1)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how far it is from torch on the test tile."""

    path: Path
    format: str
    max_abs_diff: float
    tile: tuple[int, int]

    def line(self) -> str:
        h, w = self.tile
        return (
            f"{self.path} ({self.format}): checked against torch on a {w} x {h} H&E test "
            f"tile, max |Δp| = {self.max_abs_diff:.2e}"
        )


def export_margin(model: nn.Module, header: ModelHeader) -> int:
    """The context a tile needs on each side: the measured margin, else one alignment."""
    alignment = int(getattr(model, "alignment", 1))
    margin = measured_margin(header)
    return margin if margin is not None else alignment


def check_tile(side: int = 384) -> np.ndarray:
    """A ``side``² RGB uint8 tile of real H&E: the bundled EBHI-Seg sample images tiled."""
    from PIL import Image

    from napari_msunet.models.bundled import sample_data_dir

    files = sorted((sample_data_dir() / "images").iterdir())
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files[:4]]
    h, w = images[0].shape[:2]
    mosaic = np.zeros((2 * h, 2 * w, 3), np.uint8)
    for k, image in enumerate(images):
        y, x = divmod(k, 2)
        mosaic[y * h : (y + 1) * h, x * w : (x + 1) * w] = image[:h, :w]
    reps = -(-side // (2 * min(h, w)))
    return np.tile(mosaic, (reps, reps, 1))[:side, :side].copy()


def _as_input(tile: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(tile).permute(2, 0, 1)[None].float().div(255).contiguous()


def _export_onnx(net: ExportNet, path: Path, example: torch.Tensor, alignment: int) -> None:
    from torch.export import Dim

    ny, nx = Dim("ny", min=1, max=1024), Dim("nx", min=1, max=1024)
    shapes = ({0: Dim("batch", min=1, max=256), 2: alignment * ny, 3: alignment * nx},)
    with _quiet_torch():
        torch.onnx.export(
            net, (example,), str(path), input_names=["input"], output_names=["output"],
            opset_version=OPSET, dynamo=True, dynamic_shapes=shapes, external_data=False,
            verbose=False,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Keep torch's exporter chatter (its progress lines, its own deprecations, optional
    torchvision operators) off the user's terminal; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError(
            "checking an ONNX export needs onnxruntime: pip install 'napari-msunet[export]'"
        ) from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def _export_torchscript(net: ExportNet, path: Path, example: torch.Tensor) -> None:
    with _quiet_torch():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks: constants
        traced = torch.jit.trace(net, example, check_trace=False)
        traced.save(str(path))


def _run_torchscript(path: Path, x: np.ndarray) -> np.ndarray:
    with _quiet_torch():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def build_export(
    model_path: str | os.PathLike[str], fmt: str, folder: Path, tile: np.ndarray
) -> tuple[Path, float, np.ndarray, Any]:
    """Write the ``fmt`` (``onnx`` or ``torchscript``) export of a model file into
    ``folder`` and check it on ``tile``: ``(file, max |Δp|, probabilities, header)``."""
    model, header = load_model(model_path)
    net = ExportNet(model.float(), header).eval()
    alignment = int(getattr(model, "alignment", 1))
    x = _as_input(tile)
    if x.shape[-2] % alignment or x.shape[-1] % alignment:
        raise ConfigError(f"the test tile must be a multiple of {alignment} px")
    with torch.no_grad():
        want = net(x).numpy()
    path = folder / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    example = _as_input(tile[: 2 * alignment, : 2 * alignment])  # another shape than the check
    if fmt == "onnx":
        _export_onnx(net, path, example, alignment)
        got = _run_onnx(path, x.numpy())
    else:
        _export_torchscript(net, path, example)
        got = _run_torchscript(path, x.numpy())
    diff = float(np.abs(got - want).max())
    if not np.isfinite(diff) or diff > TOLERANCE:
        raise MsunetError(
            f"{model_path}: the {fmt} export differs from torch on the test tile "
            f"(max |Δp| = {diff:.3g} > {TOLERANCE}); nothing written"
        )
    return path, diff, want, header


def export_model(
    model_path: str | os.PathLike[str],
    fmt: str,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    tile_side: int = 384,
) -> ExportResult:
    """Export a model file as ``fmt`` (see :data:`FORMATS`) to ``out``, checked first.

    Raises
    ------
    ConfigError
        An unknown format, or a runtime the check needs is not installed (named).
    ModelFileError
        The model file is not one of ours.
    MsunetError
        The export differs from torch beyond :data:`TOLERANCE`.
    WriterError
        ``out`` exists without ``overwrite``, or cannot be written.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")
    out = check_new_file(out, overwrite)  # before minutes of work
    tile = check_tile(tile_side)
    with tempfile.TemporaryDirectory(prefix="msunet-export-") as tmp:
        folder = Path(tmp)
        if fmt == "bioimageio":
            from napari_msunet.models.bioimageio import build_package

            built, diff = build_package(Path(model_path), folder, tile)
        else:
            built, diff, _, _ = build_export(model_path, fmt, folder, tile)
        atomic_write_bytes(out, built.read_bytes(), overwrite=overwrite)
    return ExportResult(out, fmt, diff, (tile_side, tile_side))
