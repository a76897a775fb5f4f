"""Fine-tuning a model file on corrected annotations; saves a new model version.

The pathologist corrected some regions of a slide. There the annotation is trusted: it counts
fully in the cross-entropy (with fuzzy boundaries). Everywhere else the annotation is left out
(the ignore label) and the slide contributes only through the bootstrap term, i.e. the model's
own confident predictions (paper, section III.C-D). Without corrected regions the whole
annotation counts.

The result is a *new* file next to the parent (``<stem>-ft1.safetensors``, ``-ft2`` ...),
never an overwrite, with the parent's path and checksum in its header. The trainer's
checkpoints go to ``<stem>-ftN.run/`` beside it.

Classes the parent does not have (a pathologist's germinal centre and sinus, from a model
that knows gland) are learnt with ``classes="add"`` (the parent's classes plus the new ones)
or ``classes="replace"`` (background plus the annotation's classes): the encoder and decoder
are transferred and the class head rebuilt (:mod:`napari_msunet.models.transfer`); names
and colours come from the annotation's classification, and the version's header records the
class mapping. The rebuilt start model is ``init.safetensors`` in the run folder. With the
default ``classes="keep"`` an annotation class the parent lacks is refused, naming both
ways.

Stopping and closing (the rule is the core's, so the CLI and the GUI agree):

- ``stop`` after at least one step: the steps done so far become the new version (its header
  records how many), and the result says ``stopped``.
- ``stop`` before the first step: nothing was learnt, so no version is written and the empty
  run folder is removed; the result has ``model=None`` and ``steps=0``. A model version
  always differs from its parent.
- ``close()`` (Ctrl-C in the CLI), an error, or a kill: no version is written; the run folder
  keeps its last checkpoint (written on the interrupt or the error, and every few minutes, so
  that a kill loses little). Calling again with the same ``out`` resumes it at that step, and
  so does calling again *without* ``out`` with the same parent, slides and settings
  (:func:`interrupted_version` finds the run): a rerun finishes the interrupted version rather
  than starting ``-ft(N+1)`` and leaving ``-ftN.run`` behind. No model file is ever half
  written: every one is written to a temporary sibling and renamed when complete.

What is read before the first step, so that a mistake is told before minutes of training:

- every annotation, opened as training reads it: a mask must have exactly the size of one
  of the slide's levels or of its working image (never stretched), and values the model has
  classes for (a binary 0/255 mask marks the one foreground class of a two-class model);
- an annotation that marks no gland anywhere is refused (a pathologist who forgot to
  annotate, or gave the wrong file), unless corrected regions say where the slide was
  checked: then "nothing here" is a correction, fine-tuned with a :class:`FinetuneWarning`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset

from napari_msunet.errors import AnnotationError, ConfigError, MsunetError, brief
from napari_msunet.io.annotations import default_color
from napari_msunet.models.base import SegmentationModel
from napari_msunet.models.checkpoint import ModelHeader, load_model, read_header, save_model
from napari_msunet.models.transfer import class_scheme, with_classes
from napari_msunet.progress import Stop, eager
from napari_msunet.training.augment import context_size
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.losses import LossConfig
from napari_msunet.training.slide_dataset import (
    SlidePatchDataset,
    SlideSpec,
    annotation_classes,
    check_annotation,
    patch_positions,
)
from napari_msunet.training.trainer import RUN_FILES, EpochEnd, TrainStep, iter_train

__all__ = [
    "FinetuneResult",
    "FinetuneWarning",
    "finetune",
    "interrupted_version",
    "iter_finetune",
    "next_version_path",
]


INIT_NAME = "init.safetensors"
"""The start model of a fine-tune to other classes, in its run folder."""


class FinetuneWarning(UserWarning):
    """Fine-tuning goes ahead on inputs that are legitimate but often a mistake."""


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tune finished with.

    Attributes
    ----------
    model
        The new model version; ``None`` when the run was stopped before its first step
        (then nothing was written: a version that trained zero steps would only copy its
        parent).
    run_dir
        The trainer's checkpoint folder (``<version>.run``); ``None`` with ``model``.
    steps
        Steps trained (0 exactly when ``model`` is ``None``).
    stopped
        Whether ``stop`` ended the run before its planned steps.
    """

    model: Path | None
    run_dir: Path | None
    steps: int
    stopped: bool


