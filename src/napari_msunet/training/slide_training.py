"""Training a model version on annotated slides: the one path of fine-tuning and training.

A fine-tune (:mod:`napari_msunet.training.finetune`) and a training from slides
(:func:`iter_train_slides`, ``msunet train --slides``, the Train widget) do the same work:

1. read every annotation as training will and settle the class scheme (the parent's, the
   parent's plus the annotation's new classes, or the annotation's: see
   :mod:`napari_msunet.models.transfer`);
2. keep some annotated regions out of training (:mod:`napari_msunet.training.held_out`);
3. train from a start model (the parent, the parent with a rebuilt class head, or random
   weights) in a run folder ``<version>.run`` that a rerun resumes;
4. score the parent and the new version on the held-out regions
   (:mod:`napari_msunet.training.held_out_scores`) and write the new version, never over an
   existing file, with the scores and the held-out regions in its header.

:func:`iter_train_version` is that path; the two public generators only choose the settings
and the start model. A stop after at least one step saves the steps done as the version (not
scored: a Cancel must end soon); a stop before the first step saves nothing and removes the
run folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset

from napari_msunet.errors import AnnotationError, ConfigError, MsunetError, brief
from napari_msunet.io.annotations import default_color
from napari_msunet.models.base import SegmentationModel
from napari_msunet.models.bundled import bundled_model_path
from napari_msunet.models.checkpoint import ModelHeader, load_model, read_header, save_model
from napari_msunet.models.margin import record_margin
from napari_msunet.models.transfer import class_scheme, with_classes
from napari_msunet.progress import Progress, Stop, eager, stopped
from napari_msunet.training.augment import context_size
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.domain_stats import slides_domain
from napari_msunet.training.held_out import (
    FRACTION,
    HeldOut,
    choose_held_out,
    drop_held_out,
    learnt_regions,
)
from napari_msunet.training.held_out_scores import (
    HELD_OUT,
    LEARNT,
    HeldOutVerdict,
    iter_score_held_out,
)
from napari_msunet.training.slide_dataset import (
    SlidePatchDataset,
    SlideSpec,
    annotation_classes,
    check_annotation,
    patch_positions,
)
from napari_msunet.training.trainer import RUN_FILES, iter_train

__all__ = [
    "AUTO_CLASSES",
    "INIT_NAME",
    "START_MODES",
    "FinetuneWarning",
    "VersionResult",
    "iter_train_slides",
    "iter_train_version",
    "paused_run",
    "run_dir_of",
    "sha256_of",
    "slides_record",
    "start_model",
    "train_slides",
]

AUTO_CLASSES = "auto"
"""Fine-tune classes mode: ``keep`` when the annotations use only the parent's classes,
``replace`` when they use only new ones, ``add`` when both (said in a
:class:`FinetuneWarning`)."""

INIT_NAME = "init.safetensors"
"""The start model of a run whose class head was rebuilt, in its run folder."""

START_MODES = ("transfer", "scratch")


class FinetuneWarning(UserWarning):
    """Training goes ahead on inputs that are legitimate but often a mistake."""


@dataclass(frozen=True)
class VersionResult:
    """What a fine-tune or a training from slides finished with.

    Attributes
    ----------
    model
        The new model version; ``None`` when the run was stopped before its first step
        (then nothing was written: a version that trained zero steps would only copy its
        parent), or, for a training from slides, paused by a stop (``run_dir`` then holds
        the checkpoint a rerun resumes).
    run_dir
        The trainer's checkpoint folder (``<version>.run``); ``None`` when nothing is left.
    steps
        Steps trained (0 when the run stopped before its first step).
    stopped
        Whether ``stop`` ended the run before its planned steps.
    held_out
        The parent's and the version's held-out scores (or why there are none); ``None``
        with ``model``.
    corrected
        The parent's and the version's scores on the corrected regions the run learnt from
        (did it take the corrections?); ``None`` without a parent or corrected regions.
    """

    model: Path | None
    run_dir: Path | None
    steps: int
    stopped: bool
    held_out: HeldOutVerdict | None = None
    corrected: HeldOutVerdict | None = None

    def score_lines(self) -> list[str]:
        """What the CLI prints and the GUI shows after a run: the held-out verdict, then
        the score on the corrected regions learnt from (when measured)."""
        lines = [self.held_out.summary(HELD_OUT)] if self.held_out is not None else []
        if self.corrected is not None:
            lines.append(self.corrected.summary(LEARNT))
        return lines


def run_dir_of(target: Path) -> Path:
    """The run folder of a version: ``<stem>.run`` beside ``<stem>.safetensors``."""
    return target.with_name(target.name.removesuffix(".safetensors") + ".run")


def slide_training_data(
    slides: Sequence[SlideSpec], cfg: TrainConfig, held: HeldOut
) -> tuple[torch.utils.data.Dataset, HeldOut]:
    """Patches of every slide (tissue grid; corrected regions favoured; held-out ones dropped).

    The tool's own held-out choice never takes more than half of a slide's patches: there
    its regions go back to training (the returned :class:`HeldOut` says so when none is
    left). The user's choice is kept whatever it costs.
    """
    size = context_size(cfg.patch)
    parts = []
    for k, spec in enumerate(slides):
        pos = patch_positions(
            spec, cfg.mpp, cfg.patch, class_names=cfg.class_names, seed=cfg.seed + k
        )
        kept = drop_held_out(spec, pos, cfg.mpp, cfg.patch, held)
        if held.how == "auto" and len(kept) < len(pos) / 2:
            held = held.without(
                spec.slide,
                f"the regions the tool would keep out cover most of {spec.slide.name}: none "
                "kept out (annotate more regions, or keep out a whole slide)",
            )
            kept = pos
        pos = kept
        if spec.regions is not None:
            pos = _favour_regions(spec, cfg, pos)
        if not pos:
            raise ConfigError(f"{spec.slide}: no tissue found outside the held-out regions")
        parts.append(SlidePatchDataset(spec, cfg.mpp, pos, cfg.patch, size, cfg.class_names))
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), held


def iter_train_version(
    cfg: TrainConfig,
    slides: Sequence[SlideSpec],
    target: Path,
    *,
    init: Path | None,
    parent: Path | None,
    provenance: dict[str, Any],
    held_out_fraction: float = FRACTION,
    held_out_slides: Sequence[SlideSpec] = (),
    save_on_stop: bool = True,
    stop: Stop = None,
) -> Generator[Progress, None, VersionResult]:
    """Train ``cfg`` on ``slides`` from ``init`` and write ``target`` (see the module docstring).

    ``init`` is the start model file (``None``: random weights); ``parent`` the model the
    version is compared with on the held-out regions (``None``: none, from scratch).
    ``provenance`` goes into the version's header, with the held-out regions and scores.
    ``save_on_stop``: a stop after some steps writes them as the version (a fine-tune), or
    keeps the run folder to be resumed by the same call and writes nothing (a training from
    slides: its budget is what the user asked for).
    """
    if target.exists():
        raise ConfigError(f"{target}: already exists; model versions are never overwritten")
    for spec in (*slides, *held_out_slides):
        _check_annotation(spec, cfg)
    held = choose_held_out(
        slides,
        cfg.mpp,
        cfg.class_names,
        held_out_slides=held_out_slides,
        fraction=held_out_fraction,
        seed=cfg.seed,
    )
    data, held = slide_training_data(slides, cfg, held)
    if held.reason and held.how != "none":  # the user's own "keep none out" needs no word
        warnings.warn(f"{target.name}: {held.reason}", FinetuneWarning, stacklevel=3)
    run_dir = run_dir_of(target)
    provenance = {**provenance, "held_out": held.to_dict()}
    parent_training = read_header(parent).training if parent is not None else None
    domain = slides_domain([*slides, *held_out_slides], cfg.mpp, parent_training)
    if domain is not None:  # compared with each slide a prediction meets (io.domain)
        provenance["domain"] = domain.to_dict()
    result = yield from iter_train(
        cfg, data, None, run_dir, init_model=init, provenance=provenance, stop=stop
    )
    if result.global_step == 0:  # stopped before the first step: nothing to save
        _remove_run(run_dir)
        return VersionResult(None, None, 0, result.stopped)
    if result.stopped and not save_on_stop:  # paused: the same call resumes it
        return VersionResult(None, run_dir, result.global_step, True)
    trained, header = load_model(result.last)
    if stopped(stop):  # a Cancel ends soon: the steps done are saved, not scored
        verdict = HeldOutVerdict(None, None, 0, 0, "the run was stopped before scoring")
    else:
        models = (
            {"version": result.last}
            if parent is None
            else {
                "parent": parent,
                "version": result.last,
            }
        )
        verdict = yield from iter_score_held_out(
            models, held, cfg.class_names, device=cfg.device, stop=stop
        )
    learnt = None
    if parent is not None and any(s.regions is not None for s in slides) and not stopped(stop):
        trained_on = learnt_regions(slides, cfg.mpp, cfg.class_names, held)
        learnt = yield from iter_score_held_out(
            models, trained_on, cfg.class_names, device=cfg.device, stage="corrected", stop=stop
        )
    training = dict(header.training) if isinstance(header.training, dict) else {}
    training["held_out"] = {**held.to_dict(), "scores": verdict.to_dict()}
    if learnt is not None:
        training["corrected"] = {**trained_on.to_dict(), "scores": learnt.to_dict()}
    # the margin the new weights need, for whole-slide prediction (models.margin)
    header = record_margin(trained, dataclasses.replace(header, training=training))
    save_model(target, trained, header)  # atomic
    return VersionResult(target, run_dir, result.global_step, result.stopped, verdict, learnt)


def slides_record(slides: Sequence[SlideSpec]) -> list[dict[str, str | None]]:
    """How a version's header records its slides (and :func:`interrupted_version` compares)."""
    out = []
    for s in slides:
        record = {
            "slide": str(s.slide),
            "annotation": str(s.annotation),
            "regions": str(s.regions) if s.regions else None,
        }
        if s.held_out is not None:
            record["held_out"] = str(s.held_out)
        out.append(record)
    return out


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _recipe(model: Path) -> TrainConfig:
    """The training configuration a model was made with (its header's), or a plain one."""
    header = read_header(model)
    base = header.training.get("config") if isinstance(header.training, dict) else None
    if base:
        return TrainConfig.from_dict(base)
    return TrainConfig(
        class_names=header.class_names,
        mpp=header.input_um_per_px,
        patch=header.tile_size or 128,
        norm_mean=header.norm_mean,
        norm_std=header.norm_std,
    )


