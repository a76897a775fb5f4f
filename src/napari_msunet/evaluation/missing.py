"""Suspected missing and wrong annotations: where a confident model disagrees with them.

The paper's missing-annotation problem (section III.C, Fig. 2) as a review queue. Its
bootstrap weight (eq. 2) measures how sure the model is of a pixel,

    w_bs = 2 |0.5 - p|,

generalised to ``C`` classes as the normalised confidence of the predicted class,
``(max_c p_c - 1/C) / (1 - 1/C)`` (exactly eq. 2 for two classes; the same formula as
:func:`napari_msunet.training.losses.bootstrap_weight`). Where that weight is high for a
foreground class and the annotation says background, either the annotator missed a region
or the model is confidently wrong; both deserve a look. The other direction is the same
label noise seen from the annotation: where the annotation says class k > 0 and the model is
as confident of another class (background or another foreground class), the annotation is
*suspected wrong* (drawn too large, on the wrong tissue, or with the wrong class). Connected
regions of such pixels (4-connected, per pair of annotated and predicted class) are the
candidates, each saying its kind (:data:`MISSING` or :data:`WRONG`), ranked by area x mean
confidence so that large, sure regions come first. :func:`iter_find_missing` looks for the
missing ones unless asked for both (``kinds=KINDS``), as the cohort review queue
(:mod:`napari_msunet.evaluation.review_queue`) does.

The search runs on a coarse level of the prediction's probability pyramid (default about
8 µm/px; the pyramid's levels are 2 x 2 means of the probabilities, so a coarse pixel is
confident only where most of its area is) one chunk-aligned window at a time. Regions that
cross window borders are joined with a union-find over the border pixels, so memory depends
on the window size and the number of candidates, never on the slide's area (the machinery
lives in :mod:`napari_msunet.evaluation._candidate_regions`).

The probabilities are what :func:`~napari_msunet.inference.engine.iter_predict_slide` writes:
``probabilities.ome.zarr``, uint8 ``p * 255``, ``(C, Y, X)``, channel 0 background. Pixels the
engine never computed (no tissue) have every channel 0 and are never candidates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import zarr
from shapely.geometry import MultiPolygon, Polygon

from napari_msunet.errors import AnnotationError, MsunetError
from napari_msunet.evaluation._candidate_regions import (
    AnnotationGrid,
    Regions,
    annotated,
    near_agreement,
    read_padded,
    window_regions,
)
from napari_msunet.io.annotation_store import AnnotationStore, Edit
from napari_msunet.io.decisions import Decision, outline_json
from napari_msunet.io.prediction_record import PredictionRecord, read_prediction_record
from napari_msunet.io.rasterise import Rasteriser
from napari_msunet.progress import Progress, Stop, eager, stopped

__all__ = [
    "KINDS",
    "MISSING",
    "WRONG",
    "Candidate",
    "accept_candidate",
    "bootstrap_confidence",
    "find_missing",
    "is_rejected",
    "iter_find_missing",
    "record_decision",
    "reject_candidate",
]

_WINDOW = 1024  # coarse pixels per window edge (rounded to the store's chunks)

MISSING = "missing"
"""A candidate where the annotation is background and the model confident of a class."""
WRONG = "wrong"
"""A candidate where the annotation says class k > 0 and the model is confident of another."""
KINDS = (MISSING, WRONG)


@dataclass(frozen=True, eq=False)
class Candidate:
    """One suspected missing or wrong annotation.

    Attributes
    ----------
    label, class_name
        The predicted class (0, background, for a wrong annotation where the model sees none).
    bbox
        Level-0 ``(y, x, h, w)`` of the region.
    area_px
        Area in level-0 pixels.
    area_um2
        Area in µm² (``None`` when no pixel size is known).
    confidence
        Mean bootstrap weight ``w_bs`` over the region (0..1).
    polygon
        The region's outline in level-0 pixel coordinates ``(x, y)`` (QuPath's convention),
        following the edges of the coarse pixels.
    level, downsample
        The probability level searched and its level-0 pixels per pixel.
    kind
        :data:`MISSING` (the annotation is background there) or :data:`WRONG`.
    annotated, annotated_name
        The annotated class (0, "Background", for a missing one).
    slide
        The slide's name, in a queue over several slides (``None`` for one slide).
    """

    label: int
    class_name: str
    bbox: tuple[int, int, int, int]
    area_px: float
    area_um2: float | None
    confidence: float
    polygon: Polygon | MultiPolygon
    level: int = 0
    downsample: float = 1.0
    kind: str = MISSING
    annotated: int = 0
    annotated_name: str = "Background"
    slide: str | None = None

    @property
    def score(self) -> float:
        """Area x mean confidence: the ranking key (µm² when known, else level-0 px)."""
        area = self.area_um2 if self.area_um2 is not None else self.area_px
        return area * self.confidence

    @property
    def center(self) -> tuple[float, float]:
        """Level-0 ``(y, x)`` of the bbox centre."""
        y, x, h, w = self.bbox
        return y + h / 2, x + w / 2


def bootstrap_confidence(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted class and ``w_bs`` (eq. 2, normalised for ``C`` classes) of ``(C, h, w)``.

    ``probs`` are uint8 ``p * 255`` (or floats in 0..1). Returns ``(class, w_bs)``, with
    ``w_bs`` in float32 (negative where nothing was computed: all channels 0).
    """
    c = probs.shape[0]
    scale = 255.0 if np.issubdtype(probs.dtype, np.integer) else 1.0
    cls = np.argmax(probs, axis=0)
    top = np.take_along_axis(probs, cls[None], axis=0)[0].astype(np.float32) / scale
    return cls, (top - 1.0 / c) / (1.0 - 1.0 / c)


