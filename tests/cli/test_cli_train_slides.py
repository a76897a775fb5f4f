"""``msunet train --slides ... --annotations ... --out MODEL``: a model for the annotations'
classes without a YAML (issue 13, item 2), as a subprocess."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, load_model, read_header, save_model
from napari_msunet.training.held_out_scores import HeldOutVerdict


def msunet(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A slide annotated with germinal centres and sinuses; a tiny gland base model."""
    root = tmp_path_factory.mktemp("train-slides")
    spec = SyntheticSlideSpec(1024, 1024, seed=7, mpp=1.0, n_regions=16, region_size=(0.05, 0.08))
    write_synthetic_slide(root / "s.svs", spec, "svs")
    spec.write_geojson(root / "s.geojson")
    torch.manual_seed(0)
    model = build_model("msunet", n_classes=2, widths=(4, 8))
    header = ModelHeader.for_model(
        model,
        class_names=("Background", "Gland"),
        class_colours=((0, 0, 0), (200, 200, 0)),
        input_um_per_px=4.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=32,
    )
    save_model(root / "base.safetensors", model, header)
    return root


def test_transfer_from_a_base_model_without_a_yaml(lab, tmp_path):
    out = tmp_path / "lymph.safetensors"
    base = lab / "base.safetensors"
    before = base.read_bytes()
    args = ["--slides", lab / "s.svs", "--annotations", lab / "s.geojson", "--out", out]
    proc = msunet(
        "train", *args, "--base", base, "--steps", 4, "--batch-size", 2, "--device", "cpu"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"training {out} from {base}" in proc.stdout
    assert "Dice on held-out regions: 0.00 → " in proc.stdout
    model, header = load_model(out)
    assert header.class_names == ("Background", "Germinal centre", "Sinus")
    assert model.head.out_channels == 3
    training = header.training
    assert training["kind"] == "train-slides"
    assert training["start"] == "transfer"
    assert training["parent"]["path"] == str(base)
    assert training["steps"] == 4
    verdict = HeldOutVerdict.from_header(header)
    assert verdict.parent is not None
    assert verdict.version is not None
    assert base.read_bytes() == before
    # the same command again refuses to overwrite the model
    again = msunet("train", *args, "--base", base, "--steps", 4, "--device", "cpu")
    assert again.returncode == 2
    assert "never overwritten" in again.stderr


def test_scratch_with_a_held_out_slide(lab, tmp_path):
    out = tmp_path / "scratch.safetensors"
    proc = msunet(
        "train",
        "--slides",
        lab / "s.svs",
        "--annotations",
        lab / "s.geojson",
        "--held-out-slides",
        lab / "s.svs",
        "--held-out-annotations",
        lab / "s.geojson",
        "--base",
        lab / "base.safetensors",
        "--start",
        "scratch",
        "--steps",
        2,
        "--batch-size",
        2,
        "--device",
        "cpu",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(no parent to compare)" in proc.stdout
    header = read_header(out)
    assert header.training["start"] == "scratch"
    assert header.training["held_out"]["how"] == "user"
    assert {r["source"] for r in header.training["held_out"]["regions"]} == {"slide"}


def test_train_needs_slides_or_a_config(tmp_path):
    proc = msunet("train", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--slides" in proc.stderr
    assert "--config" in proc.stderr
    proc = msunet("train", "--slides", "a.svs", "--annotations", "a.geojson", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--out" in proc.stderr
    proc = msunet(
        "train", "--slides", "a.svs", "b.svs", "--annotations", "a.geojson", "--out", "m.st"
    )
    assert proc.returncode == 2
    assert "2 slides but 1 annotations" in proc.stderr
