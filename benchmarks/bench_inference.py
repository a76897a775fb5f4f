"""Whole-slide inference: the engine against a naive 50 %-overlap sliding window, one model.

Same model (lite MS U-Net, random weights with a fixed seed: compute does not depend on the
weights), same synthetic slide, one process, so ratios are meaningful on a noisy machine:

(a) throughput in megapixels/s of slide area at the working resolution: the engine
    (``predict_slide``, default settings, tissue detection on, outputs written as OME-Zarr)
    against a naive baseline written here like the paper's tiling and MONAI's
    ``sliding_window_inference(overlap=0.5, mode="constant")``: 1024² windows every 512 px,
    overlapping probabilities averaged in memory, windows read one after the other with no
    prefetch and no tissue detection. The engine without tissue detection, and with a larger
    tile (``--big-tile``, informative), are shown too;
(b) the engine's tiling overhead (computed / kept pixels) at default settings, the tile that
    would reach 1.2 and the memory that tile needs (forward-pass peak RSS measured at two window
    sizes in subprocesses, extrapolated linearly);
(c) end-to-end time of the engine over model-only time (forward passes alone over the same
    windows, already in memory, same batch size; measured right before and after the engine in
    every round, best time counts), and over the engine's own compute time in the same run
    (robust to the machine's speed drifting between runs);
(d) peak RSS (``VmHWM``) of the engine on two synthetic slides (default 25k² and 50k² at
    0.25 µm/px), each in a fresh subprocess;
(e) informative: how small a margin still gives >= 99.9 % agreement with the whole-image pass
    for random weights (head rescaled so the two classes split the image, as in the tests).

On CUDA it also prints megapixels/s and the achieved TFLOP/s (FLOPs of the forward passes from
``torch.utils.flop_counter`` over time) against the card's measured bf16 matmul peak.

Usage::

    python benchmarks/bench_inference.py --workdir /tmp/msunet-bench            # CPU, ~15 min
    python benchmarks/bench_inference.py --workdir /tmp/b --device cuda --size 65536
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_msunet.inference import (
    InferenceConfig,
    Normalization,
    predict_array,
    predict_slide,
)
from napari_msunet.inference.device import prepare_model, resolve_device_settings
from napari_msunet.inference.tiling import plan_tiles, resolve_tiling
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.io.tissue import detect_tissue
from napari_msunet.io.working_image import SlideReader, working_geometry
from napari_msunet.models import build_model

NORM = Normalization((0.8, 0.6, 0.75), (0.15, 0.2, 0.15))
ARCH = "msunet"


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ARCH, preset="lite").eval()


def _slide(workdir: Path, size: int, mpp: float, compression: str = "jpeg") -> Path:
    path = workdir / f"synthetic-{size}-{mpp}-{compression}.svs"
    if not path.exists():
        t = time.perf_counter()
        spec = SyntheticSlideSpec(size, size, seed=1, mpp=mpp)
        write_synthetic_slide(path, spec, "svs", compression=compression)
        print(f"# wrote {path.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return path


def _machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return (
        f"{cpu}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB{gpu}; "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )


def _load() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


# -- the naive baseline ----------------------------------------------------------------------


def _starts(n: int, roi: int, interval: int) -> list[int]:
    """Window starts as MONAI's dense_patch_slices: every ``interval``, the last one clamped."""
    if n <= roi:
        return [0]
    k = math.ceil((n - roi) / interval) + 1
    return sorted({min(i * interval, n - roi) for i in range(k)})


