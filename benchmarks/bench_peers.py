"""Against a peer: the engine and TIAToolbox's SemanticSegmentor, same model, same slide.

Issue 14's peer target: the engine at least 2x TIAToolbox as a user runs it (fp32, the same
model and slide) at the same margin. Measured on the slide of ``bench_speed.py`` (EBHI-Seg
patches tiled 32 x 32 into a 7168² JPEG-tiled SVS at 0.5 µm/px, 3584² working pixels at the
model's 1 µm/px) with the bundled model (``napari_msunet.demo.default_model_path()``):

- **engine, defaults**: ``predict_slide`` with ``InferenceConfig()``: the measured margin
  (128 px for the bundled model), bf16 where the CPU has it, its auto tile, tissue detection, both
  OME-Zarr pyramids (labels and probabilities) written;
- **engine, fp32**: the same with ``amp="none"`` and the measured margin given explicitly
  (its auto tile: 896 on this image, see ``tiling.balanced_tile``);
- **engine, fp32, tile 1024**: the same windows as TIAToolbox's (1280² computed per 1024²);
- **TIAToolbox, fp32**: ``SemanticSegmentor.run(patch_mode=False, output_type="zarr")`` with
  the model wrapped in a ``ModelABC`` (``infer_batch``: the model's normalisation, forward
  pass, softmax, centre crop; ``postproc``: argmax), ``IOSegmentorConfig`` at 1 µm/px
  (``units="mpp"``), input 1280² (tile 1024 + 2 x 128 margin), output the centre 1024², stride
  1024, batch size 1 (the engine's on CPU), ``num_workers`` 0 (TIAToolbox's default, the
  reference for the ratios) and 2 (its docs: ``cpu_count()`` for maximum usage), see
  ``--tia-workers``, its own tissue mask (``auto_get_mask=True``, its default: a threshold on
  a 1.25x thumbnail), labels written to a zarr (no probabilities: its default);
- **engine, exact fp32** (``margin="exact", amp="none"``), once, untimed: the reference labels.

Every timed run is a fresh subprocess (model loaded and imports done before the clock starts;
the clock covers the call that reads the slide and writes the outputs), so peak RSS (``VmHWM``)
is each run's own. Both sides use the same number of torch threads (``--threads``). Rounds are
interleaved (``--repeat``), the best time counts. Reported: seconds, Mpx/s of working pixels,
the ratio of TIAToolbox's time to each engine run, peak RSS, and label agreement with the exact
run on the engine's tissue mask (and with the engine fp32 run, same margin; also away from the
slide's edge, where TIAToolbox pads with white), and how TIAToolbox's read of one window at
1 µm/px differs from the engine's (it reads level 0 and resizes, the engine area-averages).

TIAToolbox is optional and pins an older torch than the project; install it into its own venv
and pass its python with ``--tia-python`` (the TIAToolbox half then runs there and hands its
labels back through a .npy file)::

    python3.11 -m venv /tmp/tia-venv
    /tmp/tia-venv/bin/pip install torch==2.13.0      # the CPU wheel; replaced by the next line
    /tmp/tia-venv/bin/pip install tiatoolbox==2.1.3  # pins torch<2.13: torch 2.12.1 (+cu130
                                                     # from PyPI, runs on CPU), torchvision 0.27.1

No system library was needed (openslide comes as the ``openslide-bin`` wheel).

The project itself is not installed there: the child adds ``src/`` to ``sys.path`` (its
imports, safetensors and numpy, come with tiatoolbox).

Usage::

    python benchmarks/bench_peers.py --data ../shared/data/ebhi-seg --workdir /tmp/msunet-speed \\
        --tia-python /tmp/tia-venv/bin/python

EBHI-Seg: Shi et al., Frontiers in Medicine 10:1114673 (2023), CC BY 4.0.
TIAToolbox: Pocock et al., Communications Medicine 2:120 (2022).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path[:0] = [str(HERE), str(SRC)]  # the TIAToolbox child runs where the project is not installed

from bench_inference import _load, _machine, _peak_rss  # noqa: E402
from bench_speed import _labels, build  # noqa: E402

TILE = 1024
INSTALL = (
    "TIAToolbox is not installed: pip install tiatoolbox==2.1.3 into its own venv "
    "(python3.11 -m venv /tmp/tia-venv && /tmp/tia-venv/bin/pip install tiatoolbox==2.1.3) "
    "and pass --tia-python /tmp/tia-venv/bin/python"
)


# -- children: one timed run each, in a fresh process ----------------------------------------


def _model(threads: int):
    import torch

    from napari_msunet.demo import default_model_path
    from napari_msunet.models.checkpoint import load_model

    torch.set_num_threads(threads)
    return load_model(default_model_path())


def child_engine(slide_path: Path, run: str, out: Path, device: str, threads: int) -> dict:
    """The engine on the slide: ``run`` is defaults, fp32 (measured margin) or exact."""
    import torch

    from napari_msunet.inference import InferenceConfig, predict_slide
    from napari_msunet.io.slide import open_slide
    from napari_msunet.models.margin import measured_margin

    model, header = _model(threads)
    mpp = header.input_um_per_px
    config = {
        "defaults": InferenceConfig(target_mpp=mpp, device=device),
        "fp32": InferenceConfig(
            target_mpp=mpp, device=device, amp="none", margin=measured_margin(header)
        ),
        "fp32, tile 1024": InferenceConfig(
            target_mpp=mpp, device=device, amp="none", margin=measured_margin(header), tile=TILE
        ),
        "exact": InferenceConfig(target_mpp=mpp, device=device, amp="none", margin="exact"),
    }[run]
    with open_slide(slide_path) as slide:
        t0 = time.perf_counter()
        r = predict_slide(slide, model, header, config, out / "pred")
        seconds = time.perf_counter() - t0
    np.save(out / "labels.npy", _labels(out / "pred"))
    amp = r.device.split("amp ", 1)[1].split(", channels_last")[0]
    return {
        "seconds": seconds,
        "peak_rss": _peak_rss(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "setup": f"tile {r.tile}, margin {r.margin}, {amp}, {r.tiles_computed} tiles",
        "device": r.device,
    }


def child_tia(slide_path: Path, out: Path, device: str, threads: int, workers: int) -> dict:
    """TIAToolbox's SemanticSegmentor on the slide, the model wrapped as a user would."""
    import tiatoolbox
    import torch
    import zarr
    from tiatoolbox.models.engine.io_config import IOSegmentorConfig
    from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
    from tiatoolbox.models.models_abc import ModelABC

    from napari_msunet.inference import Normalization
    from napari_msunet.models.margin import measured_margin

    net, header = _model(threads)
    margin = measured_margin(header)
    norm = Normalization.of(header)

    class Wrapped(ModelABC):
        """The network with its input normalisation; output cropped to the centre tile."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
            self.std = torch.tensor(norm.std).view(1, 3, 1, 1)
            self.crop = margin

        def forward(self, x):
            return self.net(x)

        @staticmethod
        def infer_batch(model, batch_data, *, device):
            model.eval()
            x = torch.as_tensor(batch_data).to(device=device, dtype=torch.float32)
            x = (x.permute(0, 3, 1, 2) / 255 - model.mean) / model.std  # NHWC uint8 -> NCHW
            with torch.inference_mode():
                probs = torch.softmax(model(x), dim=1)
            c = model.crop
            probs = probs[:, :, c : probs.shape[2] - c, c : probs.shape[3] - c]
            return probs.permute(0, 2, 3, 1).cpu().numpy()  # NHWC

        @staticmethod
        def postproc(image):
            return image.argmax(axis=-1)

    mpp = {"units": "mpp", "resolution": header.input_um_per_px}
    ioconfig = IOSegmentorConfig(
        input_resolutions=[mpp],
        output_resolutions=[mpp],
        patch_input_shape=(TILE + 2 * margin, TILE + 2 * margin),
        patch_output_shape=(TILE, TILE),
        stride_shape=(TILE, TILE),
        save_resolution=mpp,
    )
    segmentor = SemanticSegmentor(
        model=Wrapped(), batch_size=1, num_workers=workers, device=device, verbose=False
    )
    t0 = time.perf_counter()
    result = segmentor.run(
        [slide_path],
        patch_mode=False,
        ioconfig=ioconfig,
        save_dir=out / "tia",
        overwrite=True,
        output_type="zarr",
        auto_get_mask=True,
    )
    seconds = time.perf_counter() - t0
    (zarr_path,) = result.values()
    labels = np.asarray(zarr.open_group(str(zarr_path), mode="r")["predictions"])
    np.save(out / "labels.npy", labels.astype(np.uint8))
    dataset = segmentor.dataloader.dataset
    patches = len(dataset.inputs)
    k = patches // 2 + 2  # an inner window: TIAToolbox's read against the engine's
    np.save(out / "window.npy", np.asarray(dataset[k]["image"]))
    np.save(out / "window_at.npy", np.asarray(dataset.inputs[k]))
    return {
        "seconds": seconds,
        "peak_rss": _peak_rss(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "window": TILE + 2 * margin,
        "setup": f"input {TILE + 2 * margin}², output {TILE}², stride {TILE}, fp32, "
        f"{patches} patches",
        "device": f"tiatoolbox {tiatoolbox.__version__}, batch 1, num_workers {workers}",
    }


def _child(python: str, args: list[str]) -> dict:
    cmd = [python, str(Path(__file__).resolve()), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _has_tiatoolbox(python: str) -> bool:
    try:
        probe = subprocess.run(
            [python, "-c", "import tiatoolbox"], capture_output=True, check=False, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


# -- main ------------------------------------------------------------------------------------


def _tissue(slide_path: Path, mpp: float) -> np.ndarray:
    """The engine's tissue mask on the working grid (as ``bench_speed.py``)."""
    from napari_msunet.io.slide import open_slide
    from napari_msunet.io.tissue import detect_tissue
    from napari_msunet.io.working_image import working_geometry

    with open_slide(slide_path) as slide:
        geometry = working_geometry(slide, mpp)
        H, W = geometry.shape
        t = detect_tissue(slide)
    rows = np.minimum((np.arange(H) + 0.5) * geometry.downsample[0] / t.downsample[0],
                      t.mask.shape[0] - 1).astype(int)  # fmt: skip
    cols = np.minimum((np.arange(W) + 0.5) * geometry.downsample[1] / t.downsample[1],
                      t.mask.shape[1] - 1).astype(int)  # fmt: skip
    return t.mask[np.ix_(rows, cols)]