def iter_train_slides(
    slides: Sequence[SlideSpec],
    out: str | Path,
    *,
    start: str = "transfer",
    base: str | Path | None = None,
    preset: str | None = None,
    steps: int = 1000,
    lr: float | None = None,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "auto",
    held_out_fraction: float = FRACTION,
    held_out_slides: Sequence[SlideSpec] = (),
    stop: Stop = None,
) -> Generator[Progress, None, VersionResult]:
    """Train a model for the annotations' classes on ``slides``; write ``out``.

    Parameters
    ----------
    slides
        Slides with their annotations (QuPath GeoJSON or label masks); the classes are the
        annotations' (background first).
    out
        The new model file; never overwritten. Its run folder ``<stem>.run`` is resumed by
        a rerun with the same ``out``.
    start
        ``"transfer"`` (default): the encoder and decoder of ``base`` (the bundled model when
        ``None``), a new class head; ``"scratch"``: random weights of ``preset``.
    preset
        ``"lite"`` or ``"paper"``; with ``transfer`` it must be the base model's (default).
    steps, lr, batch_size, seed, device
        The step budget and training settings; the rest (loss, augmentation, patch, µm/px,
        normalisation) are the base model's recipe. ``lr`` defaults to the recipe's.
    held_out_fraction, held_out_slides
        What is kept out of training and scored (:func:`~.held_out.choose_held_out`).
    stop
        Checked before each step. A stop after some steps keeps the checkpoint in
        ``<out stem>.run`` and writes no model (``model=None``, ``stopped=True``): the same
        call again resumes at that step. :func:`paused_run` tells whether one waits.
    """
    if start not in START_MODES:
        raise ConfigError(f"start must be one of {START_MODES}, got {start!r}")
    if steps < 1:
        raise ConfigError(f"steps must be positive, got {steps}")
    target = Path(out)
    if target.suffix != ".safetensors":
        raise ConfigError(f"{target}: a model file ends in .safetensors")
    base_path = Path(base) if base is not None else bundled_model_path()
    parent_model, parent_header = load_model(base_path)  # validates it before any work
    recipe = _recipe(base_path)
    if preset is not None and preset not in ("lite", "paper"):
        raise ConfigError(f"preset must be lite or paper, got {preset!r}")
    if start == "transfer" and preset not in (None, recipe.preset):
        raise ConfigError(
            f"{base_path.name} is a {recipe.preset} model: transfer keeps its architecture. "
            f"Start from scratch for a {preset} model (--start scratch)"
        )
    names, colours = _class_scheme(base_path, parent_header, slides, "replace")
    cfg = dataclasses.replace(
        recipe,
        class_names=names,
        class_colours=colours,
        preset=preset or recipe.preset,
        mpp=parent_header.input_um_per_px,
        norm_mean=parent_header.norm_mean,
        norm_std=parent_header.norm_std,
        epochs=1,
        steps_per_epoch=steps,
        lr=recipe.lr if lr is None else lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        num_workers=0,
    )
    provenance: dict[str, Any] = {
        "kind": "train-slides",
        "start": start,
        "slides": slides_record(slides),
        "held_out_fraction": held_out_fraction,
    }
    init = parent = None
    if start == "transfer":
        parent = base_path
        init = start_model(parent, parent_model, parent_header, cfg, target, provenance)
    return (
        yield from iter_train_version(
            cfg,
            slides,
            target,
            init=init,
            parent=parent,
            provenance=provenance,
            held_out_fraction=held_out_fraction,
            held_out_slides=held_out_slides,
            save_on_stop=False,
            stop=stop,
        )
    )


