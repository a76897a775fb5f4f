"""The experiment suite (examples/ebhi_experiments.py) on a tiny dataset: runs, resumes, reports.

Real trainer, real corruption, real report; a dataset of purple discs stands in for EBHI-Seg
(unit tests never read ../shared).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml
from test_trainer import make_blobs

from napari_msunet.training.label_noise import LabelNoise

ROOT = Path(__file__).resolve().parents[2]


def _suite():
    spec = importlib.util.spec_from_file_location(
        "ebhi_experiments", ROOT / "examples" / "ebhi_experiments.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _experiment(path: Path) -> Path:
    exp = {
        "name": "tiny",
        "title": "Tiny",
        "seeds": [0, 1],
        "split": {"val_fraction": 0.25, "seed": 0},
        "noise": {"boundary_px": [1, 2], "simplify_px": 1, "drop_fraction": 0.3, "seed": 0},
        "base": {
            "class_names": ["Background", "Blob"],
            "model_overrides": {"widths": [4, 8]},
            "patch": 32,
            "batch_size": 2,
            "epochs": 2,
            "steps_per_epoch": 3,
            "lr": 0.01,
            "device": "cpu",
        },
        "arms": [
            {"name": "CE", "labels": "clean", "train": {}},
            {"name": "FB+BS", "labels": "noisy", "train": {"loss": {"bootstrap_after": 1}}},
            {  # an arm with its own noise: partly annotated images, the rest ignored
                "name": "partial",
                "labels": "noisy",
                "noise": {
                    "boundary_px": [0, 0],
                    "simplify_px": 0,
                    "drop_fraction": 0.3,
                    "partial_fraction": 0.5,
                    "seed": 0,
                },
                "train": {"lr_schedule": "cosine"},
            },
        ],
    }
    path.write_text(yaml.safe_dump(exp))
    return path


def test_suite_runs_skips_finished_runs_and_reports(tmp_path):
    data = tmp_path / "data"
    make_blobs(data, n=8)
    (data / "index.csv").write_text(
        "stem,diagnosis\n" + "".join(f"b{i},{'AB'[i % 2]}\n" for i in range(8))
    )
    exp = _experiment(tmp_path / "tiny.yaml")
    out = tmp_path / "out"
    suite = _suite()
    assert suite.main([str(exp), "--data", str(data), "--out", str(out)]) == 0
    results = sorted(out.glob("runs/*/result.json"))
    assert len(results) == 6  # 3 arms x 2 seeds
    first = {p: p.stat().st_mtime_ns for p in results}
    for p in results:
        r = json.loads(p.read_text())
        assert r["steps"] == 6
        assert len(r["history"]) == 2  # validated after each epoch, on clean masks
        assert len(r["per_image"]) == 2  # every validation image scored by the final model
        for scores in r["per_image"].values():
            assert set(scores) >= {"dice", "object_f1", "boundary_f1", "minority_dice"}
    # the split is saved, the noisy masks are written once with a report of the damage
    assert (out / "split.csv").read_text().startswith("stem,diagnosis,split")
    reports = sorted(out.glob("noisy-masks-*/report.json"))  # one per noise setting
    assert len(reports) == 2
    assert all(json.loads(r.read_text())["images"] == 6 for r in reports)
    # a second call finds every run finished and trains nothing
    assert suite.main([str(exp), "--data", str(data), "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in results} == first
    # tables and curves from the finished runs
    md = tmp_path / "results.md"
    args = [str(exp), "--data", str(data), "--out", str(out), "--report", str(md)]
    assert suite.main([*args, "--images", str(tmp_path / "img")]) == 0
    text = md.read_text()
    assert "| CE | clean | 0, 1 |" in text
    assert "| FB+BS | noisy | 0, 1 |" in text
    assert (tmp_path / "img" / "results_tiny.png").stat().st_size > 0
    assert "image and object scores of the final model" in text
    assert "| constant: all foreground | — |" in text
    assert "Paired difference from **CE**" in text
    assert "| partial |" in text
    assert "resampling seeds and images" in text
    assert "minus **CE**'s, paired by seed" in text
    assert "| — | — |" in text  # 2 epochs: too few to say whether the curves settled


def test_settling_compares_the_last_epochs_with_the_seed_spread():
    suite = _suite()

    def run(dices):
        return {"final_dice": dices[-1], "history": [{"foreground_dice": d} for d in dices]}

    flat = [run([0.5, 0.80, 0.81, 0.80]), run([0.6, 0.86, 0.85, 0.86])]
    moving, settled = suite.settling(flat)
    assert moving == "0.010"  # ranges 0.01 and 0.01
    assert settled.startswith("yes (sd 0.042)")
    swinging = [run([0.5, 0.70, 0.85, 0.80]), run([0.6, 0.84, 0.80, 0.82])]
    moving, settled = suite.settling(swinging)
    assert moving == "0.095"  # ranges 0.15 and 0.04
    assert settled.startswith("no (sd 0.014)")


def test_every_shipped_experiment_file_builds_its_runs():
    suite = _suite()
    for path in sorted((ROOT / "examples" / "experiments").glob("*.yaml")):
        exp = suite.load_experiment(path)
        keys = set()
        for arm in exp["arms"]:
            for seed in exp["seeds"]:
                config = suite.arm_config(exp, arm, seed)
                keys.add(suite.run_key(exp, arm, config))
            noise = suite.noise_of(exp, arm)
            if arm["labels"] == "noisy":
                settings = {k: tuple(v) if isinstance(v, list) else v
                            for k, v in noise.items() if k != "seed"}  # fmt: skip
                LabelNoise(**settings)  # valid settings
        assert len(keys) == len(exp["arms"]) * len(exp["seeds"]), path.name
        assert exp.get("reference", exp["arms"][0]["name"]) in {a["name"] for a in exp["arms"]}
