"""LivePyramid: coarse levels of an unfinished label map follow level 0 block by block, and
equal what the writer's finalize builds."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_msunet.errors import WriterError
from napari_msunet.inference.live import LivePyramid, live_levels
from napari_msunet.io.ome_zarr import OmeZarrWriter


def test_coarse_levels_follow_finished_blocks(tmp_path):
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (700, 900), dtype=np.uint8)
    path = tmp_path / "labels.ome.zarr"
    writer = OmeZarrWriter(path, truth.shape, kind="labels", chunk=64, n_levels=4)
    live = LivePyramid(path)
    assert live.shape == truth.shape
    # unaligned, odd-sized blocks in a scrambled order: neighbours finish before and after
    blocks = [(y, x, 117, 131) for y in range(0, 700, 117) for x in range(0, 900, 131)]
    rng.shuffle(blocks)
    half = len(blocks) // 2
    for y, x, h, w in blocks[:half]:
        writer.write_region(y, x, truth[y : y + h, x : x + w])
    assert len(live.update()) == half
    assert live.update() == []  # nothing new
    levels = live.levels()
    done = np.zeros(truth.shape, bool)
    for y, x, h, w in blocks[:half]:
        done[y : y + h, x : x + w] = True
    for k in range(1, 4):
        s = 2**k
        got, want, inside = levels[k][...], truth[::s, ::s], done[::s, ::s]
        np.testing.assert_array_equal(got[inside], want[inside])  # finished parts are shown
        assert got[~inside].max() == 0  # the rest is still empty
    for y, x, h, w in blocks[half:]:
        writer.write_region(y, x, truth[y : y + h, x : x + w])
    live.update()
    handles = live.levels()
    shown = [lv[...] for lv in handles]
    writer.finalize()  # builds the levels afresh and renames the store
    final = zarr.open_group(path, mode="r")
    for k in range(4):
        np.testing.assert_array_equal(shown[k], final[str(k)][...])  # = what finalize builds
        # handles taken before the rename follow the store to its final name
        np.testing.assert_array_equal(np.asarray(handles[k]), final[str(k)][...])
    assert "partial" not in repr(handles[0])


def test_resumed_store_shows_earlier_blocks_and_missing_store_is_refused(tmp_path):
    path = tmp_path / "labels.ome.zarr"
    with pytest.raises(WriterError, match="partial"):
        LivePyramid(path)
    writer = OmeZarrWriter(path, (256, 256), kind="labels", chunk=64)
    writer.write_region(0, 0, np.ones((128, 128), np.uint8))
    writer.close()
    live = LivePyramid(path)
    assert live.update() == [(0, 0, 128, 128)]
    assert live.levels()[1][:64, :64].min() == 1


def test_live_levels_before_during_and_after_a_run(tmp_path):
    path = tmp_path / "labels.ome.zarr"
    levels = live_levels(path, (700, 1100), chunk=128)  # nothing written yet: zeros
    assert [lv.shape for lv in levels] == [(700, 1100), (350, 550), (175, 275), (88, 138)]
    assert levels[0].source is None
    assert np.asarray(levels[1][10:20, :5]).shape == (10, 5)
    assert levels[0][...].max() == 0
    writer = OmeZarrWriter(path, (700, 1100), kind="labels", chunk=128)  # the engine's rules
    assert writer.level_shapes == [lv.shape for lv in levels]
    block = np.full((128, 256), 2, np.uint8)
    writer.write_region(128, 256, block)
    assert levels[0].source == writer.partial_path
    np.testing.assert_array_equal(levels[0][128:256, 256:512], block)
    writer.finalize()
    assert levels[0].source == path
    assert levels[3][...].max() == 2
    # a store of another shape (other settings) shows nothing rather than misplaced pixels
    other = live_levels(path, (700, 1100))[0]
    assert other.shape == (700, 1100)  # taken from the store that exists
    stranger = live_levels(tmp_path / "new.ome.zarr", (600, 1100), chunk=128)[0]
    OmeZarrWriter(tmp_path / "new.ome.zarr", (700, 1100), kind="labels", chunk=128)
    assert stranger.source is None
    assert stranger[...].shape == (600, 1100)
    with pytest.raises(ValueError, match="shape"):
        live_levels(tmp_path / "none.ome.zarr")
