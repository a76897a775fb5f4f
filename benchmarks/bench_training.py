"""Benchmark: training throughput (patches/s) and the share of step time spent waiting for data.

Runs the real trainer (:func:`napari_msunet.training.trainer.iter_train`) for a fixed number of
steps on (a) a folder of image/mask pairs (EBHI-Seg, path given) and (b) a synthetic whole
slide read lazily through the slide patch dataset, each with 0 and 2 DataLoader workers. The
trainer measures, per step, the time blocked on the next batch (``TrainStep.data_wait_s``) and
the whole step (``TrainStep.step_s``).

Usage::

    python benchmarks/bench_training.py --data ../shared/data/ebhi-seg --workdir /tmp/msunet-bench

Target (issue 5): data wait < 10 % of step time on CPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from napari_msunet.io.mosaic import EBHI_UM_PER_PX
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.training.augment import context_size
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.folder_dataset import FolderDataset, find_pairs, stratified_split
from napari_msunet.training.losses import LossConfig
from napari_msunet.training.slide_dataset import SlidePatchDataset, SlideSpec, patch_positions
from napari_msunet.training.trainer import TrainStep, iter_train


def measure(cfg: TrainConfig, dataset, warmup: int) -> dict:
    steps = []
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        for rec in iter_train(cfg, dataset, None, out, resume=False):
            if isinstance(rec, TrainStep):
                steps.append(rec)
        wall = time.perf_counter() - t0
    timed = steps[warmup:]
    step_s = sum(s.step_s for s in timed)
    wait_s = sum(s.data_wait_s for s in timed)
    return {
        "patches_per_s": len(timed) * cfg.batch_size / step_s,
        "wait_fraction": wait_s / step_s,
        "median_step_ms": statistics.median(s.step_s for s in timed) * 1e3,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="EBHI-Seg-like folder (images/, masks/)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "msunet-bench")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, device {args.device}"
    )
    if args.device.startswith("cuda") and torch.cuda.is_available():
        print(f"GPU: {torch.cuda.get_device_name()}")
    base = TrainConfig(
        class_names=("Background", "Region", "Other"),
        patch=args.patch,
        batch_size=args.batch_size,
        epochs=1,
        steps_per_epoch=args.steps + args.warmup,
        loss=LossConfig(bootstrap_after=0, crop_margin=8),
        class_weights=None,
        device=args.device,
    )
    size = context_size(args.patch)
    sources = {}
    if args.data is not None:
        train_pairs, _ = stratified_split(find_pairs(args.data), 0.2, 0)
        sources["EBHI-Seg folder (JPEG 224 px)"] = (
            FolderDataset(train_pairs, size, label_map={}, seed=0),
            {"class_names": ("Background", "Gland"), "mpp": EBHI_UM_PER_PX},
        )
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide = args.workdir / "train_slide_12000.svs"
    if not slide.exists():
        spec = SyntheticSlideSpec(12000, 12000, seed=11, mpp=0.25)
        write_synthetic_slide(slide, spec, "svs")
        spec.write_geojson(slide.with_suffix(".geojson"))
    sspec = SlideSpec(slide, slide.with_suffix(".geojson"))
    names = ("Background", "Germinal centre", "Sinus")
    pos = patch_positions(sspec, 1.0, args.patch, class_names=names)
    sources["synthetic SVS, lazy reads at 1 µm/px"] = (
        SlidePatchDataset(sspec, 1.0, pos, args.patch, size, names),
        {"class_names": names, "mpp": 1.0},
    )
    rows = []
    for name, (ds, over) in sources.items():
        for w in args.workers:
            cfg = TrainConfig(**{**base.__dict__, **over, "num_workers": w})
            r = measure(cfg, ds, args.warmup)
            rows.append((name, w, r))
            print(f"  done: {name}, {w} workers", file=sys.stderr)
    print(
        f"\npatch {args.patch}, batch {args.batch_size}, {args.steps} timed steps after "
        f"{args.warmup} warm-up, lite MS U-Net, paper augmentations, FB + BS losses"
    )
    print(f"{'data':<38} {'workers':>7} {'patches/s':>10} {'data wait':>10} {'step ms':>8}")
    for name, w, r in rows:
        print(
            f"{name:<38} {w:>7} {r['patches_per_s']:>10.1f} {r['wait_fraction']:>9.1%} "
            f"{r['median_step_ms']:>8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
