"""Benchmark: a cohort of slides in one process, on 1 and on N dask.distributed workers.

``msunet predict`` over the same slides three ways, each a fresh run into a new folder, timed
from the command's start to its end (cluster start-up included):

- one process (the slides one after another, torch threads = cores);
- ``--workers 1`` (a local dask.distributed cluster of one worker process, threads = cores);
- ``--workers N`` (N worker processes, the cores split between them);
- with ``--split S``, also ``--workers N --split S`` (each slide's tiles over S tasks): the
  case of a few large slides on more workers than slides.

The slides are JPEG-tiled synthetic SVS slides (``napari_msunet.io.synthetic``) at 0.5 µm/px,
predicted with the bundled model at its 1 µm/px. Throughput is working-resolution megapixels
of all slides per second of wall time, and slides per minute. Labels of every run are
compared with the one-process run's (they must be equal).

Usage::

    python benchmarks/bench_cohort.py --workdir /tmp/msunet-cohort --slides 6 --size 6144 \
        --workers 2

One large slide split over two workers::

    python benchmarks/bench_cohort.py --workdir /tmp/msunet-split --slides 1 --size 12288 \
        --workers 2 --split 2

On a GPU machine, ``--device cuda --workers <number of GPUs>`` gives 1 vs N GPUs.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models.bundled import bundled_model_path


def _run(slides: list[Path], out: Path, device: str, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "napari_msunet.cli", "predict", *map(str, slides)]
    cmd += ["--model", str(bundled_model_path()), "--out", str(out), "--device", device]
    cmd += ["--per-slide", *extra]
    t0 = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{run.stdout}\n{run.stderr}")
    return seconds


def _labels(folder: Path) -> np.ndarray:
    return np.asarray(zarr.open_group(folder / "labels.ome.zarr", mode="r")["0"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--slides", type=int, default=6)
    ap.add_argument("--size", type=int, default=6144, help="level-0 side of each slide, px")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--split", type=int, default=1, help="also run --workers N --split S")
    args = ap.parse_args(argv)
    data = args.workdir / "slides"
    data.mkdir(parents=True, exist_ok=True)
    slides = []
    for k in range(args.slides):
        path = data / f"case{k:02d}.svs"
        if not path.exists():
            spec = SyntheticSlideSpec(args.size, args.size, seed=100 + k, mpp=0.5)
            write_synthetic_slide(path, spec, "svs")
        slides.append(path)
    working_mpx = args.slides * (args.size / 2) ** 2 / 1e6  # 0.5 -> 1 µm/px
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = [("one process", []), ("--workers 1", ["--workers", "1"])]
    runs.append((f"--workers {args.workers}", ["--workers", str(args.workers)]))
    if args.split > 1:
        split = ["--workers", str(args.workers), "--split", str(args.split)]
        runs.append((" ".join(split), split))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {args.slides} slides of {args.size}² px at "
          f"0.5 µm/px ({working_mpx:.1f} working Mpx in all), device {args.device}")  # fmt: skip
    print("| run | wall s | slides/min | working Mpx/s | labels equal to one process |")
    print("| --- | ---: | ---: | ---: | --- |")
    first = None
    for name, extra in runs:
        out = args.workdir / f"{stamp}-{name.replace(' ', '').replace('--', '')}"
        seconds = _run(slides, out, args.device, extra)
        if first is None:
            first, equal = out, "(reference)"
        else:
            same = all(
                np.array_equal(_labels(out / s.stem), _labels(first / s.stem)) for s in slides
            )
            equal = "yes" if same else "NO"
        print(f"| {name} | {seconds:.1f} | {60 * args.slides / seconds:.2f} | "
              f"{working_mpx / seconds:.2f} | {equal} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
