"""The trainer: a generator that yields progress records and returns the run's result.

``for record in iter_train(config, train_set, val_set, out_dir): ...`` -- the CLI drives it
with its tqdm driver, the GUI with its napari worker runner, tests step it directly; ``train``
(same arguments) runs it to the end. Its records are :class:`~napari_msunet.progress.Progress`
subclasses, :class:`TrainStep` after each optimisation step and :class:`EpochEnd` after each
epoch (with its validation scores), both of stage ``"train"`` and counting ``done``/``total``
in steps of the whole run, so a resumed run's bar starts where the last one stopped.

Setting ``stop`` ends the run between two steps: it writes a checkpoint and *returns* a
:class:`TrainResult` with ``stopped=True``. Closing the generator (Ctrl-C in the CLI) writes
the same checkpoint and ends without a result. Either way every model file is complete (each
is written to a temporary sibling and renamed) and running again on the same ``out_dir``
resumes from the checkpoint, at the same step, with the same data order and augmentation.

Files in ``out_dir``: ``last.safetensors`` (model file of the latest state),
``last.state.safetensors`` (optimiser + progress, for resuming), ``best.safetensors`` (best
validation foreground Dice) and ``history.jsonl`` (one line per step and per validation).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from napari_msunet import __version__
from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import ConfigError
from napari_msunet.io._store_lock import folder_lock
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, load_model, save_model
from napari_msunet.models.device import select_device
from napari_msunet.progress import Progress, Stop, eager, stopped
from napari_msunet.training.augment import augment_batch
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.ddp import (
    Ranks,
    device_for,
    from_main,
    mean_over_ranks,
    process_group,
    stop_on_any,
    wrap,
)
from napari_msunet.training.losses import (
    LossConfig,
    class_counts,
    inverse_frequency_weights,
    total_loss,
)
from napari_msunet.training.state import load_state, save_state
from napari_msunet.training.validation import ValScores, validate

__all__ = ["RUN_FILES", "EpochEnd", "TrainResult", "TrainStep", "iter_train", "train"]

CHECKPOINT_EVERY_S = 300.0
"""Seconds of training after which a checkpoint is written mid-epoch (besides each epoch end)."""

RUN_FILES = ("last.safetensors", "last.state.safetensors", "best.safetensors", "history.jsonl")
"""The files a run writes in its ``out_dir`` (see the module docstring)."""


@dataclass(frozen=True, kw_only=True)
class TrainStep(Progress):
    """One optimisation step: ``done`` is the step's number in the run, ``total`` all steps.

    ``stage`` is ``"train"``; ``message`` reads "step 5/100, loss 0.412".

    Attributes
    ----------
    epoch
        0-based epoch of the step.
    step
        1-based step within the epoch.
    loss, wce, bootstrap
        The total loss and its two terms (weighted cross-entropy, bootstrap) for this batch.
    data_wait_s, step_s
        Seconds blocked on the next batch, and the whole step including that wait.
    """

    epoch: int
    step: int
    loss: float
    wce: float
    bootstrap: float
    data_wait_s: float
    step_s: float


@dataclass(frozen=True, kw_only=True)
class EpochEnd(Progress):
    """The end of an epoch (after its validation): ``done`` steps of ``total`` are finished.

    ``stage`` is ``"train"`` too: ``done``/``total`` count the run's steps, the unit of that
    stage (validation yields no records of its own), and one bar serves the whole run; tell
    the two records apart with ``isinstance``. ``message`` reads "epoch 2 done, validation
    Dice 0.912" (or "epoch 2 done" when the epoch was not validated).

    Attributes
    ----------
    epoch
        Epochs finished (1-based: the first epoch's end says 1).
    val
        The validation scores, ``None`` when this epoch was not validated.
    is_best
        Whether ``val`` is the best so far (``best.safetensors`` was just written).
    checkpoint
        The model file of this state (``last.safetensors``).
    """

    epoch: int
    val: ValScores | None
    is_best: bool
    checkpoint: Path


@dataclass(frozen=True)
class TrainResult:
    """What a run finished with.

    Attributes
    ----------
    best
        ``best.safetensors`` (best validation foreground Dice), ``None`` without validation.
    last
        ``last.safetensors``: the model of the latest state, always complete.
    stopped
        Whether ``stop`` ended the run before its last step (a rerun resumes it).
    global_step
        Steps trained in all, earlier (resumed) runs on the same folder included.
    best_score
        The best validation foreground Dice, ``None`` without validation.
    history
        One dict per validation (epoch and scores), resumed runs included.
    """

    best: Path | None
    last: Path
    stopped: bool
    global_step: int
    best_score: float | None
    history: list[dict[str, Any]] = field(default_factory=list)


class _EpochSampler(Sampler[int]):
    """A permutation drawn from ``(seed, epoch)``, optionally starting part-way (resume).

    ``share=(rank, world, batch)``: this process's ``batch`` items of every global batch of
    ``batch x world`` items (``start`` and ``length`` then count global items; see
    :mod:`.ddp`).
    """

    def __init__(
        self,
        n: int,
        seed: int,
        epoch: int,
        start: int,
        length: int,
        share: tuple[int, int, int] = (0, 1, 0),
    ) -> None:
        self.order = np.random.default_rng((seed, epoch)).permutation(n)
        reps = math.ceil(length / max(n, 1))
        self.order = np.concatenate([self.order] * reps)[start:length]
        rank, world, batch = share
        if world > 1:
            whole = len(self.order) // (batch * world) * batch * world
            self.order = self.order[:whole].reshape(-1, world, batch)[:, rank].ravel()

    def __iter__(self):
        return iter(int(i) for i in self.order)

    def __len__(self) -> int:
        return len(self.order)


def _class_weights(config: TrainConfig, dataset: Dataset) -> tuple[float, ...] | None:
    if config.class_weights is None:
        return None
    if config.class_weights != "auto":
        return tuple(config.class_weights)
    n = min(len(dataset), 512)  # a sample is enough for frequencies
    idx = np.random.default_rng(config.seed).choice(len(dataset), size=n, replace=False)
    counts = class_counts(
        (dataset[int(i)]["mask"] for i in idx), config.n_classes, config.loss.ignore_index
    )
    return tuple(float(w) for w in inverse_frequency_weights(counts))


def _header(config: TrainConfig, model, training: dict[str, Any]) -> ModelHeader:
    return ModelHeader.for_model(
        model,
        class_names=config.class_names,
        class_colours=config.class_colours,
        input_um_per_px=config.mpp,
        norm_mean=config.norm_mean,
        norm_std=config.norm_std,
        tile_size=config.patch,
        training=training,
    )


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def iter_train(
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset | None,
    out_dir: str | Path,
    *,
    init_model: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
    resume: bool = True,
    stop: Stop = None,
) -> Generator[TrainStep | EpochEnd, None, TrainResult]:
    """Train (or fine-tune, with ``init_model``) and yield progress; see the module docstring.

    Parameters
    ----------
    config
        All settings.
    train_set
        Items ``{"image": uint8 (3, S, S), "mask": (S, S), "noisy": bool}`` where ``S`` is
        :func:`~napari_msunet.training.augment.context_size` ``(config.patch)`` when rotating.
    val_set
        Whole images ``{"image", "mask"}`` for slide/dataset-level IoU and Dice, or ``None``.
    out_dir
        Where checkpoints go; an existing run there is resumed (``resume=True``). The run
        holds ``out_dir/train.lock`` while it works: a second run into the same folder (from
        another program, or another task of this one) is refused at start, naming it.
    init_model
        Model file to start from (fine-tuning); its architecture and classes are kept.
    provenance
        Extra provenance for the model header (data paths, parent model, ...).
    resume
        Continue the run found in ``out_dir``; ``False`` starts again at step 0 from
        ``init_model`` or a new model.
    stop
        A :data:`~napari_msunet.progress.Stop` (the GUI's Cancel), checked before each step:
        the run then writes a checkpoint and returns with ``stopped=True``. Closing the
        generator also writes the checkpoint, then ends without a result.

    Returns
    -------
    TrainResult
        The model files and scores; ``stopped`` says whether ``stop`` ended it early.

    Raises
    ------
    WriterError
        Another run writes ``out_dir``.
    ConfigError
        Settings that do not fit the model (classes, patch size).
    """
    # under torchrun only rank 0 writes the folder (training.ddp), so only it holds the lock
    main = Ranks.from_env().main
    with folder_lock(out_dir, "train.lock") if main else contextlib.nullcontext():
        return (
            yield from _iter_train_unlocked(
                config,
                train_set,
                val_set,
                out_dir,
                init_model=init_model,
                provenance=provenance,
                resume=resume,
                stop=stop,
            )
        )


def _iter_train_unlocked(
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset | None,
    out_dir: str | Path,
    *,
    init_model: str | Path | None = None,
    provenance: Mapping[str, Any] | None = None,
    resume: bool = True,
    stop: Stop = None,
) -> Generator[TrainStep | EpochEnd, None, TrainResult]:
    """:func:`iter_train` without the folder lock (its caller holds it)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranks = Ranks.from_env()  # several processes under torchrun (training.ddp)
    device = device_for(ranks, select_device(config.device))
    with process_group(ranks, device):
        return (
            yield from _train_in_group(
                config,
                train_set,
                val_set,
                out,
                ranks,
                device,
                init_model=init_model,
                provenance=provenance,
                resume=resume,
                stop=stop,
            )
        )


def _train_in_group(
    config: TrainConfig,
    train_set: Dataset,
    val_set: Dataset | None,
    out: Path,
    ranks: Ranks,
    device: torch.device,
    *,
    init_model: str | Path | None,
    provenance: Mapping[str, Any] | None,
    resume: bool,
    stop: Stop,
) -> Generator[TrainStep | EpochEnd, None, TrainResult]:
    """The training loop, in the process group when there is one (see :mod:`.ddp`)."""
    torch.manual_seed(config.seed)
    parent = None
    if init_model is not None:
        model, parent_header = load_model(init_model, device="cpu")
        if tuple(parent_header.class_names) != config.class_names:
            raise ConfigError(
                f"{init_model}: the model's classes {list(parent_header.class_names)} differ "
                f"from the configured {list(config.class_names)}"
            )
        parent = {"path": str(init_model), "training": parent_header.training}
    else:
        model = build_model(
            config.architecture,
            preset=config.preset,
            n_classes=config.n_classes,
            **config.model_overrides,
        )
    if config.patch % model.downsampling_factor:
        raise ConfigError(
            f"patch {config.patch} must be a multiple of the model's downsampling factor "
            f"{model.downsampling_factor}"
        )
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_cfg = config.loss
    weights = _class_weights(config, train_set)
    if weights is not None:
        loss_cfg = LossConfig(**{**loss_cfg.__dict__, "class_weights": weights})
    global_batch = config.batch_size * ranks.world  # batch_size is per process
    steps_per_epoch = config.steps_per_epoch or math.ceil(len(train_set) / global_batch)
    total_steps = steps_per_epoch * config.epochs
    progress: dict[str, Any] = {
        "epoch": 0,
        "step": 0,
        "global_step": 0,
        "best": None,
        "world": ranks.world,  # processes of the run: a resume needs as many (training.ddp)
    }
    history: list[dict[str, Any]] = []
    last, state_path, best = out / "last.safetensors", out / "last.state.safetensors", None
    resuming = bool(from_main(resume and last.exists() and state_path.exists(), ranks))
    if resuming:
        saved, _ = load_model(last, device="cpu")
        model.load_state_dict(saved.state_dict())
        model.to(device)
        progress = load_state(state_path, optimizer)
        saved_world = int(progress.get("world", 1))
        if saved_world != ranks.world:
            raise ConfigError(
                f"{out}: the run was saved with {saved_world} process(es) and resumed with "
                f"{ranks.world}: the data order would change; resume it with "
                f"{saved_world}, or start again with --restart"
            )
        if (out / "best.safetensors").exists() and progress["best"] is not None:
            best = out / "best.safetensors"
    elif ranks.main:
        # a new run (or --restart): the files of an earlier run here are not this run's; a
        # stale best.safetensors would be returned as this run's best without validation
        (out / "best.safetensors").unlink(missing_ok=True)
    history = _start_history(out / "history.jsonl", progress) if ranks.main else []
    net = wrap(model, ranks, device)  # DDP under torchrun, else the model itself

    def provenance_dict() -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "class_weights": list(weights) if weights else None,
            "steps": progress["global_step"],
            "epochs_done": progress["epoch"],
            "best_val_foreground_dice": progress["best"],
            "parent": parent,
            "package_version": __version__,
            **dict(provenance or {}),
        }

    saved = {"step": progress["global_step"], "at": time.monotonic()}

    def checkpoint() -> Path:
        if not ranks.main:  # rank 0 writes the run's files (training.ddp)
            return last
        training = model.training
        save_model(last, model.eval(), _header(config, model, provenance_dict()), overwrite=True)
        save_state(state_path, optimizer, progress)
        model.train(training)
        saved.update(step=progress["global_step"], at=time.monotonic())
        return last

    # line by line: a kill loses none; only rank 0 logs under torchrun
    log_path = out / "history.jsonl" if ranks.main else Path(os.devnull)
    log = log_path.open("a", buffering=1)
    started = time.perf_counter()
    halted = False
    updating = False  # True while the weights and progress are between two consistent states
    try:
        while progress["epoch"] < config.epochs:
            epoch = progress["epoch"]
            loader = DataLoader(
                train_set,
                batch_size=config.batch_size,
                sampler=_EpochSampler(
                    len(train_set),
                    config.seed,
                    epoch,
                    progress["step"] * global_batch,
                    steps_per_epoch * global_batch,
                    share=(ranks.rank, ranks.world, config.batch_size),
                ),
                num_workers=config.num_workers,
                drop_last=True,
                pin_memory=device.type == "cuda",
            )
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            net.train()
            it = iter(loader)
            while progress["step"] < steps_per_epoch:
                if stop_on_any(stopped(stop), ranks, device):
                    halted = True
                    break
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                t1 = time.perf_counter()
                gen = torch.Generator().manual_seed(  # rank 0 of 1: the one-process seed
                    config.seed * 1_000_003 + progress["global_step"] + 7919 * ranks.rank
                )
                images = batch["image"].to(device, non_blocking=True)
                masks = batch["mask"].to(device, non_blocking=True).long()
                images, masks = augment_batch(images, masks, config.patch, config.augment, gen)
                mean = torch.tensor(config.norm_mean, device=device).view(1, 3, 1, 1)
                std = torch.tensor(config.norm_std, device=device).view(1, 3, 1, 1)
                with _autocast(device, config.amp):
                    logits = net((images - mean) / std)
                terms = total_loss(
                    logits.float(),
                    masks,
                    loss_cfg,
                    epoch=epoch + 1,
                    noisy=batch["noisy"].to(device) if "noisy" in batch else None,
                )
                optimizer.zero_grad(set_to_none=True)
                terms.total.backward()
                for group in optimizer.param_groups:  # the schedule's rate for this step
                    group["lr"] = config.lr_at(progress["global_step"], total_steps)
                updating = True
                optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t2 = time.perf_counter()
                progress["step"] += 1
                progress["global_step"] += 1
                updating = False
                loss, wce, bootstrap = mean_over_ranks(
                    [float(terms.total.detach()), float(terms.wce.detach()),
                     float(terms.bootstrap.detach())], ranks, device,
                )  # fmt: skip
                rec = TrainStep(
                    done=progress["global_step"],
                    total=total_steps,
                    stage="train",
                    message=f"step {progress['global_step']}/{total_steps}, loss {loss:.3f}",
                    elapsed_s=t2 - started,
                    epoch=epoch,
                    step=progress["step"],
                    loss=loss,
                    wce=wce,
                    bootstrap=bootstrap,
                    data_wait_s=t1 - t0,
                    step_s=t2 - t0,
                )
                log.write(json.dumps(_history_line(rec)) + "\n")
                if time.monotonic() - saved["at"] > CHECKPOINT_EVERY_S:
                    checkpoint()  # a kill mid-epoch (a long fine-tune is one epoch) loses little
                yield rec
            if halted:
                break
            # end of epoch
            progress["epoch"] += 1
            progress["step"] = 0
            scores = None
            is_best = False
            ep = progress["epoch"]
            due = ep % config.validate_every == 0 or ep == config.epochs
            if val_set is not None and due and ranks.main:
                scores = validate(model, val_set, config, device)
                score = scores.foreground_dice
                if progress["best"] is None or score > progress["best"]:
                    progress["best"], is_best = score, True
                log.write(json.dumps({"type": "val", "epoch": ep, **scores.to_dict()}) + "\n")
                history.append({"epoch": ep, **scores.to_dict()})
            log.flush()
            path = checkpoint()
            if is_best and ranks.main:
                best = out / "best.safetensors"
                save_model(best, model, _header(config, model, provenance_dict()), overwrite=True)
            text = f"epoch {ep} done"
            if scores is not None:
                text += f", validation Dice {scores.foreground_dice:.3f}"
            yield EpochEnd(
                done=progress["global_step"],
                total=total_steps,
                stage="train",
                message=text,
                elapsed_s=time.perf_counter() - started,
                epoch=ep,
                val=scores,
                is_best=is_best,
                checkpoint=path,
            )
    except BaseException as exc:
        # close() at a yield, Ctrl-C inside a step (a caller driving this generator without
        # the CLI's deferred interrupt), or an error (an unreadable tile, a full GPU): the
        # weights and the progress agree unless it fell inside optimizer.step(), where the
        # last checkpoint stands. A failing checkpoint must not hide the first error.
        log.close()
        if not updating and progress["global_step"] > saved["step"]:
            if isinstance(exc, GeneratorExit):
                checkpoint()
            else:
                with contextlib.suppress(Exception):
                    checkpoint()
        raise
    finally:
        if not log.closed:
            log.close()
    if halted:
        checkpoint()
    return TrainResult(
        best=best,
        last=last,
        stopped=halted,
        global_step=progress["global_step"],
        best_score=progress["best"],
        history=history,
    )


def _history_line(rec: TrainStep) -> dict[str, Any]:
    """A step's line in ``history.jsonl``; its keys are a file format (plots, older runs)."""
    return {
        "type": "step",
        "epoch": rec.epoch,
        "step": rec.step,
        "global_step": rec.done,
        "total_steps": rec.total,
        "loss": rec.loss,
        "wce": rec.wce,
        "bootstrap": rec.bootstrap,
        "data_wait_s": rec.data_wait_s,
        "step_s": rec.step_s,
    }


def _start_history(path: Path, progress: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Make ``history.jsonl`` the history of the state being resumed; return its validations.

    A run killed after its last checkpoint logged steps that the resumed run trains again:
    those lines (and any cut short by the kill) are dropped, so every step appears once. A
    new run (``progress`` at step 0) starts an empty history. The file is rewritten
    atomically: a kill now leaves the old history or the new one.
    """
    kept: list[str] = []
    validations: list[dict[str, Any]] = []
    if progress["global_step"] > 0 and path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if not isinstance(rec, dict):
                continue
            if rec.get("type") == "step" and rec.get("global_step", 0) > progress["global_step"]:
                continue
            if rec.get("type") == "val":
                if rec.get("epoch", 0) > progress["epoch"]:
                    continue
                validations.append({k: v for k, v in rec.items() if k != "type"})
            kept.append(line)
    if kept or path.exists():
        text = "".join(line + "\n" for line in kept)
        atomic_write_bytes(path, text.encode("utf-8"), overwrite=True)
    return validations


train = eager(iter_train)
