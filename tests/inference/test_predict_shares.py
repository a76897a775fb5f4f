"""iter_predict_slide(share=..., adopt=...): a slide's tiles computed in several runs and
published by one, pixel for pixel equal to a whole-slide run; shares that are missing,
running or made with something else are passed over and their tiles computed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr

from napari_msunet.errors import ConfigError
from napari_msunet.inference import InferenceConfig, iter_predict_slide
from napari_msunet.inference.outputs import SlideOutputs, lock_folder, unlock_folder
from napari_msunet.inference.shares import share_folders
from napari_msunet.io.slide import open_slide
from napari_msunet.progress import run_to_end

# tile 256 at 1 µm/px on a 1024² working image: 16 tiles, all with tissue detection off;
# chunk 128 so that tiles of different shares fill whole chunks, as on a real slide
CFG = InferenceConfig(tile=256, device="cpu", chunk=128, tissue=False)


def _run(slide_path, model, header, out, config=CFG, **kw):
    with open_slide(slide_path) as slide:
        return run_to_end(iter_predict_slide(slide, model, header, config, out, **kw))


@pytest.fixture(scope="module")
def whole(slide_path, model, header, tmp_path_factory):
    return _run(slide_path, model, header, tmp_path_factory.mktemp("whole") / "out")


def _level0(path):
    return zarr.open_group(path, mode="r")["0"][...]


def _assert_equal_outputs(a, b):
    for store in ("labels", "probabilities"):
        pa, pb = getattr(a.outputs, store), getattr(b.outputs, store)
        group_a, group_b = zarr.open_group(pa, mode="r"), zarr.open_group(pb, mode="r")
        assert sorted(group_a.array_keys()) == sorted(group_b.array_keys())
        for key in group_a.array_keys():  # every pyramid level, not only level 0
            np.testing.assert_array_equal(group_a[key][...], group_b[key][...])


def test_shares_published_by_one_run_equal_the_whole_slide_run(
    whole, slide_path, model, header, tmp_path
):
    out = tmp_path / "out"
    folders = share_folders(out, 3)
    parts = [_run(slide_path, model, header, f, share=(i, 3)) for i, f in enumerate(folders)]
    assert [p.tiles_computed for p in parts] == [5, 5, 6]  # 16 tiles in 3 contiguous runs
    assert all(p.completed for p in parts)
    for p in parts:  # a share publishes nothing: its tiles wait in its .partial stores
        assert not p.outputs.labels.exists()
        assert not p.outputs.manifest.exists()
        assert p.outputs.run_record.exists()

    result = _run(slide_path, model, header, out, adopt=folders)
    assert result.completed
    assert (result.tiles_computed, result.tiles_adopted, result.tiles_resumed) == (0, 16, 0)
    _assert_equal_outputs(result, whole)
    manifest = json.loads(result.outputs.manifest.read_text())
    assert manifest["tiles"]["adopted"] == 16
    assert manifest["tiles"]["computed"] == 0


def test_a_missing_or_foreign_share_is_computed_by_the_publishing_run(
    whole, slide_path, model, header, tmp_path
):
    out = tmp_path / "out"
    folders = share_folders(out, 4)
    _run(slide_path, model, header, folders[0], share=(0, 4))
    # share 2 made with other settings (labels everywhere): its tiles must not be taken
    _run(slide_path, model, header, folders[1], share=(1, 4),
         config=InferenceConfig(tile=256, device="cpu", chunk=128, tissue=False,
                                labels_on_tissue_only=False))  # fmt: skip
    _run(slide_path, model, header, folders[2], share=(2, 4))
    shutil.rmtree(folders[2] / "labels.ome.zarr.partial")  # damaged: no store
    # share 4 never ran (its worker was lost)
    result = _run(slide_path, model, header, out, adopt=folders)
    assert (result.tiles_adopted, result.tiles_computed) == (4, 12)
    _assert_equal_outputs(result, whole)


def test_a_share_still_running_is_not_read(whole, slide_path, model, header, tmp_path):
    out = tmp_path / "out"
    folders = share_folders(out, 2)
    for i, f in enumerate(folders):
        _run(slide_path, model, header, f, share=(i, 2))
    running = SlideOutputs.in_dir(folders[1])
    lock_folder(running)  # another task writes it now
    try:
        result = _run(slide_path, model, header, out, adopt=folders)
    finally:
        unlock_folder(running)
    assert (result.tiles_adopted, result.tiles_computed) == (8, 8)
    _assert_equal_outputs(result, whole)


def test_an_interrupted_share_resumes_and_gives_what_it_finished(
    whole, slide_path, model, header, tmp_path
):
    out = tmp_path / "out"
    folders = share_folders(out, 2)
    calls = {"n": 0}

    def stop_after_one_batch():
        calls["n"] += 1
        return calls["n"] > 1

    first = _run(slide_path, model, header, folders[0], share=(0, 2), stop=stop_after_one_batch)
    assert not first.completed
    assert 0 < first.tiles_computed < 8
    again = _run(slide_path, model, header, folders[0], share=(0, 2))
    assert again.tiles_resumed == first.tiles_computed
    assert again.tiles_computed == 8 - first.tiles_computed
    result = _run(slide_path, model, header, out, adopt=folders[:1])
    assert (result.tiles_adopted, result.tiles_computed) == (8, 8)
    _assert_equal_outputs(result, whole)


def test_a_share_has_no_region_exports_or_shares(slide_path, model, header, tmp_path):
    with pytest.raises(ConfigError, match="share"):
        _run(slide_path, model, header, tmp_path / "s", share=(0, 2), exports=True)
    with pytest.raises(ConfigError, match="share"):
        _run(slide_path, model, header, tmp_path / "s", share=(0, 2), region=(0, 0, 9, 9))
