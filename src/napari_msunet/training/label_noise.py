"""Simulated annotation noise: how a hurried annotator differs from a careful one.

The paper's second claim is that fuzzy boundaries and bootstrapping recover accuracy lost to
noisy and incomplete annotations. Public datasets have careful masks, so to test the claim we
corrupt them in the two ways the paper describes, seeded and documented:

* **Boundary noise** — each region's outline is moved in or out by a random 2-8 px (erosion or
  dilation with a round structuring element: a polygon buffer) and then simplified coarsely
  (Douglas-Peucker with a tolerance of a few pixels), as an annotator drawing quickly with a
  coarse brush does.
* **Missing annotations** — a fraction of the regions (30 % by default) is left out entirely:
  the annotation says "background" where there is a region, the paper's missing-annotation
  problem.

Regions are the 4-connected regions of each class, vectorised exactly on pixel edges
(:func:`~napari_msunet.io.vectorise.vectorise`) and rasterised back
(:func:`~napari_msunet.io.rasterise.rasterise_array`), so an uncorrupted run is the identity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import shapely

from napari_msunet.errors import ConfigError
from napari_msunet.io.annotations import Annotation
from napari_msunet.io.rasterise import rasterise_array
from napari_msunet.io.vectorise import vectorise

__all__ = ["LabelNoise", "NoiseReport", "corrupt_mask"]


@dataclass(frozen=True)
class LabelNoise:
    """How to corrupt a mask.

    Parameters
    ----------
    boundary_px
        ``(low, high)``: each region is eroded or dilated (equal odds) by a whole number of
        pixels drawn uniformly from this range; ``(0, 0)`` leaves boundaries alone.
    simplify_px
        Douglas-Peucker tolerance in pixels applied after the boundary move (0: none).
    drop_fraction
        Probability that a region is removed (annotated as background), drawn independently
        per region, so over a dataset about this fraction of regions goes missing.
    erode_only
        Systematic under-segmentation: every boundary move is an erosion (the annotator
        always draws inside the gland), instead of erosion or dilation at equal odds.
    partial_fraction
        Probability that an image is annotated only partly: its kept regions stay, and
        everything else (background and the regions left out) becomes ``ignore_label``,
        so the image teaches nothing about where regions are *not*.
    ignore_label
        The value of "not annotated" in a partly annotated image (the loss's ignore label).

    The last three are left out of :meth:`to_dict` at their defaults (as are their draws
    from the random stream), so masks corrupted before they existed stay the same.
    """

    boundary_px: tuple[int, int] = (2, 8)
    simplify_px: float = 4.0
    drop_fraction: float = 0.3
    erode_only: bool = False
    partial_fraction: float = 0.0
    ignore_label: int = 255

    def __post_init__(self) -> None:
        lo, hi = (int(v) for v in self.boundary_px)
        if not 0 <= lo <= hi:
            raise ConfigError(f"boundary_px must be 0 <= low <= high, got {self.boundary_px}")
        object.__setattr__(self, "boundary_px", (lo, hi))
        if self.simplify_px < 0:
            raise ConfigError(f"simplify_px must be >= 0, got {self.simplify_px}")
        if not 0 <= self.drop_fraction < 1:
            raise ConfigError(f"drop_fraction must be in [0, 1), got {self.drop_fraction}")
        if not 0 <= self.partial_fraction <= 1:
            raise ConfigError(f"partial_fraction must be in [0, 1], got {self.partial_fraction}")
        if not 0 < int(self.ignore_label) < 65536:
            raise ConfigError(f"ignore_label must be a label value > 0, got {self.ignore_label}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["boundary_px"] = list(self.boundary_px)
        for name, default in (("erode_only", False), ("partial_fraction", 0.0),
                              ("ignore_label", 255)):  # fmt: skip
            if d[name] == default:
                del d[name]
        return d


@dataclass(frozen=True)
class NoiseReport:
    """What :func:`corrupt_mask` did to one mask (for the experiment's documentation)."""

    regions: int
    dropped: int
    vanished: int  # regions eroded to nothing
    changed_pixels: int


def corrupt_mask(
    mask: np.ndarray, noise: LabelNoise, seed: int | tuple[int, ...]
) -> tuple[np.ndarray, NoiseReport]:
    """Return a corrupted copy of a 2D label mask (0 = background) and what was done.

    The same ``seed`` gives the same corruption. Pixels of labels above the classes present
    (e.g. an ignore label 255) are treated like any class.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype.kind not in "biu":
        raise ValueError(f"need a 2D integer label mask, got {mask.dtype} {mask.shape}")
    rng = np.random.default_rng(seed)
    if not mask.any():
        return mask.copy(), NoiseReport(0, 0, 0, 0)
    labels = {int(v) for v in np.unique(mask) if v}
    regions = vectorise(mask, {f"c{v}": v for v in labels}).annotations
    n = len(regions)
    # each region independently: over a dataset the fraction removed is drop_fraction, and an
    # image with one region can lose it too (per-image rounding would never drop it)
    dropped = set(np.flatnonzero(rng.random(n) < noise.drop_fraction).tolist())
    lo, hi = noise.boundary_px
    kept: list[Annotation] = []
    vanished = 0
    for i, region in enumerate(regions):
        # draw for every region, dropped or not, so the draws do not depend on the drop set
        r = int(rng.integers(lo, hi + 1))
        sign = 1 if rng.random() < 0.5 and not noise.erode_only else -1
        if i in dropped:
            continue
        geom = region.geometry
        if r:
            geom = geom.buffer(sign * r, quad_segs=8)
        if noise.simplify_px and not geom.is_empty:
            geom = shapely.simplify(geom, noise.simplify_px, preserve_topology=True)
        geom = shapely.make_valid(geom) if not geom.is_empty else geom
        polys = _polygons(geom)
        if polys is None:
            vanished += 1
            continue
        kept.append(Annotation(polys, region.class_name))
    table = {f"c{v}": v for v in labels}
    out = np.zeros_like(mask)
    if kept:
        raster = rasterise_array(kept, mask.shape, labels=table, dtype=mask.dtype)
        # later regions paint over earlier ones; background stays where nothing was drawn
        out = raster.astype(mask.dtype)
    # drawn after the regions' draws, and only when asked: earlier corruptions stay the same
    if noise.partial_fraction and rng.random() < noise.partial_fraction:
        if np.iinfo(out.dtype).max < noise.ignore_label:
            out = out.astype(np.uint16)
        out = np.where(out > 0, out, noise.ignore_label).astype(out.dtype)
    return out, NoiseReport(n, len(dropped), vanished, int((out != mask).sum()))


def _polygons(geom):
    """The (Multi)Polygon part of a geometry, or None when nothing with area is left."""
    if geom.is_empty:
        return None
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom if geom.area > 0 else None
    parts = [g for g in getattr(geom, "geoms", []) if g.geom_type == "Polygon" and g.area > 0]
    if not parts:
        return None
    return shapely.MultiPolygon(parts) if len(parts) > 1 else parts[0]
