"""Bundle a trained model as the package's default model, with its data credit.

Usage::

    python examples/bundle_default_model.py RUN_DIR [--out MODEL.safetensors]

Takes ``RUN_DIR/best.safetensors`` (the best validation checkpoint of ``msunet train``), adds
the EBHI-Seg credit and the run's validation history to its header, and writes it to the
package's data folder (refusing to overwrite unless ``--overwrite``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from napari_msunet.io.mosaic import CREDIT
from napari_msunet.models.checkpoint import load_model, save_model

DEFAULT_OUT = (
    Path(__file__).resolve().parents[1] / "src/napari_msunet/data/default_model.safetensors"
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args(argv)
    model, header = load_model(args.run_dir / "best.safetensors")
    history = [
        json.loads(line)
        for line in (args.run_dir / "history.jsonl").read_text().splitlines()
        if '"val"' in line
    ]
    training = dict(header.training)
    data = training.get("data", {})
    for folder in data.get("folders", []):
        folder.pop("val_stems", None)  # the split is reproducible from its seed; keep it small
    training["data"] = data
    training["dataset_credit"] = CREDIT + " (doi:10.3389/fmed.2023.1114673)"
    training["validation_history"] = [
        {k: r[k] for k in ("epoch", "foreground_dice", "foreground_iou")} for r in history
    ]
    header = dataclasses.replace(header, training=training)
    save_model(args.out, model, header, overwrite=args.overwrite)
    best = max(history, key=lambda r: r["foreground_dice"])
    print(
        f"wrote {args.out}: best validation Dice {best['foreground_dice']:.4f} "
        f"(IoU {best['foreground_iou']:.4f}) at epoch {best['epoch']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
