"""The cohort review queue: suspected missing and wrong annotations of many slides, ranked.

A reviewer's hour is best spent where the model is surest and the disagreement largest,
whichever slide that is on. :func:`iter_review_queue` searches each slide (its prediction's
probabilities against its :class:`~napari_msunet.io.annotation_store.AnnotationStore`) with
:func:`~napari_msunet.evaluation.missing.iter_find_missing`, for both kinds of candidate by
default, leaves out what each store says not to suggest again (rejected or corrected by hand),
and merges the lists by area x confidence (:attr:`Candidate.score
<napari_msunet.evaluation.missing.Candidate.score>`: µm² when the slide's pixel size is known,
so slides scanned at different resolutions rank fairly).

Each decision is then written beside its slide's store
(:func:`~napari_msunet.evaluation.missing.accept_candidate`,
:func:`~napari_msunet.evaluation.missing.reject_candidate`,
:func:`~napari_msunet.evaluation.missing.record_decision`), so a reviewed cohort is a
label-noise data set (:func:`napari_msunet.io.decisions.iter_export_decisions`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_msunet.evaluation.missing import (
    KINDS,
    Candidate,
    accept_candidate,
    iter_find_missing,
    record_decision,
    reject_candidate,
)
from napari_msunet.io.annotation_store import AnnotationStore, Edit
from napari_msunet.progress import Progress, Stop, stopped

__all__ = ["QueueSlide", "decide", "iter_review_queue", "slide_of"]


@dataclass(frozen=True)
class QueueSlide:
    """One slide of the queue.

    Attributes
    ----------
    name
        How the slide is named in the queue and in its decisions (its file name); unique
        within a queue.
    probabilities
        Its prediction's ``probabilities.ome.zarr``.
    store
        Its open annotation store (where accepted candidates are written and decisions kept).
    labels
        The prediction's full-resolution ``labels.ome.zarr``, whose boundary an accepted
        candidate takes (``None``: the candidate's coarse outline).
    """

    name: str
    probabilities: Path
    store: AnnotationStore
    labels: Path | None = None


def iter_review_queue(
    slides: Sequence[QueueSlide],
    *,
    threshold: float = 0.8,
    kinds: Sequence[str] = KINDS,
    limit: int | None = None,
    stop: Stop = None,
    **search: Any,
) -> Generator[Progress, None, list[Candidate]]:
    """Rank the candidates of several slides together, as a generator.

    Parameters
    ----------
    slides
        The slides, each with its prediction and its store.
    threshold, kinds
        As for :func:`~napari_msunet.evaluation.missing.iter_find_missing` (both kinds by
        default).
    limit
        Keep only the best ``limit`` candidates of the cohort.
    stop
        Checked before every window of every slide; when it asks to stop, the queue of what
        was searched so far is returned (a partial queue is still worth reviewing).
    **search
        Further arguments of ``iter_find_missing`` (``coarse_mpp``, ``min_area_um2``, ...).

    Yields
    ------
    Progress
        One stage per slide (its name), one record per window searched.

    Returns
    -------
    list of Candidate
        Best first across the cohort, each naming its slide (:attr:`Candidate.slide`).

    Raises
    ------
    ValueError
        Two slides share a name.
    """
    names = [s.name for s in slides]
    if len(set(names)) != len(names):
        raise ValueError(f"slide names in a review queue must be unique, got {names}")
    found: list[Candidate] = []
    started = time.monotonic()
    for i, slide in enumerate(slides, 1):
        if stopped(stop):
            break
        gen = iter_find_missing(
            slide.probabilities,
            slide.store,
            threshold=threshold,
            kinds=kinds,
            rejected=slide.store.rejected(),
            stop=stop,
            **search,
        )
        try:
            while True:
                record = next(gen)
                yield Progress(
                    record.done,
                    record.total,
                    slide.name,
                    f"slide {i}/{len(slides)} ({slide.name}): {record.message}",
                    time.monotonic() - started,
                )
        except StopIteration as end:
            found.extend(dataclasses.replace(c, slide=slide.name) for c in end.value)
    found.sort(key=lambda c: -c.score)
    return found[:limit] if limit is not None else found


def slide_of(slides: Sequence[QueueSlide], candidate: Candidate) -> QueueSlide:
    """The slide a queued candidate lies on (the only one, for a candidate of no slide)."""
    for s in slides:
        if s.name == candidate.slide:
            return s
    if candidate.slide is None and len(slides) == 1:
        return slides[0]
    raise KeyError(f"no slide {candidate.slide!r} in the queue")


def decide(slide: QueueSlide, candidate: Candidate, decision: str) -> Edit | None:
    """Act on a reviewer's decision and record it beside the slide's store.

    ``"accept"`` edits the store (:func:`~napari_msunet.evaluation.missing.accept_candidate`)
    and returns the edit; ``"reject"`` and ``"edit"`` (corrected by hand) only record.
    """
    if decision == "accept":
        return accept_candidate(slide.store, candidate, slide.labels)
    if decision == "reject":
        reject_candidate(slide.store, candidate)
    else:
        record_decision(slide.store, candidate, decision)
    return None