def next_version_path(parent: Path) -> Path:
    """``<stem>-ftN.safetensors`` next to ``parent`` with the first free ``N``."""
    stem = parent.name.removesuffix(".safetensors")
    base = (
        stem.rsplit("-ft", 1)[0] if "-ft" in stem and stem.rsplit("-ft", 1)[1].isdigit() else stem
    )
    n = 1
    while (parent.with_name(f"{base}-ft{n}.safetensors")).exists() or parent.with_name(
        f"{base}-ft{n}.run"
    ).exists():
        n += 1
    return parent.with_name(f"{base}-ft{n}.safetensors")


def interrupted_version(
    folder: Path,
    parent: Path,
    slides: Sequence[SlideSpec],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    classes: str = "keep",
    **_: object,
) -> Path | None:
    """The version an interrupted fine-tune of ``parent`` in ``folder`` was writing, if any.

    A run folder ``<stem>-ftN.run`` with a checkpoint but no ``<stem>-ftN.safetensors`` is a
    fine-tune that was closed, failed or killed. When it was made from the same parent (same
    checksum) on the same slides and annotations with the same settings, running again
    should finish it: its target is returned, and :func:`iter_finetune` with that ``out``
    resumes at the checkpoint's step. Anything else (other settings, another parent) is
    left alone and ``None`` returned: a new version is started.

    Extra keyword arguments (``device``) are accepted and ignored: the device does not change
    what is learnt, only how fast.
    """
    wanted = None
    for run_dir in sorted(folder.glob("*-ft*.run")):
        target = run_dir.with_name(run_dir.name.removesuffix(".run") + ".safetensors")
        state = run_dir / "last.state.safetensors"
        if target.exists() or not state.is_file():
            continue
        try:
            training = read_header(run_dir / "last.safetensors").training
        except MsunetError:
            continue
        if not isinstance(training, dict) or training.get("kind") != "fine-tune":
            continue
        config = training.get("config") if isinstance(training.get("config"), dict) else {}
        if wanted is None:
            wanted = {
                "parent_sha256": _sha256(parent),
                "slides": _slides_record(slides),
                "settings": [steps, lr, batch_size, seed],
                "classes": classes,
            }
        found = {
            "parent_sha256": training.get("parent_sha256"),
            "slides": training.get("slides"),
            "settings": [config.get(k) for k in ("steps_per_epoch", "lr", "batch_size", "seed")],
            "classes": training.get("classes", "keep"),
        }
        if found == wanted:
            return target
    return None


def _slides_record(slides: Sequence[SlideSpec]) -> list[dict[str, str | None]]:
    """How a version's header records its slides (and :func:`interrupted_version` compares)."""
    return [
        {
            "slide": str(s.slide),
            "annotation": str(s.annotation),
            "regions": str(s.regions) if s.regions else None,
        }
        for s in slides
    ]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _config(
    parent: Path,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
    corrected: bool,
    classes: tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]] | None = None,
) -> TrainConfig:
    header = read_header(parent)
    names, colours = classes if classes is not None else (header.class_names, header.class_colours)
    base = header.training.get("config") if isinstance(header.training, dict) else None
    cfg = (
        TrainConfig.from_dict(base)
        if base
        else TrainConfig(
            class_names=header.class_names,
            mpp=header.input_um_per_px,
            patch=header.tile_size or 128,
            norm_mean=header.norm_mean,
            norm_std=header.norm_std,
        )
    )
    loss = LossConfig(
        **{
            **{k: v for k, v in cfg.loss.to_dict().items() if k != "class_weights"},
            "fuzzy_boundary": True,
            "bootstrap_after": 0,
            "bootstrap_unannotated": corrected,
        }
    )
    return dataclasses.replace(
        cfg,
        class_names=names,
        class_colours=colours,
        mpp=header.input_um_per_px,
        norm_mean=header.norm_mean,
        norm_std=header.norm_std,
        epochs=1,
        steps_per_epoch=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        device=device,
        loss=loss,
        num_workers=0,
    )


