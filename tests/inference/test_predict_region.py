"""iter_predict_slide(region=...): only the tiles meeting a level-0 window are computed, and inside
the window the labels equal a whole-slide run (the GUI's "current view only")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from napari_msunet.errors import ConfigError, MsunetError
from napari_msunet.inference import InferenceConfig, iter_predict_slide
from napari_msunet.io.slide import open_slide

# tissue detection off, so every tile of the grid counts and "not computed" is unambiguous
CFG = InferenceConfig(tile=256, device="cpu", chunk=256, tissue=False)
REGION = (1000, 1500, 900, 700)  # level-0 (y0, x0, h, w); 4 px per working px -> 2 x 2 tiles


def _drive(gen):
    records = []
    try:
        while True:
            records.append(next(gen))
    except StopIteration as done:
        return records, done.value


def _level0(path):
    return zarr.open_group(path, mode="r")["0"][...]


@pytest.fixture(scope="module")
def whole(slide_path, model, header, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "out"
    with open_slide(slide_path) as slide:
        _, result = _drive(iter_predict_slide(slide, model, header, CFG, out))
    return result


def test_window_equals_whole_slide_and_nothing_else_is_computed(
    whole, slide_path, model, header, tmp_path
):
    with open_slide(slide_path) as slide:
        records, result = _drive(
            iter_predict_slide(slide, model, header, CFG, tmp_path / "view", region=REGION)
        )
    assert result.completed
    assert result.region == REGION
    assert result.shape == whole.shape  # same grid, same output geometry
    # working window: rows 250..475, cols 375..550 -> tile rows 0-1, tile columns 1-2
    assert result.tiles_total == 4
    assert result.tiles_computed == 4
    assert [r for r in records if r.stage == "tiles"][-1].total == 4
    assert whole.tiles_computed == 16

    labels, ref = _level0(result.outputs.labels), _level0(whole.outputs.labels)
    probs = _level0(result.outputs.probabilities)
    computed = np.zeros(labels.shape, bool)
    computed[0:512, 256:768] = True
    # inside the computed tiles (hence inside the window) the run equals the whole-slide run
    np.testing.assert_array_equal(labels[computed], ref[computed])
    np.testing.assert_array_equal(
        probs[:, computed], _level0(whole.outputs.probabilities)[:, computed]
    )
    assert (ref[computed] > 0).any()  # a non-trivial comparison
    assert (ref[computed] == 0).any()
    # outside them nothing was computed: probabilities 0 in every channel (never written)
    assert probs[:, ~computed].max() == 0
    assert labels[~computed].max() == 0
    manifest = json.loads(result.outputs.manifest.read_text())
    assert manifest["region"] == list(REGION)
    assert manifest["tiles"]["total"] == 4


def test_region_outside_the_slide_or_malformed_is_refused(slide_path, model, header, tmp_path):
    with open_slide(slide_path) as slide:
        for bad in [(5000, 0, 10, 10), (0, 0, 0, 10), (0, 0, 10), "view"]:
            with pytest.raises(ConfigError, match="region"):
                _drive(iter_predict_slide(slide, model, header, CFG, tmp_path / "o", region=bad))
    assert not (tmp_path / "o").exists()


def test_view_reaching_past_the_edge_is_clipped(slide_path, model, header, tmp_path):
    with open_slide(slide_path) as slide:
        _, result = _drive(
            iter_predict_slide(
                slide, model, header, CFG, tmp_path / "edge", region=(-500, 3900, 600, 900)
            )
        )
    assert result.tiles_total == 1  # the top-right tile only


def test_resume_with_another_region_is_refused(slide_path, model, header, tmp_path):
    out = tmp_path / "view"
    with open_slide(slide_path) as slide:
        gen = iter_predict_slide(slide, model, header, CFG, out, region=REGION)
        next(gen)
        next(gen)  # one tile done
        gen.close()
        with pytest.raises(MsunetError, match="region"):
            _drive(iter_predict_slide(slide, model, header, CFG, out, region=(0, 0, 100, 100)))
