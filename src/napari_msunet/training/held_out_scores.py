"""Scoring a parent and its new version on the held-out regions; the verdict shown to the user.

Both models predict every held-out region (:mod:`napari_msunet.training.held_out`) on the
region's working-image window plus :data:`CONTEXT` pixels of tissue around it, in float32 with
the engine's tiling convention (:func:`~napari_msunet.models.tiled.tiled_forward`, tiles of
:data:`TILE` with each model's measured margin, else its structural one), as a whole-slide
prediction would see it. Pixels of all regions are pooled into one confusion
matrix per model, against the annotation (the ignore label, e.g. outside corrected regions, is
left out), and give per-class Dice and IoU.

The classes are the new version's. A parent that lacks a class (a new class learnt from it)
never predicts it, so its Dice there is 0; the parent's classes the version dropped count as
background. The summary number is the mean Dice over the foreground classes present in the
held-out truth, the same classes for both models, so the two numbers compare.

The same scoring also measures the regions a fine-tune *learnt from*: the corrected regions it
trained on (:func:`~napari_msunet.training.held_out.learnt_regions`), parent against version.
That is not a test on unseen tissue (the held-out score is), but it is the first thing a
pathologist asks after correcting regions: did the model take the corrections? It is recorded
beside the held-out verdict (``training["corrected"]``) and shown next to it.

A version *got worse* when its summary Dice is :data:`WORSE_BY` or more below its parent's:
the history flags it and offers to roll back. The rule is here, not in the GUI.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_msunet.io.slide import open_slide
from napari_msunet.io.working_image import SlideReader, working_geometry
from napari_msunet.models.checkpoint import ModelHeader, load_model
from napari_msunet.models.device import select_device
from napari_msunet.models.margin import measured_margin
from napari_msunet.models.tiled import tiled_forward
from napari_msunet.progress import Progress, Stop, stopped
from napari_msunet.training.held_out import HeldOut
from napari_msunet.training.losses import IGNORE_INDEX
from napari_msunet.training.slide_dataset import _Labels
from napari_msunet.training.validation import scores_from_confusion

__all__ = [
    "CONTEXT",
    "HELD_OUT",
    "LEARNT",
    "WORSE_BY",
    "HeldOutVerdict",
    "ModelScores",
    "iter_score_held_out",
]

#: Working pixels of tissue read around each held-out region as the models' context.
CONTEXT = 64
#: Output tile of the scoring forward passes (rounded up to the model's alignment).
TILE = 512

#: How :meth:`HeldOutVerdict.summary` names the two kinds of region scored.
HELD_OUT = "held-out regions"
LEARNT = "the corrected regions it learnt from"

#: A version whose summary Dice is this much below its parent's got worse.
WORSE_BY = 0.005


@dataclass(frozen=True)
class ModelScores:
    """One model's scores on the held-out regions, by class name (``None``: class absent)."""

    dice: dict[str, float | None]
    iou: dict[str, float | None]
    mean_dice: float | None
    #: Share of the annotated-background pixels predicted as a foreground class: the score
    #: left when a region holds no foreground at all (a "nothing here" correction).
    false_foreground: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "dice": self.dice,
            "iou": self.iou,
            "mean_dice": self.mean_dice,
            "false_foreground": self.false_foreground,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelScores:
        def number(key: str) -> float | None:
            value = data.get(key)
            return float(value) if isinstance(value, (int, float)) else None

        return cls(
            dict(data.get("dice") or {}),
            dict(data.get("iou") or {}),
            number("mean_dice"),
            number("false_foreground"),
        )


@dataclass(frozen=True)
class HeldOutVerdict:
    """What a version's header says about its held-out scores (``training["held_out"]``).

    Attributes
    ----------
    parent, version
        The scores of the parent and of this version; ``None`` when not measured (no
        held-out region, or a model trained from scratch has no parent).
    regions, pixels
        How many regions and annotated pixels were scored.
    reason
        Why there is no score (empty when there is one).
    """

    parent: ModelScores | None
    version: ModelScores | None
    regions: int
    pixels: int
    reason: str = ""

    @property
    def delta(self) -> float | None:
        """Version minus parent summary Dice (``None`` when either is missing)."""
        if self.parent is None or self.version is None:
            return None
        if self.parent.mean_dice is None or self.version.mean_dice is None:
            return None
        return self.version.mean_dice - self.parent.mean_dice

    @property
    def got_worse(self) -> bool:
        """Whether the version scores :data:`WORSE_BY` or more below its parent."""
        return self.delta is not None and self.delta <= -WORSE_BY

    def summary(self, where: str = "held-out regions") -> str:  # HELD_OUT
        """One line: ``Dice on held-out regions: 0.71 → 0.78 (+0.07)``, or why there is none.

        ``where`` names the regions scored (``"the corrected regions it learnt from"``).
        """
        if self.version is not None and self.version.mean_dice is None:
            return self._background_summary(where)
        if self.version is None or self.version.mean_dice is None:
            what = "held-out score" if where == HELD_OUT else f"score on {where}"
            return f"No {what}: {self.reason or 'no region'}"
        new = self.version.mean_dice
        if self.parent is None or self.parent.mean_dice is None:
            return f"Dice on {where}: {new:.2f} (no parent to compare)"
        old = self.parent.mean_dice
        delta = new - old
        shown = f"{delta:+.2f}" if abs(delta) >= 0.005 else "±0.00"  # never "-0.00"
        text = f"Dice on {where}: {old:.2f} → {new:.2f} ({shown})"
        return text + (" — worse than its parent" if self.got_worse else "")

    def _background_summary(self, where: str) -> str:
        """Regions annotated as background only: how much foreground each model predicts."""
        new = self.version.false_foreground if self.version is not None else None
        old = self.parent.false_foreground if self.parent is not None else None
        head = f"{where[0].upper()}{where[1:]} hold no annotated foreground"
        if new is None:
            return f"{head}: no score"
        if old is None:
            return f"{head}; predicted foreground there: {new:.0%}"
        return f"{head}; predicted foreground there: {old:.0%} → {new:.0%}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent": None if self.parent is None else self.parent.to_dict(),
            "version": None if self.version is None else self.version.to_dict(),
            "n_regions": self.regions,
            "pixels": self.pixels,
            "reason": self.reason,
        }

    @classmethod
    def from_header(cls, header: ModelHeader, key: str = "held_out") -> HeldOutVerdict | None:
        """The verdict a model header records under ``training[key]`` (``"held_out"``, or
        ``"corrected"`` for the regions learnt from); ``None`` for a model without one."""
        training = header.training if isinstance(header.training, dict) else {}
        data = training.get(key)
        if not isinstance(data, dict):
            return None
        scores = data.get("scores") if isinstance(data.get("scores"), dict) else {}

        def part(key: str) -> ModelScores | None:
            value = scores.get(key)
            return ModelScores.from_dict(value) if isinstance(value, dict) else None

        return cls(
            part("parent"),
            part("version"),
            int(scores.get("n_regions") or 0),
            int(scores.get("pixels") or 0),
            str(scores.get("reason") or data.get("reason") or ""),
        )