def naive_sliding_window(slide, geometry, model, settings, roi=1024, overlap=0.5, norm=NORM):
    """Paper-style tiling: ``roi`` windows at ``overlap``, probabilities averaged in memory.

    Returns (labels, computed pixels). Reads one window at a time, no prefetch, no tissue
    detection; same device, memory format and precision as the engine.
    """
    reader = SlideReader(slide, geometry)
    H, W = geometry.shape
    interval = int(roi * (1 - overlap))
    n_classes = model.config.n_classes
    acc = np.zeros((n_classes, H, W), np.float32)
    count = np.zeros((H, W), np.float32)
    mean = torch.tensor(norm.mean, device=settings.device).view(1, 3, 1, 1)
    std = torch.tensor(norm.std, device=settings.device).view(1, 3, 1, 1)
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    computed = 0
    for y in _starts(H, roi, interval):
        for x in _starts(W, roi, interval):
            win = reader.read(y, x, roi, roi)
            with torch.inference_mode():
                t = torch.from_numpy(win).to(settings.device).permute(2, 0, 1)[None]
                t = ((t.float() / 255 - mean) / std).contiguous(memory_format=fmt)
                with settings.autocast():
                    logits = model(t)
                p = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
            h, w = min(roi, H - y), min(roi, W - x)
            acc[:, y : y + h, x : x + w] += p[:, :h, :w]
            count[y : y + h, x : x + w] += 1
            computed += roi * roi
    return (acc / count).argmax(0).astype(np.uint8), computed


# -- model-only time over the engine's windows -----------------------------------------------


def model_only(slide, model, settings, config, mpp=None):
    """Forward passes alone over the windows the engine computed (same plan, same batches).

    Returns (seconds, windows, window shape, GFLOP per window).
    """
    geometry = working_geometry(slide, config.target_mpp, mpp)
    tiling = resolve_tiling(config, model, settings, geometry.shape)
    tissue = detect_tissue(slide, config.tissue_settings) if config.tissue else None
    keep = None
    if tissue is not None:
        dy, dx = geometry.downsample

        def keep(y0, x0, y1, x1):
            return tissue.any_in(y0 * dy, x0 * dx, y1 * dy, x1 * dx)

    plan = plan_tiles(geometry.shape, tiling.tile, tiling.margin, tiling.alignment, keep)
    reader = SlideReader(slide, geometry)
    wh, ww = plan.window
    m = plan.margin
    a, b = NORM.scale_shift()
    scale = torch.tensor(a).view(1, 3, 1, 1)
    shift = torch.tensor(b).view(1, 3, 1, 1)
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    bs = tiling.batch_size
    batches = []
    tiles = list(plan.tiles)
    for i in range(0, len(tiles), bs):
        group = tiles[i : i + bs]
        arr = np.stack([reader.read(t.y - m, t.x - m, wh, ww) for t in group])
        if len(group) < bs:  # the engine pads the last batch too
            arr = np.concatenate([arr, np.repeat(arr[-1:], bs - len(group), 0)])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() * scale - shift
        batches.append(x.contiguous(memory_format=fmt).to(settings.device))
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(batches[0][:1])
    gflop = fc.get_total_flops() / 1e9
    with torch.inference_mode(), settings.autocast():
        model(batches[0])  # warm-up (kernel selection, allocator)
        settings.synchronize()
        t0 = time.perf_counter()
        for x in batches:
            model(x)
        settings.synchronize()
        dt = time.perf_counter() - t0
    return dt, len(tiles), (wh, ww), gflop


def matmul_peak_tflops(device) -> float:
    """Best bf16 matmul throughput of the card (8192² x 8192², 20 iterations, best of 3)."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(3):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(20):
            a @ b
        torch.cuda.synchronize(device)
        best = max(best, 20 * 2 * n**3 / (time.perf_counter() - t0) / 1e12)
    return best


# -- subprocess children: peak RSS -----------------------------------------------------------


def _peak_rss() -> int:
    """This process's peak resident set size in bytes.

    ``VmHWM`` rather than ``getrusage``: Linux carries ``ru_maxrss`` over ``execve`` from the
    parent (vfork/fork + exec), so a child started by a big benchmark process would report at
    least the parent's peak; ``VmHWM`` belongs to the child's own address space.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child_rss(slide_path: str, device: str) -> None:
    """Run the engine on one slide at defaults; print a JSON record (run in a fresh process)."""
    proc = psutil.Process()
    model = _model()
    rss_ready = proc.memory_info().rss
    out = Path(tempfile.mkdtemp(prefix="msunet-rss-"))
    try:
        with open_slide(slide_path) as slide:
            cfg = InferenceConfig(device=device)
            t0 = time.perf_counter()
            result = predict_slide(slide, model, NORM, cfg, out / "pred")
            dt = time.perf_counter() - t0
    finally:
        shutil.rmtree(out, ignore_errors=True)
    peak = _peak_rss()
    print(
        json.dumps(
            {
                "peak_rss": peak,
                "rss_ready": rss_ready,
                "seconds": dt,
                "shape": list(result.shape),
                "tiles": result.tiles_computed,
                "skipped": result.tiles_skipped,
                "overhead": result.overhead,
            }
        )
    )


