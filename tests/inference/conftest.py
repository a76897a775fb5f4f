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
