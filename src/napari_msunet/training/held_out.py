"""Held-out regions: parts of the annotated slides kept out of training to score each version.

A new model version is only worth using if it segments *unseen* tissue better than its
parent. So every fine-tune and every training from slides keeps some annotated regions out of
training and scores the parent and the new version on them
(:mod:`napari_msunet.training.held_out_scores`).

What is held out, in this order:

- the user's choice: a GeoJSON of held-out regions beside a slide (``SlideSpec.held_out``),
  or whole slides given as held-out slides (scored on all their annotated regions);
- else the tool's choice, **stratified by class**: the candidates are the corrected regions
  when the slide has them (only there is the annotation trusted), else the annotated objects
  (connected regions of one class, found on the tissue mask's coarse grid, their box grown
  by a quarter on each side so that the surrounding tissue is scored too). Each candidate
  belongs to the foreground class covering most of it ("Background" when none does); in
  every class with at least two candidates, a ``fraction`` of them (at least one, never all)
  is kept out, drawn with the run's seed so that a resumed run keeps out the same ones.

A class with a single candidate is never held out: its one region is all the model can learn
it from. Nor does the tool's choice take more than half of a slide's training patches: on
such a slide (a small one, or one large corrected region) its held-out regions are given back
to training. When nothing can be held out (one corrected region, too few objects) the run goes
ahead and says why (:attr:`HeldOut.reason`), and the version shows no held-out score.

Training never sees a held-out region's labels: a patch whose label square overlaps a
held-out box is dropped (:func:`drop_held_out`). The tissue around it may still appear as
input context of neighbouring patches, as it would around any unseen region of a slide.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from napari_msunet.errors import AnnotationError, ConfigError
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.slide import open_slide
from napari_msunet.io.tissue import detect_tissue
from napari_msunet.io.working_image import working_geometry
from napari_msunet.training.slide_dataset import SlideSpec, _coarse, _Labels

__all__ = [
    "HeldOut",
    "HeldOutRegion",
    "choose_held_out",
    "drop_held_out",
    "learnt_regions",
]

Box = tuple[int, int, int, int]
"""Level-0 ``(x0, y0, x1, y1)``, QuPath's axis order."""

#: Default share of each class's candidate regions kept out of training.
FRACTION = 0.2

#: At most this many held-out regions are scored (each is predicted twice, parent and child).
MAX_REGIONS = 60

#: How much an annotated object's box grows on each side (a share of its size).
_GROW = 0.25


@dataclass(frozen=True)
class HeldOutRegion:
    """One region kept out of training.

    Attributes
    ----------
    spec
        The slide and annotation it is scored on.
    box
        Level-0 ``(x0, y0, x1, y1)``.
    class_name
        The class it was stratified by.
    source
        ``"corrected"`` (a corrected region), ``"object"`` (an annotated object), ``"user"``
        (the user's held-out GeoJSON) or ``"slide"`` (a region of a held-out slide).
    """

    spec: SlideSpec
    box: Box
    class_name: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "slide": str(self.spec.slide),
            "annotation": str(self.spec.annotation),
            "box": list(self.box),
            "class": self.class_name,
            "source": self.source,
        }


