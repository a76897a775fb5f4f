"""Size, cost and speed of each architecture and preset.

Prints, per model and preset: parameters, GFLOP per megapixel (``torch.utils.flop_counter``,
convolutions only), downsampling factor, alignment, receptive radius, and forward throughput
in megapixels/s with the default (NCHW) and the channels_last memory format, both measured in
this process so their ratio is meaningful on a noisy machine.

Usage::

    python benchmarks/bench_models.py                      # CPU, 256×256 tiles
    python benchmarks/bench_models.py --device cuda --size 1024 --batch 8 --bf16
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_msunet.models import MODELS, PRESETS, build_model


def _gflop_per_mp(model: torch.nn.Module, size: int, device: str) -> float:
    x = torch.zeros(1, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9 / (size * size / 1e6)


def _throughput(
    model: torch.nn.Module, x: torch.Tensor, repeats: int, bf16: bool, device: str
) -> float:
    """Megapixels per second of forward passes (best of ``repeats`` after one warm-up)."""
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16)
    best = float("inf")
    with torch.inference_mode(), autocast:
        for i in range(repeats + 1):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first pass is warm-up
                best = min(best, time.perf_counter() - t0)
    return x.shape[0] * x.shape[2] * x.shape[3] / 1e6 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="tile side in pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()

    dev = args.device
    name = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else platform.processor()
    print(
        f"machine: {platform.machine()} {name or platform.platform()}, "
        f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {dev}{' bf16' if args.bf16 else ''}, tile {args.batch}×{args.size}²"
    )
    header = (
        f"{'model':<15} {'preset':<6} {'params':>10} {'GFLOP/MP':>9} {'factor':>6} "
        f"{'align':>5} {'radius':>6} {'MP/s':>7} {'MP/s cl':>7} {'cl/std':>6}"
    )
    print(header)
    print("-" * len(header))
    torch.manual_seed(0)
    for preset in args.presets:
        for arch in args.models:
            model = build_model(arch, preset=preset).eval()
            size = args.size + (-args.size % model.downsampling_factor)
            params = sum(p.numel() for p in model.parameters())
            radius = model.receptive_radius
            model = model.to(dev)
            gflop = _gflop_per_mp(model, min(size, 256), dev)
            x = torch.randn(args.batch, 3, size, size, device=dev)
            std = _throughput(model, x, args.repeats, args.bf16, dev)
            model = model.to(memory_format=torch.channels_last)
            xcl = x.contiguous(memory_format=torch.channels_last)
            cl = _throughput(model, xcl, args.repeats, args.bf16, dev)
            print(
                f"{arch:<15} {preset:<6} {params:>10,} {gflop:>9.1f} "
                f"{model.downsampling_factor:>6} {model.alignment:>5} {radius:>6} "
                f"{std:>7.3f} {cl:>7.3f} {cl / std:>6.2f}"
            )


if __name__ == "__main__":
    main()
