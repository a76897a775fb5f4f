"""Assemble a real-tissue pyramidal slide and its annotation from EBHI-Seg image/mask pairs.

EBHI-Seg patches (224 x 224 px, H&E, 400x) are laid out on a grid with a border of white
"glass" around it, written as a JPEG-tiled pyramidal slide tile by tile (the same writer as the
synthetic slides), with the ground-truth mask as a pyramidal OME-TIFF label image and as a
QuPath GeoJSON. Use it for realistic demos, tests and benchmarks.

Data credit: EBHI-Seg, Shi et al., Frontiers in Medicine 10:1114673 (2023),
doi:10.3389/fmed.2023.1114673, CC BY 4.0. Slides made by this script are derived from it and
carry the credit in their description.

Usage::

    python examples/make_mosaic_slide.py ../shared/data/ebhi-seg out/mosaic.svs --rows 12 --cols 16

The EBHI-Seg pixel size is not stated exactly (about 0.25-0.3 µm/px at 400x); ``--mpp``
(default 0.27) is written into the slide so downstream tools have a scale, and is a nominal value.
"""

from __future__ import annotations

import argparse
import csv
import functools
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from napari_msunet.io.annotations import ClassInfo
from napari_msunet.io.ome_tiff import write_ome_tiff
from napari_msunet.io.synthetic import write_synthetic_slide
from napari_msunet.io.vectorise import export_mask

PATCH = 224
CREDIT = "EBHI-Seg, Shi et al., Front. Med. 10:1114673 (2023), CC BY 4.0"
REGION = ClassInfo(name="Gland/lesion", label=1, color=(220, 40, 40))


class MosaicSpec:
    """A grid of EBHI-Seg patches that renders any region of any level on demand.

    It implements the renderer protocol of :func:`napari_msunet.io.synthetic.write_synthetic_slide`
    (``height``, ``width``, ``mpp``, ``render``, ``image``).
    """

    def __init__(self, stems: list[str], data: Path, rows: int, cols: int, margin: int, mpp: float):
        self.stems, self.data, self.rows, self.cols = stems, data, rows, cols
        self.margin, self.mpp = margin, mpp
        self.height = rows * PATCH + 2 * margin
        self.width = cols * PATCH + 2 * margin

    @functools.lru_cache(maxsize=512)  # noqa: B019 - one spec per run, bounded cache
    def _patch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        stem = self.stems[i]
        rgb = np.asarray(Image.open(self.data / "images" / f"{stem}.jpg").convert("RGB"))
        mask = (np.asarray(Image.open(self.data / "masks" / f"{stem}.png")) > 0).astype(np.uint8)
        if rgb.shape[:2] != (PATCH, PATCH) or mask.shape != (PATCH, PATCH):
            raise ValueError(f"{stem}: expected {PATCH} x {PATCH} image and mask")
        return rgb, mask

    def _render0(self, y0: int, x0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        rgb = np.full((h, w, 3), 242, np.uint8)
        lab = np.zeros((h, w), np.uint8)
        m = self.margin
        r0 = max(0, (y0 - m) // PATCH)
        r1 = min(self.rows, math.ceil((y0 + h - m) / PATCH))
        c0 = max(0, (x0 - m) // PATCH)
        c1 = min(self.cols, math.ceil((x0 + w - m) / PATCH))
        for r in range(r0, r1):
            for c in range(c0, c1):
                py, px = m + r * PATCH, m + c * PATCH
                sy0, sx0 = max(py, y0), max(px, x0)
                sy1, sx1 = min(py + PATCH, y0 + h), min(px + PATCH, x0 + w)
                if sy1 <= sy0 or sx1 <= sx0:
                    continue
                prgb, pmask = self._patch(r * self.cols + c)
                rgb[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = prgb[
                    sy0 - py : sy1 - py, sx0 - px : sx1 - px
                ]
                lab[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = pmask[
                    sy0 - py : sy1 - py, sx0 - px : sx1 - px
                ]
        return rgb, lab

    def render(self, y0: int, x0: int, h: int, w: int, downsample: float = 1.0):
        d = round(downsample)
        if d <= 1:
            return self._render0(y0, x0, h, w)
        rgb, lab = self._render0(y0 * d, x0 * d, h * d, w * d)
        rgb = rgb.reshape(h, d, w, d, 3).mean(axis=(1, 3)).round().astype(np.uint8)
        return rgb, lab[d // 2 :: d, d // 2 :: d]

    def image(self, downsample: float = 1.0) -> np.ndarray:
        d = max(1, round(downsample))
        return self.render(0, 0, math.ceil(self.height / d), math.ceil(self.width / d), d)[0]

    def mask(self) -> np.ndarray:
        return self._render0(0, 0, self.height, self.width)[1]


def pick_stems(data: Path, n: int, seed: int) -> list[str]:
    index = data / "index.csv"
    if not index.is_file():
        raise SystemExit(f"{index}: not found; pass the EBHI-Seg folder (with index.csv)")
    with index.open() as f:
        stems = [row["stem"] for row in csv.DictReader(f)]
    if len(stems) < n:
        raise SystemExit(f"{data}: {len(stems)} patches, {n} needed")
    rng = np.random.default_rng(seed)
    return [stems[i] for i in rng.choice(len(stems), size=n, replace=False)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="EBHI-Seg folder (images/, masks/, index.csv)")
    ap.add_argument("out", type=Path, help="slide to write (.svs or .ome.tif)")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--margin", type=int, default=256, help="white glass around the grid, px")
    ap.add_argument("--mpp", type=float, default=0.27, help="nominal µm/px (default 0.27)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    stems = pick_stems(args.data, args.rows * args.cols, args.seed)
    spec = MosaicSpec(stems, args.data, args.rows, args.cols, args.margin, args.mpp)
    fmt = "ome-tiff" if args.out.name.lower().endswith((".ome.tif", ".ome.tiff")) else "svs"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_synthetic_slide(args.out, spec, fmt, quality=90)
    stem = args.out.name.split(".")[0]
    mask = spec.mask()
    mask_path = args.out.with_name(f"{stem}_mask.ome.tif")
    write_ome_tiff(
        mask_path,
        mask,
        kind="labels",
        mpp=args.mpp,
        class_names=["background", REGION.name],
        class_colors=[[0, 0, 0, 0], [*REGION.color, 255]],
        overwrite=True,
    )
    geojson = args.out.with_name(f"{stem}.geojson")
    export_mask(mask, geojson, [REGION], overwrite=True)
    (args.out.with_name(f"{stem}_patches.txt")).write_text(
        f"# {CREDIT}\n# row-major grid {args.rows} x {args.cols}, margin {args.margin} px\n"
        + "\n".join(stems)
        + "\n"
    )
    print(f"wrote {args.out} ({spec.width} x {spec.height} px), {mask_path}, {geojson}")
    print(f"data credit: {CREDIT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
