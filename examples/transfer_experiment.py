"""How much does starting from the bundled model save when the classes change?

The bundled model knows two classes, Background and Gland. Here its glands are split by the
image's diagnosis into a class scheme it never had:

- class 1 "Benign gland": Normal, Polyp;
- class 2 "Neoplastic gland": Low-grade IN, High-grade IN, Adenocarcinoma, Serrated adenoma.

Two arms train the same network with the same settings on those masks:

``transfer``
    Starts from the bundled model through :func:`napari_msunet.models.transfer.with_classes`
    ("replace" scheme: its encoder, decoder and background row of the head are kept, the two
    new head rows start fresh), written exactly as ``msunet finetune --classes replace`` does.
``scratch``
    Starts from random weights.

Each run (arm x seed) trains once to the last of ``--steps-at`` and is scored on the held-out
images at each of those steps (the trainer's epoch is their greatest common divisor, so every
scored step is an epoch end with its checkpoint): per-class and foreground Dice and IoU, pixels
pooled over all held-out images, at their own pixel size (the scale the bundled model was
trained at). The held-out images are the validation part of the bundled model's own split
(stratified by diagnosis, its ``split_seed``), so the bundled model never trained on them;
training images come from its training part.

Usage::

    python examples/transfer_experiment.py --data ../shared/data/ebhi-seg \\
        --out runs/transfer-experiment --seeds 0 1 2
    # table and plot from whatever has finished (no training)
    python examples/transfer_experiment.py --data ../shared/data/ebhi-seg \\
        --out runs/transfer-experiment --report table.md --images docs/images

Resumable: ``result.json`` marks a finished run (it is skipped); an interrupted run continues
at its last checkpoint, and a scored step whose score was not written yet is scored first.
Each run's folder is named by arm, seed and a hash of its settings.

EBHI-Seg: Shi et al., "EBHI-Seg: A novel enteroscope biopsy histopathological hematoxylin and
eosin image dataset for image segmentation tasks", Frontiers in Medicine 2023, CC BY 4.0.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from ebhi_experiments import CREDIT, _machine, _mean_sd, fixed_split
from torch.utils.data import Dataset

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import ConfigError
from napari_msunet.io.annotations import default_color
from napari_msunet.models.checkpoint import load_model, read_header
from napari_msunet.models.device import select_device
from napari_msunet.training.augment import context_size
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.folder_dataset import FolderDataset, ImagePair
from napari_msunet.training.losses import IGNORE_INDEX, LossConfig
from napari_msunet.training.slide_training import _transferred_start
from napari_msunet.training.trainer import EpochEnd, iter_train
from napari_msunet.training.validation import validate

BUNDLED = Path(__file__).resolve().parents[1] / "src/napari_msunet/data/default_model.safetensors"
CLASSES = ("Background", "Benign gland", "Neoplastic gland")
DIAGNOSIS_CLASS = {
    "Normal": 1,
    "Polyp": 1,
    "Low-grade IN": 2,
    "High-grade IN": 2,
    "Adenocarcinoma": 2,
    "Serrated adenoma": 2,
}
"""Class id of an image's glands by its diagnosis (``index.csv``)."""
ARMS = ("transfer", "scratch")
VAL_FRACTION = 0.2
"""The project's default validation fraction, the bundled model's split."""


# ---------------------------------------------------------------------------- relabelling
def relabel(mask: np.ndarray | torch.Tensor, cls: int, ignore_index: int = IGNORE_INDEX):
    """The mask with every gland pixel (non-zero, not ``ignore_index``) set to ``cls``.

    EBHI-Seg masks are one class (1 = gland); the new scheme gives all glands of an image the
    class of its diagnosis. Background and unannotated pixels keep their value. Works on numpy
    arrays and torch tensors alike and returns the same type, without changing the input.
    """
    gland = (mask != 0) & (mask != ignore_index)
    if isinstance(mask, torch.Tensor):
        return torch.where(gland, torch.as_tensor(cls, dtype=mask.dtype), mask)
    return np.where(gland, np.asarray(cls, dtype=mask.dtype), mask)


def class_of(pair: ImagePair, classes: Mapping[str, int] = DIAGNOSIS_CLASS) -> int:
    """The class id of ``pair``'s glands; an image without a known diagnosis is an error."""
    if pair.group not in classes:
        raise ConfigError(
            f"{pair.image}: diagnosis {pair.group!r} is not one of {', '.join(classes)} "
            "(index.csv gives each image's diagnosis)"
        )
    return classes[pair.group]


