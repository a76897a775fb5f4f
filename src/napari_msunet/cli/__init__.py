"""The ``msunet`` command line: the headless face of the same engine the napari plugin drives.

Every command turns :class:`~napari_msunet.errors.MsunetError` into a one-line message on
stderr and exit status 2, so scripts can tell bad input from a crash. So does an ``OSError``
that names a file or comes from the disk (read-only, permission denied, full): the package's
writers raise :class:`~napari_msunet.errors.WriterError` for those themselves, and this is the
last resort for one that escapes from a library (zarr, Pillow, tifffile) or the interpreter.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from napari_msunet import __version__
from napari_msunet.cli import io_commands, model_commands, model_files  # noqa: F401 - they register
from napari_msunet.cli._registry import COMMANDS, add_parsers
from napari_msunet.errors import MsunetError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msunet",
        description="Multi-Scale U-Net segmentation of whole-slide images (napari-msunet).",
    )
    p.add_argument("--version", action="version", version=f"napari-msunet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="describe slides: levels, µm/px, magnification")
    s.add_argument("slides", nargs="+", metavar="SLIDE")
    s.add_argument("--json", action="store_true", help="one JSON record per slide")

    s = sub.add_parser(
        "synthetic",
        help="write a synthetic pyramidal slide and its ground-truth GeoJSON (for tests/demos)",
    )
    s.add_argument("out", metavar="OUT", help="slide file to write (.svs, .ome.tif, .tif, .ndpi)")
    s.add_argument("--size", type=int, default=8192, help="width in pixels (default 8192)")
    s.add_argument("--height", type=int, default=None, help="height (default: same as width)")
    s.add_argument(
        "--format",
        choices=["svs", "ome-tiff", "tiff", "ndpi"],
        default="svs",
        help="file layout (default svs)",
    )
    s.add_argument("--mpp", type=float, default=0.25, help="µm per pixel (default 0.25)")
    s.add_argument("--tile", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="compression threads")
    s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser(
        "rasterize", help="QuPath GeoJSON -> pyramidal label mask (OME-Zarr or OME-TIFF)"
    )
    s.add_argument("annotation", metavar="GEOJSON")
    s.add_argument("--slide", required=True, help="the slide the annotation belongs to")
    s.add_argument("--out", required=True, help="mask to write: NAME.ome.zarr or NAME.ome.tif")
    s.add_argument("--level", type=int, default=0, help="slide pyramid level (default 0)")
    s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser("export-geojson", help="label mask -> QuPath GeoJSON (level-0 pixels)")
    s.add_argument("mask", metavar="MASK", help="OME-Zarr, (OME-)TIFF or PNG label mask")
    s.add_argument("--out", required=True, help="GeoJSON file to write")
    s.add_argument("--slide", help="the slide, to scale a mask made at a coarser level")
    s.add_argument(
        "--downsample",
        type=float,
        default=None,
        help="level-0 pixels per mask pixel (default: from --slide, else 1)",
    )
    s.add_argument("--simplify", type=float, default=0.0, help="tolerance in mask pixels")
    s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser(
        "predict",
        help="segment slides: OME-Zarr labels + probabilities, QuPath GeoJSON, preview PNG",
    )
    s.add_argument("slides", nargs="+", metavar="SLIDE")
    s.add_argument(
        "--model",
        default=None,
        help="model file (.safetensors); default: the bundled model (EBHI-Seg colon glands)",
    )
    s.add_argument("--out", required=True, help="output folder (one sub-folder per slide)")
    s.add_argument("--mpp", type=float, default=None, help="slide µm/px when the file lacks it")
    s.add_argument(
        "--target-mpp",
        type=float,
        default=None,
        help="working µm/px (default: the model's training resolution)",
    )
    s.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")
    s.add_argument("--tile", type=int, default=None, help="output tile side (default: auto)")
    s.add_argument(
        "--margin",
        type=_margin,
        default=None,
        help="context on each side in working px; auto (default): the margin measured for "
        "the model file, else exact; exact: the model's receptive radius (equal to one "
        "whole-image forward pass in float32)",
    )
    s.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "none"),
        default=None,
        help="precision of the forward pass; auto (default): bf16 on CUDA, and on CPUs with "
        "native bf16 when it labels the first tile as float32 does; none: float32",
    )
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--no-tissue", action="store_true", help="predict background tiles too")
    s.add_argument(
        "--per-slide", action="store_true", help="sub-folder per slide even for one slide"
    )
    s.add_argument("--overwrite", action="store_true", help="replace a finished prediction")
    s.add_argument(
        "--restart",
        action="store_true",
        help="discard an interrupted prediction in the out folder instead of resuming it",
    )
    cluster = s.add_argument_group(
        "many slides on dask.distributed (pip install 'napari-msunet[cluster]')"
    )
    where = cluster.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="a running dask scheduler (tcp://host:8786): one task per slide on its workers",
    )
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="start a local cluster of N worker processes (one per GPU; on CPU the cores "
        "are split between them)",
    )
    cluster.add_argument(
        "--ship-model",
        action="store_true",
        help="send the model file's bytes to the workers (for workers that do not see it)",
    )
    cluster.add_argument(
        "--split",
        type=int,
        default=1,
        metavar="N",
        help="spread each slide's tiles over N tasks, then publish it from them: for a few "
        "large slides on more workers than slides (the result is the same)",
    )

    s = sub.add_parser(
        "demo",
        help="sample slide + bundled model: predict, evaluate, open napari (one minute)",
    )
    s.add_argument("--out", default="msunet-demo", help="folder for the demo files")
    s.add_argument("--model", default=None, help="model file (default: the bundled model)")
    s.add_argument("--device", default="auto")
    s.add_argument(
        "--headless",
        action="store_true",
        help="do not open napari; write the overlay PNG and the IoU report only",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace sample files and prediction/ or evaluation/ folders the demo did not make",
    )

    s = sub.add_parser(
        "export-model",
        help="a model for other tools: bioimage.io package, ONNX or TorchScript (checked)",
    )
    s.add_argument("model", nargs="?", default=None, help="model file (default: the bundled)")
    s.add_argument("--format", required=True, choices=("bioimageio", "onnx", "torchscript"))
    s.add_argument("--out", required=True, help="file to write (.zip, .onnx, .pt)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing file")

    s = sub.add_parser(
        "import-model", help="the model file inside a bioimage.io package this tool exported"
    )
    s.add_argument("package", metavar="PACKAGE", help="bioimage.io package (.zip)")
    s.add_argument("--out", required=True, help="model file to write (.safetensors)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing file")

    s = sub.add_parser(
        "evaluate",
        help="slide-level IoU/Dice of a prediction against an annotation, with a TP/FP/FN PNG",
    )
    s.add_argument("--pred", required=True, help="predicted label mask (OME-Zarr/TIFF/PNG)")
    s.add_argument("--truth", required=True, help="ground truth: label mask or QuPath GeoJSON")
    s.add_argument("--out", required=True, help="folder for report.json, report.csv, overlay.png")
    s.add_argument("--slide", help="the slide (scale of a GeoJSON truth; overlay background)")
    s.add_argument("--ignore-label", type=int, default=None, help="truth label to leave out")
    s.add_argument(
        "--truth-class",
        default=None,
        metavar="NAME",
        help="the model's class that a binary truth mask (0/1, 0/255) annotates "
        "(default: the model's only class)",
    )
    s.add_argument("--region", help="mask restricting where pixels count (e.g. tissue.png)")
    s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser(
        "train",
        help="train a model: from annotated slides (--slides/--annotations/--out) or from a "
        "run YAML (--config, see examples/)",
    )
    s.add_argument("--config", help="run YAML: data, out folder, settings")
    _slide_arguments(s, required=False)
    s.add_argument(
        "--start",
        choices=("transfer", "scratch"),
        default="transfer",
        help="with --slides: transfer (default) starts from the base model's encoder and "
        "decoder with a new class head; scratch from random weights",
    )
    s.add_argument(
        "--base", default=None, help="with --slides: the model to transfer from (default: bundled)"
    )
    s.add_argument(
        "--preset",
        choices=("lite", "paper"),
        default=None,
        help="with --slides: network size (default: the base model's; paper needs --start scratch "
        "when the base is lite)",
    )
    s.add_argument("--steps", type=int, default=1000, help="with --slides: training steps")
    s.add_argument("--lr", type=float, default=None, help="default: the base model's recipe")
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", default=None, help="with --slides: the new model file (.safetensors)")
    _held_out_arguments(s)
    s.add_argument(
        "--restart",
        action="store_true",
        help="ignore an earlier run in the out folder instead of resuming it",
    )
    s.add_argument(
        "--overwrite",
        action="store_true",
        help="replace model files in the out folder that belong to no resumable run",
    )

    s = sub.add_parser(
        "finetune", help="fine-tune a model file on corrected annotations (new model version)"
    )
    s.add_argument("--model", required=True, help="the model file to start from")
    _slide_arguments(s, required=True)
    s.add_argument(
        "--classes",
        choices=("auto", "keep", "add", "replace"),
        default="auto",
        help="auto (default): keep when the annotations use only the model's classes, "
        "replace when only new ones, add when both (said in a warning); keep: the model's "
        "classes only (new ones are refused); "
        "add: learn the annotations' new classes too; replace: background and the "
        "annotations' classes only",
    )
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", default=None, help="new model file (default: <model>-ftN)")
    _held_out_arguments(s)
    add_parsers(sub)  # commands that declare their own arguments (export-decisions ...)
    return p


def _margin(text: str) -> int | str:
    """``--margin``: a number of pixels, ``auto`` or ``exact``."""
    if text in ("auto", "exact"):
        return text
    try:
        return int(text)
    except ValueError:
        message = f"expected a number, auto or exact, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _slide_arguments(s: argparse.ArgumentParser, *, required: bool) -> None:
    """Slides with their annotations and corrected regions (train --slides, finetune)."""
    s.add_argument("--slides", nargs="+", required=required, metavar="SLIDE")
    s.add_argument(
        "--annotations",
        nargs="+",
        required=required,
        metavar="ANNOTATION",
        help="one per slide: QuPath GeoJSON or label mask",
    )
    s.add_argument(
        "--regions",
        nargs="+",
        metavar="GEOJSON",
        help="one per slide: the corrected regions; outside them only the bootstrap term "
        "learns (default: the whole annotation counts)",
    )
    s.add_argument("--mpp", type=float, default=None, help="slides' µm/px if not in the file")
    s.add_argument("--noisy", action="store_true", help="annotations are noisy (k = 61)")


def _held_out_arguments(s: argparse.ArgumentParser) -> None:
    """What is kept out of training and scored, parent against the new version."""
    s.add_argument(
        "--held-out-fraction",
        type=float,
        default=0.2,
        help="share of each class's regions kept out of training and scored (default 0.2; 0: none)",
    )
    s.add_argument(
        "--held-out",
        nargs="+",
        metavar="GEOJSON",
        help="one per slide: your own held-out regions (instead of the tool's choice)",
    )
    s.add_argument(
        "--held-out-slides",
        nargs="+",
        metavar="SLIDE",
        help="whole slides kept out of training, scored on all their annotated regions",
    )
    s.add_argument(
        "--held-out-annotations",
        nargs="+",
        metavar="ANNOTATION",
        help="one per --held-out-slides slide",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:  # the command line itself (callers passing argv keep their warnings)
        _plain_warnings(args.command)
    try:
        return COMMANDS[args.command](args)
    except MsunetError as exc:
        print(f"msunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msunet {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        message = _os_error_message(exc, args)
        if message is None:
            raise  # no file and not the disk: a bug, whose traceback is wanted
        print(f"msunet {args.command}: error: {message}", file=sys.stderr)
        return 2


def _plain_warnings(command: str) -> None:
    """Our warnings as one line for a person (``msunet CMD: warning: ...``), not a traceback
    excerpt; warnings from libraries keep Python's form (they are for developers)."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("napari_msunet"):
            print(f"msunet {command}: warning: {message}", file=file or sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _os_error_message(exc: OSError, args: argparse.Namespace) -> str | None:
    """One line for an ``OSError`` about a file or the disk, ``None`` for any other.

    Without a file name (a write of an open file descriptor hitting a full disk), the cause
    is said about the command's output (``--out``, else ``OUT``) when it has one.
    """
    from napari_msunet._atomic import DISK_ERRNOS, os_error_reason

    path = exc.filename or getattr(args, "out", None)
    if exc.filename is None and (exc.errno not in DISK_ERRNOS or path is None):
        return None
    reason = os_error_reason(exc, path)
    return f"{path}: {reason}" if exc.filename is not None else f"writing {path}: {reason}"


if __name__ == "__main__":
    sys.exit(main())
