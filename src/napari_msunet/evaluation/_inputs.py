"""Opening what :func:`~napari_msunet.evaluation.evaluate` compares, and checking it fits.

The prediction is a label mask (OME-Zarr, TIFF, PNG) and fixes the resolution of the
evaluation: its level 0. The truth is brought to that grid:

- a label mask is used at the pyramid level whose shape equals the prediction's (so a truth
  rasterised at slide level 0 serves a prediction made at 1 µm/px, if the pyramid has that
  level), then relabelled into the prediction's classes;
- a QuPath GeoJSON (level-0 slide pixels) is rasterised lazily, window by window, at the
  prediction's shape, directly with the prediction's labels. The downsample is the slide's
  level-0 shape over the prediction's shape, cross-checked with the two pixel sizes when both
  are known. Without the slide the prediction is taken to be at level 0, and annotations
  reaching beyond it are an error (the usual sign that the prediction is at a coarser
  resolution and the slide is needed).

Each side carries two views of its level 0: ``levels`` (dask, for the lazy TP/FP/FN pyramid)
and ``source`` (what the counting pass reads window by window). For an OME-Zarr the source is
the stored zarr array itself: a 2048² window read straight from zarr decodes its 16 chunks in
one call, about 3x faster than slicing and computing the dask wrapper chunk by chunk. For a
GeoJSON it is the rasteriser, which draws exactly the window asked for.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from napari_msunet.errors import AnnotationError, ConfigError
from napari_msunet.evaluation.matching import (
    ClassMatch,
    EvaluationWarning,
    match_classes,
    match_truth,
    normalise_names,
    remap_labels,
)
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.masks import LabelMask, open_mask
from napari_msunet.io.rasterise import Rasteriser
from napari_msunet.io.slide import Slide

__all__ = [
    "Prediction",
    "Truth",
    "is_geojson",
    "load_prediction",
    "load_region",
    "load_truth",
    "slide_downsample",
]

_GEOJSON_SUFFIXES = (".geojson", ".json")
# how far (in prediction pixels, and as a fraction) annotations may reach beyond the
# prediction before we conclude that the prediction is not at level 0
_BOUNDS_SLACK_PX = 2.0
_BOUNDS_SLACK_FRACTION = 0.01
# relative disagreement tolerated between the downsample from shapes and from pixel sizes
_MPP_TOLERANCE = 0.05


def is_geojson(path: str | Path) -> bool:
    """Whether ``path`` names a (QuPath) GeoJSON file rather than a label mask."""
    return Path(path).suffix.lower() in _GEOJSON_SUFFIXES and not Path(path).is_dir()


@dataclass(frozen=True, eq=False)
class Prediction:
    """The prediction mask: its pyramid, pixel size and class names (label -> name).

    ``source`` is level 0 for the counting pass (the zarr array of an OME-Zarr).
    """

    path: Path
    levels: tuple[da.Array, ...]
    mpp: float | None
    names: dict[int, str]
    source: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.levels[0].shape)  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class Truth:
    """The truth on the prediction's grid, relabelled into the prediction's classes.

    ``levels[0]`` has the prediction's shape and is relabelled; ``source`` is the same level
    for the counting pass, still to be relabelled window by window with ``relabel``
    (:func:`~napari_msunet.evaluation.matching.remap_block`; empty when the source already
    carries the prediction's labels). ``details`` says how the truth was obtained (for the
    report).
    """

    path: Path
    kind: str
    levels: tuple[da.Array, ...]
    match: ClassMatch
    source: Any
    relabel: dict[int, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def _zarr_level(path: Path, level: int, like: Any) -> Any:
    """The stored zarr array behind level ``level`` of an OME-Zarr mask, else ``like``.

    Only used when it has the same shape and dtype as the dask level ``like`` that
    :func:`~napari_msunet.io.masks.open_mask` made from it; anything unexpected falls back
    to ``like``.
    """
    if not (path.is_dir() or path.name.lower().endswith(".zarr")):
        return like
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
        ome = attrs.get("ome", attrs)
        arr = group[ome["multiscales"][0]["datasets"][level]["path"]]
    except Exception:
        return like
    if isinstance(arr, zarr.Array) and arr.shape == like.shape and arr.dtype == like.dtype:
        return arr
    return like


def load_prediction(
    path: str | Path, class_names: Mapping[int, str] | Sequence[str] | None = None
) -> Prediction:
    """Open the prediction mask; ``class_names`` (labels 1, 2, ... or a mapping) override its own.

    Raises
    ------
    AnnotationError
        Missing or unreadable mask, or a GeoJSON given as the prediction.
    """
    p = Path(path)
    if is_geojson(p):
        raise AnnotationError(
            p,
            "is GeoJSON, but the prediction must be a label mask (OME-Zarr, TIFF or PNG), "
            "such as the .ome.zarr written by `msunet predict`",
        )
    mask = open_mask(p)
    names = normalise_names(class_names) or {c.label: c.name for c in mask.classes}
    source = _zarr_level(p, 0, mask.levels[0])
    return Prediction(p, tuple(mask.levels), mask.mpp, names, source)


def slide_downsample(pred: Prediction, slide: Slide) -> float:
    """Level-0 slide pixels per prediction pixel, checked against both shapes and µm/px.

    Raises
    ------
    AnnotationError
        The prediction is not the slide at one scale, or its µm/px disagrees with the slide's
        (it probably belongs to another slide).
    """
    (h, w), (hs, ws) = pred.shape, slide.shape
    d = (hs / h + ws / w) / 2
    if abs(hs / d - h) > 1 or abs(ws / d - w) > 1:
        raise AnnotationError(
            pred.path,
            f"is {w} x {h} pixels, which is not the slide {slide.path} ({ws} x {hs}) at any "
            "one scale (the aspect ratios differ): does the prediction belong to this slide?",
        )
    if pred.mpp is not None and slide.mpp is not None:
        expected = pred.mpp / slide.mpp
        if abs(expected / d - 1) > _MPP_TOLERANCE:
            raise AnnotationError(
                pred.path,
                f"is at {pred.mpp:.4g} µm/px and the slide {slide.path} at {slide.mpp:.4g} "
                f"µm/px (a downsample of {expected:.3g}), but their shapes ({w} x {h} and "
                f"{ws} x {hs}) imply {d:.3g}: does the prediction belong to this slide?",
            )
    return d


def _check_bounds(path: Path, annotations: Any, shape: tuple[int, int]) -> None:
    """Refuse annotations that reach well beyond the prediction taken as level 0."""
    if len(annotations) == 0:
        return
    import shapely

    bounds = shapely.total_bounds([a.geometry for a in annotations])
    max_x, max_y = float(bounds[2]), float(bounds[3])
    h, w = shape
    if (
        max_x > w * (1 + _BOUNDS_SLACK_FRACTION) + _BOUNDS_SLACK_PX
        or max_y > h * (1 + _BOUNDS_SLACK_FRACTION) + _BOUNDS_SLACK_PX
    ):
        raise AnnotationError(
            path,
            f"annotations reach x = {max_x:.0f}, y = {max_y:.0f} (level-0 slide pixels), beyond "
            f"the prediction's {w} x {h} pixels: the prediction is probably at a coarser "
            "resolution than the slide; give the slide (slide=..., --slide) so the scale can "
            "be computed",
        )


def load_truth(
    path: str | Path,
    pred: Prediction,
    *,
    slide: Slide | None = None,
    ignore_label: int | None = None,
    truth_class: str | None = None,
) -> Truth:
    """Open the truth (label mask or QuPath GeoJSON) on the prediction's grid.

    An unnamed mask is matched by its values (:func:`~.matching.match_truth`): one foreground
    value is one class, the prediction's only class or ``truth_class``.

    Raises
    ------
    AnnotationError
        Missing or invalid file; a mask with no level of the prediction's shape; a GeoJSON
        that does not fit the prediction without the slide; a prediction that does not fit
        the slide.
    """
    p = Path(path)
    if is_geojson(p):
        if truth_class is not None:
            raise ConfigError(f"{p}: a GeoJSON names its classes; a truth class is for masks")
        return _truth_from_geojson(p, pred, slide, ignore_label)
    return _truth_from_mask(p, pred, ignore_label, truth_class)


def _truth_from_geojson(
    path: Path, pred: Prediction, slide: Slide | None, ignore_label: int | None
) -> Truth:
    if slide is not None:
        d = slide_downsample(pred, slide)
        slide_shape = slide.shape
        annotations = read_geojson(path, slide_shape=slide_shape)
    else:
        d = 1.0
        slide_shape = pred.shape
        annotations = read_geojson(path)
        _check_bounds(path, annotations, pred.shape)
    truth_names = {c.label: c.name for c in annotations.classes}
    match = match_classes(
        pred.names, truth_names, ignore_label=ignore_label, truth_source=str(path)
    )
    labels = {c.name: match.truth_to_eval.get(c.label, c.label) for c in annotations.classes}
    hs, ws = slide_shape
    rasters = []
    for level in pred.levels:
        lh, lw = (int(s) for s in level.shape)
        d_level = (hs / lh + ws / lw) / 2
        rasters.append(
            Rasteriser(annotations, slide_shape, d_level, labels=labels, level_shape=(lh, lw))
        )
    # each level is drawn at its own scale (cheap coarse views for napari); chunks follow the
    # prediction's so that dask aligns the two without rechunking
    levels = [
        r.to_dask(tuple(int(c[0]) for c in lv.chunks))
        for r, lv in zip(rasters, pred.levels, strict=True)
    ]
    details = {
        "kind": "geojson",
        "annotations": len(annotations),
        "classes": {str(c.label): c.name for c in annotations.classes},
        "slide_shape": [int(hs), int(ws)],
        "downsample": d,
    }
    # the rasteriser draws with the prediction's labels already: nothing to relabel
    return Truth(path, "geojson", tuple(levels), match, rasters[0], {}, details)


def _truth_from_mask(
    path: Path, pred: Prediction, ignore_label: int | None, truth_class: str | None = None
) -> Truth:
    mask: LabelMask = open_mask(path)
    shapes = [tuple(int(s) for s in lv.shape) for lv in mask.levels]
    if pred.shape not in shapes:
        (h, w), (th, tw) = pred.shape, shapes[0]
        others = (
            f" (pyramid levels: {', '.join(f'{b} x {a}' for a, b in shapes[1:])})"
            if len(shapes) > 1
            else ""
        )
        raise AnnotationError(
            path,
            f"is {tw} x {th} pixels{others}, but the prediction {pred.path} is {w} x {h}: "
            "compare masks of the same size, e.g. rasterise the annotation at the "
            "prediction's level (`msunet rasterize ANNOTATION --slide SLIDE --level N`) or "
            "give the QuPath GeoJSON with the slide",
        )
    j = shapes.index(pred.shape)
    if mask.mpp is not None and pred.mpp is not None:
        truth_mpp = mask.mpp * 2**j
        if abs(truth_mpp / pred.mpp - 1) > _MPP_TOLERANCE:
            warnings.warn(
                f"{path}: {truth_mpp:.4g} µm/px at the level compared, but the prediction "
                f"says {pred.mpp:.4g} µm/px although the shapes agree; check the files",
                EvaluationWarning,
                stacklevel=3,
            )
    truth_names = {c.label: c.name for c in mask.classes}
    levels = tuple(mask.levels[j:])
    try:
        match = match_truth(
            pred.names, truth_names, levels, truth_class=truth_class,
            ignore_label=ignore_label, truth_source=str(path),
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    relabel = {} if match.identity else dict(match.truth_to_eval)
    if relabel:
        levels = tuple(remap_labels(lv, relabel) for lv in levels)
    source = _zarr_level(path, j, mask.levels[j])
    details = {"kind": "mask", "level": j, "mpp": mask.mpp}
    return Truth(path, "mask", levels, match, source, relabel, details)


def load_region(region: Any, shape: tuple[int, int]) -> Any:
    """Open a region mask (a path or an array); prefer a level of exactly ``shape``.

    Any other shape is sampled nearest-neighbour at evaluation time, but the aspect ratio
    must agree with the prediction's.
    """
    if region is None:
        return None
    if isinstance(region, str | Path):
        mask = open_mask(region)
        levels = list(mask.levels)
        source: Path | None = Path(region)
    else:
        levels = [region]
        source = None
    for lv in levels:
        if tuple(int(s) for s in lv.shape) == shape:
            return lv
    rh, rw = (int(s) for s in levels[0].shape[-2:])
    h, w = shape
    same_scale = math.isclose(rh / h, rw / w, rel_tol=0.02, abs_tol=2 / min(h, w))
    if len(levels[0].shape) != 2 or not same_scale:
        subject = "is" if source is not None else "the region mask is"
        raise AnnotationError(
            source,
            f"{subject} {rw} x {rh} pixels, which is not the prediction's {w} x {h} at any "
            "one scale; give a region mask made for this slide",
        )
    return levels[0]
