"""Fixtures of the inference tests (helpers live in ``inference_helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

SLIDE_SPEC = SyntheticSlideSpec(4096, 4096, seed=5, mpp=0.25)


@pytest.fixture(scope="session")
def slide_path(tmp_path_factory) -> Path:
    """A 4096² SVS-like slide at 0.25 µm/px (1024² at 1 µm/px) with large white areas."""
    path = tmp_path_factory.mktemp("slides") / "synthetic.svs"
    write_synthetic_slide(path, SLIDE_SPEC, "svs")
    return path


@pytest.fixture(scope="module")
def model(slide_path):
    """A small U-Net calibrated on the working image of ``slide_path``, so that both classes
    occur (a random head picks one): region and share runs have labels to compare. Test
    files that need another model define their own ``model``."""
    from inference_helpers import make_model

    from napari_msunet.io.slide import open_slide
    from napari_msunet.io.working_image import SlideReader, working_geometry

    with open_slide(slide_path) as slide:
        image = SlideReader(slide, working_geometry(slide, 1.0)).read(0, 0, 1024, 1024)
    return make_model("unet", seed=3, calibrate=image)


@pytest.fixture(scope="module")
def header(model):
    """The model file header of ``model``."""
    from inference_helpers import header_for

    return header_for(model)
