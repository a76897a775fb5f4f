"""Estimate the pixel size of EBHI-Seg (not stated by the dataset) from the tissue it shows.

A model's ``input_um_per_px`` decides how far the engine resamples a real slide before the
network sees it; if it is wrong, every structure on a 40x slide looks several times larger (or
smaller) than anything the model learnt. EBHI-Seg images are labelled "400x" but 224 x 224 px,
and the physical pixel size is not stated. Two measurements on the annotated regions settle it:

1. **Pixel aspect.** Cut at random angles, gland outlines have no preferred direction: the
   median ratio of their vertical to horizontal extent (second moments of each connected
   region, regions touching the border excluded) is 1 for square pixels. A ratio ``a`` means a
   pixel covers ``a`` times more tissue across than down (a 4:3 camera frame squeezed into a
   square gives 4/3).
2. **Scale.** Normal colonic crypts cut across are round, of a known size (about 50-70 µm in
   diameter for human colon). The median equivalent diameter ``sqrt(4 A / pi)`` (in geometric
   mean pixels) of isolated, compact regions of the ``normal`` class gives the geometric-mean
   pixel size ``D / d_px`` for each assumed crypt diameter ``D``.

Usage::

    python examples/estimate_pixel_size.py ../shared/data/ebhi-seg

prints one line per diagnosis (aspect), the crypt measurement and the implied µm/px, and
``--json`` writes them too. The reference crypt diameters are an assumption of this method,
not a measurement; the script prints the µm/px each of them implies.

Data credit: EBHI-Seg, Shi et al., Frontiers in Medicine 10:1114673 (2023),
doi:10.3389/fmed.2023.1114673, CC BY 4.0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

REFERENCE_CRYPT_UM = (50.0, 60.0, 70.0)


@dataclass(frozen=True)
class Region:
    """One connected annotated region that does not touch the image border."""

    area: int  # pixels
    aspect: float  # std of rows / std of columns (> 1: taller than wide)
    fill: float  # area / bounding-box area (1 for a rectangle, pi/4 for an ellipse)

    @property
    def diameter(self) -> float:
        """Equivalent diameter ``sqrt(4 A / pi)``, in geometric-mean pixels."""
        return math.sqrt(4.0 * self.area / math.pi)


def regions_of(mask: np.ndarray, *, min_area: int = 300) -> list[Region]:
    """The connected foreground regions of ``mask`` away from its border.

    Regions cut by the border are left out: their shape is the frame's, not the tissue's.
    """
    labels, _ = ndi.label(np.asarray(mask) > 0)
    h, w = labels.shape
    found = []
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        rows, cols = box
        if rows.start == 0 or cols.start == 0 or rows.stop == h or cols.stop == w:
            continue
        inside = labels[box] == i
        area = int(inside.sum())
        if area < min_area:
            continue
        y, x = np.nonzero(inside)
        if x.std() == 0 or y.std() == 0:
            continue
        box_area = (rows.stop - rows.start) * (cols.stop - cols.start)
        found.append(Region(area, float(y.std() / x.std()), area / box_area))
    return found


def median_aspect(regions: Iterable[Region]) -> float:
    """Median vertical/horizontal extent ratio (on a log scale, so 4/3 and 3/4 balance)."""
    logs = [math.log(r.aspect) for r in regions]
    if not logs:
        raise ValueError("no regions to measure (all touch the border or are too small)")
    return float(math.exp(np.median(logs)))


def crypt_diameter(regions: Iterable[Region], aspect: float) -> tuple[float, int]:
    """Median equivalent diameter (px) of compact, round regions, and how many there were.

    Roundness is judged after undoing the pixel aspect, so squeezed crypts still count.
    """
    kept = [
        r.diameter
        for r in regions
        if r.fill > 0.7 and 0.75 < r.aspect / aspect < 1.0 / 0.75  # ellipse-like, not elongated
    ]
    if not kept:
        raise ValueError("no compact round regions to measure")
    return float(np.median(kept)), len(kept)


def pixel_size(diameter_px: float, aspect: float, reference_um: float) -> dict[str, float]:
    """Geometric-mean, horizontal and vertical µm/px for one assumed crypt diameter."""
    geometric = reference_um / diameter_px
    return {
        "crypt_um": reference_um,
        "um_per_px": geometric,
        "um_per_px_x": geometric * math.sqrt(aspect),
        "um_per_px_y": geometric / math.sqrt(aspect),
    }


def measure(root: Path, references: Sequence[float] = REFERENCE_CRYPT_UM) -> dict:
    """Measure every mask under ``root/masks`` (``<diagnosis>__<name>.png``)."""
    masks = sorted((root / "masks").glob("*.png"))
    if not masks:
        raise FileNotFoundError(f"{root / 'masks'}: no *.png masks (is this EBHI-Seg?)")
    by_diagnosis: dict[str, list[Region]] = defaultdict(list)
    for path in masks:
        diagnosis = path.stem.split("__", 1)[0]
        by_diagnosis[diagnosis].extend(regions_of(np.asarray(Image.open(path))))
    everything = [r for rs in by_diagnosis.values() for r in rs]
    aspect = median_aspect(everything)
    normal = by_diagnosis.get("normal", [])
    diameter, n_crypts = crypt_diameter(normal, aspect)
    return {
        "masks": len(masks),
        "aspect": aspect,
        "aspect_by_diagnosis": {
            d: {"regions": len(rs), "aspect": median_aspect(rs)}
            for d, rs in sorted(by_diagnosis.items())
        },
        "crypts": n_crypts,
        "crypt_diameter_px": diameter,
        "pixel_sizes": [pixel_size(diameter, aspect, d) for d in references],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="EBHI-Seg folder (masks/<diagnosis>__<name>.png)")
    ap.add_argument("--json", type=Path, help="also write the measurements here")
    args = ap.parse_args(argv)
    result = measure(args.data)
    print(f"{result['masks']} masks")
    for d, r in result["aspect_by_diagnosis"].items():
        print(f"  {d:18s} {r['regions']:5d} regions, vertical/horizontal extent {r['aspect']:.3f}")
    print(f"pixel aspect (all regions): {result['aspect']:.3f}")
    diameter = result["crypt_diameter_px"]
    print(f"normal crypts: {result['crypts']}, median diameter {diameter:.1f} px")
    for p in result["pixel_sizes"]:
        print(
            f"  crypt {p['crypt_um']:.0f} µm -> {p['um_per_px']:.2f} µm/px "
            f"(across {p['um_per_px_x']:.2f}, down {p['um_per_px_y']:.2f})"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
