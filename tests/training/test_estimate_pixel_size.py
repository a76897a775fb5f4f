"""examples/estimate_pixel_size.py on masks of known geometry (no ../shared data).

Discs of a known diameter are drawn at random places, then the image is squeezed across by a
known factor, as a 4:3 camera frame resized to a square would be: the script must recover the
squeeze and the disc size.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location(
        "estimate_pixel_size", ROOT / "examples" / "estimate_pixel_size.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _squeezed_discs(rng, diameter: float, squeeze: float, side: int = 224) -> np.ndarray:
    """Discs of ``diameter`` px on a ``side * squeeze`` wide canvas, resized to ``side``."""
    wide = round(side * squeeze)
    yy, xx = np.mgrid[:side, :wide]
    mask = np.zeros((side, wide), bool)
    for _ in range(4):
        cy, cx = rng.uniform(diameter, side - diameter), rng.uniform(diameter, wide - diameter)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (diameter / 2) ** 2
        if not (mask & disc).any():
            mask |= disc
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((side, side)))


def test_recovers_the_squeeze_and_the_size_of_round_structures(tmp_path):
    script = _script()
    rng = np.random.default_rng(0)
    (tmp_path / "masks").mkdir()
    squeeze, diameter = 4 / 3, 60.0  # 60-px discs in the unsqueezed frame
    for i in range(30):
        mask = _squeezed_discs(rng, diameter, squeeze)
        name = "normal" if i % 2 else "polyp"
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}__img{i:03d}.png")
    result = script.measure(tmp_path, references=(60.0,))
    assert result["aspect"] == pytest.approx(squeeze, rel=0.03)
    # one disc of 60 unsqueezed px covers 60 / sqrt(4/3) geometric-mean px after the squeeze
    assert result["crypt_diameter_px"] == pytest.approx(diameter / math.sqrt(squeeze), rel=0.03)
    size = result["pixel_sizes"][0]
    # 60 um over 60 unsqueezed px: 1 um/px down; across, each pixel holds 4/3 as much
    assert size["um_per_px_y"] == pytest.approx(1.0, rel=0.04)
    assert size["um_per_px_x"] == pytest.approx(squeeze, rel=0.04)
    assert set(result["aspect_by_diagnosis"]) == {"normal", "polyp"}


def test_regions_cut_by_the_border_are_left_out():
    script = _script()
    mask = np.zeros((100, 100), np.uint8)
    mask[:30, 10:40] = 1  # touches the top edge
    mask[50:80, 50:70] = 1  # inside: 30 rows x 20 columns
    (region,) = script.regions_of(mask, min_area=10)
    assert region.area == 600
    assert region.aspect == pytest.approx(30 / 20, rel=0.02)


def test_a_folder_without_masks_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="masks"):
        _script().measure(tmp_path)
