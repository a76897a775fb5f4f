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
class mapping. The rebuilt start model is ``init.safetensors`` in the run folder. The
default ``classes="auto"`` keeps the parent's classes when the annotations use only those,
replaces them when the annotations use only new ones and adds the new ones when both,
saying so in a :class:`FinetuneWarning`; with
``classes="keep"`` an annotation class the parent lacks is refused, naming both ways.

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

import dataclasses
from collections.abc import Generator, Sequence
from pathlib import Path

from napari_msunet.errors import ConfigError, MsunetError
from napari_msunet.models.checkpoint import load_model, read_header
from napari_msunet.progress import Progress, Stop, eager
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.held_out import FRACTION
from napari_msunet.training.losses import LossConfig
from napari_msunet.training.slide_dataset import SlideSpec
from napari_msunet.training.slide_training import (
    INIT_NAME,
    FinetuneWarning,
    VersionResult,
    _class_scheme,
    iter_train_version,
    sha256_of,
    slides_record,
    start_model,
)

__all__ = [
    "INIT_NAME",
    "FinetuneResult",
    "FinetuneWarning",
    "finetune",
    "interrupted_version",
    "iter_finetune",
    "next_version_path",
]

FinetuneResult = VersionResult
"""What a fine-tune finished with (:class:`~.slide_training.VersionResult`)."""


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
    classes: str = "auto",
    held_out_fraction: float = FRACTION,
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
                "parent_sha256": sha256_of(parent),
                "slides": slides_record(slides),
                "settings": [steps, lr, batch_size, seed],
                "classes": classes,
                "held_out_fraction": held_out_fraction,
            }
        found = {
            "parent_sha256": training.get("parent_sha256"),
            "slides": training.get("slides"),
            "settings": [config.get(k) for k in ("steps_per_epoch", "lr", "batch_size", "seed")],
            "classes": training.get("classes", "keep"),
            "held_out_fraction": training.get("held_out_fraction", FRACTION),
        }
        if found == wanted:
            return target
    return None


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
    classes: str = "auto",
    held_out_fraction: float = FRACTION,
    held_out_slides: Sequence[SlideSpec] = (),
    stop: Stop = None,
) -> Generator[Progress, None, FinetuneResult]:
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
        ``"auto"`` (default: ``"keep"`` when the annotations use only the parent's classes,
        ``"replace"`` when only new ones, else ``"add"``; a :class:`FinetuneWarning` names
        the new classes and the choice), ``"keep"``
        (the parent's classes; the annotations must use them), ``"add"`` (the parent's and
        the annotations' new ones) or ``"replace"`` (background and the annotations'
        classes); see the module docstring.
    held_out_fraction, held_out_slides
        What is kept out of training and scored, parent against version
        (:func:`~napari_msunet.training.held_out.choose_held_out`); a slide's own choice is
        its ``SlideSpec.held_out`` GeoJSON.
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
        out = interrupted_version(
            parent.parent,
            parent,
            slides,
            **settings,
            classes=classes,
            held_out_fraction=held_out_fraction,
        )
    target = Path(out) if out is not None else next_version_path(parent)
    if steps < 1:
        raise ConfigError(f"steps must be positive, got {steps}")
    scheme = _class_scheme(parent, parent_header, slides, classes)
    corrected = any(s.regions is not None for s in slides)
    cfg = _config(parent, steps, lr, batch_size, seed, device, corrected, scheme)
    provenance = {
        "kind": "fine-tune",
        "parent_sha256": sha256_of(parent),
        "slides": slides_record(slides),
        "classes": classes,
        "held_out_fraction": held_out_fraction,
    }
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
            stop=stop,
        )
    )


finetune = eager(iter_finetune)
