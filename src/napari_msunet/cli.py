"""The ``msunet`` command line: the headless face of the same engine the napari plugin drives.

Every command turns :class:`~napari_msunet.errors.MsunetError` into a one-line message on
stderr and exit status 2, so scripts can tell bad input from a crash.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_msunet import __version__
from napari_msunet.errors import MsunetError

_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def _command(name: str):
    def register(fn: Callable[[argparse.Namespace], int]):
        _COMMANDS[name] = fn
        return fn

    return register


@_command("info")
def _info(args: argparse.Namespace) -> int:
    from napari_msunet.io.slide import open_slide

    for path in args.slides:
        with open_slide(path) as slide:
            record = {
                "path": str(slide.path),
                "format": slide.format,
                "width": slide.shape[1],
                "height": slide.shape[0],
                "mpp": slide.mpp,
                "mpp_source": slide.mpp_source,
                "magnification": slide.magnification,
                "pyramidal": slide.pyramidal,
                "levels": [
                    {"height": h, "width": w, "downsample": round(d, 4), "mpp": m}
                    for (h, w), d, m in zip(
                        slide.level_shapes, slide.downsamples, slide.level_mpp, strict=True
                    )
                ],
                "associated": {k: list(v.shape) for k, v in slide.associated.items()},
            }
        if args.json:
            print(json.dumps(record))
            continue
        mpp = f"{slide.mpp:.4g} µm/px" if slide.mpp else slide.mpp_source
        mag = f", {slide.magnification:g}x" if slide.magnification else ""
        print(f"{slide.path}: {slide.format}, {slide.shape[1]} x {slide.shape[0]} px, {mpp}{mag}")
        for i, lv in enumerate(record["levels"]):
            m = f"{lv['mpp']:.4g} µm/px" if lv["mpp"] else "-"
            print(f"  level {i}: {lv['width']} x {lv['height']}  /{lv['downsample']:g}  {m}")
        for name, shape in record["associated"].items():
            print(f"  {name}: {shape[1]} x {shape[0]}")
    return 0


@_command("synthetic")
def _synthetic(args: argparse.Namespace) -> int:
    from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise MsunetError(f"{out}: already exists (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = SyntheticSlideSpec(args.height or args.size, args.size, seed=args.seed, mpp=args.mpp)
    write_synthetic_slide(out, spec, args.format, tile=args.tile, workers=args.workers)
    geojson = out.with_name(_stem(out) + ".geojson")
    spec.write_geojson(geojson)
    print(f"wrote {out} and its ground truth {geojson}")
    return 0


@_command("rasterize")
def _rasterize(args: argparse.Namespace) -> int:
    from napari_msunet.io.geojson import read_geojson
    from napari_msunet.io.rasterise import rasterise
    from napari_msunet.io.slide import open_slide

    with open_slide(args.slide) as slide:
        level = args.level
        if not 0 <= level < slide.level_count:
            raise MsunetError(f"{args.slide}: has levels 0..{slide.level_count - 1}, not {level}")
        anns = read_geojson(args.annotation, slide_shape=slide.shape)
        mask = rasterise(
            anns,
            slide.shape,
            downsample=slide.downsamples[level],
            level_shape=slide.level_shapes[level],
            chunks=1024,
        )
        mpp = slide.level_mpp[level]
    names = ["background"] + [c.name for c in anns.classes]
    colors = [[0, 0, 0, 0]] + [[*c.color, 255] for c in anns.classes]
    _write_mask(Path(args.out), mask, mpp, names, colors, args.overwrite)
    counts = ", ".join(f"{c.name} = {c.label}" for c in anns.classes) or "no classes"
    print(f"wrote {args.out}: {mask.shape[1]} x {mask.shape[0]} labels ({counts})")
    return 0


def _write_mask(out: Path, mask, mpp, names, colors, overwrite: bool) -> None:
    from napari_msunet.io.ome_tiff import write_ome_tiff
    from napari_msunet.io.ome_zarr import write_ome_zarr

    kw = {"kind": "labels", "mpp": mpp, "class_names": names, "class_colors": colors}
    if out.name.lower().endswith(".zarr"):
        write_ome_zarr(out, mask, overwrite=overwrite, **kw)
    elif out.name.lower().endswith((".tif", ".tiff")):
        write_ome_tiff(out, mask, overwrite=overwrite, **kw)
    else:
        raise MsunetError(f"{out}: output must end in .ome.zarr or .ome.tif")


@_command("export-geojson")
def _export_geojson(args: argparse.Namespace) -> int:
    from napari_msunet.io.masks import open_mask
    from napari_msunet.io.vectorise import export_mask

    mask = open_mask(args.mask)
    downsample = args.downsample
    if downsample is None and args.slide is not None:
        from napari_msunet.io.slide import open_slide

        with open_slide(args.slide) as slide:
            downsample = slide.shape[0] / mask.shape[0]
    classes = mask.classes or None
    out = export_mask(
        mask.levels[0],
        args.out,
        classes,
        downsample or 1.0,
        overwrite=args.overwrite,
        simplify=args.simplify,
    )
    print(f"wrote {out}")
    return 0


def _drive(gen, desc: str, unit: str):
    """Run a progress generator under a tqdm bar; return its result. Ctrl-C closes it."""
    from tqdm import tqdm

    bar = None
    try:
        while True:
            rec = next(gen)
            if bar is None:
                bar = tqdm(total=rec.total, desc=desc, unit=unit)
            bar.n = rec.done
            bar.set_postfix_str(getattr(rec, "message", "") or "", refresh=True)
    except StopIteration as stop:
        return stop.value
    except KeyboardInterrupt:
        gen.close()
        raise
    finally:
        if bar is not None:
            bar.close()


@_command("predict")
def _predict(args: argparse.Namespace) -> int:
    from napari_msunet.inference import InferenceConfig, predict_slide
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
        out = out_root / _stem(Path(path)) if len(args.slides) > 1 or args.per_slide else out_root
        try:
            with open_slide(path) as slide:
                gen = predict_slide(
                    slide, model, header, config, out, mpp=args.mpp, overwrite=args.overwrite
                )
                result = _drive(gen, Path(path).name, "tile")
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


@_command("evaluate")
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
    result = _drive(gen, "evaluate", "window")
    m = result.metrics
    print(f"{'class':<24} {'IoU':>7} {'Dice':>7}")
    for c in m.classes:
        print(f"{c.name:<24} {c.iou:>7.4f} {c.dice:>7.4f}")
    fg = m.foreground
    print(f"{'foreground':<24} {fg.iou:>7.4f} {fg.dice:>7.4f}")
    for name, path in result.outputs.items():
        print(f"{name}: {path}")
    return 0


@_command("train")
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


@_command("finetune")
def _finetune(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_msunet.training.finetune import finetune
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
    gen = finetune(
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
    from napari_msunet.training.trainer import EpochEnd, TrainStep, train

    gen = train(
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


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msunet",
        description="Multi-Scale U-Net segmentation of whole-slide images (napari-msunet).",
    )
    p.add_argument("--version", action="version", version=f"napari-msunet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="describe slides: levels, µm/px, magnification")
    s.add_argument("slides", nargs="+", metavar="SLIDE")
    s.add_argument("--json", action="store_true", help="one JSON record per slide")

    s = sub.add_parser(
        "synthetic",
        help="write a synthetic pyramidal slide and its ground-truth GeoJSON (for tests/demos)",
    )
    s.add_argument("out", metavar="OUT", help="slide file to write (.svs, .ome.tif, .tif, .ndpi)")
    s.add_argument("--size", type=int, default=8192, help="width in pixels (default 8192)")
    s.add_argument("--height", type=int, default=None, help="height (default: same as width)")
    s.add_argument(
        "--format",
        choices=["svs", "ome-tiff", "tiff", "ndpi"],
        default="svs",
        help="file layout (default svs)",
    )
    s.add_argument("--mpp", type=float, default=0.25, help="µm per pixel (default 0.25)")
    s.add_argument("--tile", type=int, default=256)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="compression threads")
    s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser(
        "rasterize", help="QuPath GeoJSON -> pyramidal label mask (OME-Zarr or OME-TIFF)"
    )
    s.add_argument("annotation", metavar="GEOJSON")
    s.add_argument("--slide", required=True, help="the slide the annotation belongs to")
    s.add_argument("--out", required=True, help="mask to write: NAME.ome.zarr or NAME.ome.tif")
    s.add_argument("--level", type=int, default=0, help="slide pyramid level (default 0)")
    s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser("export-geojson", help="label mask -> QuPath GeoJSON (level-0 pixels)")
    s.add_argument("mask", metavar="MASK", help="OME-Zarr, (OME-)TIFF or PNG label mask")
    s.add_argument("--out", required=True, help="GeoJSON file to write")
    s.add_argument("--slide", help="the slide, to scale a mask made at a coarser level")
    s.add_argument(
        "--downsample",
        type=float,
        default=None,
        help="level-0 pixels per mask pixel (default: from --slide, else 1)",
    )
    s.add_argument("--simplify", type=float, default=0.0, help="tolerance in mask pixels")
    s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser(
        "predict",
        help="segment slides: OME-Zarr labels + probabilities, QuPath GeoJSON, preview PNG",
    )
    s.add_argument("slides", nargs="+", metavar="SLIDE")
    s.add_argument("--model", required=True, help="model file (.safetensors)")
    s.add_argument("--out", required=True, help="output folder (one sub-folder per slide)")
    s.add_argument("--mpp", type=float, default=None, help="slide µm/px when the file lacks it")
    s.add_argument(
        "--target-mpp",
        type=float,
        default=None,
        help="working µm/px (default: the model's training resolution)",
    )
    s.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, mps")
    s.add_argument("--tile", type=int, default=None, help="output tile side (default: auto)")
    s.add_argument(
        "--margin",
        type=int,
        default=None,
        help="context on each side (default: the model's receptive radius: exact result)",
    )
    s.add_argument("--batch-size", type=int, default=None)
    s.add_argument("--no-tissue", action="store_true", help="predict background tiles too")
    s.add_argument(
        "--per-slide", action="store_true", help="sub-folder per slide even for one slide"
    )
    s.add_argument("--overwrite", action="store_true", help="replace a finished prediction")

    s = sub.add_parser(
        "evaluate",
        help="slide-level IoU/Dice of a prediction against an annotation, with a TP/FP/FN PNG",
    )
    s.add_argument("--pred", required=True, help="predicted label mask (OME-Zarr/TIFF/PNG)")
    s.add_argument("--truth", required=True, help="ground truth: label mask or QuPath GeoJSON")
    s.add_argument("--out", required=True, help="folder for report.json, report.csv, overlay.png")
    s.add_argument("--slide", help="the slide (scale of a GeoJSON truth; overlay background)")
    s.add_argument("--ignore-label", type=int, default=None, help="truth label to leave out")
    s.add_argument("--region", help="mask restricting where pixels count (e.g. tissue.png)")
    s.add_argument("--overwrite", action="store_true")

    s = sub.add_parser("train", help="train a model from a run YAML (see examples/)")
    s.add_argument("--config", required=True, help="run YAML: data, out folder, settings")
    s.add_argument(
        "--restart",
        action="store_true",
        help="ignore an earlier run in the out folder instead of resuming it",
    )

    s = sub.add_parser(
        "finetune", help="fine-tune a model file on corrected annotations (new model version)"
    )
    s.add_argument("--model", required=True, help="the model file to start from")
    s.add_argument("--slides", nargs="+", required=True, metavar="SLIDE")
    s.add_argument(
        "--annotations",
        nargs="+",
        required=True,
        metavar="ANNOTATION",
        help="one per slide: QuPath GeoJSON or label mask",
    )
    s.add_argument(
        "--regions",
        nargs="+",
        metavar="GEOJSON",
        help="one per slide: the corrected regions; outside them only the bootstrap term "
        "learns (default: the whole annotation counts)",
    )
    s.add_argument("--steps", type=int, default=300)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--mpp", type=float, default=None, help="slides' µm/px if not in the file")
    s.add_argument("--noisy", action="store_true", help="annotations are noisy (k = 61)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto")
    s.add_argument("--out", default=None, help="new model file (default: <model>-ftN)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except MsunetError as exc:
        print(f"msunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msunet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
