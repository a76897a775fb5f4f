"""Scores of one image's segmentation that can tell training methods apart.

Pooled-pixel Dice over a validation set is dominated by the large glands and saturates near
the score of a constant prediction (on EBHI-Seg "everything is gland" already reaches 0.787),
so it separates little. These scores look at each image and each object:

- :func:`dice` per image (averaged over images, each image counts once), and the Dice of the
  **minority** class (background / stroma on EBHI-Seg);
- the GlaS challenge's **object** scores (Sirinukunwattana et al., 2017): object F1 (a
  segmented object is a true positive when it covers more than half of a ground-truth
  object), object Dice and object Hausdorff distance (each object matched to the object of
  the other side it overlaps most, weighted by area, both directions averaged);
- **boundary F1** at a tolerance in pixels: the share of each side's boundary pixels within
  the tolerance of the other side's boundary.

:func:`score_image` gives them all for one binary pair; :func:`constant_baselines` the scores
of the two constant predictions, which every table should show beside the methods.
Objects are the 8-connected components of the binary masks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "ImageScores",
    "boundary_f1",
    "constant_baselines",
    "dice",
    "object_scores",
    "score_image",
]

_EIGHT = np.ones((3, 3), bool)


@dataclass(frozen=True)
class ImageScores:
    """The scores of one image (NaN where a score is undefined: no object on either side)."""

    dice: float
    minority_dice: float
    object_f1: float
    object_dice: float
    object_hausdorff: float
    boundary_f1: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1 when both are empty (nothing to find, nothing found)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    total = int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total


def _objects(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, n = ndimage.label(np.asarray(mask, bool), structure=_EIGHT)
    return labels, int(n)


def _overlaps(a: np.ndarray, na: int, b: np.ndarray, nb: int) -> np.ndarray:
    """``(na + 1, nb + 1)`` pixel counts of every pair of objects (0 = background)."""
    pairs = a.astype(np.int64) * (nb + 1) + b.astype(np.int64)
    return np.bincount(pairs.ravel(), minlength=(na + 1) * (nb + 1)).reshape(na + 1, nb + 1)


def _hausdorff(la: np.ndarray, i: int, box_a, lb: np.ndarray, j: int, box_b) -> float:
    """Symmetric Hausdorff distance in pixels between object ``i`` of ``la`` and object ``j``
    of ``lb`` (labels from 1), whose bounding boxes are ``box_a`` and ``box_b``.

    Computed inside the two objects' joint bounding box: every point of both objects is in
    it, so the distances are those of the whole image, at the cost of the box's pixels only
    (a noisy prediction has many small objects, each once paired with every other).
    """
    box = tuple(
        slice(min(sa.start, sb.start), max(sa.stop, sb.stop))
        for sa, sb in zip(box_a, box_b, strict=True)
    )
    a, b = la[box] == i, lb[box] == j
    da = ndimage.distance_transform_edt(~a)
    db = ndimage.distance_transform_edt(~b)
    return float(max(db[a].max(), da[b].max()))


def object_scores(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """GlaS object F1, object Dice and object Hausdorff (pixels) of two binary masks.

    With no object on either side: 1, 1, 0. With objects on one side only: 0, 0 and the
    image's diagonal (the largest distance it has), so that an empty prediction is not
    rewarded by a missing Hausdorff distance.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    lp, n_p = _objects(p)
    lt, n_t = _objects(t)
    if n_p == 0 and n_t == 0:
        return 1.0, 1.0, 0.0
    if n_p == 0 or n_t == 0:
        diag = math.hypot(*p.shape)
        return 0.0, 0.0, diag
    ov = _overlaps(lp, n_p, lt, n_t)
    area_p, area_t = ov.sum(axis=1)[1:], ov.sum(axis=0)[1:]
    inner = ov[1:, 1:]
    # F1: a predicted object is a TP when it covers more than half of its best truth object
    best_t = inner.argmax(axis=1)
    tp = int(np.sum(inner[np.arange(n_p), best_t] > 0.5 * area_t[best_t]))
    f1 = 2 * tp / (n_p + n_t)
    boxes_p, boxes_t = ndimage.find_objects(lp), ndimage.find_objects(lt)

    def one_side(inner, areas, other, la, boxes_a, lb, boxes_b) -> tuple[float, float]:
        weights = areas / areas.sum()
        d_sum = h_sum = 0.0
        for i in range(len(areas)):
            j = int(inner[i].argmax())
            if inner[i, j] == 0:  # touches no object: Dice 0, Hausdorff to the closest one
                d = 0.0
                h = min(
                    _hausdorff(la, i + 1, boxes_a[i], lb, k + 1, boxes_b[k])
                    for k in range(len(other))
                )
            else:
                d = 2 * inner[i, j] / (areas[i] + other[j])
                h = _hausdorff(la, i + 1, boxes_a[i], lb, j + 1, boxes_b[j])
            d_sum += weights[i] * d
            h_sum += weights[i] * h
        return d_sum, h_sum

    dp, hp = one_side(inner, area_p, area_t, lp, boxes_p, lt, boxes_t)
    dt, ht = one_side(inner.T, area_t, area_p, lt, boxes_t, lp, boxes_p)
    return f1, (dp + dt) / 2, (hp + ht) / 2


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_EIGHT, border_value=1)


def boundary_f1(pred: np.ndarray, truth: np.ndarray, tolerance: float = 3.0) -> float:
    """Boundary F1: precision and recall of boundary pixels within ``tolerance`` pixels."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    bp, bt = _boundary(p), _boundary(t)
    if not bp.any() and not bt.any():
        return 1.0
    if not bp.any() or not bt.any():
        return 0.0
    to_t = ndimage.distance_transform_edt(~bt)
    to_p = ndimage.distance_transform_edt(~bp)
    precision = float((to_t[bp] <= tolerance).mean())
    recall = float((to_p[bt] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def score_image(pred: np.ndarray, truth: np.ndarray, tolerance: float = 3.0) -> ImageScores:
    """Every score of one binary prediction against its truth (foreground = True)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    f1, odice, haus = object_scores(p, t)
    return ImageScores(
        dice=dice(p, t),
        minority_dice=dice(~p, ~t),
        object_f1=f1,
        object_dice=odice,
        object_hausdorff=haus,
        boundary_f1=boundary_f1(p, t, tolerance),
    )


def constant_baselines(truths: list[np.ndarray], tolerance: float = 3.0) -> dict[str, dict]:
    """Mean scores of "everything is foreground" and "nothing is" over ``truths``."""
    out = {}
    for name, value in (("all foreground", True), ("all background", False)):
        scores = [score_image(np.full(t.shape, value), t, tolerance).to_dict() for t in truths]
        out[name] = {k: float(np.nanmean([s[k] for s in scores])) for k in scores[0]}
    return out