def is_rejected(candidate: Candidate, rejected: Sequence[dict[str, Any]], iou: float = 0.5) -> bool:
    """Whether a candidate matches a rejected one (same classes, bbox IoU >= ``iou``).

    Candidates are recomputed after every prediction, so a rejection is remembered by where
    it was rather than by an identity. ``rejected`` items are ``{"bbox": [y, x, h, w],
    "label": predicted class}`` with ``"annotated"`` (default 0: a missing one), as
    :meth:`AnnotationStore.rejected <napari_msunet.io.annotation_store.AnnotationStore.rejected>`
    gives them.
    """
    y, x, h, w = candidate.bbox
    for item in rejected:
        if int(item.get("label", -1)) != candidate.label:
            continue
        if int(item.get("annotated", 0)) != candidate.annotated:
            continue
        ry, rx, rh, rw = item["bbox"]
        ih = max(0, min(y + h, ry + rh) - max(y, ry))
        iw = max(0, min(x + w, rx + rw) - max(x, rx))
        inter = ih * iw
        union = h * w + rh * rw - inter
        if union > 0 and inter / union >= iou:
            return True
    return False


# ------------------------------------------------------------------------------------------
# inputs


def _open_probabilities(path: Path) -> tuple[list[Any], float | None, list[str]]:
    """The probability pyramid (zarr arrays), level-0 µm/px and channel names."""
    try:
        group = zarr.open_group(path, mode="r")
        ome = dict(group.attrs).get("ome", dict(group.attrs))
        ms = ome["multiscales"][0]
        arrays = [group[d["path"]] for d in ms["datasets"]]
    except Exception as exc:
        raise AnnotationError(path, f"is not a probability map (OME-Zarr): {exc}") from exc
    if arrays[0].ndim != 3:
        raise AnnotationError(path, f"probabilities must be (C, Y, X), got {arrays[0].shape}")
    units = [a.get("unit") for a in ms.get("axes", [])]
    scale = ms["datasets"][0].get("coordinateTransformations", [{}])[0].get("scale")
    mpp = float(scale[-1]) if scale and "micrometer" in units else None
    channels = ome.get("omero", {}).get("channels", [])
    names = [c.get("label", f"class {i}") for i, c in enumerate(channels)]
    return arrays, mpp, names


def _record(path: Path) -> PredictionRecord | None:
    """The prediction manifest beside the probabilities, if there is a readable one."""
    try:
        return read_prediction_record(path.parent)
    except MsunetError:  # unreadable: the probabilities alone still work
        return None


