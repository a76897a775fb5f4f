"""msunet train as a subprocess: a tiny model overfits a tiny synthetic slide."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide


def msunet(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
    )


@pytest.mark.slow
def test_tiny_model_overfits_tiny_slide(tmp_path):
    spec = SyntheticSlideSpec(2048, 2048, seed=4, mpp=1.0, n_regions=8, region_size=(0.08, 0.12))
    write_synthetic_slide(tmp_path / "s.svs", spec, "svs")
    spec.write_geojson(tmp_path / "s.geojson")
    (tmp_path / "run.yaml").write_text(
        """
out: run
data:
  slides:
    - {slide: s.svs, annotation: s.geojson, split: train}
    - {slide: s.svs, annotation: s.geojson, split: val}
train:
  class_names: [Background, Germinal centre, Sinus]
  mpp: 4.0
  model_overrides: {widths: [8, 16, 32]}
  patch: 64
  batch_size: 8
  epochs: 8
  steps_per_epoch: 30
  lr: 0.003
  device: cpu
  loss: {crop_margin: 4}
  augment: {brightness: 0, contrast: 0, saturation: 0, hue: 0}
"""
    )
    proc = msunet("train", "--config", "run.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "best model" in proc.stdout
    vals = [
        json.loads(line)
        for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()
        if '"val"' in line
    ]
    assert max(v["foreground_iou"] for v in vals) > 0.95
    assert (tmp_path / "run" / "best.safetensors").exists()
    assert (tmp_path / "run" / "curves.png").exists()


def test_bad_configs_are_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("out: run\ndata: {}\n")
    proc = msunet("train", "--config", "a.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "a.yaml" in proc.stderr
    assert "folders" in proc.stderr
    (tmp_path / "b.yaml").write_text(
        "out: run\ndata: {slides: [{slide: nope.svs, annotation: nope.geojson}]}\n"
        "train: {epochs: 1, batch: 3}\n"
    )
    proc = msunet("train", "--config", "b.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "batch" in proc.stderr
    (tmp_path / "c.yaml").write_text(
        "out: run\ndata: {slides: [{slide: nope.svs, annotation: nope.geojson}]}\n"
    )
    proc = msunet("train", "--config", "c.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.svs" in proc.stderr
    assert "not found" in proc.stderr
    proc = msunet("train", "--config", "missing.yaml", cwd=tmp_path)
    assert proc.returncode == 2


def test_mismatched_slide_and_mask(tmp_path):
    import numpy as np
    from PIL import Image

    spec = SyntheticSlideSpec(1024, 1024, seed=1, mpp=1.0)
    write_synthetic_slide(tmp_path / "s.svs", spec, "svs")
    Image.fromarray(np.zeros((100, 300), np.uint8)).save(tmp_path / "m.png")  # wrong aspect
    (tmp_path / "run.yaml").write_text(
        "out: run\ndata: {slides: [{slide: s.svs, annotation: m.png}]}\n"
        "train: {mpp: 4.0, patch: 32, epochs: 1, steps_per_epoch: 1, "
        "model_overrides: {widths: [4, 8]}}\n"
    )
    proc = msunet("train", "--config", "run.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "m.png" in proc.stderr


TINY_RUN = """
out: run
data:
  slides:
    - {slide: s.svs, annotation: s.geojson, split: train}
train:
  class_names: [Background, Germinal centre, Sinus]
  mpp: 4.0
  model_overrides: {widths: [4, 8]}
  patch: 32
  batch_size: 2
  epochs: EPOCHS
  steps_per_epoch: 3
  device: cpu
"""


@pytest.mark.slow
def test_resumed_training_continues_its_bar_then_fine_tunes(tmp_path):
    """The one CLI driver shows a resumed run at its step; finetune writes a new version."""
    spec = SyntheticSlideSpec(768, 768, seed=4, mpp=1.0, n_regions=6, region_size=(0.08, 0.12))
    write_synthetic_slide(tmp_path / "s.svs", spec, "svs")
    spec.write_geojson(tmp_path / "s.geojson")
    (tmp_path / "run.yaml").write_text(TINY_RUN.replace("EPOCHS", "1"))
    proc = msunet("train", "--config", "run.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3/3" in proc.stderr
    assert "last model:" in proc.stdout  # no validation set: no best model
    # one more epoch on the same folder: the run resumes at step 4 of 6
    (tmp_path / "run.yaml").write_text(TINY_RUN.replace("EPOCHS", "2"))
    proc = msunet("train", "--config", "run.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "step 4/6" in proc.stderr
    assert "step 1/6" not in proc.stderr
    assert "6/6" in proc.stderr
    model = tmp_path / "run" / "last.safetensors"
    proc = msunet(
        "finetune",
        *("--model", model, "--slides", "s.svs", "--annotations", "s.geojson"),
        *("--steps", 2, "--batch-size", 2, "--device", "cpu"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    new = tmp_path / "run" / "last-ft1.safetensors"
    assert f"new model version: {new}" in proc.stdout
    assert "2/2" in proc.stderr
    assert new.is_file()
