"""A model file as a bioimage.io model package, and back.

The package (a zip, bioimage.io model spec 0.5) holds the ONNX and TorchScript exports of
:mod:`~napari_msunet.models.export` (normalisation and softmax inside), a test input (a real
H&E tile, uint8 RGB) and the probabilities torch gives for it, the µm/px the model expects
(the space axes' scale), a README with the classes, the paper and the data credits, and the
napari-msunet model file itself as an attachment: so a package this tool exported is also a
model file for it again (:func:`extract_model_file`), and models travel both ways.

Each package is validated with ``bioimageio.spec`` before it is written; the test tensors are
checked against both runtimes when they are made.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from napari_msunet import __version__
from napari_msunet.errors import ConfigError, ModelFileError, MsunetError

__all__ = ["build_package", "extract_model_file", "is_package"]

PAPER = (
    "Kurian, Lohan et al. Deep Multi-Scale U-Net Architecture and Label-Noise Robust "
    "Training Strategies for Histopathological Image Segmentation."
)
PAPER_URL = "https://arxiv.org/abs/2205.01777"
EBHI = (
    'Shi et al. "EBHI-Seg: A novel enteroscope biopsy histopathological hematoxylin and eosin '
    'image dataset for image segmentation tasks", Frontiers in Medicine 10:1114673 (2023). '
    "CC BY 4.0."
)
EBHI_DOI = "10.3389/fmed.2023.1114673"
#: Names of the package's description file (spec 0.5, and the older name).
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")


def _spec() -> Any:
    try:
        import bioimageio.spec  # noqa: F401
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise ConfigError(
            "a bioimage.io package needs bioimageio.spec: pip install 'napari-msunet[export]'"
        ) from None
    return v0_5


def _readme(header: Any, model_name: str, margin: int, alignment: int) -> str:
    classes = "\n".join(f"- channel {i}: {n}" for i, n in enumerate(header.class_names))
    trained = (header.training or {}).get("domain", {}).get("description", "")
    return f"""# {model_name}

A Multi-Scale U-Net (or U-Net) for region segmentation of H&E histology, exported by
napari-msunet {__version__}.

- **Input**: RGB, float32 in [0, 1] (pixel value / 255; the package's preprocessing does
  it), at **{header.input_um_per_px:g} µm per pixel**; height and width multiples of
  {alignment}. The model's own normalisation (mean {list(header.norm_mean)}, std
  {list(header.norm_std)}) is inside the network.
- **Output**: class probabilities (softmax inside the network), one channel per class:
{classes}
- **Tiling**: give each tile {margin} px of context on every side and keep its centre (the
  border of a tile sees less context); napari-msunet's `msunet predict` does this.
{f"- **Trained on**: {trained}" if trained else ""}

## Running it in QuPath

