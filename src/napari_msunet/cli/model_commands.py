"""``msunet`` commands that run models: predict, evaluate, train, finetune."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_msunet.cli._drive import drive
from napari_msunet.cli._registry import command, stem
from napari_msunet.errors import MsunetError


@command("predict")
def _predict(args: argparse.Namespace) -> int:
    from napari_msunet.inference import InferenceConfig, iter_predict_slide
    from napari_msunet.inference.preview import prediction_preview
    from napari_msunet.io.slide import open_slide
    from napari_msunet.io.vectorise import export_mask
    from napari_msunet.models.checkpoint import load_model

    model, header = load_model(args.model)
    settings = {
        "target_mpp": args.target_mpp or header.input_um_per_px,
        "device": args.device,
        "tissue": not args.no_tissue,
    }
    for name in ("tile", "margin", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    config = InferenceConfig(**settings)
    out_root = Path(args.out)
    failures = 0
    for path in args.slides:
        out = out_root / stem(Path(path)) if len(args.slides) > 1 or args.per_slide else out_root
        try:
            with open_slide(path) as slide:
                gen = iter_predict_slide(
                    slide, model, header, config, out, mpp=args.mpp, overwrite=args.overwrite
                )
                result = drive(gen, Path(path).name, "tile")
                if not result.completed:
                    print(f"{path}: stopped; run again to resume")
                    failures += 1
                    continue
                labels = result.outputs.labels
                from napari_msunet.io.masks import open_mask

                classes = _classes(header)
                geojson = out / "prediction.geojson"
                export_mask(
                    open_mask(labels).levels[0],
                    geojson,
                    classes,
                    downsample=result.downsample[0],
                    overwrite=args.overwrite,
                )
                preview = prediction_preview(
                    slide, labels, header.class_names, header.class_colours
                )
                preview.save(out / "prediction.png")
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


def _classes(header):
    from napari_msunet.io.annotations import ClassInfo

    return [
        ClassInfo(name, i, tuple(header.class_colours[i]))
        for i, name in enumerate(header.class_names)
        if i > 0
    ]


@command("evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from napari_msunet.evaluation import iter_evaluate

    gen = iter_evaluate(
        args.pred,
        args.truth,
        out_dir=args.out,
        slide=args.slide,
        ignore_label=args.ignore_label,
        region=args.region,
        overwrite=args.overwrite,
    )
    result = drive(gen, "evaluate", "window")
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

    run = load_run_config(args.config)
    train_set, val_set, desc = build_datasets(run)
    print(
        f"training {run.train.architecture} ({run.train.preset}) on {len(train_set)} "
        f"training and {len(val_set) if val_set is not None else 0} validation items -> {run.out}"
    )
    return _run_training(run.train, train_set, val_set, run.out, desc, args, init=None)


@command("finetune")
def _finetune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_msunet.training.finetune import iter_finetune
    from napari_msunet.training.slide_dataset import SlideSpec
    from napari_msunet.training.trainer import TrainStep

    if len(args.annotations) != len(args.slides):
        raise MsunetError(
            f"{len(args.slides)} slides but {len(args.annotations)} annotations: give one "
            "annotation per slide, in the same order"
        )
    regions = args.regions or []
    if regions and len(regions) != len(args.slides):
        raise MsunetError("give one --regions file per slide (or none)")
    specs = [
        SlideSpec(
            Path(s),
            Path(a),
            noisy=args.noisy,
            mpp=args.mpp,
            regions=Path(regions[i]) if regions else None,
        )
        for i, (s, a) in enumerate(zip(args.slides, args.annotations, strict=True))
    ]
    gen = iter_finetune(
        args.model,
        specs,
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        out=args.out,
    )
    bar = tqdm(total=args.steps, unit="step", desc="fine-tune")
    try:
        while True:
            rec = next(gen)
            if isinstance(rec, TrainStep):
                bar.update(1)
                bar.set_postfix(loss=f"{rec.loss:.4f}", bootstrap=f"{rec.bootstrap:.4f}")
    except StopIteration as stop:
        result = stop.value
    except KeyboardInterrupt:
        gen.close()
        raise
    finally:
        bar.close()
    print(f"new model version: {result.model}  (parent {args.model}, {result.steps} steps)")
    return 0


def _run_training(cfg, train_set, val_set, out, desc, args, init) -> int:
    from tqdm import tqdm

    from napari_msunet.training.plots import plot_history
    from napari_msunet.training.trainer import EpochEnd, TrainStep, iter_train

    gen = iter_train(
        cfg,
        train_set,
        val_set,
        out,
        init_model=init,
        provenance={"data": desc},
        resume=not args.restart,
    )
    bar = None
    result = None
    try:
        while True:
            rec = next(gen)
            if isinstance(rec, TrainStep):
                if bar is None:
                    bar = tqdm(total=rec.total_steps, initial=rec.global_step - 1, unit="step")
                bar.update(1)
                bar.set_postfix(epoch=rec.epoch + 1, loss=f"{rec.loss:.4f}")
            elif isinstance(rec, EpochEnd) and rec.val is not None:
                best = " (best)" if rec.is_best else ""
                msg = (
                    f"epoch {rec.epoch}: val Dice {rec.val.foreground_dice:.4f} "
                    f"IoU {rec.val.foreground_iou:.4f}{best}"
                )
                (bar.write if bar else print)(msg)
    except StopIteration as stop:
        result = stop.value
    except KeyboardInterrupt:
        gen.close()  # leaves a checkpoint to resume from
        raise
    finally:
        if bar is not None:
            bar.close()
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

    from tqdm import tqdm

    from napari_msunet.demo import iter_demo

    gen = iter_demo(args.out, model=args.model, device=args.device)
    bar, stage_now, results = None, None, None
    try:
        while True:
            stage, rec = next(gen)
            if stage != stage_now:
                if bar is not None:
                    bar.close()
                bar, stage_now = None, stage
                if rec is None:
                    print(f"{stage}: building the sample slide from the bundled EBHI-Seg tiles")
            if rec is not None:
                if bar is None:
                    bar = tqdm(total=rec.total, desc=stage, unit="step")
                bar.n = rec.done
                bar.refresh()
    except StopIteration as stop:
        results = stop.value
    finally:
        if bar is not None:
            bar.close()
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