def child_forward_rss(window: int, device: str) -> None:
    """Peak RSS of one forward pass over a ``window``² input, as the engine runs it."""
    model = _model()
    settings = resolve_device_settings(InferenceConfig(device=device))
    prepare_model(model, settings)
    base = psutil.Process().memory_info().rss
    fmt = torch.channels_last if settings.channels_last else torch.contiguous_format
    x = torch.zeros(1, 3, window, window).contiguous(memory_format=fmt)
    with torch.inference_mode(), settings.autocast():
        torch.softmax(model(x).float(), dim=1)
    peak = _peak_rss()
    print(json.dumps({"window": window, "peak": peak, "base": base}))


def _run_child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, help="cache for synthetic slides (required)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--size", type=int, default=16384, help="side of the slide for (a)-(c)")
    p.add_argument("--mpp", type=float, default=0.25, help="µm/px of the synthetic slides")
    p.add_argument("--rss-sizes", type=int, nargs="*", default=[25000, 50000])
    p.add_argument("--margin-scan", type=int, default=1536, help="image side for (e); 0 skips")
    p.add_argument(
        "--big-tile", type=int, default=2048, help="also run the engine at this tile; 0 skips"
    )
    p.add_argument(
        "--repeat", type=int, default=2, help="rounds of (a)-(c), interleaved; best time counts"
    )
    p.add_argument(
        "--compression",
        default="jpeg",
        help="tile compression of the synthetic slide: jpeg (needs imagecodecs) or zlib",
    )
    p.add_argument("--_child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._child:
        kind, *rest = args._child
        if kind == "rss":
            child_rss(rest[0], args.device)
        else:
            child_forward_rss(int(rest[0]), args.device)
        return
    if args.workdir is None:
        p.error("--workdir is required")
    args.workdir.mkdir(parents=True, exist_ok=True)
    device = str(resolve_device_settings(InferenceConfig(device=args.device)).device)
    print(f"machine: {_machine(device)}")
    print(f"device: {device}; load average at start {_load()}", flush=True)
    slide_path = _slide(args.workdir, args.size, args.mpp, args.compression)
    rows: list[tuple[str, str, str]] = []

    model = _model()
    config = InferenceConfig(device=args.device)
    settings = resolve_device_settings(config)
    prepare_model(model, settings)
    with open_slide(slide_path) as slide:
        geometry = working_geometry(slide, config.target_mpp)
        H, W = geometry.shape
        out_mpx = H * W / 1e6
        print(f"slide {args.size}² at {args.mpp} µm/px -> {W} x {H} at 1 µm/px", flush=True)

        # (a)-(c): the baseline, the engine at defaults, model-only over the same windows and
        # the engine without tissue detection, interleaved for --repeat rounds; best time counts
        t_base = t_model = math.inf
        r1 = r2 = None
        for rnd in range(args.repeat):
            t0 = time.perf_counter()
            _, base_px = naive_sliding_window(slide, geometry, model, settings)
            settings.synchronize()
            t_base = min(t_base, time.perf_counter() - t0)
            tmp = Path(tempfile.mkdtemp(prefix="msunet-bench-"))
            try:
                # model-only right before and after the engine: the machine's speed drifts
                dt, n_win, window, gflop = model_only(slide, model, settings, config)
                r = predict_slide(slide, model, NORM, config, tmp / "e1")
                r1 = r if r1 is None or r.timings["total"] < r1.timings["total"] else r1
                dt2 = model_only(slide, model, settings, config)[0]
                t_model = min(t_model, dt, dt2)
                cfg2 = InferenceConfig(device=args.device, tissue=False)
                r = predict_slide(slide, model, NORM, cfg2, tmp / "e2")
                r2 = r if r2 is None or r.timings["total"] < r2.timings["total"] else r2
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(
                f"# round {rnd + 1}: baseline {t_base:.1f} s, engine {r1.timings['total']:.1f} s,"
                f" model-only {t_model:.1f} s, engine without tissue {r2.timings['total']:.1f} s"
                f" (best so far); load {_load()}",
                flush=True,
            )
        # informative: a larger tile on this device (more memory, less overhead)
        big = None
        if args.big_tile:
            tmp = Path(tempfile.mkdtemp(prefix="msunet-bench-"))
            try:
                cfg3 = InferenceConfig(device=args.device, tile=args.big_tile)
                big = predict_slide(slide, model, NORM, cfg3, tmp / "e3")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"# engine with tile {args.big_tile}: {big.timings['total']:.1f} s", flush=True)

    t1, t2 = r1.timings["total"], r2.timings["total"]
    base_rate, r1_rate, r2_rate = out_mpx / t_base, out_mpx / t1, out_mpx / t2
    m, tile = r1.margin, r1.tile
    rows += [
        ("(a) baseline: 1024² windows, 50 % overlap, averaged", f"{base_rate:.3f} Mpx/s",
         f"{t_base:.1f} s, overhead {base_px / (H * W):.2f}"),
        ("(a) engine, defaults (tissue on)", f"{r1_rate:.3f} Mpx/s",
         f"{t1:.1f} s; ratio {r1_rate / base_rate:.2f} (target >= 3)"),
        ("(a) engine, tissue detection off", f"{r2_rate:.3f} Mpx/s",
         f"{t2:.1f} s; ratio {r2_rate / base_rate:.2f}"),
        ("(b) tiling overhead at defaults", f"{r1.overhead:.2f}",
         f"tile {tile}, margin {m} (radius {model.receptive_radius}); nominal "
         f"{r1.nominal_overhead:.2f}; target <= 1.2; 50 % overlap = 4.0 "
         f"({base_px / (H * W):.2f} on this image)"),
        ("(c) end-to-end / model-only", f"{t1 / t_model:.3f}",
         f"{t1:.1f} s / {t_model:.1f} s over {n_win} windows of {window[0]}²; "
         f"target <= 1.15"),
        ("(c) end-to-end / the engine's own compute time", f"{t1 / r1.timings['compute']:.3f}",
         f"same run: compute {r1.timings['compute']:.1f} s (forward + crop, softmax, argmax); "
         f"waits for reads {r1.timings['read_wait']:.2f} s, for writes "
         f"{r1.timings['write_wait']:.2f} s; pyramid {r1.timings['finalize']:.2f} s"),
    ]  # fmt: skip
    if big is not None:
        rows.append(
            (f"(a) engine, tile {big.tile} (informative)", f"{out_mpx / big.timings['total']:.3f} "
             "Mpx/s", f"{big.timings['total']:.1f} s; ratio "
             f"{out_mpx / big.timings['total'] / base_rate:.2f}; overhead {big.overhead:.2f}")
        )  # fmt: skip
    print("# engine timings (s):", json.dumps(r1.timings), flush=True)
    print(f"# computed tiles {r1.tiles_computed}, skipped {r1.tiles_skipped}; {r1.device}")

    # (b) what tile reaches 1.2, and its memory (CPU: forward-pass peak RSS, extrapolated)
    a = model.alignment
    t12 = math.ceil(2 * m / (math.sqrt(1.2) - 1) / a) * a
    if not device.startswith("cuda"):
        fw = [_run_child(["--device", args.device, "--_child", "fwd", str(w)]) for w in
              (tile + 2 * m, 2 * tile + 2 * m)]  # fmt: skip
        (w0, p0), (w1, p1) = ((f["window"] ** 2, f["peak"]) for f in fw)
        bpp = (p1 - p0) / (w1 - w0)
        need = p0 + bpp * ((t12 + 2 * m) ** 2 - w0)
        rows.append(
            ("(b) tile for overhead <= 1.2", f"{t12}",
             f"window {t12 + 2 * m}²: ~{need / 1e9:.1f} GB peak RSS (forward peak "
             f"{p0 / 1e9:.2f} GB at {fw[0]['window']}², {p1 / 1e9:.2f} GB at "
             f"{fw[1]['window']}²: {bpp:.0f} B per window px)")
        )  # fmt: skip
    else:
        rows.append(("(b) tile for overhead <= 1.2", f"{t12}", f"window {t12 + 2 * m}²"))

    # GPU: Mpx/s and achieved TFLOP/s against the measured matmul peak
    if device.startswith("cuda"):
        peak = matmul_peak_tflops(torch.device(device))
        flops = gflop * 1e9 * n_win
        rows += [
            ("GPU: bf16 matmul peak (measured)", f"{peak:.1f} TFLOP/s", "8192², best of 3"),
            ("GPU: achieved, model-only", f"{flops / t_model / 1e12:.1f} TFLOP/s",
             f"{flops / t_model / 1e12 / peak:.1%} of peak; "
             f"{n_win * window[0] * window[1] / 1e6 / t_model:.1f} input Mpx/s"),
            ("GPU: achieved, end-to-end", f"{flops / t1 / 1e12:.1f} TFLOP/s",
             f"{flops / t1 / 1e12 / peak:.1%} of peak"),
        ]  # fmt: skip

    # (d) peak RSS, fresh process per slide
    rss = []
    for size in args.rss_sizes:
        path = _slide(args.workdir, size, args.mpp)
        rec = _run_child(["--device", args.device, "--_child", "rss", str(path)])
        rss.append(rec)
        rows.append(
            (f"(d) peak RSS, {size:,}² slide", f"{rec['peak_rss'] / 1e9:.2f} GB",
             f"{rec['shape'][1]}x{rec['shape'][0]} at 1 µm/px, {rec['tiles']} tiles "
             f"({rec['skipped']} skipped) in {rec['seconds']:.0f} s; "
             f"{rec['rss_ready'] / 1e9:.2f} GB before predicting; target <= 2 GB")
        )  # fmt: skip
        print(f"# RSS run {size} done in {rec['seconds']:.0f} s", flush=True)
    if len(rss) == 2:
        ratio = rss[1]["peak_rss"] / rss[0]["peak_rss"]
        rows.append(("(d) peak RSS ratio (larger / smaller)", f"{ratio:.3f}", "target <= 1.1"))

    # (e) informative: smallest margin with >= 99.9 % agreement, random (calibrated) weights
    if args.margin_scan:
        rows += margin_scan(slide_path, args.margin_scan, args.device)

    print(f"load average at end {_load()}")
    print()
    print("| measure | value | details |")
    print("| --- | ---: | --- |")
    for name, value, detail in rows:
        print(f"| {name} | {value} | {detail} |")


