"""The transfer experiment (examples/transfer_experiment.py): relabelling by diagnosis, and the
runner on a tiny synthetic dataset with a tiny parent model (runs, scores, resumes, reports).

Unit tests never read ../shared: purple discs on pink stand in for EBHI-Seg's glands.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_msunet.errors import ConfigError
from napari_msunet.models.checkpoint import read_header
from napari_msunet.training.config import TrainConfig
from napari_msunet.training.folder_dataset import FolderDataset, ImagePair, find_pairs
from napari_msunet.training.trainer import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def te():
    """The example module (it imports its sibling ebhi_experiments, so examples/ is on the path)."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        spec = importlib.util.spec_from_file_location(
            "transfer_experiment", ROOT / "examples" / "transfer_experiment.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / "examples"))


def _discs(root: Path, diagnoses: list[str], size: int = 48) -> None:
    """One image per diagnosis: purple discs (mask 1) on pink, and ``index.csv``."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    rows = ["stem,diagnosis"]
    for i, diagnosis in enumerate(diagnoses):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(2):
            cy, cx, r = [*rng.uniform(8, size - 8, 2).tolist(), rng.uniform(5, 10)]
            mask[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1
        rgb = np.where(mask[..., None] == 1, [120, 60, 160], [230, 170, 200]).astype(np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"d{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"d{i}.png")
        rows.append(f"d{i},{diagnosis}")
    (root / "index.csv").write_text("\n".join(rows) + "\n")


# ---------------------------------------------------------------------------- relabelling
def test_relabel_sets_gland_pixels_and_keeps_background_and_ignore(te):
    mask = np.array([[0, 1, 255], [1, 0, 1]], np.int64)
    out = te.relabel(mask, 2)
    assert out.tolist() == [[0, 2, 255], [2, 0, 2]]
    assert out.dtype == mask.dtype
    assert mask.tolist() == [[0, 1, 255], [1, 0, 1]]  # the input is not changed
    t = torch.from_numpy(mask)
    assert torch.equal(te.relabel(t, 1), t)  # class 1 is the gland class already
    assert te.relabel(t, 2).tolist() == out.tolist()
    assert te.relabel(t, 2).dtype == torch.int64


def test_every_ebhi_diagnosis_has_a_class_and_an_unknown_one_is_named(te):
    assert set(te.DIAGNOSIS_CLASS.values()) == {1, 2}
    benign = {d for d, c in te.DIAGNOSIS_CLASS.items() if c == 1}
    assert benign == {"Normal", "Polyp"}
    pair = ImagePair(Path("x/images/a.png"), Path("x/masks/a.png"), "Carcinoid")
    with pytest.raises(ConfigError, match=r"a\.png.*'Carcinoid'"):
        te.class_of(pair)


def test_dataset_gives_each_image_the_class_of_its_diagnosis(te, tmp_path):
    _discs(tmp_path, ["Polyp", "Adenocarcinoma", "Normal"])
    base = FolderDataset(find_pairs(tmp_path), None)
    ds = te.DiagnosisClasses(base)
    assert len(ds) == 3
    for i, want in enumerate([1, 2, 1]):
        raw, item = base[i]["mask"], ds[i]["mask"]
        assert set(torch.unique(item).tolist()) == {0, want}
        assert torch.equal(item != 0, raw != 0)  # same pixels, new class
    # crops (training) are those of the wrapped dataset, relabelled
    crops = te.DiagnosisClasses(FolderDataset(find_pairs(tmp_path), 32, seed=3))
    crops.set_epoch(1)
    plain = FolderDataset(find_pairs(tmp_path), 32, seed=3)
    plain.set_epoch(1)
    assert torch.equal(crops[1]["image"], plain[1]["image"])
    assert torch.equal(crops[1]["mask"] != 0, plain[1]["mask"] != 0)


# ---------------------------------------------------------------------------- the runner
@pytest.fixture
def tiny(tmp_path):
    """A tiny dataset and a 2-class parent trained for 2 steps on its training part."""
    data = tmp_path / "data"
    _discs(data, ["Polyp", "Adenocarcinoma"] * 5)
    cfg = TrainConfig(
        class_names=("Background", "Gland"),
        model_overrides={"widths": [4, 8]},
        patch=32,
        batch_size=2,
        epochs=1,
        steps_per_epoch=2,
        lr=1e-2,
        device="cpu",
    )
    pairs = find_pairs(data)
    train(cfg, FolderDataset(pairs, 48), None, tmp_path / "parent")
    return data, tmp_path / "parent" / "last.safetensors"


def test_runner_trains_both_arms_scores_resumes_and_reports(te, tiny, tmp_path):
    data, parent = tiny
    out = tmp_path / "out"
    args = ["--data", str(data), "--out", str(out), "--model", str(parent)]
    run = [*args, "--seeds", "0", "--steps-at", "1,2", "--device", "cpu"]
    assert te.main(run) == 0
    results = {p.parent.name.split("-")[0]: p for p in out.glob("runs/*/result.json")}
    assert set(results) == {"transfer", "scratch"}
    for path in results.values():
        r = json.loads(path.read_text())
        assert r["steps"] == 2
        assert [e["step"] for e in r["evals"]] == [1, 2]
        assert all(len(e["dice"]) == 3 for e in r["evals"])  # background + 2 new classes
        header = read_header(path.parent / "last.safetensors")
        assert header.class_names == te.CLASSES
    transfer = json.loads(results["transfer"].read_text())
    assert transfer["class_mapping"] == {
        "Background": "Background",
        "Benign gland": None,
        "Neoplastic gland": None,
    }
    # the held-out images are the validation part of the parent's split (seed 0, 20 %)
    split = (out / "split.csv").read_text().splitlines()[1:]
    assert sum(line.endswith(",val") for line in split) == 2
    assert json.loads((out / "parent-heldout.json").read_text())["step"] == 2

    # a finished run is skipped: nothing is trained or scored again
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*")}
    assert te.main(run) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/*")} == stamps

    # killed after the last checkpoint but before its score: a rerun only scores it
    run_dir = results["scratch"].parent
    results["scratch"].unlink()
    (run_dir / "eval-step00002.json").unlink()
    last = (run_dir / "last.safetensors").stat().st_mtime_ns
    assert te.main(run) == 0
    assert (run_dir / "eval-step00002.json").exists()
    assert json.loads(results["scratch"].read_text())["steps"] == 2
    assert (run_dir / "last.safetensors").stat().st_mtime_ns == last

    # the report: a table with both arms at both steps, the savings lines and the plot
    md = tmp_path / "table.md"
    assert te.main([*args, "--report", str(md), "--images", str(tmp_path / "img")]) == 0
    text = md.read_text()
    assert text.count("| transfer |") == 2
    assert text.count("| scratch |") == 2
    assert "Neoplastic gland Dice: scratch reaches" in text
    assert (tmp_path / "img" / "results_transfer_new_classes.png").stat().st_size > 0


def test_runner_refuses_a_split_that_is_not_the_parents(te, tiny, tmp_path):
    data, _ = tiny
    cfg = TrainConfig(
        class_names=("Background", "Gland"),
        model_overrides={"widths": [4, 8]},
        patch=32,
        batch_size=2,
        epochs=1,
        steps_per_epoch=1,
        device="cpu",
    )
    wrong = {"data": {"folders": [{"split_seed": 0, "train": 9, "val": 1}]}}
    train(cfg, FolderDataset(find_pairs(data), 48), None, tmp_path / "p2", provenance=wrong)
    model = tmp_path / "p2" / "last.safetensors"
    with pytest.raises(SystemExit, match="not its held-out set"):
        te.main(["--data", str(data), "--out", str(tmp_path / "o"), "--model", str(model)])
