"""Evaluate one prediction against its ground truth: the function ``msunet evaluate`` wraps.

One pass over the prediction's full-resolution level, window by window, accumulates the
confusion matrix and, at the same time, a subsampled copy of both label maps (every ``s``-th
pixel, ``s`` a power of two) from which the overlay PNG is drawn: the picture therefore shows
exactly the pixels the numbers count, and no second pass over the slide is needed.

Outputs in ``out_dir``: ``report.json`` (everything), ``report.csv`` (one row per class) and
``overlay.png`` (TP green, FP red, FN blue over the slide's thumbnail, with the scores). They
are checked before any work starts, so a run that would refuse to overwrite fails at once.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dask.array as da
import numpy as np

from napari_msunet._atomic import check_new_file
from napari_msunet.errors import AnnotationError, MsunetError, WriterError
from napari_msunet.evaluation._inputs import (
    Prediction,
    Truth,
    load_prediction,
    load_region,
    load_truth,
    slide_downsample,
)
from napari_msunet.evaluation._windows import Resampled, scan, window_shape
from napari_msunet.evaluation.matching import ClassMatch, EvaluationWarning, remap_block
from napari_msunet.evaluation.metrics import (
    LabelValueError,
    SegmentationMetrics,
    block_confusion,
    compute_metrics,
    merge_confusion,
    trim_confusion,
)
from napari_msunet.evaluation.overlay import (
    render_overlay,
    tpfpfn_codes,
    tpfpfn_pyramid,
    write_overlay_png,
)
from napari_msunet.evaluation.report import build_report, write_csv_report, write_json_report
from napari_msunet.progress import run_to_end

__all__ = ["OUTPUT_NAMES", "EvaluationResult", "Progress", "evaluate", "iter_evaluate"]

T = TypeVar("T")

#: File names written into ``out_dir``.
OUTPUT_NAMES = {"json": "report.json", "csv": "report.csv", "overlay": "overlay.png"}


@dataclass(frozen=True)
class Progress:
    """Progress of an evaluation: ``done`` of ``total`` windows counted."""

    done: int
    total: int
    message: str = ""


@dataclass(frozen=True, eq=False)
class EvaluationResult:
    """What :func:`evaluate` found and wrote.

    Attributes
    ----------
    metrics
        Slide-level per-class and foreground metrics.
    matching
        How the truth's classes were matched to the prediction's.
    report
        The JSON report as a dict (NaN as ``None``).
    outputs
        ``{"json": path, "csv": path, "overlay": path}``.
    overlay_levels
        The TP/FP/FN map as a lazy pyramid for napari (finest first): for the single class
        when the prediction has one, else for any foreground. Nothing is computed until a
        level is.
    overlay_label
        The class shown by ``overlay_levels`` and the PNG (``None``: any foreground).
    """

    metrics: SegmentationMetrics
    matching: ClassMatch
    prediction: Path
    truth: Path
    slide: Path | None
    shape: tuple[int, int]
    mpp: float | None
    report: dict[str, Any] = field(repr=False)
    outputs: dict[str, Path] = field(default_factory=dict)
    overlay_levels: tuple[da.Array, ...] = field(default=(), repr=False)
    overlay_label: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (what ``report.json`` holds)."""
        return dict(self.report)


def _preview_step(shape: tuple[int, int], max_side: int) -> int:
    """Smallest power of two that brings the longer side to ``max_side`` or less."""
    s = 1
    while math.ceil(max(shape) / s) > max_side:
        s *= 2
    return s


def _open_slide(slide: str | os.PathLike[str] | None) -> Any:
    if slide is None:
        return contextlib.nullcontext(None)
    from napari_msunet.io.slide import SlideWarning, open_slide

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SlideWarning)  # unknown µm/px: we use shapes anyway
        return open_slide(slide)