def margin_scan(slide_path: Path, side: int, device: str) -> list[tuple[str, str, str]]:
    with open_slide(slide_path) as slide:
        g = working_geometry(slide, 1.0)
        y0 = max(0, g.shape[0] // 2 - side // 2)
        x0 = max(0, g.shape[1] // 2 - side // 2)
        image = SlideReader(slide, g).read(y0, x0, side, side)
    model = _model()
    a = model.alignment
    full = math.ceil(model.receptive_radius / a) * a
    # rescale the head so the classes split the image (random weights are nearly constant)
    settings = resolve_device_settings(InferenceConfig(device=device))
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(NORM.mean).view(1, 3, 1, 1)) / torch.tensor(NORM.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = model(x[..., :512, :512])
    d = (logits[0, 1] - logits[0, 0]).flatten()
    s = 3.0 / float(d.std())
    with torch.no_grad():
        model.head.weight.mul_(s)
        model.head.bias.mul_(s)
        model.head.bias[1] -= s * float(d.median())
    cfg = InferenceConfig(device=device, tile=512, margin=full, amp="none")
    ref_l, ref_p = predict_array(image, model, NORM, cfg, probabilities="float32")
    rows = []
    for margin in range(0, full, a):
        cfg = InferenceConfig(device=device, tile=512, margin=margin, amp="none")
        lab, prob = predict_array(image, model, NORM, cfg, probabilities="float32")
        agree = (lab == ref_l).mean()
        rows.append(
            (f"(e) margin {margin} vs {full} (random weights)", f"{agree:.5f}",
             f"max abs prob diff {np.abs(prob - ref_p).max():.2e}; agreement on a "
             f"{side}² region, tile 512, {settings.device}")
        )  # fmt: skip
        print(f"# margin {margin}: agreement {agree:.5f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
