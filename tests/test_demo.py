"""msunet demo --headless: bundled sample slide + bundled model -> prediction and evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from napari_msunet.demo import default_model_path, sample_data_dir
from napari_msunet.models.checkpoint import read_header


def test_bundled_sample_is_credited_and_complete():
    data = sample_data_dir()
    assert "CC BY 4.0" in (data / "CREDIT.txt").read_text()
    assert len(list((data / "images").glob("*.jpg"))) == 48
    assert len(list((data / "masks").glob("*.png"))) == 48


def test_default_model_header():
    header = read_header(default_model_path())
    assert header.architecture == "msunet"
    assert header.class_names == ("Background", "Gland")
    assert "EBHI-Seg" in json.dumps(header.training)
    assert default_model_path().stat().st_size < 20e6


@pytest.mark.slow
def test_demo_headless(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_msunet.cli",
            "demo",
            "--headless",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "slide-level foreground IoU" in proc.stdout
    report = json.loads((tmp_path / "evaluation" / "report.json").read_text())
    fg = report["metrics"]["foreground"] if "metrics" in report else report["foreground"]
    assert fg["dice"] > 0.7  # the bundled model on tiles it never trained on
    assert (tmp_path / "evaluation" / "overlay.png").exists()
    assert (tmp_path / "prediction" / "labels.ome.zarr").exists()
