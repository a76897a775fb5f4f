"""Reproduce the paper's two claims on EBHI-Seg with the project's own trainer.

Experiment I: MS U-Net vs U-Net vs Attention U-Net (clean annotations).
Experiment II: CE vs fuzzy boundaries (FB) vs bootstrapping (BS) vs FB+BS when the training
annotations are noisy and incomplete (seeded corruption, :mod:`napari_msunet.training.label_noise`),
always scored on the clean validation masks, with a clean-label run as the ceiling.

Usage::

    # run (resumable: finished runs are skipped, an interrupted run continues at its step)
    python examples/ebhi_experiments.py --data ../shared/data/ebhi-seg \\
        --out runs/ebhi-experiments examples/experiments/exp1_architectures.yaml \\
        examples/experiments/exp2_noisy_labels.yaml
    # tables and plots from whatever has finished
    python examples/ebhi_experiments.py --data ../shared/data/ebhi-seg \\
        --out runs/ebhi-experiments --report docs/results-tables.md --images docs/images \\
        examples/experiments/*.yaml

Each run's folder under ``<out>/runs`` is named by its arm, seed and a hash of every setting
that affects it, so an arm shared by two experiments trains once. ``result.json`` marks a
finished run. The train/validation split is written to ``<out>/split.csv`` on the first
call and read back (and checked against the data) afterwards.

EBHI-Seg: Shi et al., "EBHI-Seg: A novel enteroscope biopsy histopathological hematoxylin and
eosin image dataset for image segmentation tasks", Frontiers in Medicine 2023, CC BY 4.0.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.evaluation.image_scores import constant_baselines, score_image
from napari_msunet.evaluation.paired import paired_bootstrap, paired_t
from napari_msunet.models.checkpoint import load_model
from napari_msunet.training.augment import context_size
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.folder_dataset import (
    FolderDataset,
    ImagePair,
    find_pairs,
    stratified_split,
)
from napari_msunet.training.label_noise import LabelNoise, corrupt_mask
from napari_msunet.training.trainer import EpochEnd, iter_train
from napari_msunet.training.validation import iter_predictions

CREDIT = (
    "EBHI-Seg (Shi et al., Frontiers in Medicine 2023, doi:10.3389/fmed.2023.1114673), CC BY 4.0"
)


# ---------------------------------------------------------------------------- experiment files
def load_experiment(path: Path) -> dict:
    with path.open() as f:
        exp = yaml.safe_load(f)
    for key in ("name", "seeds", "split", "base", "arms"):
        if key not in exp:
            sys.exit(f"{path}: missing key {key!r}")
    for arm in exp["arms"]:
        if arm.get("labels") not in ("clean", "noisy"):
            sys.exit(f"{path}: arm {arm.get('name')!r}: labels must be clean or noisy")
        if arm["labels"] == "noisy" and "noise" not in exp:
            sys.exit(f"{path}: arm {arm['name']!r} uses noisy labels but there is no 'noise'")
    return exp


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def arm_config(exp: dict, arm: dict, seed: int) -> TrainConfig:
    return TrainConfig.from_dict(_merge(exp["base"], {**arm.get("train", {}), "seed": seed}))


def run_key(exp: dict, arm: dict, config: TrainConfig) -> str:
    """A hash of everything that changes a run's result (not its name or experiment)."""
    what = {
        "config": config.to_dict(),
        "split": exp["split"],
        "labels": arm["labels"],
        "noise": noise_of(exp, arm) if arm["labels"] == "noisy" else None,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_dir_of(out: Path, arm: dict, seed: int, key: str) -> Path:
    """The run's folder: an existing one with the same settings (key) under any arm name,
    else a new one named after this arm."""
    found = sorted((out / "runs").glob(f"*-s{seed}-{key}"))
    return found[0] if found else out / "runs" / f"{_slug(arm['name'])}-s{seed}-{key}"


# ---------------------------------------------------------------------------- data
def fixed_split(data: Path, out: Path, val_fraction: float, seed: int):
    """The stratified split, saved to ``out/split.csv`` once and checked on every later call.

    The split is recomputed (it is seeded) so the training list keeps its stratified order,
    which the sampling and the per-image corruption seeds depend on; a saved split that
    differs (other data, other seed) stops the suite rather than mixing two splits.
    """
    train, val = stratified_split(find_pairs(data), val_fraction, seed)
    path = out / "split.csv"
    rows = [(p.stem, p.group, "train") for p in train] + [(p.stem, p.group, "val") for p in val]
    if path.exists():
        with path.open(newline="") as f:
            saved = {(r["stem"], r["split"]) for r in csv.DictReader(f)}
        if saved != {(stem, split) for stem, _, split in rows}:
            sys.exit(f"{path}: this saved split differs from the split of {data} (seed {seed})")
        return train, val
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["stem", "diagnosis", "split"])
    w.writerows(sorted(rows, key=lambda r: (r[2], r[0])))
    atomic_write_bytes(path, text.getvalue().encode())
    return train, val


