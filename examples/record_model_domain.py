"""Record a model's training-data statistics in its header (the domain check's reference).

Models trained by this version of the tool record them themselves (``training["domain"]``,
see :mod:`napari_msunet.io.domain`). A model trained before, such as the bundled one, gets
them from its training images here: the same folder split the training used
(``stratified_split`` with the header's split seed and validation share), each training
image one window. A new file is written with the statistics and a description; the weights
are untouched and the source file is left as it is.

``--calibrate`` prints the figures the limits of :mod:`napari_msunet.io.domain` come from:
groups of 12 held-in validation images by diagnosis and at random, a DAB immunostain
(scikit-image's ``immunohistochemistry`` image), the validation images with their stain made
paler or darker, and magnified 2x (a wrong µm/px).

Usage::

    python examples/record_model_domain.py src/napari_msunet/data/default_model.safetensors \\
        /tmp/default_model.safetensors --data ../shared/data/ebhi-seg \\
        --description "EBHI-Seg colon biopsies (H&E)" --calibrate

EBHI-Seg: Shi et al., Frontiers in Medicine 10:1114673 (2023), CC BY 4.0.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from napari_msunet.io.domain import FAR_RMS, FAR_Z, DomainStats, check_domain
from napari_msunet.models.checkpoint import load_model, save_model
from napari_msunet.training.domain_stats import images_domain
from napari_msunet.training.folder_dataset import find_pairs, stratified_split


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _restain(rgb: np.ndarray, k: float) -> np.ndarray:
    od = -np.log10((rgb.astype(np.float32) + 1) / 256) * k
    return np.clip(256 * 10 ** (-od) - 1, 0, 255).astype(np.uint8)


def calibrate(stats: DomainStats, val: list) -> None:
    """Print the check on in-domain groups and on altered or foreign images."""
    rng = np.random.default_rng(0)
    images = [_rgb(p.image) for p in val]

    def show(name: str, windows: list[np.ndarray]) -> None:
        c = check_domain(stats, windows)
        z = " ".join(f"{v:+.2f}" for v in c.z)
        print(f"{name:<42} rms {c.rms:4.2f}  z [{z}]  {'FAR' if c.far else 'ok'}")

    groups = sorted({p.group for p in val})
    for g in groups:
        show(f"validation: {g}", [im for im, p in zip(images, val, strict=True) if p.group == g])
    rms = []
    for _ in range(200):
        pick = rng.choice(len(images), 12, replace=False)
        rms.append(check_domain(stats, [images[i] for i in pick]).rms)
    print(f"200 random groups of 12 validation images: rms max {max(rms):.2f}")
    twelve = images[:12]
    for k in (0.6, 0.8, 1.25):
        show(f"validation, stain x{k}", [_restain(im, k) for im in twelve])
    show("validation, magnified 2x", [np.kron(im, np.ones((2, 2, 1), np.uint8)) for im in twelve])
    from skimage import data

    ihc = data.immunohistochemistry()
    show(
        "DAB immunostain (scikit-image)",
        [ihc[y : y + 224, x : x + 224] for y in (0, 144, 288) for x in (0, 144, 288)],
    )
    print(f"limits: rms >= {FAR_RMS} or any |z| >= {FAR_Z}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="the training image folder")
    ap.add_argument("--description", required=True, help="the training data, in words")
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--calibrate", action="store_true", help="print the check's figures")
    ap.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    args = ap.parse_args(argv)
    model, header = load_model(args.model)
    folders = (header.training.get("data") or {}).get("folders") or [{}]
    seed = int(folders[0].get("split_seed", 0))
    train, val = stratified_split(find_pairs(args.data), args.val_fraction, seed)
    stats = images_domain([p.image for p in train], args.description)
    print(f"{stats.windows} training images: mean {stats.mean} sd {stats.std}")
    if args.calibrate:
        calibrate(stats, val)
    training = {**header.training, "domain": stats.to_dict()}
    out = save_model(
        args.out, model, dataclasses.replace(header, training=training), overwrite=args.overwrite
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
