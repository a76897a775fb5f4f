"""Loss and metric curves of a run, drawn from its ``history.jsonl`` (matplotlib, no display)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["plot_history"]


def _read(path: Path) -> tuple[list[dict], list[dict]]:
    steps, vals = [], []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        (steps if rec.get("type") == "step" else vals).append(rec)
    return steps, vals


def plot_history(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``curves.png`` (loss terms per step, validation Dice/IoU per epoch) for a run."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "curves.png"
    steps, vals = _read(run_dir / "history.jsonl")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    if steps:
        x = [s["global_step"] for s in steps]
        k = max(1, len(x) // 200)  # a running mean keeps long runs readable

        def smooth(v: list[float]) -> list[float]:
            return [
                sum(v[max(0, i - k + 1) : i + 1]) / len(v[max(0, i - k + 1) : i + 1])
                for i in range(len(v))
            ]

        ax1.plot(x, smooth([s["loss"] for s in steps]), label="total", color="black")
        ax1.plot(x, smooth([s["wce"] for s in steps]), label="weighted CE x fuzzy", alpha=0.8)
        if any(s["bootstrap"] for s in steps):
            ax1.plot(x, smooth([s["bootstrap"] for s in steps]), label="bootstrap", alpha=0.8)
        ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_title("training loss")
    ax1.legend(fontsize=8)
    if vals:
        e = [v["epoch"] for v in vals]
        ax2.plot(e, [v["foreground_dice"] for v in vals], "o-", label="Dice (foreground)")
        ax2.plot(e, [v["foreground_iou"] for v in vals], "s-", label="IoU (foreground)")
        ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_title("validation")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(out)
    return out
