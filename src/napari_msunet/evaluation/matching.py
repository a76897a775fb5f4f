"""Matching the classes of a prediction to those of a ground truth.

A prediction says "label 2 = Sinus"; an annotation says "label 1 = Sinus" (QuPath GeoJSON
numbers classes in order of first appearance, so the same class gets different labels in
different files). Comparing label values would then score sinus against germinal centres.
So classes are matched **by name** whenever both sides name them, and the truth is relabelled
into the prediction's labels before anything is counted.

Rules (:func:`match_classes`)

- Both sides carry names: equal names match (exactly, else ignoring case and surrounding
  spaces). A truth class the prediction does not know gets a fresh label above every known
  one, so it is reported as its own class (all of it false negatives), never merged into
  another. A prediction class absent from the truth keeps its label (all of it false
  positives).
- No name matches but each side has exactly one class (a single-class model against an
  annotation whose class was named differently, or left "Unclassified"): the two are paired,
  with an :class:`EvaluationWarning`, since that is what the user means in nearly every case.
- One side has no names: labels are compared by value (with a warning when only the truth has
  names, since its labels may follow the file's order rather than the model's).

Truth labels the truth does not name, and the ignore label, keep their value.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import dask.array as da
import numpy as np

__all__ = [
    "ClassMatch",
    "EvaluationWarning",
    "mask_values",
    "match_classes",
    "match_truth",
    "match_values",
    "normalise_names",
    "remap_block",
    "remap_labels",
]

MatchedBy = Literal["name", "single", "label"]


class EvaluationWarning(UserWarning):
    """An evaluation ran, but on an assumption the user should check (class pairing, ...)."""


@dataclass(frozen=True)
class ClassMatch:
    """How truth classes map onto prediction classes.

    Attributes
    ----------
    by
        ``"name"``, ``"single"`` (two differently named single classes paired) or
        ``"label"`` (label values compared as they are).
    truth_to_eval
        Truth label -> label used in the evaluation (the prediction's label when matched).
    names
        Evaluation label -> class name, for the report (background 0 not included).
    unmatched_truth
        Truth class names the prediction does not have (reported under fresh labels).
    unmatched_pred
        Prediction class names the truth does not have.
    """

    by: MatchedBy
    truth_to_eval: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    unmatched_truth: tuple[str, ...] = ()
    unmatched_pred: tuple[str, ...] = ()

    @property
    def identity(self) -> bool:
        """Whether the truth can be used without relabelling."""
        return all(k == v for k, v in self.truth_to_eval.items())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (labels as strings where they are keys)."""
        return {
            "by": self.by,
            "truth_to_eval": {str(k): v for k, v in sorted(self.truth_to_eval.items())},
            "names": {str(k): v for k, v in sorted(self.names.items())},
            "unmatched_truth": list(self.unmatched_truth),
            "unmatched_pred": list(self.unmatched_pred),
        }


def normalise_names(names: Mapping[int, str] | Sequence[str] | None) -> dict[int, str]:
    """Return ``{label: name}`` from a mapping, or from a sequence naming labels 1, 2, ...

    Label 0 is background and is dropped; empty names are dropped.
    """
    if names is None:
        return {}
    if isinstance(names, str):
        raise TypeError("class names must be a sequence or a mapping, not one string")
    items = names.items() if isinstance(names, Mapping) else enumerate(names, start=1)
    out: dict[int, str] = {}
    for label, name in items:
        label = int(label)
        if label < 0:
            raise ValueError(f"class labels must be >= 0, got {label}")
        if label and name and str(name).strip():
            out[label] = str(name)
    return out


def _key(name: str) -> str:
    return " ".join(name.split()).casefold()


def match_classes(
    pred_names: Mapping[int, str],
    truth_names: Mapping[int, str],
    *,
    ignore_label: int | None = None,
    truth_source: str = "the truth",
) -> ClassMatch:
    """Map the truth's labels onto the prediction's, by class name where possible.

    Parameters
    ----------
    pred_names, truth_names
        Label -> class name of each side (background excluded); empty when a file names
        no classes.
    ignore_label
        Never handed out as a fresh label (it keeps its meaning in the truth).
    truth_source
        How to call the truth in warnings (its file name).

    Warns
    -----
    EvaluationWarning
        Classes paired without matching names, truth classes missing from the prediction,
        or labels compared by value although only the truth names its classes.
    """
    pred_names, truth_names = dict(pred_names), dict(truth_names)
    if not pred_names or not truth_names:
        if truth_names and not pred_names:
            warnings.warn(
                f"{truth_source}: the prediction does not name its classes, so classes are "
                f"matched by label value ({_describe(truth_names)} in the truth); pass the "
                "prediction's class names to match them by name",
                EvaluationWarning,
                stacklevel=2,
            )
        return ClassMatch("label", {}, {**truth_names, **pred_names})
    by_exact = {n: lab for lab, n in pred_names.items()}
    by_key = {_key(n): lab for lab, n in pred_names.items()}
    mapping: dict[int, int] = {}
    unmatched: list[tuple[int, str]] = []
    for label, name in sorted(truth_names.items()):
        target = by_exact.get(name, by_key.get(_key(name)))
        if target is None:
            unmatched.append((label, name))
        else:
            mapping[label] = target
    if not mapping and len(pred_names) == 1 and len(truth_names) == 1:
        (t_label, t_name), (p_label, p_name) = (
            next(iter(truth_names.items())),
            next(iter(pred_names.items())),
        )
        warnings.warn(
            f"{truth_source}: its only class {t_name!r} is compared with the prediction's "
            f"only class {p_name!r}",
            EvaluationWarning,
            stacklevel=2,
        )
        return ClassMatch("single", {t_label: p_label}, dict(pred_names))
    names = dict(pred_names)
    taken = {*pred_names, *truth_names, 0}
    if ignore_label is not None:
        taken.add(int(ignore_label))
    fresh = max(taken) + 1
    for label, name in unmatched:
        while fresh in taken:
            fresh += 1
        mapping[label] = fresh
        names[fresh] = name
        taken.add(fresh)
    matched_pred = {mapping[t] for t, _ in truth_names.items() if t in mapping}
    unmatched_pred = tuple(n for lab, n in sorted(pred_names.items()) if lab not in matched_pred)
    if unmatched:
        warnings.warn(
            f"{truth_source}: classes {[n for _, n in unmatched]} are not in the prediction "
            f"(which has {sorted(pred_names.values())}); they are reported as classes of "
            "their own, all false negatives",
            EvaluationWarning,
            stacklevel=2,
        )
    return ClassMatch("name", mapping, names, tuple(n for _, n in unmatched), unmatched_pred)


def _describe(names: Mapping[int, str]) -> str:
    return ", ".join(f"{lab} = {n}" for lab, n in sorted(names.items()))


def _pairs_and_dtype(
    dtype: np.dtype, mapping: Mapping[int, int]
) -> tuple[tuple[tuple[int, int], ...], np.dtype]:
    pairs = tuple((int(s), int(d)) for s, d in mapping.items() if int(s) != int(d))
    top = max((d for _, d in pairs), default=0)
    return pairs, np.promote_types(dtype, np.min_scalar_type(top))


def _remap(block: np.ndarray, pairs: tuple[tuple[int, int], ...], dtype: np.dtype) -> np.ndarray:
    out = block.astype(dtype, copy=True)
    for src, dst in pairs:
        out[block == src] = dst
    return out


def remap_block(block: np.ndarray, mapping: Mapping[int, int]) -> np.ndarray:
    """Relabel an in-memory block (``src -> dst``, all pairs at once; others unchanged)."""
    pairs, dtype = _pairs_and_dtype(block.dtype, mapping)
    return _remap(block, pairs, dtype) if pairs else block


def remap_labels(labels: Any, mapping: Mapping[int, int]) -> da.Array:
    """Relabel a label array lazily (``src -> dst`` for each pair; other values unchanged).

    All pairs are applied to the original values at once, so swaps (1 -> 2, 2 -> 1) work.
    The dtype widens when a new label needs it.
    """
    arr = labels if isinstance(labels, da.Array) else da.asarray(labels)
    pairs, dtype = _pairs_and_dtype(arr.dtype, mapping)
    if not pairs:
        return arr
    return arr.map_blocks(_remap, pairs, dtype, dtype=dtype)


#: Largest side of the pyramid level whose values :func:`mask_values` reads.
VALUES_MAX_SIDE = 4096


def mask_values(levels: Sequence[Any], ignore_label: int | None = None) -> list[int]:
    """The foreground values (not 0, not ``ignore_label``) of a label pyramid.

    Read on its first level whose sides are at most :data:`VALUES_MAX_SIDE` (the last level
    when none is): enough to tell a binary mask from a multi-class one without reading a
    whole-slide mask twice. A value present only in a few pixels of level 0 may be missed;
    it is then compared as a label, as before.
    """
    level = next((lv for lv in levels if max(lv.shape) <= VALUES_MAX_SIDE), levels[-1])
    values = np.unique(np.asarray(level))
    return [int(v) for v in values if v != 0 and v != ignore_label]


def match_truth(
    pred_names: Mapping[int, str],
    truth_names: Mapping[int, str],
    truth_levels: Sequence[Any],
    *,
    truth_class: str | None = None,
    ignore_label: int | None = None,
    truth_source: str = "the truth",
) -> ClassMatch:
    """Match a truth to the prediction: by name when the truth names its classes
    (:func:`match_classes`), else by the values of an unnamed mask (:func:`match_values`)."""
    if truth_names or not pred_names:
        if truth_class is not None:
            raise ValueError(
                f"{truth_source}: names its classes itself; a truth class only names the "
                "foreground of an unnamed binary mask"
            )
        return match_classes(
            pred_names, truth_names, ignore_label=ignore_label, truth_source=truth_source
        )
    values = mask_values(truth_levels, ignore_label)
    return match_values(pred_names, values, truth_class=truth_class, truth_source=truth_source)


def match_values(
    pred_names: Mapping[int, str],
    values: Sequence[int],
    *,
    truth_class: str | None = None,
    truth_source: str = "the truth",
) -> ClassMatch:
    """Match the foreground values of an unnamed mask to the prediction's classes.

    - **One foreground value** (0/1, 0/255, any): the mask is one class, compared with the
      class named ``truth_class``, else with the prediction's only class. The commonest
      binary mask (255 = foreground) then scores the model's class, not a "class 255".
    - Otherwise values are compared as labels. Values the prediction has no class for are
      reported as classes of their own ("value 255"), all false negatives, listed in
      ``unmatched_truth`` and warned about.

    Raises
    ------
    ValueError
        ``truth_class`` names no class of the prediction, or the mask has several values.
    """
    pred_names = dict(pred_names)
    values = sorted(int(v) for v in values)
    if truth_class is not None:
        by_key = {_key(n): lab for lab, n in pred_names.items()}
        target = by_key.get(_key(truth_class))
        if target is None:
            raise ValueError(
                f"truth class {truth_class!r} is not a class of the prediction "
                f"({', '.join(sorted(pred_names.values()))})"
            )
        if len(values) > 1:
            raise ValueError(
                f"{truth_source}: has {len(values)} foreground values {values}; a truth "
                "class names the only foreground value of a binary mask"
            )
        mapping = {values[0]: target} if values and values[0] != target else {}
        return ClassMatch("single", mapping, pred_names)
    if len(values) == 1 and len(pred_names) == 1:
        target = next(iter(pred_names))
        mapping = {values[0]: target} if values[0] != target else {}
        return ClassMatch("single", mapping, pred_names)
    unknown = [v for v in values if v not in pred_names]
    names = {**pred_names, **{v: f"value {v}" for v in unknown}}
    if unknown:
        warnings.warn(
            f"{truth_source}: values {unknown} have no class in the prediction "
            f"({_describe(pred_names)}); they are reported as classes of their own, all "
            "false negatives. A binary mask's class can be named (--truth-class NAME)",
            EvaluationWarning,
            stacklevel=3,
        )
    found = {pred_names[v] for v in values if v in pred_names}
    unmatched_pred = tuple(n for lab, n in sorted(pred_names.items()) if n not in found)
    return ClassMatch("label", {}, names, tuple(names[v] for v in unknown), unmatched_pred)
