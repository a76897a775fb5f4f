"""Slide-level IoU and Dice from a confusion matrix accumulated chunk by chunk.

The paper reports IoU "at the WSI level": the intersection and union of each class are summed
over the whole slide before dividing, not averaged over patches (a patch mean would weigh a
patch with ten pixels of a class like one with a million). Every per-class figure here follows
from one ``n_classes x n_classes`` confusion matrix (rows: truth, columns: prediction, the
scikit-learn convention), which :func:`confusion_matrix` accumulates window by window so that
memory never depends on the slide's size.

Definitions, for class ``c`` with ``TP = C[c, c]``, ``FP = sum(C[:, c]) - TP``,
``FN = sum(C[c, :]) - TP`` and ``TN`` the rest of the counted pixels:

- IoU (Jaccard) ``TP / (TP + FP + FN)``, Dice (F1) ``2 TP / (2 TP + FP + FN)``,
  precision ``TP / (TP + FP)``, recall (sensitivity) ``TP / (TP + FN)``.
- A ratio whose denominator is zero is **NaN**, never 0 or 1: a class absent from both the
  prediction and the truth has no IoU (0 would punish the model for a class the slide does
  not have; 1 would reward it for nothing), and means skip it.
- Foreground: all non-zero classes merged into one (prediction ``!= 0`` against truth
  ``!= 0``), the figure to quote when the classes of a region are uncertain but its extent is
  not.
- Pixel accuracy: ``trace(C) / sum(C)`` over counted pixels.

Pixels can be left out of every count: those whose truth is ``ignore_label`` (e.g. 255 for
"not annotated") and those outside a region mask (e.g. tissue).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_msunet.evaluation._windows import (
    Resampled,
    check_label_array,
    scan,
    window_shape,
)

__all__ = [
    "MAX_CLASSES",
    "ClassMetrics",
    "LabelValueError",
    "SegmentationMetrics",
    "block_confusion",
    "compute_metrics",
    "confusion_matrix",
    "merge_confusion",
    "trim_confusion",
]

#: Largest number of label values (0 .. MAX_CLASSES - 1) a confusion matrix may have. Label
#: masks hold a few classes; values beyond this almost always mean an instance mask (one id
#: per object), which needs object-level metrics, not a confusion matrix.
MAX_CLASSES = 1024

# Labels < _PAIR_K are counted with uint8 codes truth * k + pred (< 225), leaving 255 free as
# the "not counted" code, and two codes are counted at a time as one uint16 (see _count_u8).
_PAIR_K = 15
_SKIP = np.uint8(255)


# --------------------------------------------------------------------------------------------
# counting


class LabelValueError(ValueError):
    """A label array holds values a confusion matrix cannot count.

    ``which`` is ``"prediction"`` or ``"truth"``, so that a caller holding the file names can
    say which file is wrong.
    """

    def __init__(self, which: str, message: str) -> None:
        self.which = which
        super().__init__(f"the {which} {message}")


def _as_labels(block: np.ndarray, which: str) -> np.ndarray:
    if block.dtype == np.bool_:
        return block.view(np.uint8)
    if block.dtype.kind not in "ui":
        raise LabelValueError(which, f"must hold integer labels, got dtype {block.dtype}")
    if block.dtype.kind == "i" and block.size and int(block.min()) < 0:
        raise LabelValueError(which, f"holds negative labels (minimum {int(block.min())})")
    return block


def _check_range(top: int, which: str) -> None:
    if top >= MAX_CLASSES:
        raise LabelValueError(
            which,
            f"holds label {top}; evaluation supports labels below {MAX_CLASSES} (an instance "
            "mask, with one id per object, is not a class mask)",
        )


def _count_u8(codes: np.ndarray) -> np.ndarray:
    """Histogram of uint8 codes (256 bins), counting pairs of codes as one uint16.

    ``np.bincount`` casts its input to int64 and costs about 2 ns per element; viewing two
    adjacent uint8 codes as one uint16 halves the elements, and the 256 x 256 pair histogram
    marginalises back to the code histogram (each code is the low or the high byte of exactly
    one pair). This is about 3x faster than a plain int64 ``bincount``.
    """
    flat = codes.reshape(-1)
    counts = np.zeros(256, dtype=np.int64)
    if flat.size % 2:
        counts[flat[-1]] += 1
        flat = flat[:-1]
    if flat.size:
        pairs = np.bincount(flat.view(np.uint16), minlength=1 << 16).reshape(256, 256)
        counts += pairs.sum(axis=0)
        counts += pairs.sum(axis=1)
    return counts


def block_confusion(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    valid: np.ndarray | None = None,
    ignore_label: int | None = None,
) -> np.ndarray:
    """Return the confusion matrix of one in-memory block.

    Parameters
    ----------
    pred, truth
        Equal-shaped integer (or bool) label blocks.
    valid
        Optional mask of the same shape; only pixels where it is non-zero are counted.
    ignore_label
        Truth value whose pixels are not counted.

    Returns
    -------
    numpy.ndarray
        ``(k, k)`` int64 with ``k`` = the largest counted label + 1 (rows truth, columns
        prediction); merge blocks of different ``k`` with :func:`merge_confusion`.

    Raises
    ------
    ValueError
        Shapes differ; :class:`LabelValueError` when labels are negative or reach
        :data:`MAX_CLASSES`.
    """
    if pred.shape != truth.shape or (valid is not None and valid.shape != pred.shape):
        shapes = [pred.shape, truth.shape] + ([valid.shape] if valid is not None else [])
        raise ValueError(f"blocks differ in shape: {shapes}")
    p = _as_labels(np.asarray(pred), "prediction")
    t = _as_labels(np.asarray(truth), "truth")
    skip = None  # pixels not counted; they take the code 255 (fast path) or k * k
    if valid is not None:
        v = np.asarray(valid)
        skip = ~v if v.dtype == np.bool_ else v == 0
    if ignore_label is not None:
        ignored = t == ignore_label
        skip = ignored if skip is None else np.logical_or(skip, ignored, out=skip)
    if skip is None:
        p_top, t_top = int(p.max(initial=0)), int(t.max(initial=0))
    else:
        # the label range of the counted pixels only: an ignore value of 255 must not push
        # the block off the fast path
        keep = (~skip).view(np.uint8)
        p_top, t_top = int((p * keep).max(initial=0)), int((t * keep).max(initial=0))
    _check_range(p_top, "prediction")
    _check_range(t_top, "truth")
    k = max(p_top, t_top) + 1
    if k <= _PAIR_K:
        # uint8 arithmetic may wrap on skipped pixels; OR-ing 255 over them fixes their code
        codes = t.astype(np.uint8, copy=False) * np.uint8(k)
        codes += p.astype(np.uint8, copy=False)
        if skip is not None:
            codes |= skip.view(np.uint8) * _SKIP
        return _count_u8(codes)[: k * k].reshape(k, k)
    codes = t.astype(np.int64) * k + p
    if skip is not None:
        codes[skip] = k * k
    return np.bincount(codes.reshape(-1), minlength=k * k + 1)[: k * k].reshape(k, k)


def merge_confusion(total: np.ndarray | None, block: np.ndarray) -> np.ndarray:
    """Return ``total + block``, growing to the larger of the two label ranges."""
    if total is None:
        return block.astype(np.int64, copy=True)
    k = max(total.shape[0], block.shape[0])
    if total.shape[0] < k:
        grown = np.zeros((k, k), dtype=np.int64)
        grown[: total.shape[0], : total.shape[0]] = total
        total = grown
    total[: block.shape[0], : block.shape[0]] += block
    return total


def trim_confusion(matrix: np.ndarray, n_classes: int | None) -> np.ndarray:
    """Cut trailing all-zero labels, keeping at least ``n_classes`` (and at least 1) labels.

    Blocks are counted with the label range they happen to hold, so the accumulated matrix
    can be wider than the labels that occur; the report should have one row per class.
    """
    used = np.flatnonzero(matrix.any(axis=0) | matrix.any(axis=1))
    k = max(int(used[-1]) + 1 if len(used) else 1, n_classes or 1)
    out = np.zeros((k, k), dtype=np.int64)
    m = min(k, matrix.shape[0])
    out[:m, :m] = matrix[:m, :m]
    return out


def confusion_matrix(
    pred: Any,
    truth: Any,
    *,
    n_classes: int | None = None,
    ignore_label: int | None = None,
    region: Any = None,
    window: tuple[int, int] | None = None,
    workers: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Accumulate the slide-level confusion matrix of two label arrays, window by window.

    Parameters
    ----------
    pred, truth
        2-D integer label arrays of equal shape: NumPy, zarr or dask (e.g. a lazily
        rasterised annotation). Neither is ever loaded whole.
    n_classes
        Minimum size of the matrix (labels ``0 .. n_classes - 1``), so that a class absent
        from this slide still gets a row; labels found beyond it extend the matrix.
    ignore_label
        Truth value not counted (e.g. 255 = "not annotated"), wherever the prediction is.
    region
        Optional mask; only pixels where it is non-zero are counted (e.g. tissue). It may
        have the shape of ``pred`` or be a coarser (or finer) level, sampled nearest-neighbour.
    window
        Window ``(height, width)``; default: a multiple of ``pred``'s chunks near 2048.
    workers
        Threads reading and counting windows (decoding and ``bincount`` release the GIL).
    progress
        Called with ``(windows_done, windows_total)`` after each window.

    Returns
    -------
    numpy.ndarray
        ``(K, K)`` int64, rows truth, columns prediction; ``K`` is the largest label counted
        + 1, or ``n_classes`` if larger.

    Raises
    ------
    ValueError
        Arrays that are not 2-D integer labels, that differ in shape, or whose labels are
        negative or reach :data:`MAX_CLASSES`.
    """
    shape = check_label_array(pred, "the prediction")
    tshape = check_label_array(truth, "the truth")
    if tshape != shape:
        raise ValueError(f"the prediction is {shape} but the truth is {tshape}")
    sources: list[Any] = [pred, truth, None]
    if region is not None:
        check_label_array(region, "the region mask")
        sources[2] = Resampled(region, shape)
    step = window or window_shape(pred)
    total_windows = math.ceil(shape[0] / step[0]) * math.ceil(shape[1] / step[1])

    def count(_: Any, blocks: list[np.ndarray]) -> np.ndarray:
        p, t, v = blocks
        return block_confusion(p, t, valid=v, ignore_label=ignore_label)

    total: np.ndarray | None = None
    for done, (_, block) in enumerate(scan(count, shape, sources, step=step, workers=workers), 1):
        total = merge_confusion(total, block)
        if progress is not None:
            progress(done, total_windows)
    return trim_confusion(total if total is not None else np.zeros((1, 1), np.int64), n_classes)


