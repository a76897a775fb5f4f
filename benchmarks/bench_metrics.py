"""Throughput and memory of the slide-level confusion matrix (napari_msunet.evaluation).

Builds a pair of SIZE x SIZE label maps with region-like structure (3 classes; the truth is the
prediction shifted and partly relabelled), then times ``confusion_matrix`` on NumPy, dask and
OME-Zarr inputs, and ``evaluate()`` end to end on two OME-Zarr masks and on an OME-Zarr
prediction with the truth as QuPath GeoJSON, against two baselines run in the same process:

- eager NumPy: ``np.bincount(truth.astype(int64) * k + pred)`` over the whole arrays, the
  obvious one-liner (it needs 8 bytes per pixel of temporary memory);
- dask-native: the same per block with ``map_blocks`` and a ``sum`` over blocks, dask's
  threaded scheduler.

Every result is checked against the eager one. Peak memory is the largest RSS growth during
the call, sampled every 5 ms.

Usage: ``python benchmarks/bench_metrics.py [--size 16384] [--workdir DIR] [--repeat 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import psutil
import zarr

from napari_msunet.evaluation import confusion_matrix, evaluate
from napari_msunet.evaluation.metrics import block_confusion
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.io.vectorise import export_mask

K = 3


def make_pair(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Blobby 3-class maps: a coarse random grid upsampled, truth = shifted, 10 % relabelled."""
    rng = np.random.default_rng(seed)
    cell = 128
    n = -(-size // cell) + 1
    coarse = rng.choice(np.array([0, 0, 0, 1, 2], np.uint8), size=(n, n))
    full = np.repeat(np.repeat(coarse, cell, 0), cell, 1)
    pred = np.ascontiguousarray(full[:size, :size])
    truth = np.ascontiguousarray(full[40 : size + 40, 25 : size + 25])
    flip = rng.random((n, n)) < 0.1
    mask = np.repeat(np.repeat(flip, cell, 0), cell, 1)[:size, :size]
    truth[mask & (truth > 0)] = 3 - truth[mask & (truth > 0)]
    return pred, truth


class PeakRSS:
    """Largest RSS growth over the baseline while the block runs."""

    def __init__(self) -> None:
        self.proc = psutil.Process()

    def __enter__(self) -> PeakRSS:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.base) / 1e6


def timed(fn, repeat: int):
    best, peak, out = float("inf"), 0.0, None
    for _ in range(repeat):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            out = fn()
            dt = time.perf_counter() - t0
        best = min(best, dt)
        peak = max(peak, mem.growth_mb)
    return best, peak, out


