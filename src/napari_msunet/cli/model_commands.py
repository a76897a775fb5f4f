"""``msunet`` commands that run models: predict, evaluate, train, finetune."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import Any

from napari_msunet.cli._drive import drive
from napari_msunet.cli._registry import command, stem
from napari_msunet.errors import ConfigError, MsunetError


def _domain_warning(model: Path) -> Any:
    """The engine's warning that a slide looks unlike ``model``'s training data, as a line."""
    from napari_msunet.inference.domain_check import DOMAIN

    def line(record: Any) -> str | None:
        if record.stage != DOMAIN:
            return None
        return f"warning: {record.check.message(model.name)}"

    return line


@command("predict")
def _predict(args: argparse.Namespace) -> int:
    from napari_msunet.inference import InferenceConfig, iter_predict_slide
    from napari_msunet.io.slide import open_slide
    from napari_msunet.models.bundled import bundled_model_path
    from napari_msunet.models.checkpoint import load_model

    if args.model is None:
        args.model = str(bundled_model_path())
        print(f"model: the bundled default model ({args.model}); --model FILE for another")
    model, header = load_model(args.model)
    settings = {
        "target_mpp": args.target_mpp or header.input_um_per_px,
        "device": args.device,
        "tissue": not args.no_tissue,
    }
    for name in ("tile", "margin", "batch_size", "amp"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    config = InferenceConfig(**settings)
    folders = _prediction_folders(args.slides, Path(args.out), args.per_slide)
    if args.scheduler or args.workers:  # the cohort on dask.distributed: one task per slide
        return _predict_cohort(args, folders, config)
    if args.split != 1:
        raise ConfigError("--split spreads slides over dask workers: add --workers or --scheduler")
    failures = 0
    for path, out in zip(args.slides, folders, strict=True):
        try:
            with open_slide(path) as slide:
                # exports: prediction.geojson and prediction.png are written by the engine
                # before its manifest, so a killed run is finished by a plain rerun
                gen = iter_predict_slide(
                    slide, model, header, config, out, mpp=args.mpp, overwrite=args.overwrite,
                    resume=not args.restart, exports=True,
                )  # fmt: skip
                result = drive(gen, Path(path).name, on_record=_domain_warning(Path(args.model)))
                if not result.completed:
                    print(f"{path}: stopped; run again to resume")
                    failures += 1
                    continue
        except MsunetError as exc:
            if len(args.slides) == 1:
                raise
            print(f"msunet predict: error: {exc}", file=sys.stderr)
            failures += 1
            continue
        print(
            f"{path}: {result.shape[1]} x {result.shape[0]} px at {result.mpp:.3g} µm/px, "
            f"{result.tiles_computed} tiles computed ({result.tiles_skipped} without tissue "
            f"skipped, {result.tiles_resumed} resumed), overhead {result.overhead:.2f}, "
            f"{result.timings.get('total', 0):.1f} s on {result.device} -> {out}"
        )
    return 1 if failures else 0


def _predict_cohort(args: argparse.Namespace, folders: list[Path], config: Any) -> int:
    """``msunet predict ... --scheduler ADDRESS`` or ``--workers N``."""
    from napari_msunet.distributed import iter_predict_cohort, write_cohort_report

    stop = threading.Event()  # Ctrl-C: the cohort stops its slides and still reports them
    gen = iter_predict_cohort(
        args.slides, folders, args.model, config, scheduler=args.scheduler,
        workers=args.workers, mpp=args.mpp, overwrite=args.overwrite, restart=args.restart,
        ship_model=args.ship_model, split=args.split, stop=stop,
    )  # fmt: skip
    where = args.scheduler or f"{args.workers} local workers"
    result = drive(gen, f"predict {len(args.slides)} slides on {where}", stop=stop)
    print(result.table())
    report = write_cohort_report(Path(args.out) / "cohort-report.csv", result)
    print(f"cohort report: {report}")
    if stop.is_set():
        raise KeyboardInterrupt  # after the table: "interrupted", exit status 130
    return 0 if all(o.status in ("done", "skipped") for o in result.outcomes) else 1


def _prediction_folders(slides: list[str], out: Path, per_slide: bool) -> list[Path]:
    """The output folder of each slide: ``out`` itself, or ``out/<stem>`` for several.

    Two slides with one name (``a/x.svs`` and ``b/x.svs``) would share ``out/x``: the second
    would find the first's finished prediction there. Refused before any work, naming both.
    """
    if len(slides) == 1 and not per_slide:
        return [out]
    folders = [out / stem(Path(path)) for path in slides]
    first: dict[Path, str] = {}
    for path, folder in zip(slides, folders, strict=True):
        if folder in first:
            raise MsunetError(
                f"{first[folder]} and {path} would both write their prediction to {folder}: "
                "slides predicted together need different names; predict them in separate "
                "runs with different --out folders"
            )
        first[folder] = path
    return folders


@command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from napari_msunet.evaluation import iter_evaluate

    gen = iter_evaluate(
        args.pred,
        args.truth,
        out_dir=args.out,
        slide=args.slide,
        ignore_label=args.ignore_label,
        truth_class=args.truth_class,
        region=args.region,
        overwrite=args.overwrite,
    )
    result = drive(gen, "evaluate")
    m = result.metrics
    print(f"{'class':<24} {'IoU':>7} {'Dice':>7}")
    for c in m.classes:
        print(f"{c.name:<24} {c.iou:>7.4f} {c.dice:>7.4f}")
    fg = m.foreground
    print(f"{'foreground':<24} {fg.iou:>7.4f} {fg.dice:>7.4f}")
    for name, path in result.outputs.items():
        print(f"{name}: {path}")
    return 0


@command("train")
def _train(args: argparse.Namespace) -> int:
    from napari_msunet.training.data import build_datasets
    from napari_msunet.training.run_config import load_run_config

    if args.slides and args.config:
        raise MsunetError("give either --config (a run YAML) or --slides, not both")
    if args.slides:
        return _train_slides(args)
    if not args.config:
        raise MsunetError(
            "nothing to train on: give --slides SLIDE... --annotations ANNOTATION... --out "
            "MODEL.safetensors, or --config RUN.yaml"
        )
    run = load_run_config(args.config)
    _check_train_out(Path(run.out), args.overwrite)  # before the (slow) datasets
    train_set, val_set, desc = build_datasets(run)
    print(
        f"training {run.train.architecture} ({run.train.preset}) on {len(train_set)} "
        f"training and {len(val_set) if val_set is not None else 0} validation items -> {run.out}"
    )
    return _run_training(run.train, train_set, val_set, run.out, desc, args, init=None)


def _check_train_out(out: Path, overwrite: bool) -> None:
    """Refuse an ``out:`` folder holding a run's files but no run state, unless ``overwrite``.

    A folder with ``last.safetensors`` and ``last.state.safetensors`` holds a run of ours:
    it is resumed (or, with ``--restart``, started again). Model files or a history without
    that state are someone else's -- a model copied there, a run whose state was deleted --
    and the trainer would replace them; with ``--overwrite`` they are removed first, so that
    the new run's history and ``best`` are its own.
    """
    from napari_msunet.training.trainer import RUN_FILES

    if (out / "last.safetensors").is_file() and (out / "last.state.safetensors").is_file():
        return
    there = [out / name for name in RUN_FILES if (out / name).exists()]
    if not there:
        return
    if not overwrite:
        raise MsunetError(
            f"{there[0]}: exists, and {out} holds no training run to resume (no "
            "last.state.safetensors); training would replace it. Choose another out: folder, "
            f"or pass --overwrite to replace {', '.join(p.name for p in there)}"
        )
    for path in there:
        path.unlink()


def _one_process_only(command: str) -> None:
    """Refuse ``command`` under torchrun: each process would score and write the version."""
    from napari_msunet.training.ddp import Ranks

    if Ranks.from_env().active:
        raise MsunetError(
            f"{command} runs in one process; training on several processes (torchrun) "
            "takes a run YAML for now: msunet train --config RUN.yaml"
        )


@command("finetune")
def _finetune(args: argparse.Namespace) -> int:
    from napari_msunet.training.finetune import iter_finetune

    _one_process_only("msunet finetune")

    specs, held_out_slides = _slide_specs(args)
    gen = iter_finetune(
        args.model,
        specs,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        out=args.out,
        classes=args.classes,
        held_out_fraction=args.held_out_fraction,
        held_out_slides=held_out_slides,
    )
    result = drive(gen, "fine-tune")  # Ctrl-C: the run folder keeps a checkpoint
    if result.model is None:  # only a stop before the first step; the CLI passes none
        print("stopped before the first step: no new model version")
        return 1
    print(f"new model version: {result.model}  (parent {args.model}, {result.steps} steps)")
    print("\n".join(result.score_lines()))
    return 0


def _train_slides(args: argparse.Namespace) -> int:
    """``msunet train --slides ... --annotations ... --out MODEL``: no YAML."""
    from napari_msunet.training.slide_training import iter_train_slides

    _one_process_only("msunet train --slides")
    if not args.out:
        raise MsunetError("--out: give the new model file (e.g. --out lymph-node.safetensors)")
    specs, held_out_slides = _slide_specs(args)
    gen = iter_train_slides(
        specs,
        args.out,
        start=args.start,
        base=args.base,
        preset=args.preset,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        held_out_fraction=args.held_out_fraction,
        held_out_slides=held_out_slides,
    )
    base = "random weights" if args.start == "scratch" else (args.base or "the bundled model")
    print(f"training {args.out} from {base} on {len(specs)} slide(s), {args.steps} steps")
    result = drive(gen, Path(args.out).name)  # Ctrl-C: the run folder keeps a checkpoint
    if result.model is None:
        print("stopped before the first step: no model written")
        return 1
    print(f"new model: {result.model}  ({result.steps} steps; run folder {result.run_dir})")
    print("\n".join(result.score_lines()))
    return 0


def _slide_specs(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """The training slides and the held-out slides of ``--slides``/``--annotations``..."""
    from napari_msunet.training.slide_dataset import SlideSpec

    slides, annotations = args.slides or [], args.annotations or []
    if len(annotations) != len(slides):
        raise MsunetError(
            f"{len(slides)} slides but {len(annotations)} annotations: give one "
            "annotation per slide, in the same order"
        )
    regions, held = args.regions or [], args.held_out or []
    for flag, values in (("--regions", regions), ("--held-out", held)):
        if values and len(values) != len(slides):
            raise MsunetError(f"give one {flag} file per slide (or none)")
    specs = [
        SlideSpec(
            Path(s),
            Path(a),
            noisy=args.noisy,
            mpp=args.mpp,
            regions=Path(regions[i]) if regions else None,
            held_out=Path(held[i]) if held else None,
        )
        for i, (s, a) in enumerate(zip(slides, annotations, strict=True))
    ]
    held_slides, held_anns = args.held_out_slides or [], args.held_out_annotations or []
    if len(held_slides) != len(held_anns):
        raise MsunetError(
            f"{len(held_slides)} held-out slides but {len(held_anns)} held-out annotations: "
            "give one --held-out-annotations file per --held-out-slides slide"
        )
    kept_out = [
        SlideSpec(Path(s), Path(a), mpp=args.mpp)
        for s, a in zip(held_slides, held_anns, strict=True)
    ]
    return specs, kept_out


def _epoch_line(rec) -> str | None:
    """The line a validated epoch prints above the bar."""
    from napari_msunet.training.trainer import EpochEnd

    if not isinstance(rec, EpochEnd) or rec.val is None:
        return None
    best = " (best)" if rec.is_best else ""
    return (
        f"epoch {rec.epoch}: val Dice {rec.val.foreground_dice:.4f} "
        f"IoU {rec.val.foreground_iou:.4f}{best}"
    )


def _run_training(cfg, train_set, val_set, out, desc, args, init) -> int:
    import signal
    import threading

    from napari_msunet.progress import run_to_end
    from napari_msunet.training.ddp import Ranks
    from napari_msunet.training.plots import plot_history
    from napari_msunet.training.trainer import iter_train

    domain = desc.pop("domain", None)  # the training data's statistics (io.domain)
    stop = None
    if Ranks.from_env().active:
        # torchrun passes a Ctrl-C on to its processes as SIGTERM: every rank then stops at
        # the same step (training.ddp) and rank 0 writes the checkpoint a rerun resumes
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    gen = iter_train(
        cfg,
        train_set,
        val_set,
        out,
        init_model=init,
        provenance={"data": desc, **({"domain": domain} if domain else {})},
        resume=not args.restart,
        stop=stop,
    )
    if not Ranks.from_env().main:  # under torchrun rank 0 reports (training.ddp)
        run_to_end(gen)
        return 0
    # Ctrl-C closes the generator, which leaves a checkpoint to resume from; a resumed run's
    # bar starts at its step (records count steps of the whole run)
    result = drive(gen, Path(out).name, on_record=_epoch_line)
    if result.stopped:
        print(f"stopped at step {result.global_step}; run the same command to resume")
        return 1
    curves = plot_history(out)
    print(
        f"best model: {result.best}  (val Dice {result.best_score})"
        if result.best
        else f"last model: {result.last}"
    )
    print(f"curves: {curves}")
    return 0


@command("demo")
def _demo(args: argparse.Namespace) -> int:
    import os

    from napari_msunet.demo import iter_demo

    results = drive(
        iter_demo(args.out, model=args.model, device=args.device, overwrite=args.overwrite),
        "demo",
    )
    files, evaluation = results["files"], results["evaluation"]
    fg = evaluation.metrics.foreground
    print(f"slide: {files.slide}  (EBHI-Seg tiles, Shi et al. 2023, CC BY 4.0)")
    print(f"model: {results['model']}")
    print(f"slide-level foreground IoU {fg.iou:.4f}  Dice {fg.dice:.4f}")
    for name, path in evaluation.outputs.items():
        print(f"{name}: {path}")
    no_display = sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    )
    if args.headless or no_display:
        if not args.headless:
            print("no display found: skipping napari (the overlay PNG shows the result)")
        return 0
    from napari_msunet._napari._demo import show_demo

    show_demo(results)
    return 0