class DiagnosisClasses(Dataset):
    """A :class:`FolderDataset` whose gland pixels carry the class of the image's diagnosis.

    The masks on disk are left as they are (the data folder may be shared and read-only);
    every item is relabelled as it is read, after the crop, so the sampling and the crops are
    exactly those of the wrapped dataset.
    """

    def __init__(self, base: FolderDataset, classes: Mapping[str, int] = DIAGNOSIS_CLASS):
        self.base = base
        self.cls = [class_of(p, classes) for p in base.pairs]

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = dict(self.base[i])
        item["mask"] = relabel(item["mask"], self.cls[i])
        return item


# ---------------------------------------------------------------------------- settings
def experiment_config(
    parent: Path, seed: int, steps_at: Sequence[int], device: str, lr: float | None
) -> TrainConfig:
    """The one training configuration of both arms: the parent's own recipe, new classes.

    Everything comes from the config the parent was trained with (preset, patch, batch,
    loss, augmentation, normalisation; its header's current µm/px), except: the classes;
    epochs of ``gcd(steps_at)`` steps, so each scored step ends an epoch; the bootstrap start
    moved to the same *step* as in the parent's recipe (it counts epochs); ``lr`` when given.
    """
    header = read_header(parent)
    base = (header.training or {}).get("config")
    if not base:
        sys.exit(f"{parent}: its header has no training config to repeat")
    cfg = TrainConfig.from_dict(base)
    step = math.gcd(*steps_at)
    boot = cfg.loss.bootstrap_after
    if boot is not None:
        parent_epoch = cfg.steps_per_epoch or step
        boot = math.ceil(boot * parent_epoch / step)
    loss = LossConfig(**{**cfg.loss.to_dict(), "bootstrap_after": boot})
    return dataclasses.replace(
        cfg,
        class_names=CLASSES,
        class_colours=((0, 0, 0), *(default_color(i) for i in range(1, len(CLASSES)))),
        mpp=header.input_um_per_px,
        norm_mean=header.norm_mean,
        norm_std=header.norm_std,
        epochs=max(steps_at) // step,
        steps_per_epoch=step,
        lr=cfg.lr if lr is None else lr,
        seed=seed,
        device=device,
        loss=loss,
        num_workers=0,
        validate_every=1,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_dir_of(out: Path, arm: str, config: TrainConfig, parent_sha: str, split: list) -> Path:
    """``out/runs/<arm>-s<seed>-<hash of everything that changes the result>``."""
    what = {"arm": arm, "config": config.to_dict(), "split": split, "classes": DIAGNOSIS_CLASS}
    if arm == "transfer":
        what["parent"] = parent_sha
    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]
    return out / "runs" / f"{arm}-s{config.seed}-{key}"


# ---------------------------------------------------------------------------- running
def evaluate(model_path: Path, val_set: Dataset, config: TrainConfig) -> dict:
    """Held-out scores of a model file (the project's validation: whole images, pooled pixels)."""
    device = select_device(config.device)
    model, header = load_model(model_path, device=device)
    t0 = time.perf_counter()
    scores = validate(model, val_set, config, device)
    step = int((header.training or {}).get("steps", -1))
    return {"step": step, **scores.to_dict(), "eval_s": round(time.perf_counter() - t0, 1)}


def _eval_path(run_dir: Path, step: int) -> Path:
    return run_dir / f"eval-step{step:05d}.json"


def _score(run_dir: Path, model_path: Path, val_set, config, steps_at, log) -> None:
    """Score ``model_path`` if it is at one of ``steps_at`` and not scored yet."""
    step = int((read_header(model_path).training or {}).get("steps", -1))
    path = _eval_path(run_dir, step)
    if step in steps_at and not path.exists():
        res = evaluate(model_path, val_set, config)
        atomic_write_bytes(path, json.dumps(res, indent=2).encode(), overwrite=True)
        log(
            f"  step {step}: Dice benign {res['dice'][1]:.3f} neoplastic {res['dice'][2]:.3f} "
            f"foreground {res['foreground_dice']:.3f} ({res['eval_s']:.0f} s)"
        )


def _training_seconds(history: Path) -> float:
    """Seconds spent in training steps (``step_s`` of each step in the trainer's history)."""
    total = 0.0
    for line in history.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("type") == "step":
            total += float(rec.get("step_s", 0.0))
    return total


