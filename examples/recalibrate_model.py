"""Correct what a model file says about its input scale or class colours; keep the weights.

A model's header states the µm/px of the images it learnt from (the engine resamples every
slide to it) and a display colour per class. When either turns out wrong, e.g. a dataset's
nominal pixel size that its tissue contradicts (see ``examples/estimate_pixel_size.py``), the
weights stay valid and only the header needs correcting. This writes a new file with the
corrected header and a ``recalibrations`` entry in its provenance (old and new values, the
reason, the source file's SHA-256); the source file is left as it is.

Usage::

    python examples/recalibrate_model.py MODEL.safetensors OUT.safetensors \\
        --mpp 1.0 --colour Gland=255,200,0 --reason "EBHI-Seg pixel size from crypt size"
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
from pathlib import Path

from napari_msunet.models.checkpoint import load_model, save_model


def _colour(text: str) -> tuple[str, tuple[int, int, int]]:
    name, _, rgb = text.partition("=")
    try:
        r, g, b = (int(v) for v in rgb.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected CLASS=R,G,B, got {text!r}") from None
    return name, (r, g, b)


def recalibrate(
    source: Path,
    out: Path,
    *,
    mpp: float | None = None,
    colours: dict[str, tuple[int, int, int]] | None = None,
    reason: str,
    overwrite: bool = False,
) -> Path:
    """Write ``source``'s weights to ``out`` with the header fields replaced."""
    model, header = load_model(source)
    colours = colours or {}
    unknown = sorted(set(colours) - set(header.class_names))
    if unknown:
        known = ", ".join(header.class_names)
        raise SystemExit(f"{source}: no class named {', '.join(unknown)} (it has {known})")
    new_colours = tuple(
        colours.get(name, colour)
        for name, colour in zip(header.class_names, header.class_colours, strict=True)
    )
    new_mpp = header.input_um_per_px if mpp is None else mpp
    entry = {
        "reason": reason,
        "source_sha256": hashlib.sha256(Path(source).read_bytes()).hexdigest(),
        "input_um_per_px": [header.input_um_per_px, new_mpp],
        "class_colours": [list(map(list, header.class_colours)), list(map(list, new_colours))],
    }
    training = dict(header.training)
    training["recalibrations"] = [*training.get("recalibrations", []), entry]
    header = dataclasses.replace(
        header, input_um_per_px=new_mpp, class_colours=new_colours, training=training
    )
    return save_model(out, model, header, overwrite=overwrite)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--mpp", type=float, help="new input µm/px")
    ap.add_argument("--colour", type=_colour, action="append", default=[], help="CLASS=R,G,B")
    ap.add_argument("--reason", required=True, help="why; stored in the model's provenance")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    out = recalibrate(
        args.model,
        args.out,
        mpp=args.mpp,
        colours=dict(args.colour),
        reason=args.reason,
        overwrite=args.overwrite,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