def iter_find_missing(
    probabilities: str | Path,
    annotation: Any,
    *,
    slide_shape: tuple[int, int] | None = None,
    slide_mpp: float | None = None,
    threshold: float = 0.8,
    level: int | None = None,
    coarse_mpp: float = 8.0,
    min_area_um2: float = 0.0,
    min_pixels: int = 4,
    max_edge_fraction: float = 0.5,
    edge_width: int = 2,
    rejected: Sequence[dict[str, Any]] = (),
    limit: int | None = None,
    window: int = _WINDOW,
    kinds: Sequence[str] = (MISSING,),
    stop: Stop = None,
) -> Generator[Progress, None, list[Candidate]]:
    """Find suspected missing (and, when asked, wrong) annotations, as a generator; returns
    them ranked.

    :func:`find_missing` is its eager twin. It reads the probabilities and the annotation and
    writes nothing.

    Parameters
    ----------
    probabilities
        The prediction's ``probabilities.ome.zarr``.
    annotation
        An :class:`~napari_msunet.io.annotation_store.AnnotationStore`, a label-mask path
        (any resolution of the slide), a QuPath GeoJSON path, or a 2-D label array on the
        slide's grid at any scale. Any label > 0 counts as annotated; for suspected wrong
        annotations a label is the prediction channel of that number (a GeoJSON class: the
        channel of that name; see :class:`~._candidate_regions.AnnotationGrid`).
    slide_shape, slide_mpp
        Level-0 shape and µm/px of the slide; default: from the store, else from the
        prediction's ``prediction.json``.
    threshold
        Minimum ``w_bs`` of a pixel (0.8 = the predicted class has p >= 0.9 for two classes).
    level, coarse_mpp
        The probability level searched; default: the coarsest one at most ``coarse_mpp``
        µm/px (level 3 when the pixel size is unknown).
    min_area_um2, min_pixels
        Smallest candidate kept: in µm² and in pixels of the searched level.
    max_edge_fraction, edge_width
        Drop regions more than ``max_edge_fraction`` of whose pixels lie within
        ``edge_width`` pixels (of the searched level) of another annotated label: slivers
        along an annotated region's outline, outside it or inside it, are a boundary
        disagreement (what the fuzzy-boundary loss is for), not a missing or wrong region; a
        missed region that merely touches an annotated one keeps most of its pixels away
        from it.
    rejected
        Candidates rejected earlier (``AnnotationStore.rejected()``); see :func:`is_rejected`.
    limit
        Keep only the best ``limit`` candidates.
    window
        Edge of the windows read at a time, in pixels of the searched level (rounded to
        its chunks): what bounds the memory.
    kinds
        Which candidates: :data:`MISSING`, :data:`WRONG` or both (:data:`KINDS`).
    stop
        Checked before every window (see :mod:`napari_msunet.progress`); when it asks to
        stop, the search returns the candidates of the windows searched so far (a region
        reaching into a window not searched yet is cut at its edge): a partial queue is still
        worth reviewing, and the Review widget keeps what a cancelled search found.

    Yields
    ------
    Progress
        Stage ``"search"``: one record per window searched.

    Returns
    -------
    list of Candidate
        Best first (see :attr:`Candidate.score`), without the rejected ones.
    """
    path = Path(probabilities)
    arrays, mpp0, names = _open_probabilities(path)
    record = _record(path)
    if slide_shape is None and isinstance(annotation, AnnotationStore):
        slide_shape, slide_mpp = annotation.slide_shape, slide_mpp or annotation.slide_mpp
    if slide_shape is None and record is not None and record.slide_shape:
        slide_shape = record.slide_shape
        slide_mpp = slide_mpp or record.slide_mpp
    ph, pw = (int(s) for s in arrays[0].shape[-2:])
    slide_shape = tuple(int(s) for s in (slide_shape or (ph, pw)))
    d0 = None if record is None else record.level0_downsample
    if not d0 or record.shape != (ph, pw):
        d0 = (slide_shape[0] / ph, slide_shape[1] / pw)
    if level is None:
        level = 0
        for k in range(len(arrays)):
            if (mpp0 * 2**k <= coarse_mpp) if mpp0 else k <= 3:
                level = k
    level = min(max(0, int(level)), len(arrays) - 1)
    arr = arrays[level]
    d = (float(d0[0]) * 2**level, float(d0[1]) * 2**level)
    shape = (int(arr.shape[1]), int(arr.shape[2]))
    kinds = set(kinds)
    if not kinds or kinds - set(KINDS):
        raise ValueError(f"kinds must be some of {KINDS}, got {sorted(kinds)}")
    ann = AnnotationGrid(annotation, slide_shape, d, shape, names)
    n_cls = int(arr.shape[0])
    px_um2 = None
    if slide_mpp:
        px_um2 = d[0] * d[1] * slide_mpp**2
    elif mpp0:
        px_um2 = (mpp0 * 2**level) ** 2
    min_px = max(int(min_pixels), math.ceil(min_area_um2 / px_um2) if px_um2 else 0, 1)

    cy, cx = (int(c) for c in arr.chunks[-2:])
    sy, sx = max(cy, window // cy * cy), max(cx, window // cx * cx)
    windows = [(y, x) for y in range(0, shape[0], sy) for x in range(0, shape[1], sx)]
    regions = Regions()

    def read_probs(y0: int, x0: int, h: int, w: int) -> np.ndarray:
        return np.asarray(arr[:, y0 : y0 + h, x0 : x0 + w])

    bottom: dict[int, np.ndarray] = {}  # column origin -> last row of global ids above
    right: np.ndarray | None = None
    started = time.monotonic()
    for done, (y, x) in enumerate(windows, 1):
        if stopped(stop):
            break
        h, w = min(sy, shape[0] - y), min(sx, shape[1] - x)
        m = edge_width  # a margin: nearness counts across window edges
        probs = read_padded(read_probs, shape, y, x, h, w, m)
        cls, conf = bootstrap_confidence(probs)
        ann_cls, touch = annotated(ann, shape, y, x, h, w, m)
        ann_cls = ann_cls.astype(np.int64)
        if WRONG in kinds:  # an annotated pixel's rim: near where the model agrees with it
            touch = np.where(ann_cls == 0, touch, near_agreement(ann_cls, cls, m))
        inner = (slice(m, m + h), slice(m, m + w))
        cls, conf, ann_cls, touch = cls[inner], conf[inner], ann_cls[inner], touch[inner]
        cand = np.zeros(cls.shape, bool)
        if MISSING in kinds:
            cand |= (ann_cls == 0) & (cls > 0)
        if WRONG in kinds:  # a label the model lacks (a GeoJSON class it does not know) is
            cand |= (ann_cls > 0) & (ann_cls < n_cls) & (cls != ann_cls)  # never "wrong"
        cand &= conf >= threshold
        key = ann_cls * n_cls + cls
        gid = window_regions(regions, key, conf, cand, touch, (y, x), d, min_px)
        if y > 0 and x in bottom:
            regions.join_edge(bottom[x], gid[0])
        if x > 0 and right is not None:
            regions.join_edge(right, gid[:, 0])
        bottom[x], right = gid[-1].copy(), gid[:, -1].copy()
        yield Progress(
            done,
            len(windows),
            "search",
            f"looking for suspected {' and '.join(k for k in KINDS if k in kinds)} "
            f"annotations: window {done}/{len(windows)}",
            time.monotonic() - started,
        )

    H, W = slide_shape
    out = []
    for r in regions.roots():
        if regions.area[r] < min_px or regions.edge[r] > max_edge_fraction * regions.area[r]:
            continue
        r0, c0, r1, c1 = regions.box[r]
        y0, x0 = math.floor(r0 * d[0]), math.floor(c0 * d[1])
        y1, x1 = min(H, math.ceil(r1 * d[0])), min(W, math.ceil(c1 * d[1]))
        k, c = divmod(regions.cls[r], n_cls)
        polys = regions.polys[r]
        cand = Candidate(
            label=c,
            class_name=_name(names, c),
            bbox=(y0, x0, y1 - y0, x1 - x0),
            area_px=regions.area[r] * d[0] * d[1],
            area_um2=regions.area[r] * px_um2 if px_um2 else None,
            confidence=regions.conf[r] / regions.area[r],
            polygon=polys[0] if len(polys) == 1 else shapely.union_all(polys),
            level=level,
            downsample=(d[0] + d[1]) / 2,
            kind=WRONG if k else MISSING,
            annotated=k,
            annotated_name=_name(names, k),
        )
        if not is_rejected(cand, rejected):
            out.append(cand)
    out.sort(key=lambda c: -c.score)
    return out[:limit] if limit is not None else out


find_missing = eager(iter_find_missing)


def _name(names: Sequence[str], c: int) -> str:
    return names[c] if c < len(names) else f"class {c}"


def accept_candidate(
    store: AnnotationStore, candidate: Candidate, labels: str | Path | None = None
) -> Edit:
    """Take the model's answer for a candidate: edit the store, record the region and the
    decision.

    Inside the candidate's outline (grown by one searched-level pixel, whose edge the coarse
    search cannot place exactly), store pixels of the annotated class (background for a
    missing candidate, class k for a wrong one) take the predicted class (background: the
    wrong annotation is removed) where the prediction's full-resolution ``labels`` say so
    (the prediction's own boundary); without ``labels`` the whole outline is changed. Pixels
    of any other class are kept. The edit goes through the store's journalled path
    (:meth:`~napari_msunet.io.annotation_store.AnnotationStore.apply_store`, undoable), and an
    ``"accept"`` record is appended to the store's decisions.
    """
    y0, x0, h, w = candidate.bbox
    pad = math.ceil(candidate.downsample)
    y0, x0 = max(0, y0 - pad), max(0, x0 - pad)
    h, w = candidate.bbox[2] + 2 * pad, candidate.bbox[3] + 2 * pad
    sy, sx, sh, sw = store.to_store(y0, x0, h, w)
    current = store.read_store(sy, sx, sh, sw)
    d = store.downsample
    area = shapely.buffer(candidate.polygon, candidate.downsample, join_style="mitre")
    inside = Rasteriser(
        [_as_annotation(area)], store.slide_shape, d, labels={"c": 1}, level_shape=store.shape
    ).region(sy, sx, sh, sw)
    change = inside.astype(bool) & (current == candidate.annotated)
    if labels is not None:
        pred = AnnotationGrid(Path(labels), store.slide_shape, (float(d), float(d)), store.shape)
        change &= pred.read(sy, sx, sh, sw) == candidate.label
    new = current.copy()
    new[change] = candidate.label
    what = (
        f"accept suspected missing {candidate.class_name}"
        if candidate.kind == MISSING
        else f"accept suspected wrong {candidate.annotated_name} -> {candidate.class_name}"
    )
    edit = store.apply_store(sy, sx, new, label=what, record=True)
    record_decision(store, candidate, "accept")
    return edit


def reject_candidate(store: AnnotationStore, candidate: Candidate) -> None:
    """Keep the annotation as it is: record a ``"reject"`` decision, so that the candidate
    is not suggested again (see :func:`is_rejected`)."""
    record_decision(store, candidate, "reject")


def record_decision(store: AnnotationStore, candidate: Candidate, decision: str) -> Decision:
    """Append the decision about a candidate to the store's decisions (and return it).

    ``"edit"`` is for a candidate the reviewer corrected by hand (Edit, then Apply).
    """
    record = Decision(
        slide=candidate.slide or store.slide_name,
        kind=candidate.kind,
        annotated=candidate.annotated,
        annotated_class=candidate.annotated_name,
        predicted=candidate.label,
        predicted_class=candidate.class_name,
        decision=decision,
        bbox=candidate.bbox,
        area_px=float(candidate.area_px),
        area_um2=None if candidate.area_um2 is None else float(candidate.area_um2),
        confidence=float(candidate.confidence),
        outline=outline_json(candidate.polygon),
    )
    store.record_decision(record)
    return record


def _as_annotation(geom: Any):
    from napari_msunet.io.annotations import Annotation

    if isinstance(geom, Polygon | MultiPolygon):
        return Annotation(geom, "c")
    polys = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
    return Annotation(MultiPolygon(polys), "c")
