"""A real-tissue slide assembled from small image/mask pairs (e.g. EBHI-Seg patches).

Patches are laid out on a grid with a border of white "glass" around it. :class:`MosaicSpec`
renders any region of any level on demand, so the slide is written tile by tile by
:func:`napari_msunet.io.synthetic.write_synthetic_slide` like the synthetic slides, and its
ground-truth mask is exact. Used by ``examples/make_mosaic_slide.py`` and ``msunet demo``.

Anything built from EBHI-Seg must credit it: Shi et al., Frontiers in Medicine 10:1114673
(2023), doi:10.3389/fmed.2023.1114673, CC BY 4.0.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

import numpy as np
from PIL import Image

from napari_msunet.io.annotations import ClassInfo

__all__ = ["CREDIT", "EBHI_UM_PER_PX", "PATCH", "REGION", "MosaicSpec", "pick_stems"]

PATCH = 224
CREDIT = "EBHI-Seg, Shi et al., Front. Med. 10:1114673 (2023), CC BY 4.0"
# EBHI: gland or lesion; yellow, apart from the comparison colours of napari_msunet.palette
REGION = ClassInfo(name="Gland", label=1, color=(255, 200, 0))
# EBHI-Seg states "400x" but no pixel size. Its tissue says about 1 µm/px: normal crypts measure
# 62.7 px across (median of 155), i.e. 0.80-1.12 µm/px for crypts of 50-70 µm, and its pixels
# are about 1.3x wider than tall (a 4:3 frame squeezed to a square). The "400x" reading of
# 0.27 µm/px would make a 224 px image 60 µm wide, narrower than one crypt.
# examples/estimate_pixel_size.py measures it.
EBHI_UM_PER_PX = 1.0


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
        raise FileNotFoundError(f"{index}: not found; pass the EBHI-Seg folder (with index.csv)")
    with index.open() as f:
        stems = [row["stem"] for row in csv.DictReader(f)]
    if len(stems) < n:
        raise ValueError(f"{data}: {len(stems)} patches, {n} needed")
    rng = np.random.default_rng(seed)
    return [stems[i] for i in rng.choice(len(stems), size=n, replace=False)]