@dataclass(frozen=True)
class HeldOut:
    """The held-out regions of a run, or why there are none.

    Attributes
    ----------
    regions
        Kept out of training, scored after it.
    reason
        Why ``regions`` is empty (one line for a person); empty when it is not.
    how
        ``"auto"`` (the tool's stratified choice), ``"user"`` or ``"none"``.
    """

    regions: tuple[HeldOutRegion, ...] = ()
    reason: str = ""
    how: str = "auto"
    _by_slide: dict[Path, list[Box]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for r in self.regions:
            self._by_slide.setdefault(Path(r.spec.slide), []).append(r.box)

    def without(self, slide: Path, reason: str) -> HeldOut:
        """These held-out regions but those on ``slide``; ``reason`` says why when none is left."""
        kept = tuple(r for r in self.regions if Path(r.spec.slide) != Path(slide))
        return HeldOut(kept, "" if kept else reason, self.how)

    def boxes(self, slide: Path) -> list[Box]:
        """The held-out boxes on ``slide`` (level-0 ``(x0, y0, x1, y1)``)."""
        return self._by_slide.get(Path(slide), [])

    def to_dict(self) -> dict[str, Any]:
        """How a model header records it (``training["held_out"]["regions"]``...)."""
        return {
            "how": self.how,
            "regions": [r.to_dict() for r in self.regions],
            "reason": self.reason,
        }


def _candidates(spec: SlideSpec, mpp: float, class_names: Sequence[str]) -> list[tuple[Box, str]]:
    """Candidate regions of one slide with their majority class (see the module docstring)."""
    with open_slide(spec.slide) as slide:
        geometry = working_geometry(slide, mpp, spec.mpp)
        tissue = detect_tissue(slide, mpp=spec.mpp)
        coarse = _coarse(geometry, tissue)
        plain = SlideSpec(spec.slide, spec.annotation, spec.noisy, spec.mpp)  # no ignore mask
        th, tw = tissue.mask.shape
        lab = _Labels(plain, slide, coarse, class_names, working=geometry).window(0, 0, th, tw)
        dy, dx = tissue.downsample
        H0, W0 = slide.shape
        if spec.regions is not None:
            regions = read_geojson(spec.regions, slide_shape=slide.shape)
            boxes = [tuple(round(v) for v in a.geometry.bounds) for a in regions]
        else:
            boxes = []
            for c in range(1, len(class_names)):
                parts, n = ndimage.label(lab == c)
                for sl in ndimage.find_objects(parts) if n else ():
                    y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
                    gy, gx = (y1 - y0) * _GROW, (x1 - x0) * _GROW
                    boxes.append(
                        (
                            int(max(0, (x0 - gx) * dx)),
                            int(max(0, (y0 - gy) * dy)),
                            int(min(W0, (x1 + gx) * dx)),
                            int(min(H0, (y1 + gy) * dy)),
                        )
                    )
    out = []
    for box in boxes:
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            continue
        r0, r1 = int(y0 // dy), max(int(y0 // dy) + 1, int(np.ceil(y1 / dy)))
        c0, c1 = int(x0 // dx), max(int(x0 // dx) + 1, int(np.ceil(x1 / dx)))
        inside = lab[r0:r1, c0:c1]
        counts = np.bincount(inside[(inside > 0) & (inside < len(class_names))].ravel())
        name = class_names[int(counts.argmax())] if counts.any() else class_names[0]
        out.append((box, name))
    return out


def choose_held_out(
    slides: Sequence[SlideSpec],
    mpp: float,
    class_names: Sequence[str],
    *,
    held_out_slides: Sequence[SlideSpec] = (),
    fraction: float = FRACTION,
    seed: int = 0,
) -> HeldOut:
    """The regions of ``slides`` (and ``held_out_slides``) kept out of training.

    Parameters
    ----------
    slides
        The training slides. One with ``held_out`` set contributes the regions of that
        GeoJSON (the user's choice); when any slide or ``held_out_slides`` is given that way,
        the tool chooses nothing itself.
    mpp
        The model's input µm/px (the scale at which annotated objects are found).
    class_names
        The new version's classes.
    held_out_slides
        Whole slides kept out: all their candidate regions are scored, none is trained on.
    fraction
        Share of each class's candidates the tool keeps out; 0 keeps none out.

    Raises
    ------
    ConfigError
        ``fraction`` outside [0, 0.9].
    AnnotationError
        A held-out GeoJSON that cannot be read, or one with no region.
    """
    if not 0 <= fraction <= 0.9:
        raise ConfigError(f"the held-out fraction must be between 0 and 0.9, got {fraction}")
    user: list[HeldOutRegion] = []
    for spec in slides:
        if spec.held_out is None:
            continue
        with open_slide(spec.slide) as slide:
            found = read_geojson(spec.held_out, slide_shape=slide.shape)
        if not len(found):
            raise AnnotationError(spec.held_out, "holds no region to keep out of training")
        names = {box: name for box, name in _candidates(_as_regions(spec), mpp, class_names)}
        for box in names:
            user.append(HeldOutRegion(spec, box, names[box], "user"))
    for spec in held_out_slides:
        user += [HeldOutRegion(spec, b, n, "slide") for b, n in _candidates(spec, mpp, class_names)]
    if user or held_out_slides:
        if not user:
            return HeldOut(reason="the held-out slides have no annotated region", how="user")
        return HeldOut(tuple(user[:MAX_REGIONS]), how="user")
    if fraction == 0:
        return HeldOut(reason="no region was kept out of training (held-out share 0)", how="none")
    per_class: dict[str, list[HeldOutRegion]] = {}
    for spec in slides:
        source = "corrected" if spec.regions is not None else "object"
        for box, name in _candidates(spec, mpp, class_names):
            per_class.setdefault(name, []).append(HeldOutRegion(spec, box, name, source))
    rng = random.Random(seed)
    chosen: list[HeldOutRegion] = []
    for name in sorted(per_class):
        group = per_class[name]
        if len(group) < 2:
            continue
        k = min(len(group) - 1, max(1, round(fraction * len(group))))
        chosen += rng.sample(group, k)
    if not chosen:
        total = sum(len(g) for g in per_class.values())
        what = "corrected regions" if any(s.regions for s in slides) else "annotated regions"
        return HeldOut(
            reason=f"too few {what} to keep some out of training ({total}; a class needs "
            "two or more): no held-out score",
        )
    rng.shuffle(chosen)
    return HeldOut(tuple(chosen[:MAX_REGIONS]))


def learnt_regions(
    slides: Sequence[SlideSpec], mpp: float, class_names: Sequence[str], held_out: HeldOut
) -> HeldOut:
    """The corrected regions a fine-tune trains on: every slide's, but the held-out ones.

    Scored parent against version after training (the corrections taken or not; see
    :mod:`~napari_msunet.training.held_out_scores`). Empty, with a reason, for slides without
    corrected regions.
    """
    regions: list[HeldOutRegion] = []
    for spec in slides:
        if spec.regions is None:
            continue
        kept = set(held_out.boxes(spec.slide))
        regions += [
            HeldOutRegion(spec, box, name, "corrected")
            for box, name in _candidates(spec, mpp, class_names)
            if box not in kept
        ]
    if not regions:
        return HeldOut(reason="no corrected region was trained on", how="none")
    return HeldOut(tuple(regions[:MAX_REGIONS]), how="none")


def _as_regions(spec: SlideSpec) -> SlideSpec:
    """``spec`` with its held-out GeoJSON read as its regions (their boxes are the candidates)."""
    return SlideSpec(spec.slide, spec.annotation, spec.noisy, spec.mpp, regions=spec.held_out)


def drop_held_out(
    spec: SlideSpec,
    positions: Iterable[tuple[int, int]],
    mpp: float,
    patch: int,
    held_out: HeldOut,
) -> list[tuple[int, int]]:
    """``positions`` (working-px patch corners) but those whose patch meets a held-out box."""
    positions = list(positions)
    boxes = held_out.boxes(spec.slide)
    if not boxes:
        return positions
    with open_slide(spec.slide) as slide:
        dy, dx = working_geometry(slide, mpp, spec.mpp).downsample
    arr = np.asarray(boxes, dtype=np.float64)  # (n, 4) x0 y0 x1 y1

    def clear(y: int, x: int) -> bool:
        y0, x0, y1, x1 = y * dy, x * dx, (y + patch) * dy, (x + patch) * dx
        hit = (arr[:, 0] < x1) & (arr[:, 2] > x0) & (arr[:, 1] < y1) & (arr[:, 3] > y0)
        return not hit.any()

    return [p for p in positions if clear(*p)]