def noise_of(exp: dict, arm: dict) -> dict | None:
    """The label noise of an arm: its own ``noise`` block, else the experiment's."""
    return arm.get("noise", exp.get("noise"))


def noisy_pairs(train: list[ImagePair], noise_cfg: dict, out: Path) -> list[ImagePair]:
    """Training pairs whose masks are the seeded corruption, written once under ``out``."""
    cfg = dict(noise_cfg)
    seed = int(cfg.pop("seed", 0))
    noise = LabelNoise(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
    tag = hashlib.sha256(json.dumps([noise.to_dict(), seed], sort_keys=True).encode()).hexdigest()
    folder = out / f"noisy-masks-{tag[:8]}"
    report = folder / "report.json"
    result = [ImagePair(p.image, folder / f"{p.stem}.png", p.group) for p in train]
    if report.exists():
        return result
    folder.mkdir(parents=True, exist_ok=True)
    totals = {"regions": 0, "dropped": 0, "vanished": 0, "changed_pixels": 0, "pixels": 0}
    fg_before = fg_after = inter = union = 0
    for i, p in enumerate(train):
        with Image.open(p.mask) as m:
            mask = np.asarray(m).astype(np.uint8)
        noisy, rep = corrupt_mask(mask, noise, (seed, i))
        Image.fromarray(noisy).save(folder / f"{p.stem}.png")
        for k in ("regions", "dropped", "vanished", "changed_pixels"):
            totals[k] += getattr(rep, k)
        totals["pixels"] += mask.size
        clean, dirty = mask > 0, noisy > 0
        fg_before += int(clean.sum())
        fg_after += int(dirty.sum())
        inter += int((clean & dirty).sum())
        union += int((clean | dirty).sum())
    totals.update(
        noise=noise.to_dict(),
        seed=seed,
        images=len(train),
        foreground_before=fg_before,
        foreground_after=fg_after,
        label_agreement_iou=inter / union if union else float("nan"),
    )
    report.write_text(json.dumps(totals, indent=2))
    return result


# ---------------------------------------------------------------------------- running
def run_one(exp, arm, seed, train_pairs, val_pairs, out: Path, log) -> dict:
    config = arm_config(exp, arm, seed)
    key = run_key(exp, arm, config)
    run_dir = run_dir_of(out, arm, seed, key)
    result_path = run_dir / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    noisy = arm["labels"] == "noisy"
    pairs = noisy_pairs(train_pairs, noise_of(exp, arm), out) if noisy else train_pairs
    size = context_size(config.patch) if config.augment.rotate else config.patch
    train_set = FolderDataset(pairs, size, noisy=arm["labels"] == "noisy", seed=seed)
    val_set = FolderDataset(val_pairs, None)
    log(f"[{exp['name']}] {arm['name']} seed {seed} -> {run_dir}")
    t0 = time.perf_counter()
    gen = iter_train(config, train_set, val_set, run_dir, provenance={"experiment": exp["name"]})
    while True:
        try:
            rec = next(gen)
        except StopIteration as stop:
            res = stop.value
            break
        if isinstance(rec, EpochEnd) and rec.val is not None:
            log(
                f"  epoch {rec.epoch}: val Dice {rec.val.foreground_dice:.4f} "
                f"IoU {rec.val.foreground_iou:.4f}"
            )
    wall = time.perf_counter() - t0
    final = res.history[-1] if res.history else {}
    result = {
        "experiment": exp["name"],
        "arm": arm["name"],
        "labels": arm["labels"],
        "seed": seed,
        "key": key,
        "run_dir": str(run_dir),
        "final_dice": final.get("foreground_dice"),
        "final_iou": final.get("foreground_iou"),
        "best_dice": res.best_score,
        "history": res.history,
        "steps": res.global_step,
        "wall_s_this_session": round(wall, 1),
        "machine": _machine(),
        "config": config.to_dict(),
    }
    if not res.stopped:
        log("  scoring the final model image by image")
        result["per_image"] = per_image_scores(
            res.last, val_set, config, [p.stem for p in val_pairs]
        )
    if not res.stopped:
        atomic_write_bytes(result_path, json.dumps(result, indent=2).encode(), overwrite=True)
    return result


def per_image_scores(model_path, val_set, config, stems) -> dict[str, dict]:
    """Every image's scores (:mod:`napari_msunet.evaluation.image_scores`) for the model at
    ``model_path``: foreground = every class but background; ignored pixels count as
    background on both sides."""
    model, _ = load_model(model_path)
    device = torch.device(
        "cuda" if config.device.startswith("cuda") and torch.cuda.is_available() else "cpu"
    )
    model.to(device)
    out = {}
    for i, pred, target in iter_predictions(model, val_set, config, device):
        ignored = target == config.loss.ignore_index
        p = ((pred > 0) & ~ignored).cpu().numpy()
        t = ((target > 0) & ~ignored).cpu().numpy()
        out[stems[i]] = score_image(p, t).to_dict()
    return out


def _machine() -> str:
    return (
        f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{platform.python_version()}, torch {torch.__version__}"
    )


def runs_of(exp, out: Path) -> list[dict]:
    """Finished results of an experiment, in arm then seed order."""
    found = []
    for arm in exp["arms"]:
        for seed in exp["seeds"]:
            config = arm_config(exp, arm, seed)
            key = run_key(exp, arm, config)
            p = run_dir_of(out, arm, seed, key) / "result.json"
            if p.exists():
                found.append({**json.loads(p.read_text()), "arm": arm["name"]})
    return found


# ---------------------------------------------------------------------------- reporting
def _mean_sd(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "—"
    sd = v.std(ddof=1) if v.size > 1 else float("nan")
    return f"{v.mean():.3f} ± {sd:.3f}" if v.size > 1 else f"{v.mean():.3f}"


def table(exp, results: list[dict]) -> str:
    lines = [
        f"**{exp.get('title', exp['name'])}**",
        "",
        "| arm | labels | seeds | Dice (final) | IoU (final) | Dice (best epoch) "
        "| last 3 epochs' range | settled |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arm in exp["arms"]:
        rs = [r for r in results if r["arm"] == arm["name"]]
        seeds = ", ".join(str(r["seed"]) for r in rs) or "none yet"
        spread, settled = settling(rs)
        lines.append(
            f"| {arm['name']} | {arm['labels']} | {seeds} | "
            f"{_mean_sd([r['final_dice'] for r in rs])} | {_mean_sd([r['final_iou'] for r in rs])} "
            f"| {_mean_sd([r['best_dice'] for r in rs])} | {spread} | {settled} |"
        )
    lines += [
        "",
        "Last 3 epochs' range: the largest minus the smallest validation Dice of the last three "
        "epochs, mean over seeds; settled: that range is within the seed-to-seed standard "
        "deviation of the final Dice (the curves have flattened at this budget).",
    ]
    return "\n".join(lines + _pooled_differences(exp, results))


def _pooled_differences(exp, results: list[dict]) -> list[str]:
    """Each arm's final pooled Dice and IoU minus the reference arm's, paired by seed."""
    ref_name = exp.get("reference", exp["arms"][0]["name"])
    ref = {r["seed"]: r for r in results if r["arm"] == ref_name}
    rows = []
    for arm in exp["arms"]:
        rs = [r for r in results if r["arm"] == arm["name"] and r["seed"] in ref]
        if arm["name"] == ref_name or len(rs) < 2:
            continue
        cells = [
            paired_t([ref[r["seed"]][k] for r in rs], [r[k] for r in rs]).text()
            for k in ("final_dice", "final_iou")
        ]
        rows.append(f"| {arm['name']} | {len(rs)} | {cells[0]} | {cells[1]} |")
    if not rows:
        return []
    return [
        "",
        f"Final pooled scores minus **{ref_name}**'s, paired by seed (mean [95 % t interval "
        "over the seeds], * = the interval excludes 0):",
        "",
        "| arm | seeds | Dice | IoU |",
        "| --- | --- | --- | --- |",
        *rows,
    ]


def settling(rs: list[dict]) -> tuple[str, str]:
    """How much each run's validation Dice still moves over its last three epochs (mean of
    max - min over seeds), and whether that is within the seeds' spread of the final Dice."""
    tails = [[h["foreground_dice"] for h in r["history"][-3:]] for r in rs]
    tails = [t for t in tails if len(t) == 3]
    if not tails:
        return "—", "—"
    moving = float(np.mean([max(t) - min(t) for t in tails]))
    finals = [r["final_dice"] for r in rs if r.get("final_dice") is not None]
    if len(finals) < 2:
        return f"{moving:.3f}", "—"
    sd = float(np.std(finals, ddof=1))
    return f"{moving:.3f}", ("yes" if moving <= sd else "no") + f" (sd {sd:.3f})"


SCORES = {
    "dice": "per-image Dice",
    "minority_dice": "background Dice",
    "object_f1": "object F1",
    "object_dice": "object Dice",
    "object_hausdorff": "object Hausdorff px",
    "boundary_f1": "boundary F1 (3 px)",
}


def _cells(rs: list[dict], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(values, seeds, images) of one metric over every seed x image of an arm's runs."""
    vals, seeds, images = [], [], []
    for r in rs:
        for stem, sc in r.get("per_image", {}).items():
            vals.append(sc[metric])
            seeds.append(r["seed"])
            images.append(stem)
    return np.asarray(vals, float), np.asarray(seeds), np.asarray(images)


def image_table(exp, results: list[dict], truths: list[np.ndarray]) -> str:
    """Per-image and object scores of each arm (mean over seeds x images, bootstrap 95 % CI
    resampling seeds and images), the constant predictions' scores, and every arm's paired
    difference from the reference arm (the experiment's ``reference``, else its first arm)."""
    head = "| arm | seeds | " + " | ".join(SCORES.values()) + " |"
    title = f"**{exp.get('title', exp['name'])}: image and object scores of the final model**"
    lines = [title, "", head, "|" + " --- |" * (2 + len(SCORES))]
    for arm in exp["arms"]:
        rs = [r for r in results if r["arm"] == arm["name"] and r.get("per_image")]
        cells = []
        for m in SCORES:
            v, seed, img = _cells(rs, m)
            if not v.size:
                cells.append("—")
                continue
            ci = paired_bootstrap(np.zeros_like(v), v, groups=img, runs=seed, n_resamples=2000)
            cells.append(f"{ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}]")
        seeds = ", ".join(str(r["seed"]) for r in rs) or "none scored"
        lines.append(f"| {arm['name']} | {seeds} | " + " | ".join(cells) + " |")
    for name, scores in constant_baselines(truths).items():
        lines.append(
            f"| constant: {name} | — | " + " | ".join(f"{scores[m]:.3f}" for m in SCORES) + " |"
        )
    ref_name = exp.get("reference", exp["arms"][0]["name"])
    ref = [r for r in results if r["arm"] == ref_name and r.get("per_image")]
    if not ref:
        return "\n".join(lines)
    lines += [
        "",
        f"Paired difference from **{ref_name}** (same seeds and images; mean [95 % CI] "
        "resampling seeds and images, * = the interval excludes 0):",
        "",
        "| arm | " + " | ".join(SCORES.values()) + " |",
        "|" + " --- |" * (1 + len(SCORES)),
    ]
    for arm in exp["arms"]:
        if arm["name"] == ref_name:
            continue
        rs = [r for r in results if r["arm"] == arm["name"] and r.get("per_image")]
        cells = []
        for m in SCORES:
            a_v, a_s, a_i = _cells(ref, m)
            b_v, b_s, b_i = _cells(rs, m)
            key_b = {(s, i): v for v, s, i in zip(b_v, b_s, b_i, strict=True)}
            pairs = [
                (v, key_b[(s, i)], s, i)
                for v, s, i in zip(a_v, a_s, a_i, strict=True)
                if (s, i) in key_b
            ]
            if not pairs:
                cells.append("—")
                continue
            a, b, seed, g = (np.asarray(x) for x in zip(*pairs, strict=True))
            cells.append(paired_bootstrap(a, b, groups=g, runs=seed, n_resamples=2000).text())
        lines.append(f"| {arm['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(exp, results: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for i, arm in enumerate(exp["arms"]):
        rs = [r for r in results if r["arm"] == arm["name"] and r["history"]]
        if not rs:
            continue
        n = min(len(r["history"]) for r in rs)
        curves = np.array([[h["foreground_dice"] for h in r["history"][:n]] for r in rs])
        epochs = [h["epoch"] for h in rs[0]["history"][:n]]
        mean = curves.mean(0)
        colour = f"C{i}"
        ax.plot(epochs, mean, "-o", color=colour, label=f"{arm['name']} (n={len(rs)})")
        if len(rs) > 1:
            sd = curves.std(0, ddof=1)
            ax.fill_between(epochs, mean - sd, mean + sd, color=colour, alpha=0.15)
    ax.set_xticks(range(1, 1 + max(len(r["history"]) for r in results)) if results else [])
    ax.set_xlabel("epoch (200 steps of 8 patches)")
    ax.set_ylabel("validation Dice (clean masks)")
    ax.set_title(exp.get("title", exp["name"]), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, f"Data: {CREDIT}", fontsize=5, color="0.4")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("experiments", nargs="+", type=Path, help="experiment YAML files")
    ap.add_argument("--data", type=Path, required=True, help="EBHI-Seg folder")
    ap.add_argument("--out", type=Path, required=True, help="where runs and the split go")
    ap.add_argument("--report", type=Path, help="write the tables (markdown) here; no training")
    ap.add_argument("--images", type=Path, help="with --report: write the curve plots here")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--device", default=None, help="override every run's device (cpu, cuda)")
    ap.add_argument("--preset", default=None, help="override every arm's preset (e.g. paper)")
    ap.add_argument("--seeds", type=int, nargs="+", help="run only these seeds")
    ap.add_argument(
        "--shard",
        default=None,
        help="i/n: run only every n-th distinct run starting at i (parallel processes)",
    )
    ap.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the split and the corrupted masks, then stop (before parallel shards)",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    exps = [load_experiment(p) for p in args.experiments]
    for e in exps:
        if args.device:
            e["base"]["device"] = args.device
        if args.preset:
            e["base"]["preset"] = args.preset
            e["name"] += f"_{args.preset}"
            e["title"] = f"{e.get('title', e['name'])} [{args.preset} preset]"
        if args.seeds:
            e["seeds"] = [s for s in e["seeds"] if s in args.seeds]
    split = exps[0]["split"]
    if any(e["split"] != split for e in exps):
        sys.exit("all experiments must use the same split")
    train_pairs, val_pairs = fixed_split(args.data, args.out, split["val_fraction"], split["seed"])

    def log(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    if args.report:
        parts = []
        for e in exps:
            res = runs_of(e, args.out)
            parts.append(table(e, res))
            if any(r.get("per_image") for r in res):
                truths = [np.asarray(Image.open(p.mask)) > 0 for p in val_pairs]
                parts.append(image_table(e, res, truths))
            if args.images:
                img = plot(e, res, args.images / f"results_{e['name']}.png")
                parts.append(f"\n![{e['name']} validation curves](images/{img.name})")
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text("\n\n".join(parts) + "\n")
        print(args.report.read_text())
        return 0
    log(f"split: {len(train_pairs)} train / {len(val_pairs)} val ({args.out / 'split.csv'})")
    if args.prepare_only:
        for e in exps:
            for a in e["arms"]:
                if a["labels"] == "noisy":
                    noisy_pairs(train_pairs, noise_of(e, a), args.out)
        return 0
    # seed by seed, so a stopped suite leaves whole seeds of every arm; an arm shared by two
    # experiments (same settings, same key) runs once
    seeds = sorted({s for e in exps for s in e["seeds"]})
    plan, keys = [], set()
    for seed in seeds:
        for e in exps:
            for arm in e["arms"] if seed in e["seeds"] else []:
                key = run_key(e, arm, arm_config(e, arm, seed))
                if key not in keys:
                    keys.add(key)
                    plan.append((e, arm, seed))
    if args.shard:
        i, n = (int(v) for v in args.shard.split("/"))
        plan = plan[i::n]
    t0 = time.perf_counter()
    for e, arm, seed in plan:
        r = run_one(e, arm, seed, train_pairs, val_pairs, args.out, log)
        if r.get("final_dice") is not None:
            log(f"  done: {arm['name']} seed {seed}: Dice {r['final_dice']:.4f}")
    log(f"suite finished in {math.ceil((time.perf_counter() - t0) / 60)} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