def eager(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    codes = truth.astype(np.int64) * K + pred
    return np.bincount(codes.ravel(), minlength=K * K).reshape(K, K)


def dask_native(pred: da.Array, truth: da.Array) -> np.ndarray:
    def block(p: np.ndarray, t: np.ndarray) -> np.ndarray:
        codes = t.astype(np.int64) * K + p
        return np.bincount(codes.ravel(), minlength=K * K)[None, None, :]

    per_block = da.map_blocks(block, pred, truth, new_axis=2, chunks=(1, 1, K * K), dtype=np.int64)
    return per_block.sum(axis=(0, 1)).compute().reshape(K, K)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size, repeat = args.size, args.repeat
    mpx = size * size / 1e6
    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="bench-metrics-"))
    try:
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, numpy {np.__version__}, dask {dask.__version__}"
        )
        pred, truth = make_pair(size)
        pz = write_ome_zarr(
            work / "pred.ome.zarr", pred, kind="labels", class_names=["bg", "a", "b"]
        )
        tz = write_ome_zarr(
            work / "truth.ome.zarr", truth, kind="labels", class_names=["bg", "a", "b"]
        )
        print(f"pair: {size} x {size} uint8 ({mpx:.0f} Mpx), OME-Zarr chunks 512, zstd")

        rows = []
        t_eager, m_eager, ref = timed(lambda: eager(pred, truth), repeat)
        rows.append(("baseline: eager np.bincount, NumPy in memory", t_eager, m_eager))
        pd_, td_ = da.from_array(pred, chunks=1024), da.from_array(truth, chunks=1024)
        t, m, out = timed(lambda: dask_native(pd_, td_), repeat)
        assert (out == ref).all()
        rows.append(("baseline: dask map_blocks + sum, NumPy 1024² chunks", t, m))

        cases = [
            ("confusion_matrix, NumPy, 1 thread", lambda: confusion_matrix(pred, truth, workers=1)),
            ("confusion_matrix, NumPy, 2 threads", lambda: confusion_matrix(pred, truth)),
            ("confusion_matrix, dask 1024² chunks", lambda: confusion_matrix(pd_, td_)),
        ]
        pm, tm = open_mask(pz), open_mask(tz)
        pa, ta = zarr.open_array(pz / "0", mode="r"), zarr.open_array(tz / "0", mode="r")
        cases += [
            (
                "confusion_matrix, OME-Zarr via dask (open_mask levels)",
                lambda: confusion_matrix(pm.levels[0], tm.levels[0]),
            ),
            ("confusion_matrix, OME-Zarr via zarr arrays", lambda: confusion_matrix(pa, ta)),
        ]
        for name, fn in cases:
            t, m, out = timed(fn, repeat)
            assert (out == ref).all(), name
            rows.append((name, t, m))

        region = np.ones((size // 16, size // 16), np.uint8)
        region[:, : size // 64] = 0
        ign = truth.copy()
        ign[:, -100:] = 255

        def with_region() -> np.ndarray:
            return confusion_matrix(pred, ign, region=region, ignore_label=255)

        t, m, out = timed(with_region, repeat)
        keep = np.repeat(np.repeat(region, 16, 0), 16, 1).astype(bool) & (ign != 255)
        assert (out == eager(pred[keep], truth[keep])).all()
        rows.append(("confusion_matrix, NumPy + region (1/16) + ignore", t, m))

        def end_to_end() -> object:
            return evaluate(pz, tz, out_dir=work / "report", overwrite=True)

        t, m, result = timed(end_to_end, 1)
        assert (result.metrics.confusion == ref).all()
        rows.append(("evaluate(): 2 OME-Zarr masks -> JSON, CSV, PNG", t, m))

        # the truth as QuPath GeoJSON (the exact polygons of the truth mask), rasterised lazily
        t0 = time.perf_counter()
        gj = export_mask(truth, work / "truth.geojson", {"a": 1, "b": 2})
        n_features = len(read_geojson(gj))
        took = time.perf_counter() - t0
        print(f"truth as GeoJSON: {n_features} polygons (vectorised in {took:.1f} s)")

        def end_to_end_geojson() -> object:
            return evaluate(pz, gj, out_dir=work / "report-gj", overwrite=True)

        t, m, result = timed(end_to_end_geojson, 1)
        assert (result.metrics.confusion == ref).all()
        rows.append(("evaluate(): OME-Zarr + GeoJSON truth -> JSON, CSV, PNG", t, m))

        rng = np.random.default_rng(1)
        bp, bt = pred[:2048, :2048].copy(), truth[:2048, :2048].copy()
        bp[:] = rng.integers(0, 3, bp.shape)
        bt[:] = rng.integers(0, 3, bt.shape)
        t_naive, _, _ = timed(lambda: np.bincount((bt.astype(np.int64) * K + bp).ravel()), 5)
        t_block, _, _ = timed(lambda: block_confusion(bp, bt), 5)

        print()
        print("| what | time | Mpx/s | vs eager | peak RSS growth |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, t, m in rows:
            print(f"| {name} | {t:.2f} s | {mpx / t:.0f} | {t_eager / t:.2f}x | {m:.0f} MB |")
        print()
        print(
            f"one 2048² block of random labels: block_confusion {4.19 / t_block:.0f} Mpx/s, "
            f"plain int64 bincount {4.19 / t_naive:.0f} Mpx/s ({t_naive / t_block:.2f}x)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