def iter_finetune(
    model: str | Path,
    slides: Sequence[SlideSpec],
    *,
    steps: int = 300,
    lr: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    device: str = "auto",
    out: str | Path | None = None,
    classes: str = "keep",
    stop: Stop = None,
) -> Generator[TrainStep | EpochEnd, None, FinetuneResult]:
    """Fine-tune ``model`` on ``slides`` for ``steps`` steps; yields the trainer's records.

    Parameters
    ----------
    model
        The parent model file.
    slides
        Slides with their (corrected) annotations; ``SlideSpec.regions`` marks the corrected
        regions (GeoJSON). Patches come from the tissue grid, with patches that touch a
        corrected region drawn as often as all the others together.
    steps, lr, batch_size, seed, device
        Training settings; the rest (loss, augmentation, patch size) come from the parent's
        header, with the fine-tune losses switched on.
    out
        The new model file; defaults to :func:`next_version_path`. Never overwritten.
    classes
        ``"keep"`` (the parent's classes; the annotations must use them), ``"add"`` (the
        parent's and the annotations' new ones) or ``"replace"`` (background and the
        annotations' classes); see the module docstring.
    stop
        A :data:`~napari_msunet.progress.Stop`, checked before each step (see the module
        docstring for what a stop or ``close()`` leaves).

    Returns
    -------
    FinetuneResult
        The new version (``model=None`` when stopped before the first step).
    """
    parent = Path(model)
    parent_model, parent_header = load_model(parent)  # validates the file before any work
    if out is None:  # finish an interrupted run of these settings, else the next version
        settings = {"steps": steps, "lr": lr, "batch_size": batch_size, "seed": seed}
        out = interrupted_version(parent.parent, parent, slides, **settings, classes=classes)
    target = Path(out) if out is not None else next_version_path(parent)
    if target.exists():
        raise ConfigError(f"{target}: already exists; model versions are never overwritten")
    if steps < 1:
        raise ConfigError(f"steps must be positive, got {steps}")
    scheme = _class_scheme(parent, parent_header, slides, classes)
    corrected = any(s.regions is not None for s in slides)
    cfg = _config(parent, steps, lr, batch_size, seed, device, corrected, scheme)
    size = context_size(cfg.patch)
    for spec in slides:
        _check_annotation(spec, cfg)
    parts = []
    for k, spec in enumerate(slides):
        pos = patch_positions(spec, cfg.mpp, cfg.patch, class_names=cfg.class_names, seed=seed + k)
        if spec.regions is not None:
            pos = _favour_regions(spec, cfg, pos)
        if not pos:
            raise ConfigError(f"{spec.slide}: no tissue found, nothing to fine-tune on")
        parts.append(SlidePatchDataset(spec, cfg.mpp, pos, cfg.patch, size, cfg.class_names))
    data = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    run_dir = target.with_name(target.name.removesuffix(".safetensors") + ".run")
    provenance = {
        "kind": "fine-tune",
        "parent_sha256": _sha256(parent),
        "slides": _slides_record(slides),
        "classes": classes,
    }
    init = parent
    if cfg.class_names != parent_header.class_names:
        init, mapping = _transferred_start(parent_model, parent_header, cfg, run_dir)
        provenance["class_mapping"] = mapping
        # the version's parent is the model file the user chose, not the rebuilt start
        provenance["parent"] = {"path": str(parent), "training": parent_header.training}
    result = yield from iter_train(
        cfg, data, None, run_dir, init_model=init, provenance=provenance, stop=stop
    )
    if result.global_step == 0:  # stopped before the first step: nothing to save
        _remove_run(run_dir)
        return FinetuneResult(None, None, 0, result.stopped)
    trained, header = load_model(result.last)
    save_model(target, trained, header)  # atomic; refuses to overwrite
    return FinetuneResult(target, run_dir, result.global_step, result.stopped)


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
    for spec in slides:
        classes = annotation_classes(spec.annotation)
        for c in classes:
            found.setdefault(c.name, c.color)
        unknown = [c.name for c in classes if c.name not in old and c.name != old[0]]
        if mode == "keep" and unknown:
            raise AnnotationError(
                spec.annotation,
                f"its classes {brief(unknown)} are not among the model's {brief(list(old))} "
                f"({parent.name}). To learn them from this model, add them to its classes "
                "(msunet finetune --classes add; Fine-tune: 'Add classes') or replace its "
                "classes with the annotations' (--classes replace)",
            )
    names = class_scheme(old, list(found), mode)
    theirs = dict(zip(old, header.class_colours or (), strict=False))
    colours = tuple(theirs.get(n) or found.get(n) or default_color(i) for i, n in enumerate(names))
    return names, colours


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


finetune = eager(iter_finetune)