def _read_window(slide_path: Path, mpp: float, y: int, x: int, h: int, w: int) -> np.ndarray:
    """The engine's read of a working-resolution window (area averaging)."""
    from napari_msunet.io.slide import open_slide
    from napari_msunet.io.working_image import SlideReader, working_geometry

    with open_slide(slide_path) as slide:
        return SlideReader(slide, working_geometry(slide, mpp)).read(y, x, h, w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="EBHI-Seg folder")
    ap.add_argument("--workdir", type=Path, help="cache for the slide")
    ap.add_argument("--tia-python", default=sys.executable,
                    help="python of the venv with tiatoolbox (default: this one)")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    ap.add_argument("--tia-workers", type=int, nargs="+", default=[0, 2],
                    help="TIAToolbox num_workers, one run each; the first: reference")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", choices=["engine", "tia"], help=argparse.SUPPRESS)
    ap.add_argument("--run", default="defaults", help=argparse.SUPPRESS)
    ap.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "engine":
        record = child_engine(args.slide, args.run, args.out, args.device, args.threads)
        print(json.dumps(record))
        return
    if args.child == "tia":
        record = child_tia(args.slide, args.out, args.device, args.threads, args.tia_workers[0])
        print(json.dumps(record))
        return
    if args.data is None or args.workdir is None:
        ap.error("--data and --workdir are required")
    if not _has_tiatoolbox(args.tia_python):
        print(f"{INSTALL} (no tiatoolbox importable by {args.tia_python}); skipped.")
        return

    import torch

    torch.set_num_threads(args.threads)
    from napari_msunet.demo import default_model_path
    from napari_msunet.models.checkpoint import load_model

    _, header = load_model(default_model_path())
    args.workdir.mkdir(parents=True, exist_ok=True)
    slide_path, _ = build(args.data, args.workdir)
    print(f"machine: {_machine(args.device)}; load {_load()}", flush=True)
    common = ["--slide", str(slide_path), "--device", args.device, "--threads", str(args.threads)]
    runs = {
        "engine, defaults": (sys.executable, ["--child", "engine", "--run", "defaults"]),
        "engine, fp32": (sys.executable, ["--child", "engine", "--run", "fp32"]),
        "engine, fp32, tile 1024": (
            sys.executable,
            ["--child", "engine", "--run", "fp32, tile 1024"],
        ),
    }
    for i, w in enumerate(args.tia_workers):
        name = "TIAToolbox, fp32" + ("" if i == 0 else f", num_workers {w}")
        runs[name] = (args.tia_python, ["--child", "tia", "--tia-workers", str(w)])
    best: dict[str, dict] = {}
    labels: dict[str, np.ndarray] = {}
    tmp = Path(tempfile.mkdtemp(prefix="msunet-peers-"))
    try:
        for rnd in range(args.repeat):
            for name, (python, extra) in runs.items():
                out = tmp / f"{len(labels)}-{rnd}"
                out.mkdir()
                rec = _child(python, [*extra, *common, "--out", str(out)])
                if rec["seconds"] < best.get(name, {"seconds": math.inf})["seconds"]:
                    best[name] = rec
                    labels[name] = np.load(out / "labels.npy")
                if (out / "window.npy").exists():
                    window = np.load(out / "window.npy"), np.load(out / "window_at.npy")
                shutil.rmtree(out, ignore_errors=True)
            print(f"# round {rnd + 1}: "
                  + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in best.items())
                  + f"; load {_load()}", flush=True)  # fmt: skip
        out = tmp / "exact"
        out.mkdir()
        exact = _child(sys.executable, ["--child", "engine", "--run", "exact", *common,
                                        "--out", str(out)])  # fmt: skip
        ref = np.load(out / "labels.npy")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tissue = _tissue(slide_path, header.input_um_per_px)
    H, W = ref.shape
    mpx = H * W / 1e6
    tia = best["TIAToolbox, fp32"]["seconds"]
    fp32 = labels["engine, fp32"]
    margin = (best["TIAToolbox, fp32"]["window"] - TILE) // 2
    inner = np.zeros_like(tissue)
    inner[margin:-margin, margin:-margin] = True  # no input window reaches past the slide
    print()
    print(f"working image {W}x{H} px at {header.input_um_per_px} µm/px; tissue (engine's mask) "
          f"{tissue.mean():.1%}; exact fp32 reference {exact['seconds']:.1f} s")  # fmt: skip
    print("| run | time | Mpx/s | speed-up over TIAToolbox | setup | peak RSS "
          "| labels = exact fp32 (tissue) | = engine fp32 (tissue) |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for name, rec in best.items():
        lab = labels[name]
        if lab.shape != ref.shape:
            raise RuntimeError(f"{name}: labels {lab.shape}, expected {ref.shape}")
        same_ref, same_fp32 = (lab == ref)[tissue].mean(), (lab == fp32)[tissue].mean()
        print(f"| {name} | {rec['seconds']:.1f} s | {mpx / rec['seconds']:.2f} | "
              f"{tia / rec['seconds']:.2f} | {rec['setup']} | {rec['peak_rss'] / 2**30:.2f} GiB "
              f"| {same_ref:.4%} | {same_fp32:.4%} |")  # fmt: skip
    (x0, y0, x1, y1), read = window[1], window[0]
    eng = _read_window(slide_path, header.input_um_per_px, y0, x0, y1 - y0, x1 - x0)
    diff = np.abs(read.astype(np.int16) - eng.astype(np.int16))
    print(f"# reads: TIAToolbox's window ({x0}, {y0})-({x1}, {y1}) against the engine's: "
          f"mean |difference| {diff.mean():.2f}, max {diff.max()} (of 255)")  # fmt: skip
    for name in best:
        lab = labels[name]
        print(f"# {name}: labels = engine fp32 on tissue at least {margin} px from the slide's "
              f"edge: {(lab == fp32)[tissue & inner].mean():.4%}")  # fmt: skip
    for name, rec in best.items():
        print(f"# {name}: torch {rec['torch']} ({rec['threads']} threads); {rec['device']}")
    print(f"load at end {_load()}")


if __name__ == "__main__":
    main()