# --------------------------------------------------------------------------------------------
# metrics


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


@dataclass(frozen=True)
class ClassMetrics:
    """Pixel counts and overlap scores of one class (or of the merged foreground).

    Ratios with a zero denominator are NaN (see the module docstring).
    """

    label: int | None
    name: str
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def truth_pixels(self) -> int:
        """Pixels of the class in the truth (``TP + FN``)."""
        return self.tp + self.fn

    @property
    def pred_pixels(self) -> int:
        """Pixels of the class in the prediction (``TP + FP``)."""
        return self.tp + self.fp

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def dice(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def present(self) -> bool:
        """Whether the class occurs in the prediction or the truth (IoU is defined)."""
        return self.tp + self.fp + self.fn > 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: counts as ints, ratios as floats, NaN as ``None``."""
        return {
            "label": self.label,
            "name": self.name,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
            "truth_pixels": self.truth_pixels,
            "pred_pixels": self.pred_pixels,
            "iou": _json_float(self.iou),
            "dice": _json_float(self.dice),
            "precision": _json_float(self.precision),
            "recall": _json_float(self.recall),
        }


@dataclass(frozen=True)
class SegmentationMetrics:
    """Slide-level metrics derived from one confusion matrix.

    Attributes
    ----------
    confusion
        ``(K, K)`` int64, rows truth, columns prediction, read-only.
    classes
        One entry per reported label, background (0) first.
    foreground
        All non-zero classes merged into one.
    excluded_pixels
        Pixels not counted (ignore label, outside the region), when known.
    """

    confusion: np.ndarray = field(compare=False, repr=False)
    classes: tuple[ClassMetrics, ...]
    foreground: ClassMetrics
    excluded_pixels: int | None = None

    @property
    def counted_pixels(self) -> int:
        return int(self.confusion.sum())

    @property
    def pixel_accuracy(self) -> float:
        return _ratio(int(np.trace(self.confusion)), self.counted_pixels)

    @property
    def foreground_classes(self) -> tuple[ClassMetrics, ...]:
        return tuple(c for c in self.classes if c.label != 0)

    @property
    def mean_iou(self) -> float:
        """Mean IoU of the non-background classes that occur (NaN when none does)."""
        return _nanmean(c.iou for c in self.foreground_classes)

    @property
    def mean_dice(self) -> float:
        """Mean Dice of the non-background classes that occur (NaN when none does)."""
        return _nanmean(c.dice for c in self.foreground_classes)

    def __getitem__(self, key: int | str) -> ClassMetrics:
        """The metrics of a class by label value or by name."""
        for c in self.classes:
            if (isinstance(key, str) and c.name == key) or c.label == key:
                return c
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of everything, NaN as ``None``."""
        return {
            "classes": [c.to_dict() for c in self.classes],
            "foreground": self.foreground.to_dict(),
            "mean_iou": _json_float(self.mean_iou),
            "mean_dice": _json_float(self.mean_dice),
            "pixel_accuracy": _json_float(self.pixel_accuracy),
            "pixels": {"counted": self.counted_pixels, "excluded": self.excluded_pixels},
            "confusion_matrix": {
                "rows": "truth",
                "columns": "prediction",
                "labels": list(range(self.confusion.shape[0])),
                "matrix": self.confusion.tolist(),
            },
        }


def _nanmean(values: Iterable[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def compute_metrics(
    confusion: np.ndarray,
    class_names: Mapping[int, str] | None = None,
    *,
    labels: Iterable[int] | None = None,
    excluded_pixels: int | None = None,
) -> SegmentationMetrics:
    """Derive per-class, foreground and mean metrics from a confusion matrix.

    Parameters
    ----------
    confusion
        Square matrix, rows truth, columns prediction (as :func:`confusion_matrix` returns).
    class_names
        Label -> name. Unnamed labels are called ``"class <label>"``, 0 ``"background"``.
    labels
        Labels to report; default: 0, every named label and every label that occurs.
        A label beyond the matrix is reported with zero counts (NaN ratios).
    excluded_pixels
        Pixels left out of the counts, recorded for the report.
    """
    c = np.asarray(confusion, dtype=np.int64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise ValueError(f"a confusion matrix must be square, got shape {c.shape}")
    names = dict(class_names or {})
    k = c.shape[0]
    if labels is None:
        occurs = np.flatnonzero(c.any(axis=0) | c.any(axis=1)).tolist()
        labels = sorted({0, *names, *occurs})
    n = int(c.sum())
    diag = np.diag(c)
    cols, rows = c.sum(axis=0), c.sum(axis=1)
    out = []
    for label in labels:
        label = int(label)
        if label < k:
            tp, fp, fn = (
                int(diag[label]),
                int(cols[label] - diag[label]),
                int(rows[label] - diag[label]),
            )
        else:
            tp = fp = fn = 0
        name = names.get(label) or ("background" if label == 0 else f"class {label}")
        out.append(ClassMetrics(label, name, tp, fp, fn, n - tp - fp - fn))
    fg_tp = int(c[1:, 1:].sum())
    fg_fp = int(c[0, 1:].sum())
    fg_fn = int(c[1:, 0].sum())
    foreground = ClassMetrics(None, "foreground", fg_tp, fg_fp, fg_fn, int(c[0, 0]))
    frozen = c.copy()
    frozen.flags.writeable = False
    return SegmentationMetrics(frozen, tuple(out), foreground, excluded_pixels)
