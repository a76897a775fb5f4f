"""Whole-slide prediction on real tissue: the engine's defaults against the paper-style baseline.

Issue 14's measurement, on the bundled (trained) model and a real-tissue slide:

- the slide: EBHI-Seg patches (``--data``) tiled 32 x 32 into a 7168² JPEG-tiled SVS declared
  at 0.5 µm/px (3584² working pixels at the model's 1 µm/px), written once into ``--workdir``,
  with its annotation mask;
- **baseline** (fp32, as the paper tiles): 1024² windows every 512 px, probabilities averaged,
  read one window after the other (``bench_inference.naive_sliding_window``);
- **engine, defaults**: ``predict_slide`` with ``InferenceConfig()``: the margin measured for
  the model file, bf16 on CPUs that have it (checked on the first tile), tissue detection,
  both OME-Zarr pyramids written;
- **engine, exact float32**: ``margin="exact", amp="none"``: the reference labels;
- optional extra tiles for the defaults (``--tiles``), informative.

Rounds are interleaved (``--repeat``), best time counts. Reported: seconds, Mpx/s of working
pixels, the ratio to the baseline, label agreement of the defaults with the exact run (all
pixels, and tissue pixels), and slide Dice of each run against the annotation (3 decimals).

Usage::

    python benchmarks/bench_speed.py --data ../shared/data/ebhi-seg --workdir /tmp/msunet-speed

EBHI-Seg: Shi et al., Frontiers in Medicine 10:1114673 (2023), CC BY 4.0.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import _load, _machine, naive_sliding_window

from napari_msunet.demo import default_model_path
from napari_msunet.inference import InferenceConfig, Normalization, predict_slide
from napari_msunet.inference.device import prepare_model, resolve_device_settings
from napari_msunet.io.mosaic import MosaicSpec, pick_stems
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import write_synthetic_slide
from napari_msunet.io.tissue import detect_tissue
from napari_msunet.io.working_image import working_geometry
from napari_msunet.models.checkpoint import load_model

GRID = 32  # patches per side: 32 * 224 = 7168 level-0 px
MPP = 0.5


def build(data: Path, workdir: Path) -> tuple[Path, np.ndarray]:
    """The mosaic slide and its level-0 gland mask (cached in ``workdir``)."""
    spec = MosaicSpec(pick_stems(data, GRID * GRID, seed=0), data, GRID, GRID, margin=0, mpp=MPP)
    slide = workdir / f"ebhi-mosaic-{spec.height}-{MPP}.svs"
    mask_path = slide.with_suffix(".mask.npy")
    if not slide.exists():
        write_synthetic_slide(slide, spec, "svs", quality=90)
    if not mask_path.exists():
        np.save(mask_path, spec.mask())
    return slide, np.load(mask_path)


def _labels(folder: Path) -> np.ndarray:
    labels = np.asarray(zarr.open_group(str(folder / "labels.ome.zarr"), mode="r")["0"])
    return labels.reshape(labels.shape[-2:])


def _dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred > 0, truth > 0
    return 2 * float((p & t).sum()) / float(p.sum() + t.sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="EBHI-Seg folder")
    ap.add_argument("--workdir", type=Path, required=True, help="cache for the slide")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tiles", type=int, nargs="*", default=[], help="also time these tiles")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model, header = load_model(default_model_path())
    slide_path, mask0 = build(args.data, args.workdir)
    print(f"machine: {_machine(args.device)}; load {_load()}", flush=True)
    defaults = InferenceConfig(target_mpp=header.input_um_per_px, device=args.device)
    exact = InferenceConfig(
        target_mpp=header.input_um_per_px, device=args.device, margin="exact", amp="none"
    )
    fp32 = resolve_device_settings(InferenceConfig(device=args.device, amp="none"))
    extra = {t: InferenceConfig(target_mpp=header.input_um_per_px, device=args.device, tile=t)
             for t in args.tiles}  # fmt: skip
    best: dict[str, float] = {}
    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="msunet-speed-"))
    try:
        with open_slide(slide_path) as slide:
            geometry = working_geometry(slide, header.input_um_per_px)
            H, W = geometry.shape
            t = detect_tissue(slide)  # the engine's own tissue mask, on the working grid
            rows = np.minimum((np.arange(H) + 0.5) * geometry.downsample[0] / t.downsample[0],
                              t.mask.shape[0] - 1).astype(int)  # fmt: skip
            cols = np.minimum((np.arange(W) + 0.5) * geometry.downsample[1] / t.downsample[1],
                              t.mask.shape[1] - 1).astype(int)  # fmt: skip
            tissue = t.mask[np.ix_(rows, cols)]
            print(f"slide {slide.shape[1]}x{slide.shape[0]} at {MPP} µm/px -> {W}x{H} working")
            for rnd in range(args.repeat):
                prepare_model(model, fp32)
                t0 = time.perf_counter()
                base_labels, base_px = naive_sliding_window(
                    slide, geometry, model, fp32, norm=Normalization.of(header)
                )
                best["baseline"] = min(best.get("baseline", math.inf), time.perf_counter() - t0)
                runs = {"defaults": defaults, "exact fp32": exact}
                runs.update({f"defaults, tile {t}": c for t, c in extra.items()})
                for name, config in runs.items():
                    out = tmp / f"{name.replace(' ', '_').replace(',', '')}-{rnd}"
                    r = predict_slide(slide, model, header, config, out)
                    if r.timings["total"] < best.get(name, math.inf):
                        best[name] = r.timings["total"]
                        results[name] = (r, _labels(out))
                    shutil.rmtree(out, ignore_errors=True)
                print(f"# round {rnd + 1}: " + ", ".join(f"{k} {v:.1f} s" for k, v in best.items())
                      + f"; load {_load()}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    truth = mask0[:: round(geometry.downsample[0]), :: round(geometry.downsample[1])][:H, :W]
    ref = results["exact fp32"][1]
    mpx = H * W / 1e6
    print()
    print(f"tissue: {tissue.mean():.1%} of the working pixels")
    print("| run | time | Mpx/s | vs baseline | tile / margin / amp | labels = exact (tissue) |"
          " Dice |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
    overlap = base_px / (H * W)
    print(f"| baseline (fp32, 1024² every 512, averaged) | {best['baseline']:.1f} s | "
          f"{mpx / best['baseline']:.2f} | 1.00 | 1024 / 50 % overlap ({overlap:.2f}x) / none "
          f"| {(base_labels == ref)[tissue].mean():.4%} "
          f"| {_dice(base_labels, truth):.3f} |")  # fmt: skip
    for name, (r, labels) in results.items():
        agree = (labels == ref)[tissue].mean()
        amp = r.device.split("amp ", 1)[1].split(", channels_last")[0]
        print(f"| engine, {name} | {best[name]:.1f} s | {mpx / best[name]:.2f} | "
              f"{best['baseline'] / best[name]:.2f} | {r.tile} / {r.margin} / {amp} | "
              f"{agree:.4%} | {_dice(labels, truth):.3f} |")  # fmt: skip
    for name, (r, _) in results.items():
        print(f"# {name}: timings {r.timings}; {r.device}")
    print(f"load at end {_load()}")


if __name__ == "__main__":
    main()