def run_one(arm, config, parent, train_pairs, val_pairs, out, steps_at, log) -> dict:
    """Train one arm and seed to ``max(steps_at)``, scoring at each of ``steps_at``."""
    split = sorted(p.stem for p in val_pairs)
    run_dir = run_dir_of(out, arm, config, _sha256(parent), split)
    result_path = run_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    size = context_size(config.patch) if config.augment.rotate else config.patch
    train_set = DiagnosisClasses(FolderDataset(train_pairs, size, seed=config.seed))
    val_set = DiagnosisClasses(FolderDataset(val_pairs, None))
    log(f"{arm} seed {config.seed} -> {run_dir}")
    init, mapping = None, None
    if arm == "transfer":
        init = run_dir / "init.safetensors"
        if not init.exists():
            parent_model, header = load_model(parent, device="cpu")
            init, mapping = _transferred_start(parent_model, header, config, run_dir)
        mapping = read_header(init).training.get("class_mapping")
    last = run_dir / "last.safetensors"
    if last.exists():  # killed between a checkpoint and its score
        _score(run_dir, last, val_set, config, steps_at, log)
    t0 = time.perf_counter()
    gen = iter_train(
        config,
        train_set,
        None,
        run_dir,
        init_model=init,
        provenance={
            "experiment": "transfer_new_classes",
            "arm": arm,
            "diagnosis_classes": DIAGNOSIS_CLASS,
        },
    )
    while True:
        try:
            rec = next(gen)
        except StopIteration as stop:
            res = stop.value
            break
        if isinstance(rec, EpochEnd) and rec.done in steps_at:
            _score(run_dir, rec.checkpoint, val_set, config, steps_at, log)
    wall = time.perf_counter() - t0
    evals = [json.loads(_eval_path(run_dir, s).read_text()) for s in steps_at]
    train_s = _training_seconds(run_dir / "history.jsonl")
    result = {
        "arm": arm,
        "seed": config.seed,
        "run_dir": str(run_dir),
        "parent": str(parent) if arm == "transfer" else None,
        "class_mapping": mapping,
        "steps": res.global_step,
        "evals": evals,
        "train_s": round(train_s, 1),
        "eval_s": round(sum(e["eval_s"] for e in evals), 1),
        "wall_s_this_session": round(wall, 1),
        "machine": _machine(),
        "config": config.to_dict(),
    }
    if not res.stopped:
        atomic_write_bytes(result_path, json.dumps(result, indent=2).encode(), overwrite=True)
    return result


def parent_reference(parent: Path, val_pairs, out: Path, device: str) -> dict:
    """The parent's own held-out Gland Dice (two classes): the foreground level to compare."""
    path = out / "parent-heldout.json"
    if path.exists():
        return json.loads(path.read_text())
    header = read_header(parent)
    cfg = TrainConfig(
        class_names=header.class_names,
        norm_mean=header.norm_mean,
        norm_std=header.norm_std,
        device=device,
    )
    res = {**evaluate(parent, FolderDataset(val_pairs, None), cfg), "model": str(parent)}
    atomic_write_bytes(path, json.dumps(res, indent=2).encode(), overwrite=True)
    return res


def finished(out: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in sorted(out.glob("runs/*/result.json"))]
    return sorted(found, key=lambda r: (ARMS.index(r["arm"]), r["seed"]))


# ---------------------------------------------------------------------------- reporting
METRICS = (
    ("Benign gland", lambda e: e["dice"][1]),
    ("Neoplastic gland", lambda e: e["dice"][2]),
    ("foreground", lambda e: e["foreground_dice"]),
)


def _curves(results: list[dict], arm: str, metric) -> tuple[list[int], np.ndarray, list[int]]:
    rs = [r for r in results if r["arm"] == arm]
    if not rs:
        return [], np.zeros((0, 0)), []
    steps = [e["step"] for e in rs[0]["evals"]]
    return steps, np.array([[metric(e) for e in r["evals"]] for r in rs]), [r["seed"] for r in rs]


def savings(results: list[dict]) -> list[str]:
    """Per metric: the first scored step at which transfer's mean reaches scratch's last."""
    lines = []
    for name, metric in METRICS:
        steps, t, _ = _curves(results, "transfer", metric)
        s_steps, s, _ = _curves(results, "scratch", metric)
        if not t.size or not s.size:
            continue
        target = s.mean(0)[-1]
        reach = [st for st, v in zip(steps, t.mean(0), strict=True) if v >= target]
        where = f"at {reach[0]} steps" if reach else f"not by {steps[-1]} steps"
        lines.append(
            f"- {name} Dice: scratch reaches {target:.3f} at {s_steps[-1]} steps; transfer "
            f"reaches it {where} (transfer at {steps[-1]}: {t.mean(0)[-1]:.3f})"
        )
    return lines


