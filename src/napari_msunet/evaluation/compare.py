"""Compare label pyramids held as arrays (napari layers) rather than files.

:func:`~napari_msunet.evaluation.evaluate` compares two files and writes a report. The GUI
holds the prediction and the annotation as *layers*: lazy pyramids with a pixel size in µm,
often at different resolutions (a prediction at the model's 1 µm/px next to an annotation
rasterised on the slide's own 0.25 µm/px pyramid), sometimes only in memory (a label layer
painted by hand). :func:`iter_compare` takes them as :class:`LabelPyramid` objects, brings the
truth onto the prediction's grid, counts the confusion matrix window by window (memory bounded,
as :func:`evaluate` does), and returns the slide-level metrics with the lazy TP/FP/FN pyramid.
It writes nothing, and stops at the next window when its ``stop`` asks to (see
:mod:`napari_msunet.progress`); :func:`compare` is its eager twin.

Bringing the truth onto the prediction's grid
    1. A truth level of exactly the prediction's shape is used as it is (a truth rasterised
       on the same pyramid).
    2. Otherwise, when both pixel sizes are known, prediction pixel ``r`` takes the truth's
       label at its centre, ``floor((r + 0.5) * f)`` with ``f`` truth pixels per prediction
       pixel, read from the coarsest truth level that is still at least as fine as the
       prediction (nearest-neighbour sampling; a coarser level would lose small regions). Each
       prediction level gets its own sampled truth, so a zoomed-out view of the overlay never
       reads full-resolution data. The two must cover the same area (the prediction may
       reach up to one of its pixels beyond, as the engine's working image does).
    3. Otherwise the shapes differ and the scale is unknown: an error that says so.

    A QuPath GeoJSON *file* as the truth is rasterised straight onto the prediction's grid
    (exact, and cheaper than sampling a finer raster), with the slide giving the scale, as in
    :func:`evaluate`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from napari_msunet.errors import ConfigError, MsunetError
from napari_msunet.evaluation._counting import (
    check_ignore_label,
    iter_count,
    overlay_label,
    overlay_pyramid,
    slide_metrics,
)
from napari_msunet.evaluation._inputs import Prediction, is_geojson, load_region, load_truth
from napari_msunet.evaluation._windows import check_label_array
from napari_msunet.evaluation.matching import (
    ClassMatch,
    match_truth,
    normalise_names,
    remap_labels,
)
from napari_msunet.evaluation.metrics import SegmentationMetrics
from napari_msunet.io.writers import read_block
from napari_msunet.progress import Progress, Stop, eager

__all__ = ["Comparison", "LabelPyramid", "compare", "iter_compare"]

_CHUNK = 1024
# how far the two may disagree in extent (fraction of the side, plus pixels) on top of the
# one prediction pixel the engine's working image may reach beyond the slide
_EXTENT_SLACK_FRACTION = 0.01
_EXTENT_SLACK_PX = 2.0
# source rows read at once by the sampler (bounds memory when the truth is much finer)
_SAMPLE_ROWS = 1024


def _as_dask(arr: Any) -> da.Array:
    if isinstance(arr, da.Array):
        return arr
    chunks = getattr(arr, "chunks", None)
    if isinstance(arr, np.ndarray) or not chunks:
        chunks = _CHUNK
    return da.from_array(arr, chunks=chunks, asarray=True, fancy=False)


@dataclass(frozen=True, eq=False)
class LabelPyramid:
    """A label map as arrays: what a napari Labels layer holds.

    Parameters
    ----------
    levels
        2-D integer label arrays (NumPy, dask or zarr), finest first; one array is a pyramid
        of one level. Coarser levels are only used for the overlay's coarse views.
    mpp
        µm per pixel of ``levels[0]`` (``None``: unknown, then only equal shapes compare).
    names
        Label -> class name (or names of labels 1, 2, ...); classes are matched by name.
    name
        What messages call it (the layer's name or file).
    """

    levels: tuple[Any, ...]
    mpp: float | None = None
    names: Mapping[int, str] | Sequence[str] | None = None
    name: str = "labels"

    def __post_init__(self) -> None:
        levels = tuple(self.levels) if isinstance(self.levels, list | tuple) else (self.levels,)
        if not levels:
            raise MsunetError(f"{self.name}: a label pyramid needs at least one level")
        for lv in levels:
            try:
                check_label_array(lv, f"{self.name}: a level")
            except ValueError as exc:
                raise MsunetError(str(exc)) from None
        mpp = self.mpp
        if mpp is not None:
            if isinstance(mpp, bool) or not (math.isfinite(float(mpp)) and float(mpp) > 0):
                raise MsunetError(f"{self.name}: µm/px must be a positive number, not {mpp!r}")
            mpp = float(mpp)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "mpp", mpp)
        object.__setattr__(self, "names", normalise_names(self.names))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.levels[0].shape)  # type: ignore[return-value]

    def shapes(self) -> list[tuple[int, int]]:
        return [(int(lv.shape[0]), int(lv.shape[1])) for lv in self.levels]

    def downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level`` (from the shapes, averaged over both axes)."""
        (h, w), (lh, lw) = self.shape, self.shapes()[level]
        return (h / lh + w / lw) / 2


@dataclass(frozen=True, eq=False)
class Comparison:
    """What :func:`iter_compare` found.

    Attributes
    ----------
    metrics
        Slide-level per-class and foreground IoU/Dice (pixel counts on the prediction's grid).
    matching
        How the truth's classes were matched to the prediction's.
    shape, mpp
        The prediction's level-0 grid, where everything was counted.
    overlay_levels
        The TP/FP/FN map as a lazy pyramid (finest first) on the prediction's levels: for the
        single class when there is one, else for any foreground.
    overlay_label
        The class ``overlay_levels`` shows (``None``: any foreground).
    truth_details
        How the truth was brought onto the prediction's grid.
    """

    metrics: SegmentationMetrics
    matching: ClassMatch
    shape: tuple[int, int]
    mpp: float | None
    overlay_levels: tuple[da.Array, ...] = field(repr=False)
    overlay_label: int | None
    truth_details: dict[str, Any] = field(default_factory=dict)
    _pred_levels: tuple[da.Array, ...] = field(default=(), repr=False)
    _truth_levels: tuple[da.Array, ...] = field(default=(), repr=False)
    _ignore_label: int | None = field(default=None, repr=False)
    _region: Any = field(default=None, repr=False)

    def overlay(self, label: int | None) -> tuple[da.Array, ...]:
        """The lazy TP/FP/FN pyramid of class ``label`` (``None``: any foreground)."""
        if label is not None and label not in self.matching.names:
            raise KeyError(f"no class with label {label}; classes: {self.matching.names}")
        return overlay_pyramid(
            self._pred_levels, self._truth_levels, label, self._ignore_label, self._region
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: metrics, class matching, grid and how the truth was read."""
        return {
            "metrics": self.metrics.to_dict(),
            "matching": self.matching.to_dict(),
            "shape": list(self.shape),
            "mpp": self.mpp,
            "overlay_label": self.overlay_label,
            "truth": dict(self.truth_details),
        }


class _Sampled:
    """A label array seen on a coarser grid by nearest-neighbour sampling at pixel centres.

    Target pixel ``r`` takes source pixel ``floor((r + 0.5) * factor)`` (clipped to the
    source). Indexable with two slices and wrappable by dask, like the rasteriser.
    """

    def __init__(self, source: Any, shape: tuple[int, int], factor: tuple[float, float]):
        self.source = source
        self.shape = (int(shape[0]), int(shape[1]))
        self.factor = (float(factor[0]), float(factor[1]))
        self.dtype = np.dtype(source.dtype)
        self.ndim = 2
        self._src_shape = (int(source.shape[0]), int(source.shape[1]))

    def _index(self, axis: int, sl: slice) -> np.ndarray:
        start, stop, step = sl.indices(self.shape[axis])
        r = np.arange(start, stop, step, dtype=np.float64)
        idx = np.floor((r + 0.5) * self.factor[axis]).astype(np.int64)
        return np.clip(idx, 0, self._src_shape[axis] - 1)

    def __getitem__(self, key: Any) -> np.ndarray:
        if not (
            isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, slice) for k in key)
        ):
            raise IndexError(f"index with two slices, not {key!r}")
        ri, ci = self._index(0, key[0]), self._index(1, key[1])
        out = np.zeros((len(ri), len(ci)), dtype=self.dtype)
        if out.size == 0:
            return out
        c0, c1 = int(ci[0]), int(ci[-1]) + 1
        # read the source in bands of rows so that a much finer source stays memory-bounded
        i = 0
        while i < len(ri):
            r0 = int(ri[i])
            j = int(np.searchsorted(ri, r0 + _SAMPLE_ROWS, side="left"))
            j = max(j, i + 1)
            r1 = int(ri[j - 1]) + 1
            band = read_block(self.source, (slice(r0, r1), slice(c0, c1)))
            out[i:j] = band[np.ix_(ri[i:j] - r0, ci - c0)]
            i = j
        return out


def _sampled_levels(
    truth: LabelPyramid, pred: LabelPyramid, f: float
) -> tuple[list[da.Array], int]:
    """The truth sampled onto every prediction level; returns them and the source level of
    level 0 (``f``: truth level-0 pixels per prediction level-0 pixel)."""
    out, first = [], 0
    for k, (lh, lw) in enumerate(pred.shapes()):
        dy, dx = pred.shape[0] / lh * f, pred.shape[1] / lw * f  # truth px per pred px
        # the coarsest truth level at least as fine as this prediction level
        j = max(
            (i for i in range(len(truth.levels)) if truth.downsample(i) <= min(dy, dx) * 1.001),
            key=truth.downsample,
            default=0,
        )
        if k == 0:
            first = j
        (th, tw), (sh, sw) = truth.shape, truth.shapes()[j]
        factor = (dy * sh / th, dx * sw / tw)  # source-level px per target px
        chunks = tuple(int(c[0]) for c in _as_dask(pred.levels[k]).chunks)
        sampler = _Sampled(truth.levels[j], (lh, lw), factor)
        out.append(da.from_array(sampler, chunks=chunks, asarray=True, fancy=False))
    return out, first


def _check_extent(truth: LabelPyramid, pred: LabelPyramid, f: float) -> None:
    """Refuse a truth and a prediction that do not cover the same area."""
    for axis, what in ((0, "height"), (1, "width")):
        t = truth.shape[axis]
        p = pred.shape[axis] * f  # the prediction's extent in truth pixels
        slack = _EXTENT_SLACK_FRACTION * t + _EXTENT_SLACK_PX
        if p < t - slack or p > t + f + slack:
            um_t = t * truth.mpp if truth.mpp else t
            um_p = pred.shape[axis] * pred.mpp if pred.mpp else pred.shape[axis]
            raise MsunetError(
                f"{truth.name} is {um_t:.1f} µm in {what} but the prediction {pred.name} is "
                f"{um_p:.1f} µm ({truth.shape[1]} x {truth.shape[0]} px at {truth.mpp:.4g} "
                f"µm/px against {pred.shape[1]} x {pred.shape[0]} px at {pred.mpp:.4g} µm/px): "
                "do they belong to the same slide?"
            )


def _truth_from_arrays(
    truth: LabelPyramid, pred: LabelPyramid, ignore_label: int | None, truth_class: str | None
) -> tuple[tuple[da.Array, ...], Any, ClassMatch, dict[int, int], dict[str, Any]]:
    """The truth on the prediction's grid: (levels for the overlay, counting source, match,
    relabel, details)."""
    shapes = truth.shapes()
    if pred.shape in shapes:
        j = shapes.index(pred.shape)
        levels = [_as_dask(lv) for lv in truth.levels[j:]]
        source = truth.levels[j]
        details: dict[str, Any] = {"kind": "arrays", "how": "equal shape", "level": j}
    elif pred.mpp is not None and truth.mpp is not None:
        f = pred.mpp / truth.mpp
        _check_extent(truth, pred, f)
        levels, j = _sampled_levels(truth, pred, f)
        source = levels[0]
        details = {"kind": "arrays", "how": "sampled by µm", "level": j, "factor": f}
    else:
        (h, w), (th, tw) = pred.shape, truth.shape
        unknown = " and ".join(
            x.name for x in (pred, truth) if x.mpp is None
        )  # at least one of them
        raise MsunetError(
            f"{truth.name} is {tw} x {th} pixels and the prediction {pred.name} is {w} x {h}, "
            f"and the µm/px of {unknown} is unknown, so they cannot be aligned: compare "
            "layers of the same size, or layers scaled in µm"
        )
    try:
        match = match_truth(
            pred.names, truth.names, levels, truth_class=truth_class,
            ignore_label=ignore_label, truth_source=truth.name,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    relabel = {} if match.identity else dict(match.truth_to_eval)
    if relabel:
        levels = [remap_labels(lv, relabel) for lv in levels]
    details["mpp"] = truth.mpp
    return tuple(levels), source, match, relabel, details


def iter_compare(
    pred: LabelPyramid,
    truth: LabelPyramid | str | os.PathLike[str],
    *,
    slide: Any = None,
    region: Any = None,
    ignore_label: int | None = None,
    truth_class: str | None = None,
    stop: Stop = None,
    workers: int = 2,
) -> Generator[Progress, None, Comparison | None]:
    """Compare a prediction with the truth at slide level, as a generator.

    Parameters
    ----------
    pred
        The prediction; its level 0 is the grid everything is counted on.
    truth
        The annotation: a :class:`LabelPyramid` (see the module docstring for how it is
        aligned), or a file: a QuPath GeoJSON (level-0 slide pixels, rasterised onto the
        prediction's grid) or a label mask (opened lazily, then aligned like arrays).
    slide
        An opened :class:`~napari_msunet.io.slide.Slide`: the scale between a GeoJSON file
        and a prediction at a coarser resolution. Not needed for arrays.
    region
        Optional mask (non-zero = counted; e.g. the tissue mask) at the prediction's shape or
        any other scale of it with the same aspect ratio.
    ignore_label
        Truth value left out of every count (e.g. 255 for "not annotated").
    truth_class
        The prediction's class that an unnamed binary truth mask (0/1, 0/255) annotates;
        by default its only class (see :func:`~napari_msunet.evaluation.matching.match_values`).
    stop
        Checked before every window (see :mod:`napari_msunet.progress`); when it asks to
        stop, the comparison returns ``None``: metrics of part of a slide would read as the
        slide's.
    workers
        Threads reading and counting windows.

    Yields
    ------
    Progress
        Stage ``"compare"``: one record per window counted.

    Returns
    -------
    Comparison or None
        ``None`` when stopped.

    Raises
    ------
    MsunetError
        Layers that cannot be aligned (shapes differ and a pixel size is unknown, or they
        cover different areas), labels beyond 1023, a bad region mask.
    AnnotationError
        A truth file that is missing or invalid, or does not fit the prediction.
    """
    check_ignore_label(ignore_label)
    pred_levels = tuple(_as_dask(lv) for lv in pred.levels)
    if isinstance(truth, LabelPyramid):
        t_levels, t_source, match, relabel, details = _truth_from_arrays(
            truth, pred, ignore_label, truth_class
        )
        truth_name = truth.name
    elif is_geojson(truth):
        prediction = Prediction(
            Path(pred.name), pred_levels, pred.mpp, dict(pred.names), pred.levels[0]
        )
        t = load_truth(
            truth, prediction, slide=slide, ignore_label=ignore_label, truth_class=truth_class
        )
        t_levels, t_source, match, relabel, details = (
            t.levels,
            t.source,
            t.match,
            t.relabel,
            t.details,
        )
        truth_name = str(truth)
    else:
        from napari_msunet.io.masks import open_mask

        mask = open_mask(truth)
        as_arrays = LabelPyramid(
            mask.levels, mask.mpp, {c.label: c.name for c in mask.classes}, str(truth)
        )
        t_levels, t_source, match, relabel, details = _truth_from_arrays(
            as_arrays, pred, ignore_label, truth_class
        )
        truth_name = str(truth)
    region_src = load_region(region, pred.shape)

    confusion = yield from iter_count(
        pred.levels[0],
        t_source,
        relabel=relabel,
        region=region_src,
        ignore_label=ignore_label,
        files=(pred.name, truth_name),
        stage="compare",
        what="comparing",
        stop=stop,
        workers=workers,
    )
    if confusion is None:
        return None
    names = dict(match.names)
    label = overlay_label(names)
    return Comparison(
        metrics=slide_metrics(confusion, names, pred.shape),
        matching=match,
        shape=pred.shape,
        mpp=pred.mpp,
        overlay_levels=overlay_pyramid(pred_levels, t_levels, label, ignore_label, region_src),
        overlay_label=label,
        truth_details=dict(details),
        _pred_levels=pred_levels,
        _truth_levels=tuple(t_levels),
        _ignore_label=ignore_label,
        _region=region_src,
    )


compare = eager(iter_compare)
