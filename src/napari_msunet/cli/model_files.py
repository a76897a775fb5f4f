"""``msunet export-model`` and ``msunet import-model``: model files other tools run, and back."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_msunet.cli._registry import command


@command("export-model")
def _export_model(args: argparse.Namespace) -> int:
    from napari_msunet.models.bundled import bundled_model_path
    from napari_msunet.models.export import export_model

    model = args.model or str(bundled_model_path())
    result = export_model(model, args.format, args.out, overwrite=args.overwrite)
    print(result.line())
    return 0


@command("import-model")
def _import_model(args: argparse.Namespace) -> int:
    from napari_msunet._atomic import atomic_write_bytes
    from napari_msunet.errors import ModelFileError
    from napari_msunet.models.bioimageio import extract_model_file, is_package
    from napari_msunet.models.checkpoint import load_model

    package = Path(args.package)
    if not is_package(package):
        raise ModelFileError(package, "is not a bioimage.io model package (a zip with rdf.yaml)")
    path = extract_model_file(package)
    _, header = load_model(path)  # a model file of ours, whole, before it is written
    out = atomic_write_bytes(args.out, path.read_bytes(), overwrite=args.overwrite)
    classes = ", ".join(header.class_names)
    print(f"{out}: {header.architecture} at {header.input_um_per_px:g} µm/px ({classes})")
    return 0
