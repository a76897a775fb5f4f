"""Evaluate one prediction against its ground truth: what ``msunet evaluate`` runs.

:func:`iter_evaluate` (a generator, see :mod:`napari_msunet.progress`) and its eager twin
:func:`evaluate`. One pass over the prediction's full-resolution level, window by window (the
counting pass shared with :func:`~napari_msunet.evaluation.iter_compare`), accumulates the
confusion matrix and, at the same time, a subsampled copy of both label maps (every ``s``-th
pixel, ``s`` a power of two) from which the overlay PNG is drawn: the picture therefore shows
exactly the pixels the numbers count, and no second pass over the slide is needed.

Outputs in ``out_dir``: ``report.json`` (everything), ``report.csv`` (one row per class) and
``overlay.png`` (TP blue, FP orange, FN reddish purple over the slide's thumbnail, with the
scores). They are checked before any work starts, so a run that would refuse to overwrite
fails at once, and written (each atomically) only after the last window: a stopped or closed
evaluation leaves no file behind.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from napari_msunet._atomic import check_new_file, check_writable
from napari_msunet.errors import WriterError
from napari_msunet.evaluation._counting import (
    check_ignore_label,
    iter_count,
    overlay_label,
    overlay_pyramid,
    slide_metrics,
)
from napari_msunet.evaluation._inputs import (
    Prediction,
    Truth,
    load_prediction,
    load_region,
    load_truth,
    slide_downsample,
)
from napari_msunet.evaluation._windows import Window
from napari_msunet.evaluation.matching import ClassMatch
from napari_msunet.evaluation.metrics import SegmentationMetrics
from napari_msunet.evaluation.overlay import (
    FN,
    FP,
    OVERLAY_COLORS_RGBA8,
    OVERLAY_NAMES,
    TP,
    render_overlay,
    tpfpfn_codes,
    write_overlay_png,
)
from napari_msunet.evaluation.report import build_report, write_csv_report, write_json_report
from napari_msunet.io._store_lock import folder_lock
from napari_msunet.progress import Progress, Stop, eager

__all__ = ["OUTPUT_NAMES", "EvaluationResult", "evaluate", "iter_evaluate"]

#: File names written into ``out_dir``.
OUTPUT_NAMES = {"json": "report.json", "csv": "report.csv", "overlay": "overlay.png"}


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
    check_writable(out_dir, folder=True)
    return outputs


def iter_evaluate(
    pred: str | os.PathLike[str],
    truth: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    slide: str | os.PathLike[str] | None = None,
    class_names: Mapping[int, str] | Sequence[str] | None = None,
    ignore_label: int | None = None,
    truth_class: str | None = None,
    region: Any = None,
    overwrite: bool = False,
    overlay_max_side: int = 1024,
    workers: int = 2,
    stop: Stop = None,
) -> Generator[Progress, None, EvaluationResult | None]:
    """Compare a predicted label mask with the ground truth at slide level and write a report.

    A generator, so that the CLI can show a progress bar and the GUI can run it in a worker
    and cancel it; :func:`evaluate` is its eager twin. The three files are written only once
    every window is counted: stopped or closed mid-way, it writes nothing.

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
    truth_class
        The prediction's class that an unnamed binary truth mask (0/1, 0/255, any one
        value) annotates; by default its only class. A mask with values the prediction has
        no class for is warned about and the report's ``unmatched_truth`` names them (see
        :func:`~napari_msunet.evaluation.matching.match_values`).
    region
        Optional mask (path or array; non-zero = counted), e.g. a tissue mask, at the
        prediction's shape or any other scale of it.
    overwrite
        Replace existing report files; otherwise an existing one is an error before any work.
    overlay_max_side
        Longest side of the map in ``overlay.png``.
    workers
        Threads reading and counting windows.
    stop
        Checked before every window (see :mod:`napari_msunet.progress`); when it asks to
        stop, the evaluation returns ``None`` and writes no file: metrics of part of a slide
        would read as the slide's.

    Yields
    ------
    Progress
        Stage ``"count"``: one record per window counted.

    Returns
    -------
    EvaluationResult or None
        The metrics, the class matching, the report and the lazy TP/FP/FN pyramid; ``None``
        when stopped.

    Raises
    ------
    AnnotationError
        A missing or invalid mask or GeoJSON; shapes that do not fit (the message gives both
        and the fix); a GeoJSON that does not fit the prediction and no slide to scale it.
    SlideError
        The slide cannot be opened.
    WriterError
        An output exists (without ``overwrite``) or cannot be written; or another
        evaluation writes ``out_dir`` (it holds ``out_dir/evaluation.lock``).
    MsunetError
        Other bad input (labels beyond 1023, a negative ignore label).

    Warns
    -----
    EvaluationWarning
        Classes matched on an assumption (see :func:`~napari_msunet.evaluation.match_classes`).
    """
    out = Path(out_dir)
    outputs = _check_outputs(out, overwrite)
    with folder_lock(out, "evaluation.lock"):  # one evaluation writes a folder at a time
        check_ignore_label(ignore_label)
        prediction = load_prediction(pred, class_names)
        with _open_slide(slide) as the_slide:
            # a prediction that does not fit its slide is refused whatever the truth is
            d_slide = None if the_slide is None else slide_downsample(prediction, the_slide)
            truth_ = load_truth(
                truth, prediction, slide=the_slide, ignore_label=ignore_label,
                truth_class=truth_class,
            )  # fmt: skip
            region_src = load_region(region, prediction.shape)
            preview = _Preview(
                prediction.shape,
                _preview_step(prediction.shape, overlay_max_side),
                prediction.source.dtype,
                truth_.levels[0].dtype,
                with_region=region_src is not None,
            )
            confusion = yield from iter_count(
                prediction.source,
                truth_.source,
                relabel=truth_.relabel,
                region=region_src,
                ignore_label=ignore_label,
                files=(prediction.path, truth_.path),
                stage="count",
                what="counting pixels",
                stop=stop,
                workers=workers,
                sampler=preview,
            )
            if confusion is None:
                return None
            thumb = the_slide.thumbnail(2 * overlay_max_side) if the_slide is not None else None
            level_mpp = None
            if the_slide is not None and the_slide.mpp is not None and d_slide is not None:
                level_mpp = the_slide.mpp * d_slide
        return _finish(
            prediction,
            truth_,
            confusion,
            (preview.pred, preview.truth, preview.valid, thumb),
            step=preview.step,
            slide=Path(slide) if slide is not None else None,
            slide_mpp=level_mpp,
            slide_downsample=d_slide,
            ignore_label=ignore_label,
            region=region_src,
            outputs=outputs,
            overwrite=overwrite,
        )


class _Preview:
    """Every ``step``-th pixel of both maps (and of the region), for the overlay PNG.

    Filled during the counting pass (see :class:`~napari_msunet.evaluation._counting.Sampler`),
    so that the picture shows exactly the pixels the numbers count.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        step: int,
        pred_dtype: Any,
        truth_dtype: Any,
        *,
        with_region: bool,
    ) -> None:
        self.step = step
        small = (math.ceil(shape[0] / step), math.ceil(shape[1] / step))
        self.pred = np.zeros(small, dtype=pred_dtype)
        self.truth = np.zeros(small, dtype=truth_dtype)
        self.valid = np.zeros(small, dtype=bool) if with_region else None

    def take(
        self, window: Window, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        s = self.step
        ys, xs = window
        ry, rx = (-ys.start) % s, (-xs.start) % s
        # copies, so that a result waiting in the queue does not keep its whole window alive
        return (
            pred[ry::s, rx::s].copy(),
            truth[ry::s, rx::s].copy(),
            None if valid is None else valid[ry::s, rx::s] != 0,
        )

    def put(self, window: Window, sample: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> None:
        s = self.step
        ys, xs = window
        y0, x0 = -(-ys.start // s), -(-xs.start // s)
        sp, st, sv = sample
        h, w = sp.shape
        self.pred[y0 : y0 + h, x0 : x0 + w] = sp
        self.truth[y0 : y0 + h, x0 : x0 + w] = st
        if self.valid is not None:
            self.valid[y0 : y0 + h, x0 : x0 + w] = sv


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
    shape = prediction.shape
    metrics = slide_metrics(confusion, names, shape)
    mpp, mpp_source = prediction.mpp, "prediction"
    if mpp is None and slide_mpp is not None:
        mpp, mpp_source = slide_mpp, "slide"
    label = overlay_label(names)
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
                "colors": {
                    OVERLAY_NAMES[c]: list(OVERLAY_COLORS_RGBA8[c][:3]) for c in (TP, FP, FN)
                },
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
        overlay_levels=overlay_pyramid(
            prediction.levels, truth.levels, label, ignore_label, region
        ),
        overlay_label=label,
    )


evaluate = eager(iter_evaluate)
