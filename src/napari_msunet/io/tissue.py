"""Tissue detection on a low-resolution level, so that tiles of bare glass are never computed.

Most of a slide is glass: white, unsaturated. Stained tissue is coloured, so a threshold on
the HSV saturation ``(max - min) / max`` of a coarse level (about 8 µm/px: a 100k x 100k slide
at 0.25 µm/px gives a 3k x 3k mask) separates the two. The threshold is Otsu's on the slide's
own saturation histogram, clipped to a range so that a slide that is all tissue is not split
into its pale and dark parts (and a slide that is all glass does not get tissue from JPEG
noise). Small holes (lumina, fat) are filled and small specks (dust) removed, with sizes in µm².

The mask is a small NumPy array with its level-0 downsample; the engine asks it whether a
tile's area holds any tissue and writes it next to the prediction (PNG) for inspection.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.io.slide import Slide, SlideWarning
from napari_msunet.progress import Progress, Stop, eager, stopped

__all__ = [
    "TISSUE",
    "TissueMask",
    "TissueSettings",
    "detect_tissue",
    "iter_detect_tissue",
    "saturation",
    "tissue_from_rgb",
]

#: Stage of the progress records of tissue detection.
TISSUE = "tissue"
#: Pixels of the file decoded per window of tissue detection (about a second's work at most).
WINDOW_PX = 1 << 24
#: A slide without a pyramid whose level 0 has more pixels than this gets a warning before
#: tissue detection decodes all of it.
FLAT_WARN_PX = 1 << 30
#: Largest window side, in pixels of the level read.
_MAX_WINDOW = 4096


@dataclass(frozen=True)
class TissueSettings:
    """How tissue is told from glass; the ``tissue_*`` settings of the inference config.

    Attributes
    ----------
    mpp
        Resolution (µm/px) at which tissue is detected.
    threshold
        Saturation threshold (0-1); ``None``: Otsu's on the slide, clipped to
        ``threshold_range``.
    threshold_range
        Bounds for the Otsu threshold (see the module docstring).
    min_area_um2, hole_area_um2
        Specks smaller than this are removed, holes smaller than this filled (µm²).
    """

    mpp: float = 8.0
    threshold: float | None = None
    threshold_range: tuple[float, float] = (0.03, 0.08)
    min_area_um2: float = 10_000.0
    hole_area_um2: float = 10_000.0


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Where the slide has tissue, at low resolution.

    Attributes
    ----------
    mask
        ``(h, w)`` bool, True on tissue.
    downsample
        Level-0 pixels per mask pixel along ``(y, x)``.
    mpp
        µm per mask pixel.
    threshold
        The saturation threshold used (0-1).
    """

    mask: np.ndarray
    downsample: tuple[float, float]
    mpp: float
    threshold: float

    @property
    def fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def any_in(self, y0: float, x0: float, y1: float, x1: float) -> bool:
        """Whether the level-0 rectangle ``[y0, y1) x [x0, x1)`` touches tissue.

        Every mask pixel that overlaps the rectangle counts, so a tile is skipped only when
        none of it can hold tissue.
        """
        dy, dx = self.downsample
        r0, c0 = max(0, math.floor(y0 / dy)), max(0, math.floor(x0 / dx))
        r1, c1 = math.ceil(y1 / dy), math.ceil(x1 / dx)
        return bool(self.mask[r0:r1, c0:c1].any())

    def save_png(self, path: str | Path, *, overwrite: bool = True) -> Path:
        """Write the mask as an 8-bit PNG (255 = tissue), atomically.

        The PNG is encoded in memory (a few MB at most: the mask is small) and written with
        :func:`~napari_msunet._atomic.atomic_write_bytes`, so a reader never sees half a
        file. ``overwrite`` (default, as before): replace an existing file; False refuses it
        with a :class:`~napari_msunet.errors.WriterError`.
        """
        buf = io.BytesIO()
        Image.fromarray(self.mask.astype(np.uint8) * 255).save(buf, format="PNG")
        return atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)

    def to_dict(self) -> dict[str, object]:
        """Metadata for the manifest (not the pixels)."""
        return {
            "shape": list(self.mask.shape),
            "downsample": list(self.downsample),
            "mpp": self.mpp,
            "threshold": self.threshold,
            "fraction": round(self.fraction, 6),
        }


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` of an RGB uint8 image, as float32 (0 where black)."""
    hi = rgb.max(axis=-1).astype(np.float32)
    lo = rgb.min(axis=-1).astype(np.float32)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def tissue_from_rgb(
    rgb: np.ndarray,
    mpp: float,
    *,
    threshold: float | None = None,
    threshold_range: tuple[float, float] = (0.03, 0.08),
    min_area_um2: float = 10_000.0,
    hole_area_um2: float = 10_000.0,
) -> tuple[np.ndarray, float]:
    """Tissue mask of a low-resolution RGB image.

    Parameters
    ----------
    rgb
        ``(h, w, 3)`` uint8.
    mpp
        µm per pixel of ``rgb`` (to turn the areas into pixels).
    threshold
        Saturation threshold; ``None``: Otsu's, clipped to ``threshold_range``.
    threshold_range, min_area_um2, hole_area_um2
        See :class:`TissueSettings`.

    Returns
    -------
    mask, threshold
        The bool mask and the threshold used.
    """
    sat = saturation(rgb)
    if threshold is None:
        lo, hi = threshold_range
        t = float(threshold_otsu(sat)) if float(sat.max()) > float(sat.min()) else hi
        threshold = min(max(t, lo), hi)
    mask = sat > threshold
    px_area = mpp * mpp
    mask = _fill_small_holes(mask, hole_area_um2 / px_area)
    mask = _remove_small_objects(mask, min_area_um2 / px_area)
    return mask, float(threshold)


def _remove_small_objects(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_px`` pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill 4-connected background components smaller than ``max_px`` that do not touch the
    border (a hole is enclosed by tissue; background at the edge is glass)."""
    if max_px <= 0 or mask.all():
        return mask
    labels, n = ndimage.label(~mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes < max_px
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def _tissue_level(level_mpp: list[float], tissue_mpp: float) -> int:
    """The coarsest level no coarser than twice ``tissue_mpp`` (else the finest level)."""
    ok = [i for i, m in enumerate(level_mpp) if m <= 2 * tissue_mpp * 1.01]
    if not ok:
        return int(np.argmin(level_mpp))
    return max(ok, key=lambda i: level_mpp[i])


def iter_detect_tissue(
    slide: Slide,
    settings: TissueSettings | None = None,
    mpp: float | None = None,
    *,
    stop: Stop = None,
) -> Generator[Progress, None, TissueMask | None]:
    """Detect tissue on a low-resolution level of ``slide``, as a generator.

    The level is read in windows that each decode about :data:`WINDOW_PX` pixels of the file,
    so memory stays bounded and a long detection reports progress. On a pyramidal slide it is
    one window, or a few; a slide without a pyramid has only level 0 to read, all of it
    (a 10⁶ x 10⁶ px flat slide: 10¹² px), which takes as long as the tiles do: a
    :class:`~napari_msunet.io.slide.SlideWarning` then says so when that is more than
    :data:`FLAT_WARN_PX` pixels, and the records show how far it is.

    Parameters
    ----------
    slide
        The opened slide.
    settings
        Thresholds and the detection resolution (``InferenceConfig.tissue_settings``);
        ``None`` for the defaults.
    mpp
        µm per level-0 pixel, overriding the file's (required when the file has none).
    stop
        Checked between windows (see :func:`napari_msunet.progress.stopped`).

    Yields
    ------
    Progress
        Stage ``"tissue"`` (:data:`TISSUE`), ``done`` / ``total`` windows: one record before
        the first window and one after each, only when there is more than one window.

    Returns
    -------
    TissueMask or None
        At about ``settings.mpp`` µm/px (the level is shrunk by an integer factor); ``None``
        when ``stop`` ended it early.
    """
    settings = settings or TissueSettings()
    base_mpp = mpp if mpp is not None else slide.mpp
    if base_mpp is None:
        raise ValueError("the slide's µm/px is unknown; pass mpp")
    level_mpp = [base_mpp * d for d in slide.downsamples]
    level = _tissue_level(level_mpp, settings.mpp)
    f = max(1, math.floor(settings.mpp / level_mpp[level] + 1e-6))
    lh, lw = slide.level_shapes[level]
    h0, w0 = slide.shape
    # file pixels decoded per pixel of the level read: 1, or 4^n for a computed level n
    per_px = 1.0 if slide.pyramidal else (h0 / lh) * (w0 / lw)
    if per_px > 1 and h0 * w0 > FLAT_WARN_PX:
        warnings.warn(
            f"{slide.path}: has no pyramid, so tissue detection must decode all {w0:,} x "
            f"{h0:,} px of level 0 ({h0 * w0 * 3 / 1e9:,.1f} GB of pixels), which can take "
            f"very long; convert it to a pyramidal TIFF (e.g. `vips tiffsave IN OUT.tif "
            f"--tile --pyramid --compression jpeg --bigtiff`) or predict without tissue "
            f"detection (--no-tissue)",
            SlideWarning,
            stacklevel=2,
        )
    side = max(f, min(_MAX_WINDOW, math.isqrt(int(WINDOW_PX / per_px))) // f * f)
    windows = [(ly, lx) for ly in range(0, lh, side) for lx in range(0, lw, side)]
    report = len(windows) > 1
    t0 = time.perf_counter()
    if report:
        yield Progress(0, len(windows), TISSUE, "detecting tissue", 0.0)
    rgb = np.empty((-(-lh // f), -(-lw // f), 3), np.uint8)
    for i, (ly, lx) in enumerate(windows):
        if i and stopped(stop):  # between windows: a one-window detection never asks
            return None
        rows, cols = min(side, lh - ly), min(side, lw - lx)
        y0 = -((-ly * h0) // lh)  # level-0 row that read_region floors to ly
        x0 = -((-lx * w0) // lw)
        block = slide.read_region(level, y0, x0, rows, cols)
        small = np.asarray(Image.fromarray(block).reduce(f)) if f > 1 else block
        rgb[ly // f : ly // f + small.shape[0], lx // f : lx // f + small.shape[1]] = small
        if report:
            msg = f"tissue: window {i + 1}/{len(windows)}"
            yield Progress(i + 1, len(windows), TISSUE, msg, time.perf_counter() - t0)
    mask_mpp = level_mpp[level] * f
    mask, threshold = tissue_from_rgb(
        rgb,
        mask_mpp,
        threshold=settings.threshold,
        threshold_range=settings.threshold_range,
        min_area_um2=settings.min_area_um2,
        hole_area_um2=settings.hole_area_um2,
    )
    return TissueMask(mask, (h0 / lh * f, w0 / lw * f), mask_mpp, threshold)


detect_tissue = eager(iter_detect_tissue)
