"""A prediction compares the slide's tissue with the model's training data and warns when far."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from skimage import data

from napari_msunet.inference import InferenceConfig
from napari_msunet.inference.domain_check import DOMAIN, DomainProgress
from napari_msunet.inference.engine import iter_predict_slide
from napari_msunet.io.slide import open_slide
from napari_msunet.models.bundled import bundled_model_path, sample_data_dir
from napari_msunet.models.checkpoint import load_model


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("domain")
    paths = sorted((sample_data_dir() / "images").glob("*.jpg"))[:16]
    tiles = [np.asarray(Image.open(p).convert("RGB"))[:224, :224] for p in paths]
    mosaic = np.concatenate([np.concatenate(tiles[r * 4 : r * 4 + 4], 1) for r in range(4)], 0)
    Image.fromarray(mosaic).save(root / "colon.png")
    Image.fromarray(data.immunohistochemistry()).save(root / "ihc.png")
    return root


def _predict(path, out):
    model, header = load_model(bundled_model_path())
    config = InferenceConfig(device="cpu", tile=256, margin=64, amp="none")
    with open_slide(path) as slide:
        gen = iter_predict_slide(slide, model, header, config, out, mpp=1.0)
        records = []
        try:
            while True:
                records.append(next(gen))
        except StopIteration as end:
            return records, end.value


def test_tissue_like_the_training_data_gets_no_warning(slides, tmp_path):
    records, result = _predict(slides / "colon.png", tmp_path / "colon")
    assert not any(r.stage == DOMAIN for r in records)
    assert result.domain is not None
    assert not result.domain.far
    manifest = json.loads((tmp_path / "colon" / "prediction.json").read_text())
    assert manifest["domain"]["far"] is False


def test_a_foreign_stain_is_warned_about_once_before_the_tiles(slides, tmp_path):
    records, result = _predict(slides / "ihc.png", tmp_path / "ihc")
    warnings = [r for r in records if r.stage == DOMAIN]
    assert len(warnings) == 1
    assert isinstance(warnings[0], DomainProgress)
    assert warnings[0].check == result.domain
    assert records.index(warnings[0]) < next(i for i, r in enumerate(records) if r.stage == "tiles")
    assert result.domain.far
    assert result.completed  # a warning, never a refusal


def test_the_cli_prints_the_warning_with_the_models_name(slides, tmp_path):
    cmd = [sys.executable, "-m", "napari_msunet.cli", "predict", str(slides / "ihc.png")]
    cmd += ["--model", str(bundled_model_path()), "--out", str(tmp_path / "out")]
    cmd += ["--mpp", "1.0", "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "warning: This tissue looks unlike what default_model.safetensors was trained on" in (
        run.stdout + run.stderr
    )