train_slides = eager(iter_train_slides)


def paused_run(out: str | Path) -> int | None:
    """The step a stopped or interrupted training into ``out`` reached (``None``: none waits).

    A run folder ``<out stem>.run`` with a checkpoint and no ``out`` file is resumed by
    :func:`iter_train_slides` with the same ``out``; the GUI offers "Resume" then.
    """
    target = Path(out)
    run_dir = run_dir_of(target)
    state = run_dir / "last.safetensors"
    if target.exists() or not (run_dir / "last.state.safetensors").is_file():
        return None
    try:
        steps = read_header(state).training.get("steps")
    except MsunetError:
        return None
    return int(steps) if isinstance(steps, int) else None


def _class_scheme(
    parent: Path, header: ModelHeader, slides: Sequence[SlideSpec], mode: str
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """The new version's class names and colours (see the module docstring).

    Raises
    ------
    AnnotationError
        With ``mode="keep"``, an annotation class the parent lacks: the message names the
        file, the classes and the two ways to learn them.
    """
    found: dict[str, tuple[int, int, int]] = {}
    old = header.class_names
    new_classes: list[str] = []
    for spec in slides:
        classes = annotation_classes(spec.annotation)
        for c in classes:
            found.setdefault(c.name, c.color)
        unknown = [c.name for c in classes if c.name not in old and c.name != old[0]]
        new_classes += [n for n in unknown if n not in new_classes]
        if mode == "keep" and unknown:
            raise AnnotationError(
                spec.annotation,
                f"its classes {brief(unknown)} are not among the model's {brief(list(old))} "
                f"({parent.name}). To learn them from this model, add them to its classes "
                "(msunet finetune --classes add; Fine-tune: 'Add classes') or replace its "
                "classes with the annotations' (--classes replace)",
            )
    if mode == AUTO_CLASSES:
        # only the parent's classes: keep; only new ones: the lab's own scheme replaces the
        # parent's; both: the new ones are added
        known = [n for n in found if n in old[1:]]
        mode = "keep" if not new_classes else "add" if known else "replace"
        if new_classes:
            what = (
                f"besides its classes {brief(list(old[1:]))} (classes 'add')"
                if known
                else f"instead of its classes {brief(list(old[1:]))} (classes 'replace'; "
                "'add' keeps them too)"
            )
            warnings.warn(
                f"{brief(new_classes)} are new to {parent.name}: learning them {what}",
                FinetuneWarning,
                stacklevel=4,
            )
    names = class_scheme(old, list(found), mode)
    theirs = dict(zip(old, header.class_colours or (), strict=False))
    colours = tuple(theirs.get(n) or found.get(n) or default_color(i) for i, n in enumerate(names))
    return names, colours


def start_model(
    parent: Path,
    model: SegmentationModel,
    header: ModelHeader,
    cfg: TrainConfig,
    target: Path,
    provenance: dict[str, Any],
) -> Path:
    """The start model of a version of ``parent`` with ``cfg``'s classes.

    The parent file itself when the classes are the same, else the parent with its class
    head rebuilt (``init.safetensors`` in the run folder; the mapping goes into
    ``provenance``). Either way ``provenance["parent"]`` is the file the user chose, not a
    rebuilt start.
    """
    init = parent
    if cfg.class_names != header.class_names:
        init, provenance["class_mapping"] = _transferred_start(
            model, header, cfg, run_dir_of(target)
        )
    provenance["parent"] = {"path": str(parent), "training": header.training}
    return init


def _transferred_start(
    parent: SegmentationModel, header: ModelHeader, cfg: TrainConfig, run_dir: Path
) -> tuple[Path, dict[str, str | None]]:
    """Write ``run_dir/init.safetensors``: the parent with a head for ``cfg``'s classes.

    Its new head rows are drawn from ``cfg.seed``, so a rerun after an interrupt (which
    resumes from the checkpoint anyway) and a rerun from scratch start alike.
    """
    torch.manual_seed(cfg.seed)
    child, mapping = with_classes(parent, header.class_names, cfg.class_names)
    run_dir.mkdir(parents=True, exist_ok=True)
    start = dataclasses.replace(
        header,
        config=child.config,
        class_names=cfg.class_names,
        class_colours=cfg.class_colours,
        training={**header.training, "class_mapping": mapping},
    )
    path = save_model(run_dir / INIT_NAME, child, start, overwrite=True)
    return path, mapping


def _check_annotation(spec: SlideSpec, cfg: TrainConfig) -> None:
    """Open ``spec``'s annotation as training will; refuse or warn when it marks nothing.

    Without corrected regions the whole annotation counts, so an empty one teaches "no gland
    anywhere on this slide": far more often a forgotten annotation or the wrong file than a
    slide without glands, and minutes of training would make the model worse without a word.
    With regions, an empty annotation says "nothing in these regions" (the model's false
    positives removed), which is a real correction: it goes ahead with a warning.
    """
    if check_annotation(spec, cfg.mpp, cfg.class_names):
        return
    classes = ", ".join(cfg.class_names[1:4]) + (", ..." if len(cfg.class_names) > 4 else "")
    if spec.regions is None:
        raise AnnotationError(
            spec.annotation,
            f"marks no {classes} anywhere on {spec.slide.name}: fine-tuning on it would teach "
            "the model that the slide has none. Annotate the slide (or give the right file); "
            "if the slide truly has none, draw the areas you checked as corrected regions "
            "(--regions) and fine-tune again",
        )
    warnings.warn(
        f"{spec.annotation}: marks no {classes} anywhere; fine-tuning teaches the model that "
        f"the corrected regions of {spec.slide.name} ({spec.regions.name}) hold none",
        FinetuneWarning,
        stacklevel=3,
    )


def _remove_run(run_dir: Path) -> None:
    """Delete the trainer's files in ``run_dir``, then the folder if nothing else is there."""
    for name in (*RUN_FILES, INIT_NAME):
        (run_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # something else lives there: leave it
        run_dir.rmdir()


def _favour_regions(spec: SlideSpec, cfg: TrainConfig, pos: list) -> list:
    """Repeat the positions that touch corrected regions so they fill half the samples."""
    from napari_msunet.io.geojson import read_geojson
    from napari_msunet.io.slide import open_slide
    from napari_msunet.io.working_image import working_geometry

    with open_slide(spec.slide) as slide:
        g = working_geometry(slide, cfg.mpp, spec.mpp)
        regions = read_geojson(spec.regions, slide_shape=slide.shape)
    dy, dx = g.downsample
    boxes = [a.geometry.bounds for a in regions]  # (minx, miny, maxx, maxy) level-0
    p = cfg.patch

    def touches(y: int, x: int) -> bool:
        y0, x0, y1, x1 = y * dy, x * dx, (y + p) * dy, (x + p) * dx
        return any(bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0 for bx0, by0, bx1, by1 in boxes)

    inside = [q for q in pos if touches(*q)]
    if not inside:
        raise ConfigError(f"{spec.regions}: no corrected region lies on the slide's tissue")
    reps = max(1, round((len(pos) - len(inside)) / len(inside)))
    return pos + inside * reps
