"""Benchmark: opening and reading large synthetic slides lazily.

For each slide size, a JPEG-tiled pyramidal SVS-like slide is written once (cached in
``--workdir``), then a *fresh* Python process opens it and reads random 1024 x 1024 level-0
regions, so that the peak RSS reported belongs to that slide alone. The baseline, in the same
process, reads the same regions straight from tifffile's zarr store (no Slide wrapper).

Usage::

    python benchmarks/bench_open.py --workdir /tmp/msunet-bench --sizes 25000 100000

Targets (issue 2): open < 0.5 s, median 1024 x 1024 read < 50 ms, peak RSS < 500 MB, and peak
RSS(100k) / peak RSS(25k) <= 1.2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

_MEASURE = r"""
import json, resource, statistics, sys, time
import numpy as np
t_imp = time.perf_counter()
from napari_msunet.io.slide import open_slide
import tifffile, zarr
rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
path, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
slide = open_slide(path)
t_open = time.perf_counter() - t0
h, w = slide.shape
rng = np.random.default_rng(0)
# regions around the slide centre, where the synthetic tissue is
ys = rng.integers(int(h * 0.3), int(h * 0.7) - 1024, n)
xs = rng.integers(int(w * 0.3), int(w * 0.7) - 1024, n)
# Baseline: tifffile's own zarr store on the same, already parsed TiffFile (parsing a second
# TiffFile would add its tile tables to this process's peak RSS).
tif = slide._sources[0].handle.get()
z = zarr.open_array(tif.series[0].aszarr(level=0), mode="r")
# Ours and the baseline read the same region back to back, alternating which goes first, so
# neither gets the other's warm page cache systematically.
times, base = [], []
for i, (y, x) in enumerate(zip(ys, xs)):
    for who in ((0, 1) if i % 2 else (1, 0)):
        t = time.perf_counter()
        if who == 0:
            region = slide.read_region(0, int(y), int(x), 1024, 1024)
            times.append(time.perf_counter() - t)
        else:
            z[y : y + 1024, x : x + 1024]
            base.append(time.perf_counter() - t)
assert region.shape == (1024, 1024, 3)
dask_times = []
for y, x in zip(ys[:10], xs[:10]):
    t = time.perf_counter()
    slide.levels[0][y : y + 1024, x : x + 1024].compute()
    dask_times.append(time.perf_counter() - t)
thumb_t = time.perf_counter()
slide.thumbnail(2048)
thumb_t = time.perf_counter() - thumb_t
print(json.dumps({
    "open_s": t_open,
    "read_median_ms": statistics.median(times) * 1e3,
    "read_p90_ms": sorted(times)[int(0.9 * len(times))] * 1e3,
    "dask_read_median_ms": statistics.median(dask_times) * 1e3,
    "baseline_read_median_ms": statistics.median(base) * 1e3,
    "thumbnail_s": thumb_t,
    "rss_after_imports_mb": rss_imports,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "levels": [list(s) for s in slide.level_shapes],
}))
"""


def ensure_slide(workdir: Path, size: int) -> tuple[Path, float | None]:
    path = workdir / f"synthetic_{size}.svs"
    if path.exists():
        return path, None
    code = (
        "import sys; from napari_msunet.io.synthetic import SyntheticSlideSpec, "
        "write_synthetic_slide as w; "
        f"w(sys.argv[1], SyntheticSlideSpec({size}, {size}, seed=7), 'svs', workers=2)"
    )
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return path, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="where the slides are cached")
    ap.add_argument("--sizes", type=int, nargs="+", default=[25000, 100000])
    ap.add_argument("--reads", type=int, default=50, help="random regions read per slide")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}"
    )
    results = {}
    for size in args.sizes:
        path, gen = ensure_slide(args.workdir, size)
        out = subprocess.run(
            [sys.executable, "-c", _MEASURE, str(path), str(args.reads)],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["file_gb"] = path.stat().st_size / 1e9
        r["generate_s"] = gen
        results[size] = r
    print(
        f"\n{'slide':>14} {'file GB':>8} {'open s':>7} {'read ms':>8} {'p90 ms':>7} "
        f"{'dask ms':>8} {'tifffile ms':>11} {'peak RSS MB':>11}"
    )
    for size, r in results.items():
        print(
            f"{size:>6} x {size:<6} {r['file_gb']:>8.2f} {r['open_s']:>7.3f} "
            f"{r['read_median_ms']:>8.1f} {r['read_p90_ms']:>7.1f} "
            f"{r['dask_read_median_ms']:>8.1f} {r['baseline_read_median_ms']:>11.1f} "
            f"{r['peak_rss_mb']:>11.0f}"
        )
    sizes = sorted(results)
    if len(sizes) >= 2:
        ratio = results[sizes[-1]]["peak_rss_mb"] / results[sizes[0]]["peak_rss_mb"]
        print(f"\npeak RSS ratio {sizes[-1]} / {sizes[0]}: {ratio:.3f}")
    for size, r in results.items():
        ok = r["open_s"] < 0.5 and r["read_median_ms"] < 50 and r["peak_rss_mb"] < 500
        print(
            f"{size}: targets {'met' if ok else 'NOT met'} "
            f"(RSS after imports {r['rss_after_imports_mb']:.0f} MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
