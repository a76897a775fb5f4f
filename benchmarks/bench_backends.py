"""Benchmark: reading a slide through tifffile (the default) and through OpenSlide.

The same JPEG-tiled synthetic Aperio SVS is opened by both backends of ``open_slide``; each
reads all of level 0 through its dask array (two threads, as the engine's readers) and 200
random 512² regions of level 0 (``Slide.read_region``, as the GUI's view does). Best of
``--repeat``. Both must give identical pixels (checked).

Usage::

    python benchmarks/bench_backends.py --workdir /tmp/msunet-backends --size 8192 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import dask
import numpy as np

from napari_msunet.io._openslide_backend import open_with_openslide
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide


def _whole(slide) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        pixels = slide.levels[0].compute()
    return time.perf_counter() - t0, pixels


def _regions(slide, corners) -> float:
    t0 = time.perf_counter()
    for y, x in corners:
        slide.read_region(0, int(y), int(x), 512, 512)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"slide{args.size}.svs"
    if not path.exists():
        write_synthetic_slide(
            path, SyntheticSlideSpec(args.size, args.size, seed=1, mpp=0.25), "svs"
        )
    rng = np.random.default_rng(0)
    corners = rng.integers(0, args.size - 512, (200, 2))
    mpx = args.size**2 / 1e6
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}; {path.name}: {args.size}² px JPEG tiles; "
          f"best of {args.repeat}")  # fmt: skip
    print("| backend | level 0 whole s | Mpx/s | 200 regions of 512² s | regions/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    reference = None
    for name, opener in (("tifffile", open_slide), ("OpenSlide", open_with_openslide)):
        whole, regions = [], []
        for _ in range(args.repeat):
            with opener(path) as slide:  # a fresh handle: no tile cache carried over
                seconds, pixels = _whole(slide)
                whole.append(seconds)
            with opener(path) as slide:
                regions.append(_regions(slide, corners))
        if reference is None:
            reference = pixels
        elif not np.array_equal(pixels, reference):
            raise SystemExit("the backends differ on level 0")
        w, r = min(whole), min(regions)
        print(f"| {name} | {w:.2f} | {mpx / w:.0f} | {r:.2f} | {200 / r:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
