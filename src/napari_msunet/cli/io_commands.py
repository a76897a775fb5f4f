"""``msunet`` commands on files: info, synthetic, rasterize, export-geojson, export-decisions.

The writes (a label mask, a GeoJSON export) are the core's writer generators under the CLI's
one progress driver (:func:`~napari_msunet.cli._drive.drive`); Ctrl-C closes them, which deletes
what they had half written. An export holds the output lock of its target (``<target>.lock``
beside it, see :mod:`napari_msunet.io._store_lock`) while it works, so a second export to the
same target is refused at its start, naming the first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from napari_msunet._atomic import check_writable, write_error
from napari_msunet.cli._drive import drive
from napari_msunet.cli._registry import command, stem
from napari_msunet.errors import MsunetError


@command("info")
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


@command("synthetic")
def _synthetic(args: argparse.Namespace) -> int:
    from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

    out = Path(args.out)
    geojson = out.with_name(stem(out) + ".geojson")
    for path in (out, geojson):  # both refused before anything is written
        if path.exists() and not args.overwrite:
            raise MsunetError(f"{path}: already exists (use --overwrite to replace it)")
    check_writable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(out, exc, "cannot create its folder") from exc
    spec = SyntheticSlideSpec(args.height or args.size, args.size, seed=args.seed, mpp=args.mpp)
    existed = out.exists()
    write_synthetic_slide(out, spec, args.format, tile=args.tile, workers=args.workers)
    try:
        spec.write_geojson(geojson, overwrite=args.overwrite)
    except BaseException:
        if not existed:  # a slide without its ground truth would block a plain rerun
            out.unlink(missing_ok=True)
        raise
    print(f"wrote {out} and its ground truth {geojson}")
    return 0


@contextlib.contextmanager
def _export_lock(target: Path) -> Iterator[None]:
    """Hold the output lock of ``target`` (``<target>.lock`` beside it) while exporting to it.

    Refused at once, naming the holder, while another program (or task) exports there; a
    folder that cannot be written is refused first, with its cause.
    """
    from napari_msunet.io import _store_lock

    check_writable(target)
    lock = _store_lock.lock_path(target)
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        _store_lock.acquire(target, path=lock, kind=_store_lock.OUTPUT)
    except OSError as exc:  # the lock's own write on a full disk
        raise write_error(target, exc, f"cannot take the lock {lock}", where=lock) from exc
    try:
        yield
    finally:
        _store_lock.release(target, path=lock)


@command("rasterize")
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
    from napari_msunet.io.ome_tiff import iter_write_ome_tiff
    from napari_msunet.io.ome_zarr import iter_write_ome_zarr

    kw = {"kind": "labels", "mpp": mpp, "class_names": names, "class_colors": colors}
    if out.name.lower().endswith(".zarr"):
        gen = iter_write_ome_zarr(out, mask, overwrite=overwrite, **kw)
    elif out.name.lower().endswith((".tif", ".tiff")):
        gen = iter_write_ome_tiff(out, mask, overwrite=overwrite, **kw)
    else:
        raise MsunetError(f"{out}: output must end in .ome.zarr or .ome.tif")
    with contextlib.closing(gen), _export_lock(out):
        drive(gen, out.name)


@command("export-geojson")
def _export_geojson(args: argparse.Namespace) -> int:
    from napari_msunet.io.masks import open_mask
    from napari_msunet.io.vectorise import iter_export_mask

    mask = open_mask(args.mask)
    downsample = args.downsample
    if downsample is None and args.slide is not None:
        from napari_msunet.io.slide import open_slide

        with open_slide(args.slide) as slide:
            downsample = slide.shape[0] / mask.shape[0]
    classes = mask.classes or None
    gen = iter_export_mask(
        mask.levels[0],
        args.out,
        classes,
        downsample or 1.0,
        overwrite=args.overwrite,
        simplify=args.simplify,
    )
    with contextlib.closing(gen), _export_lock(Path(args.out)):
        out = drive(gen, Path(args.out).name)
    print(f"wrote {out}")
    return 0


def _export_decisions_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "sources",
        nargs="+",
        metavar="STORE_OR_WORKSPACE",
        help="annotation stores, slides' workspaces (<slide>.msunet) or the slides themselves",
    )
    s.add_argument(
        "--out", required=True, help="folder for <slide>.decisions.geojson and decisions.csv"
    )
    s.add_argument("--overwrite", action="store_true", help="replace those files")


@command(
    "export-decisions",
    help="reviewed cohort -> QuPath GeoJSON of the decided candidates per slide + CSV",
    arguments=_export_decisions_arguments,
)
def _export_decisions(args: argparse.Namespace) -> int:
    from napari_msunet.io.decisions import iter_export_decisions

    out = Path(args.out)
    gen = iter_export_decisions(args.sources, out, overwrite=args.overwrite)
    with contextlib.closing(gen), _export_lock(out):
        files = drive(gen, out.name)
    rows = files[-1].read_text(encoding="utf-8").count("\n") - 1  # less the header
    print(f"wrote {rows} decisions to {files[-1]} and {len(files) - 1} GeoJSON file(s) in {out}")
    return 0