def _check_outputs(out_dir: Path, overwrite: bool) -> dict[str, Path]:
    """Refuse, before any work, outputs that exist or a folder that cannot be written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise WriterError(out_dir, "is a file; give a folder for the report")
    outputs = {k: check_new_file(out_dir / name, overwrite) for k, name in OUTPUT_NAMES.items()}
    existing = next((p for p in (out_dir, *out_dir.absolute().parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise WriterError(out_dir, f"cannot be written: {existing} is not writable")
    return outputs


def _overlay_label(names: Mapping[int, str]) -> int | None:
    return next(iter(names)) if len(names) == 1 else None


def iter_evaluate(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    slide: str | os.PathLike[str] | None = None,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    ignore_label: int | None = None,
    region: Any = None,
    overwrite: bool = False,
    overlay_max_side: int = 1024,
    workers: int = 2,
) -> Generator[Progress, None, EvaluationResult]:
    """Evaluate as a generator: yields :class:`Progress` per window, returns the result.

    The CLI wraps it in a progress bar and the GUI in a worker thread (see
    :func:`evaluate` for the parameters); closing the generator stops at the next window
    and writes nothing.
    """
    out = Path(out_dir)
    outputs = _check_outputs(out, overwrite)
    if ignore_label is not None and (isinstance(ignore_label, bool) or int(ignore_label) < 0):
        raise MsunetError(f"ignore_label must be a label value >= 0, not {ignore_label!r}")
    prediction = load_prediction(pred, class_names)
    with _open_slide(slide) as the_slide:
        # a prediction that does not fit its slide is refused whatever the truth is
        d_slide = None if the_slide is None else slide_downsample(prediction, the_slide)
        truth_ = load_truth(truth, prediction, slide=the_slide, ignore_label=ignore_label)
        region_src = load_region(region, prediction.shape)
        confusion, step, samples = yield from _count(
            prediction, truth_, region_src, ignore_label, overlay_max_side, workers
        )
        thumb = the_slide.thumbnail(2 * overlay_max_side) if the_slide is not None else None
        level_mpp = None
        if the_slide is not None and the_slide.mpp is not None and d_slide is not None:
            level_mpp = the_slide.mpp * d_slide
    return _finish(
        prediction,
        truth_,
        confusion,
        (*samples, thumb),
        step=step,
        slide=Path(slide) if slide is not None else None,
        slide_mpp=level_mpp,
        slide_downsample=d_slide,
        ignore_label=ignore_label,
        region=region_src,
        outputs=outputs,
        overwrite=overwrite,
    )


def _count(
    prediction: Prediction,
    truth: Truth,
    region: Any,
    ignore_label: int | None,
    max_side: int,
    workers: int,
) -> Generator[Progress, None, tuple[np.ndarray, int, tuple[Any, ...]]]:
    """One pass: the confusion matrix plus every ``s``-th pixel of both maps (for the PNG)."""
    shape = prediction.shape
    pred0, truth0 = prediction.source, truth.source
    relabel = truth.relabel
    s = _preview_step(shape, max_side)
    small = (math.ceil(shape[0] / s), math.ceil(shape[1] / s))
    p_small = np.zeros(small, dtype=pred0.dtype)
    t_small = np.zeros(small, dtype=truth.levels[0].dtype)
    v_small = None if region is None else np.zeros(small, dtype=bool)
    sources = [pred0, truth0, None if region is None else Resampled(region, shape)]
    step = window_shape(pred0)
    total_windows = math.ceil(shape[0] / step[0]) * math.ceil(shape[1] / step[1])

    def one(window: Any, blocks: list[np.ndarray]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        p, t, v = blocks
        if relabel:
            t = remap_block(t, relabel)
        cm = block_confusion(p, t, valid=v, ignore_label=ignore_label)
        ys, xs = window
        ry, rx = (-ys.start) % s, (-xs.start) % s
        # copies, so that a result waiting in the queue does not keep its whole window alive
        sample = (
            p[ry::s, rx::s].copy(),
            t[ry::s, rx::s].copy(),
            None if v is None else v[ry::s, rx::s] != 0,
        )
        return cm, sample

    total: np.ndarray | None = None
    windows = scan(one, shape, sources, step=step, workers=workers)
    for done, (window, (cm, sample)) in enumerate(_named_errors(windows, prediction, truth), 1):
        total = merge_confusion(total, cm)
        ys, xs = window
        y0, x0 = -(-ys.start // s), -(-xs.start // s)
        sp, st, sv = sample
        h, w = sp.shape
        p_small[y0 : y0 + h, x0 : x0 + w] = sp
        t_small[y0 : y0 + h, x0 : x0 + w] = st
        if v_small is not None:
            v_small[y0 : y0 + h, x0 : x0 + w] = sv
        yield Progress(done, total_windows, "counting pixels")
    assert total is not None
    return total, s, (p_small, t_small, v_small)


def _named_errors(windows: Iterator[T], prediction: Prediction, truth: Truth) -> Iterator[T]:
    """Re-raise bad label values as errors naming the file that holds them."""
    try:
        yield from windows
    except LabelValueError as exc:
        path = prediction.path if exc.which == "prediction" else truth.path
        reason = str(exc).removeprefix(f"the {exc.which} ")
        raise AnnotationError(path, reason) from exc


def _finish(
    prediction: Prediction,
    truth: Truth,
    confusion: np.ndarray,
    previews: tuple[Any, ...],
    *,
    step: int,
    slide: Path | None,
    slide_mpp: float | None,  # µm/px of the prediction's grid according to the slide
    slide_downsample: float | None,
    ignore_label: int | None,
    region: Any,
    outputs: dict[str, Path],
    overwrite: bool,
) -> EvaluationResult:
    match = truth.match
    names = dict(match.names)
    n_classes = max([0, *names]) + 1
    confusion = trim_confusion(confusion, n_classes)
    shape = prediction.shape
    excluded = shape[0] * shape[1] - int(confusion.sum())
    metrics = compute_metrics(confusion, names, excluded_pixels=excluded)
    mpp, mpp_source = prediction.mpp, "prediction"
    if mpp is None and slide_mpp is not None:
        mpp, mpp_source = slide_mpp, "slide"
    label = _overlay_label(names)
    subject = "foreground (all classes)" if label is None else names[label]

    p_small, t_small, v_small, thumb = previews
    codes = tpfpfn_codes(p_small, t_small, label, ignore_label=ignore_label, valid=v_small)
    scores = [
        (c.name, c.iou, c.dice) for c in metrics.foreground_classes if c.label in names or c.present
    ]
    if len(scores) != 1:
        scores.append(("foreground", metrics.foreground.iou, metrics.foreground.dice))
    image = render_overlay(
        codes,
        thumb,
        scores=scores,
        title=(slide or prediction.path).name,
        subject=subject,
    )
    # the record names the inputs absolutely; errors name them as the user typed them
    pred_path, truth_path = prediction.path.absolute(), truth.path.absolute()
    slide = None if slide is None else slide.absolute()
    report = build_report(
        metrics,
        prediction=pred_path,
        truth=truth_path,
        slide=slide,
        matching=match,
        shape=shape,
        mpp=mpp,
        ignore_label=ignore_label,
        extra={
            "mpp_source": mpp_source if mpp is not None else None,
            "slide_downsample": slide_downsample,
            "truth_source": truth.details,
            "region": region is not None,
            "overlay": {
                "file": outputs["overlay"].name,
                "shows": subject,
                "label": label,
                "subsampling": step,
                "colors": {"TP": "green", "FP": "red", "FN": "blue"},
            },
            "outputs": {k: p.name for k, p in outputs.items()},
        },
    )
    write_overlay_png(image, outputs["overlay"], overwrite=overwrite)
    write_csv_report(
        metrics,
        outputs["csv"],
        prediction=pred_path,
        truth=truth_path,
        slide=slide,
        mpp=mpp,
        overwrite=overwrite,
    )
    write_json_report(report, outputs["json"], overwrite=overwrite)
    return EvaluationResult(
        metrics=metrics,
        matching=match,
        prediction=pred_path,
        truth=truth_path,
        slide=slide,
        shape=shape,
        mpp=mpp,
        report=report,
        outputs=outputs,
        overlay_levels=_overlay_levels(prediction, truth, label, ignore_label, region),
        overlay_label=label,
    )


def _overlay_levels(
    prediction: Prediction, truth: Truth, label: int | None, ignore_label: int | None, region: Any
) -> tuple[da.Array, ...]:
    try:
        levels = tpfpfn_pyramid(
            list(prediction.levels),
            list(truth.levels),
            label,
            ignore_label=ignore_label,
            region=region,
        )
    except ValueError as exc:
        warnings.warn(
            f"the TP/FP/FN pyramid ignores the region mask: {exc}", EvaluationWarning, stacklevel=3
        )
        levels = tpfpfn_pyramid(
            list(prediction.levels), list(truth.levels), label, ignore_label=ignore_label
        )
    return tuple(levels)


def evaluate(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    slide: str | os.PathLike[str] | None = None,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    ignore_label: int | None = None,
    region: Any = None,
    overwrite: bool = False,
    overlay_max_side: int = 1024,
    workers: int = 2,
) -> EvaluationResult:
    """Compare a predicted label mask with the ground truth at slide level and write a report.

    Parameters
    ----------
    pred
        The prediction: a label mask (OME-Zarr, (OME-)TIFF or PNG). Its level 0 sets the
        resolution of the evaluation.
    truth
        The ground truth: a label mask of the same shape (or a pyramid with a level of that
        shape), or a QuPath GeoJSON in level-0 slide pixels, rasterised lazily at the
        prediction's shape.
    out_dir
        Folder for ``report.json``, ``report.csv`` and ``overlay.png`` (created if needed).
    slide
        The slide: gives the scale between the GeoJSON and a prediction made at a coarser
        resolution (slide level-0 shape / prediction shape, checked against the µm/px when
        both files state it), and the thumbnail under the overlay.
    class_names
        Names of the prediction's labels 1, 2, ... (or a ``{label: name}`` mapping), when its
        file does not carry them or carries wrong ones. Classes are matched to the truth's by
        name (see :mod:`napari_msunet.evaluation.matching`).
    ignore_label
        Truth value left out of every count (e.g. 255 for "not annotated").
    region
        Optional mask (path or array; non-zero = counted), e.g. a tissue mask, at the
        prediction's shape or any other scale of it.
    overwrite
        Replace existing report files; otherwise an existing one is an error before any work.
    overlay_max_side
        Longest side of the map in ``overlay.png``.
    workers
        Threads reading and counting windows.

    Returns
    -------
    EvaluationResult
        The metrics, the class matching, the report and the lazy TP/FP/FN pyramid.

    Raises
    ------
    AnnotationError
        A missing or invalid mask or GeoJSON; shapes that do not fit (the message gives both
        and the fix); a GeoJSON that does not fit the prediction and no slide to scale it.
    SlideError
        The slide cannot be opened.
    WriterError
        An output exists (without ``overwrite``) or cannot be written.
    MsunetError
        Other bad input (labels beyond 1023, a negative ignore label).

    Warns
    -----
    EvaluationWarning
        Classes matched on an assumption (see :func:`~napari_msunet.evaluation.match_classes`).
    """
    gen = iter_evaluate(
        pred,
        truth,
        out_dir=out_dir,
        slide=slide,
        class_names=class_names,
        ignore_label=ignore_label,
        region=region,
        overwrite=overwrite,
        overlay_max_side=overlay_max_side,
        workers=workers,
    )
    return run_to_end(gen)
