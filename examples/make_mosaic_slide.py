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

EBHI-Seg does not state its pixel size; its tissue says about 1 µm/px (normal crypts, see
``examples/estimate_pixel_size.py``), the default ``--mpp`` written into the slide.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_msunet.io.mosaic import CREDIT, EBHI_UM_PER_PX, REGION, MosaicSpec, pick_stems
from napari_msunet.io.ome_tiff import write_ome_tiff
from napari_msunet.io.synthetic import write_synthetic_slide
from napari_msunet.io.vectorise import export_mask


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="EBHI-Seg folder (images/, masks/, index.csv)")
    ap.add_argument("out", type=Path, help="slide to write (.svs or .ome.tif)")
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--cols", type=int, default=16)
    ap.add_argument("--margin", type=int, default=256, help="white glass around the grid, px")
    ap.add_argument(
        "--mpp", type=float, default=EBHI_UM_PER_PX, help=f"µm/px (default {EBHI_UM_PER_PX})"
    )
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
