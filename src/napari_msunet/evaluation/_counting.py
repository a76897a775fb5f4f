"""The one counting pass behind :func:`~napari_msunet.evaluation.iter_evaluate` and
:func:`~napari_msunet.evaluation.iter_compare`.

Both bring the truth onto the prediction's level-0 grid (from files or from layers), then
count the same thing the same way: the confusion matrix, window by window with
:func:`~napari_msunet.evaluation._windows.scan`, the truth relabelled into the prediction's
classes per window, pixels outside the region mask or with the ignore label left out. Keeping
that pass, the metrics taken from it, the class the overlay shows and the lazy TP/FP/FN pyramid
in one place means that a report file and the Compare widget can never disagree about the same
pair of maps.

A caller that needs more from each window than its counts (:func:`iter_evaluate` keeps a
subsampled copy of both maps for its overlay PNG) passes a :class:`Sampler`, so that the slide
is still read once.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import dask.array as da
import numpy as np

from napari_msunet.errors import AnnotationError, MsunetError
from napari_msunet.evaluation._windows import Resampled, Window, scan, window_shape
from napari_msunet.evaluation.matching import EvaluationWarning, remap_block
from napari_msunet.evaluation.metrics import (
    LabelValueError,
    SegmentationMetrics,
    block_confusion,
    compute_metrics,
    merge_confusion,
    trim_confusion,
)
from napari_msunet.evaluation.overlay import tpfpfn_pyramid
from napari_msunet.progress import Progress, Stop, stopped

__all__ = [
    "Sampler",
    "check_ignore_label",
    "iter_count",
    "overlay_label",
    "overlay_pyramid",
    "slide_metrics",
]

T = TypeVar("T")


class Sampler(Protocol):
    """Something taken from every window besides its counts, in the same read of the slide.

    ``take`` runs in the worker thread that read the window (so it may copy or reduce the
    blocks while the next windows are read); ``put`` receives its result in the generator's
    thread, in window order, so it may write into shared arrays without a lock.
    """

    def take(
        self, window: Window, pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None
    ) -> Any: ...

    def put(self, window: Window, sample: Any) -> None: ...


def check_ignore_label(ignore_label: int | None) -> None:
    """Refuse an ignore label that no label map can hold (negative, or a bool by mistake)."""
    if ignore_label is not None and (isinstance(ignore_label, bool) or int(ignore_label) < 0):
        raise MsunetError(f"ignore_label must be a label value >= 0, not {ignore_label!r}")


def iter_count(
    pred: Any,
    truth: Any,
    *,
    relabel: Mapping[int, int],
    region: Any,
    ignore_label: int | None,
    files: tuple[str | Path, str | Path],
    stage: str,
    what: str,
    stop: Stop = None,
    workers: int = 2,
    sampler: Sampler | None = None,
) -> Generator[Progress, None, np.ndarray | None]:
    """Count the confusion matrix of ``pred`` against ``truth``, one window at a time.

    Parameters
    ----------
    pred, truth
        Level 0 of the prediction and the truth on the same grid (NumPy, zarr, dask or a
        lazy rasteriser); windows follow the prediction's chunks.
    relabel
        Truth label -> prediction label, applied per window (empty: labels already agree).
    region
        Optional mask (non-zero = counted) at any scale of the grid, or ``None``.
    ignore_label
        Truth value left out of every count.
    files
        What the prediction and the truth are called in an error about their label values
        (the file, or the layer's name).
    stage, what
        The records' ``stage`` and the words their ``message`` starts with.
    stop
        Checked before every window; when it asks to stop, the pass returns ``None``.
    workers
        Threads reading and counting windows.
    sampler
        Also take a sample of every window (see :class:`Sampler`).

    Yields
    ------
    Progress
        One per window counted.

    Returns
    -------
    numpy.ndarray or None
        The ``(K, K)`` int64 matrix (rows truth, columns prediction), untrimmed; ``None``
        when stopped.

    Raises
    ------
    AnnotationError
        Label values a confusion matrix cannot count, naming the file (or layer) that holds
        them.
    """
    if stopped(stop):
        return None
    shape = (int(pred.shape[-2]), int(pred.shape[-1]))
    sources = [pred, truth, None if region is None else Resampled(region, shape)]
    step = window_shape(pred)
    total_windows = math.ceil(shape[0] / step[0]) * math.ceil(shape[1] / step[1])

    def one(window: Window, blocks: list[np.ndarray]) -> tuple[np.ndarray, Any]:
        p, t, v = blocks
        if relabel:
            t = remap_block(t, relabel)
        cm = block_confusion(p, t, valid=v, ignore_label=ignore_label)
        return cm, None if sampler is None else sampler.take(window, p, t, v)

    started = time.monotonic()
    total: np.ndarray | None = None
    windows = _named_errors(scan(one, shape, sources, step=step, workers=workers), files)
    try:
        for done, (window, (cm, sample)) in enumerate(windows, 1):
            if stopped(stop):
                return None
            total = merge_confusion(total, cm)
            if sampler is not None:
                sampler.put(window, sample)
            yield Progress(
                done,
                total_windows,
                stage,
                f"{what}: window {done}/{total_windows}",
                time.monotonic() - started,
            )
    finally:
        windows.close()  # stops the read-ahead threads when stopped or closed mid-way
    if stopped(stop):
        return None
    return total if total is not None else np.zeros((1, 1), np.int64)


def _named_errors(windows: Iterator[T], files: tuple[str | Path, str | Path]) -> Iterator[T]:
    """Re-raise bad label values as errors naming the file (or layer) that holds them."""
    try:
        yield from windows
    except LabelValueError as exc:
        path = files[0] if exc.which == "prediction" else files[1]
        reason = str(exc).removeprefix(f"the {exc.which} ")
        raise AnnotationError(path, reason) from exc


def slide_metrics(
    confusion: np.ndarray, names: Mapping[int, str], shape: tuple[int, int]
) -> SegmentationMetrics:
    """The slide-level metrics of a counted matrix, one row per class of ``names``.

    Pixels of the grid that the matrix does not hold (ignored, or outside the region) are
    reported as excluded.
    """
    n_classes = max([0, *names]) + 1
    confusion = trim_confusion(confusion, n_classes)
    excluded = shape[0] * shape[1] - int(confusion.sum())
    return compute_metrics(confusion, dict(names), excluded_pixels=excluded)


def overlay_label(names: Mapping[int, str]) -> int | None:
    """The class a TP/FP/FN overlay shows by default: the only one, else any foreground."""
    return next(iter(names)) if len(names) == 1 else None


def overlay_pyramid(
    pred_levels: Sequence[Any],
    truth_levels: Sequence[Any],
    label: int | None,
    ignore_label: int | None,
    region: Any,
) -> tuple[da.Array, ...]:
    """The lazy TP/FP/FN pyramid of ``label``, restricted to ``region`` where it fits.

    A region mask whose shape is no scale of the prediction's levels cannot restrict the
    coarser views; the pyramid then shows every pixel (with a warning) rather than failing
    after the counting pass, whose numbers do honour the region.
    """
    try:
        levels = tpfpfn_pyramid(
            list(pred_levels), list(truth_levels), label, ignore_label=ignore_label, region=region
        )
    except ValueError as exc:
        warnings.warn(
            f"the TP/FP/FN pyramid ignores the region mask: {exc}", EvaluationWarning, stacklevel=3
        )
        levels = tpfpfn_pyramid(
            list(pred_levels), list(truth_levels), label, ignore_label=ignore_label
        )
    return tuple(levels)