def table(results: list[dict], reference: dict | None) -> str:
    lines = [
        "| arm | steps | seeds | Dice Benign gland | Dice Neoplastic gland | Dice foreground "
        "| IoU foreground |",
        "| --- | ---: | --- | --- | --- | --- | --- |",
    ]
    for arm in ARMS:
        rs = [r for r in results if r["arm"] == arm]
        if not rs:
            lines.append(f"| {arm} | | none yet | | | | |")
            continue
        seeds = ", ".join(str(r["seed"]) for r in rs)
        for k, e0 in enumerate(rs[0]["evals"]):
            cells = [_mean_sd([m(r["evals"][k]) for r in rs]) for _, m in METRICS]
            iou = _mean_sd([r["evals"][k]["foreground_iou"] for r in rs])
            lines.append(f"| {arm} | {e0['step']} | {seeds} | {' | '.join(cells)} | {iou} |")
    if reference:
        lines.append(
            f"| bundled model (Gland, 2 classes) | {reference['step']} | – | – | – | "
            f"{reference['foreground_dice']:.3f} | {reference['foreground_iou']:.3f} |"
        )
    return "\n".join(lines)


def plot(results: list[dict], reference: dict | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6), dpi=110, sharey=True)
    for ax, (name, metric) in zip(axes, METRICS, strict=True):
        for i, arm in enumerate(ARMS):
            steps, curves, seeds = _curves(results, arm, metric)
            if not curves.size:
                continue
            colour = f"C{i}"
            for row in curves:
                ax.plot(steps, row, "-", color=colour, alpha=0.35, lw=0.8)
            label = f"{arm} (mean of {len(seeds)} seeds; thin: each seed)"
            ax.plot(steps, curves.mean(0), "-o", color=colour, lw=2, label=label)
        if name == "foreground" and reference:
            ax.axhline(reference["foreground_dice"], color="0.4", ls="--", lw=0.8)
            ax.text(
                0.03,
                reference["foreground_dice"] + 0.01,
                "bundled model (2 classes), Gland",
                fontsize=7,
                transform=ax.get_yaxis_transform(),
            )
        ax.set_xscale("log")
        steps = sorted({e["step"] for r in results for e in r["evals"]})
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.set_xlabel("training steps (8 patches of 128²)")
        ax.set_title(f"{name} Dice", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out Dice (358 images, pooled pixels)")
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(
        "Glands split by diagnosis: transfer from the bundled model vs scratch", fontsize=10
    )
    fig.text(0.01, 0.01, f"Data: {CREDIT}", fontsize=5, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="EBHI-Seg folder")
    ap.add_argument("--out", type=Path, required=True, help="where runs and the split go")
    ap.add_argument("--model", type=Path, default=BUNDLED, help="the parent (default: bundled)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--steps-at",
        default="50,200,800",
        help="comma-separated steps at which to score (training runs to the last)",
    )
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    ap.add_argument("--lr", type=float, default=None, help="default: the parent's training lr")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--report", type=Path, help="write the table (markdown) here; no training")
    ap.add_argument("--images", type=Path, help="with --report: write the plot here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps_at = sorted({int(s) for s in args.steps_at.split(",")})
    if not steps_at or steps_at[0] < 1:
        sys.exit(f"--steps-at: positive step counts needed, got {args.steps_at!r}")
    header = read_header(args.model)
    folders = ((header.training or {}).get("data") or {}).get("folders") or [{}]
    split_seed = int(folders[0].get("split_seed", 0))
    train_pairs, val_pairs = fixed_split(args.data, args.out, VAL_FRACTION, split_seed)
    if "val" in folders[0] and (len(train_pairs), len(val_pairs)) != (
        folders[0]["train"],
        folders[0]["val"],
    ):
        sys.exit(
            f"{args.model} was trained on {folders[0]['train']} / {folders[0]['val']} images, "
            f"this split has {len(train_pairs)} / {len(val_pairs)}: not its held-out set"
        )

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    if args.report:
        results = finished(args.out)
        ref_path = args.out / "parent-heldout.json"
        reference = json.loads(ref_path.read_text()) if ref_path.exists() else None
        parts = [table(results, reference), "", *savings(results)]
        if args.images:
            img = plot(results, reference, args.images / "results_transfer_new_classes.png")
            parts.append(f"\n![transfer vs scratch](images/{img.name})")
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text("\n".join(parts) + "\n")
        print(args.report.read_text())
        return 0
    log(f"split: {len(train_pairs)} train / {len(val_pairs)} held out ({args.out / 'split.csv'})")
    ref = parent_reference(args.model, val_pairs, args.out, args.device)
    log(f"parent's held-out Gland Dice {ref['foreground_dice']:.4f}")
    t0 = time.perf_counter()
    for seed in args.seeds:  # seed by seed: a stopped suite leaves whole seeds of both arms
        for arm in ARMS:
            cfg = experiment_config(args.model, seed, steps_at, args.device, args.lr)
            r = run_one(arm, cfg, args.model, train_pairs, val_pairs, args.out, steps_at, log)
            last = r["evals"][-1]
            log(f"  done: {arm} seed {seed}: foreground Dice {last['foreground_dice']:.4f}")
    log(f"finished in {math.ceil((time.perf_counter() - t0) / 60)} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
