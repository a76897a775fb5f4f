"""Measure the margin a model file needs and write a copy whose header records it.

The weights are copied unchanged; the header gets ``training["margin"]`` (see
:mod:`napari_msunet.models.margin`) and an entry in ``training["recalibrations"]`` with
the reason and the source file's SHA-256, as ``examples/recalibrate_model.py`` records a
pixel-size change. Models trained or fine-tuned by this version get the record at save time.

Usage::

    python examples/measure_model_margin.py MODEL.safetensors OUT.safetensors \\
        --reason "measured margin for auto tiling (issue 14)"
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from pathlib import Path

from napari_msunet.models.checkpoint import load_model, save_model
from napari_msunet.models.margin import record_margin


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--reason", required=True, help="why; stored in the model's provenance")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    model, header = load_model(args.model)
    measured = record_margin(model, header, device=args.device)
    record = measured.training["margin"]
    entry = {
        "reason": args.reason,
        "source_sha256": hashlib.sha256(args.model.read_bytes()).hexdigest(),
        "margin": [None, record["margin"]],
    }
    training = dict(measured.training)
    training["recalibrations"] = [*training.get("recalibrations", []), entry]
    save_model(
        args.out, model, dataclasses.replace(measured, training=training), overwrite=args.overwrite
    )
    print(
        f"wrote {args.out}: margin {record['margin']} (structural {record['structural']}), "
        f"labels {record['agreement']:.4%} as the structural margin, probability difference "
        f"{record['prob_diff_p999']:.4f} at the 99.9th percentile, on {record['images']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