def _scores(cm: np.ndarray, class_names: Sequence[str], present: np.ndarray) -> ModelScores:
    s = scores_from_confusion(cm)

    def clean(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 4)

    dice = {n: clean(v) for n, v in zip(class_names, s.dice, strict=True)}
    iou = {n: clean(v) for n, v in zip(class_names, s.iou, strict=True)}
    fg = [s.dice[c] for c in range(1, len(class_names)) if present[c]]
    mean = round(float(np.mean(fg)), 4) if fg else None
    background = int(cm[0].sum())
    false_fg = round(float(cm[0, 1:].sum()) / background, 4) if background else None
    return ModelScores(dice, iou, mean, false_fg)


def _lut(names: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """A model's label -> the version's label, by class name (unknown classes -> background)."""
    index = {n: i for i, n in enumerate(class_names)}
    return np.array([index.get(n, 0) for n in names], dtype=np.int64)


def iter_score_held_out(
    models: Mapping[str, Path],
    held_out: HeldOut,
    class_names: Sequence[str],
    *,
    device: str = "auto",
    stage: str = "held-out",
    stop: Stop = None,
) -> Generator[Progress, None, HeldOutVerdict]:
    """Score ``models`` (``{"parent": path, "version": path}``) on ``held_out``.

    ``stage`` names the regions in the progress records: ``"held-out"``, or ``"corrected"``
    for the corrected regions a fine-tune learnt from.

    Yields
    ------
    Progress
        Stage ``stage``, one record per region and model.

    Returns
    -------
    HeldOutVerdict
        With ``reason`` set (and no scores) when there was no region or the run was stopped.
    """
    if not held_out.regions:
        return HeldOutVerdict(None, None, 0, 0, held_out.reason or "no held-out region")
    n = len(class_names)
    dev = select_device(device)
    loaded = {k: load_model(p, device=dev) for k, p in models.items()}
    cms = {k: np.zeros((n, n), np.int64) for k in loaded}
    total = len(held_out.regions) * len(loaded)
    done, t0 = 0, time.perf_counter()
    for region in held_out.regions:
        spec = region.spec
        x0, y0, x1, y1 = region.box
        for key, (model, header) in loaded.items():
            if stopped(stop):
                return HeldOutVerdict(None, None, 0, 0, f"the {stage} scoring was stopped")
            with open_slide(spec.slide) as slide:
                g = working_geometry(slide, header.input_um_per_px, spec.mpp)
                dy, dx = g.downsample
                wy, wx = int(y0 // dy), int(x0 // dx)
                h = max(1, math.ceil(y1 / dy) - wy)
                w = max(1, math.ceil(x1 / dx) - wx)
                c = CONTEXT
                rgb = SlideReader(slide, g).read(wy - c, wx - c, h + 2 * c, w + 2 * c)
                truth = _Labels(spec, slide, g, class_names).window(wy, wx, h, w)
            a = int(model.alignment)
            margin = measured_margin(header)
            if margin is None or margin % a:
                margin = -(-int(model.receptive_radius) // a) * a
            labels, _ = tiled_forward(
                model,
                np.ascontiguousarray(rgb),
                header.norm_mean,
                header.norm_std,
                tile=-(-TILE // a) * a,
                margin=margin,
            )
            pred = _lut(header.class_names, class_names)[labels[c : c + h, c : c + w]]
            keep = (truth != IGNORE_INDEX) & (truth >= 0) & (truth < n)
            cms[key] += np.bincount(truth[keep] * n + pred[keep], minlength=n * n).reshape(n, n)
            done += 1
            yield Progress(
                done,
                total,
                stage,
                f"scoring {key} on {stage} region {done}/{total}",
                time.perf_counter() - t0,
            )
    any_cm = next(iter(cms.values()))
    present = any_cm.sum(1) > 0
    pixels = int(any_cm.sum())
    scores = {k: _scores(cm, class_names, present) for k, cm in cms.items()}
    if not present[1:].any():  # no Dice; the foreground predicted there is the score
        reason = f"the {stage} regions hold no annotated foreground"
        return HeldOutVerdict(
            scores.get("parent"), scores.get("version"), len(held_out.regions), pixels, reason
        )
    scores = {k: _scores(cm, class_names, present) for k, cm in cms.items()}
    return HeldOutVerdict(
        scores.get("parent"), scores.get("version"), len(held_out.regions), pixels
    )