Use the ONNX or TorchScript weights of this package with a QuPath extension that runs
them (e.g. the deep-learning pixel classifier of QuPath's DJL or InstanSeg extensions):
resample the image to {header.input_um_per_px:g} µm/px, feed RGB / 255, tile with a
{margin} px overlap, and take the argmax of the output channels as the class.

## Credits

- Method: {PAPER} arXiv:2205.01777
- The bundled default model was trained on EBHI-Seg: {EBHI} doi:{EBHI_DOI}
- The test tile is made of EBHI-Seg images (CC BY 4.0, same source).
"""


def build_package(model_path: Path, folder: Path, tile: np.ndarray) -> tuple[Path, float]:
    """Build and validate the package of ``model_path`` in ``folder``: ``(zip, max |Δp|)``.

    ``max |Δp|`` is the larger of the ONNX and TorchScript exports' differences from torch
    on ``tile`` (both are checked in :func:`~napari_msunet.models.export.build_export`).
    """
    from napari_msunet.models.export import build_export, export_margin

    v = _spec()
    from bioimageio.spec import save_bioimageio_package

    onnx_path, d1, probs, header = build_export(model_path, "onnx", folder, tile)
    ts_path, d2, _, _ = build_export(model_path, "torchscript", folder, tile)
    from napari_msunet.models.checkpoint import load_model

    model, _ = load_model(model_path)
    alignment = int(getattr(model, "alignment", 1))
    margin = export_margin(model, header)
    name = model_path.name.removesuffix(".safetensors")
    test_in = folder / "test_input.npy"
    test_out = folder / "test_output.npy"
    np.save(test_in, tile.transpose(2, 0, 1)[None].astype(np.uint8))
    np.save(test_out, probs.astype(np.float32))
    readme = folder / "README.md"
    readme.write_text(_readme(header, name, margin, alignment), encoding="utf-8")
    attached = folder / model_path.name
    attached.write_bytes(model_path.read_bytes())
    cover = folder / "cover.png"
    _cover(tile, probs, header, cover)
    mpp = float(header.input_um_per_px)
    min_side = max(2 * margin + alignment, 2 * alignment)
    min_side = -(-min_side // alignment) * alignment

    def space(axis: str) -> Any:
        return v.SpaceInputAxis(
            id=v.AxisId(axis),
            size=v.ParameterizedSize(min=min_side, step=alignment),
            unit="micrometer",
            scale=mpp,
        )

    def space_out(axis: str) -> Any:
        return v.SpaceOutputAxisWithHalo(
            id=v.AxisId(axis),
            size=v.SizeReference(tensor_id=v.TensorId("input"), axis_id=v.AxisId(axis)),
            halo=margin,
            unit="micrometer",
            scale=mpp,
        )

    descr = v.ModelDescr(
        name=f"napari-msunet {name}",
        description=(
            f"Multi-Scale U-Net region segmentation of H&E at {mpp:g} µm/px: "
            + ", ".join(header.class_names)
        ),
        authors=[v.Author(name="napari-msunet")],
        cite=[
            v.CiteEntry(text=PAPER, url=v.HttpUrl(PAPER_URL)),
            v.CiteEntry(text=EBHI, doi=v.Doi(EBHI_DOI)),
        ],
        license=v.LicenseId("CC-BY-4.0"),
        documentation=v.FileDescr(source=readme),
        covers=[v.FileDescr(source=cover)],
        tags=["segmentation", "histopathology", "H&E", "whole-slide-imaging", "ms-unet"],
        attachments=[v.FileDescr(source=attached)],
        version="0.1.0",
        inputs=[
            v.InputTensorDescr(
                id=v.TensorId("input"),
                description="RGB at the model's µm/px",
                axes=[
                    v.BatchAxis(),
                    v.ChannelAxis(channel_names=[v.Identifier(c) for c in ("R", "G", "B")]),
                    space("y"),
                    space("x"),
                ],
                test_tensor=v.FileDescr(source=test_in),
                data=v.IntervalOrRatioDataDescr(type="uint8"),
                preprocessing=[
                    v.EnsureDtypeDescr(kwargs=v.EnsureDtypeKwargs(dtype="float32")),
                    v.ScaleLinearDescr(kwargs=v.ScaleLinearKwargs(gain=1 / 255, offset=0.0)),
                ],
            )
        ],
        outputs=[
            v.OutputTensorDescr(
                id=v.TensorId("probabilities"),
                description="class probabilities: " + ", ".join(header.class_names),
                axes=[
                    v.BatchAxis(),
                    v.ChannelAxis(
                        channel_names=[
                            v.Identifier(f"p{i}") for i in range(len(header.class_names))
                        ]
                    ),
                    space_out("y"),
                    space_out("x"),
                ],
                test_tensor=v.FileDescr(source=test_out),
                data=v.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
            )
        ],
        weights=v.WeightsDescr(
            onnx=v.OnnxWeightsDescr(source=onnx_path, opset_version=_opset(onnx_path)),
            torchscript=v.TorchscriptWeightsDescr(
                source=ts_path, pytorch_version=v.Version(_torch_version())
            ),
        ),
    )
    out = folder / f"{name}.bioimageio.zip"
    save_bioimageio_package(descr, output_path=out)
    status = package_status(out)
    if status not in ("valid-format", "passed"):
        raise MsunetError(f"{model_path}: bioimageio.spec finds the package invalid: {status}")
    return out, max(d1, d2)


def package_status(path: Path) -> str:
    """bioimageio.spec's verdict on a package, read back from its zip as a user would."""
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(path, perform_io_checks=True)
    summary = descr.validation_summary
    if isinstance(descr, InvalidDescr):
        return f"invalid: {summary.format()}"
    return str(summary.status)


def _opset(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _cover(tile: np.ndarray, probs: np.ndarray, header: Any, path: Path) -> None:
    """The test tile beside its prediction in the classes' colours (the zoo's thumbnail)."""
    from PIL import Image

    colours = np.array(header.class_colours or [(0, 0, 0), (255, 200, 0)], np.float32)
    labels = probs[0].argmax(0)
    blend = tile.astype(np.float32).copy()
    fg = labels > 0
    blend[fg] = 0.55 * blend[fg] + 0.45 * colours[labels[fg] % len(colours)]
    image = np.concatenate([tile, blend.astype(np.uint8)], axis=1)
    Image.fromarray(image).save(path)


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a zip holding a bioimage.io description."""
    p = Path(path)
    if not p.is_file() or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return any(n in RDF_NAMES for n in z.namelist())


def extract_model_file(package: str | Path) -> Path:
    """The napari-msunet model file attached to a package this tool exported.

    Written once to a cache file named by its SHA-256 (a temporary folder), so every
    command that takes a model file takes the package too.

    Raises
    ------
    ModelFileError
        A package without a napari-msunet model file (exported by another tool).
    """
    p = Path(package)
    with zipfile.ZipFile(p) as z:
        names = [n for n in z.namelist() if n.endswith(".safetensors") and "/" not in n]
        if not names:
            raise ModelFileError(
                p,
                "is a bioimage.io package without a napari-msunet model file: this tool "
                "runs packages it exported (they carry their model file as an attachment); "
                "run other tools' models with bioimageio.core",
            )
        data = z.read(names[0])
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(tempfile.gettempdir()) / "napari-msunet-models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.safetensors"
    if not path.is_file():
        from napari_msunet._atomic import atomic_write_bytes

        atomic_write_bytes(path, io.BytesIO(data).getvalue(), overwrite=True)
    return path
