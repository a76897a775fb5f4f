"""The editable annotation store: creation, exact edits, undo, crash safety, SlideSpec use."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import numpy as np
import pytest

from napari_msunet.errors import WriterError
from napari_msunet.io.annotation_store import AnnotationStore, store_downsample
from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.ome_tiff import write_ome_tiff
from napari_msunet.io.rasterise import rasterise_array
from napari_msunet.io.synthetic import SyntheticSlideSpec
from napari_msunet.progress import run_to_end

SHAPE = (1000, 1300)
MPP = 0.5


@pytest.fixture(scope="module")
def spec():
    return SyntheticSlideSpec(*SHAPE, seed=1, mpp=MPP, n_regions=6, region_size=(0.05, 0.1))


@pytest.fixture
def geojson(spec, tmp_path):
    return spec.write_geojson(tmp_path / "slide.geojson")


def mask0(store):
    return np.asarray(open_mask(store.mask_path).levels[0])


def check_pyramid(store):
    levels = [np.asarray(lv) for lv in open_mask(store.mask_path).levels]
    assert len(levels) > 1
    for k, lv in enumerate(levels):
        np.testing.assert_array_equal(lv, levels[0][:: 2**k, :: 2**k])


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def test_create_from_geojson_matches_the_rasteriser(geojson, tmp_path):
    before = digest(geojson)
    store = AnnotationStore.create(
        tmp_path / "store", geojson, SHAPE, slide_mpp=MPP, mpp=1.0, chunk=64
    )
    assert store.downsample == 2
    assert store.shape == (500, 650)
    ann = read_geojson(geojson)
    expected = rasterise_array(ann, SHAPE, 2, labels=ann.class_to_label)
    np.testing.assert_array_equal(mask0(store), expected)
    assert expected.max() == 2  # both classes present
    check_pyramid(store)
    mask = open_mask(store.mask_path)  # what SlideSpec(annotation=...) reads
    assert mask.mpp == pytest.approx(1.0)
    assert [c.name for c in mask.classes] == ["Germinal centre", "Sinus"]
    assert store.regions() == []
    assert read_geojson(store.regions_path).annotations == ()
    assert digest(geojson) == before  # the user's file is only read


def test_create_from_a_mask_at_another_resolution(spec, tmp_path):
    truth = spec.mask()  # level 0, labels 1 = GC, 2 = sinus
    path = tmp_path / "mask.ome.tif"
    write_ome_tiff(
        path,
        truth,
        kind="labels",
        mpp=MPP,
        class_names=["background", "Germinal centre", "Sinus"],
    )
    before = digest(path)
    # the model's class order differs from the file's: labels follow the names
    store = AnnotationStore.create(
        tmp_path / "store",
        path,
        SHAPE,
        slide_mpp=MPP,
        mpp=2.0,
        classes=["Background", "Sinus", "Germinal centre"],
        chunk=64,
    )
    assert store.downsample == 4
    # store pixel r samples level-0 pixel at its centre, (r + 0.5) * 4
    nearest = truth[2::4, 2::4]
    swapped = np.choose(nearest, [0, 2, 1]).astype(np.uint8)
    np.testing.assert_array_equal(mask0(store), swapped)
    assert [c.name for c in open_mask(store.mask_path).classes] == ["Sinus", "Germinal centre"]
    assert digest(path) == before


def test_one_class_annotation_pairs_with_the_models_one_class(tmp_path):
    gj = tmp_path / "a.geojson"
    gj.write_text(
        '{"type":"FeatureCollection","features":[{"type":"Feature","geometry":{"type":"Polygon",'
        '"coordinates":[[[10,10],[50,10],[50,40],[10,40],[10,10]]]},"properties":'
        '{"objectType":"annotation","classification":{"name":"Tumour"}}}]}'
    )
    store = AnnotationStore.create(tmp_path / "s", gj, (100, 100), classes=["Background", "Gland"])
    m = mask0(store)
    assert m[10:40, 10:50].min() == 1
    assert m.sum() == 30 * 40
    assert store.class_names == ["Background", "Gland"]


def test_apply_changes_exactly_the_window_and_records_it(geojson, tmp_path):
    store = AnnotationStore.create(
        tmp_path / "store", geojson, SHAPE, slide_mpp=MPP, mpp=1.0, chunk=64
    )
    original = mask0(store)
    region = store.read_region(201, 301, 100, 150)  # level-0 window
    assert region.shape == (51, 76)  # store px 100..150 x 150..225 cover it
    region[:] = 0
    region[10:30, 20:60] = 2
    edit = store.apply(201, 301, region)
    assert edit.window == (100, 150, 51, 76)
    assert edit.region == (200, 300, 102, 152)  # whole store pixels in level-0 px
    expected = original.copy()
    expected[100:151, 150:226] = region
    np.testing.assert_array_equal(mask0(store), expected)
    check_pyramid(store)
    assert store.regions() == [(200, 300, 102, 152)]
    feats = read_geojson(store.regions_path)
    assert len(feats) == 1
    assert feats[0].geometry.bounds == (300, 200, 452, 302)  # x0, y0, x1, y1 level-0 px
    assert feats[0].class_name == "Corrected"


def test_edit_at_the_slide_edge_is_clipped_to_the_slide(tmp_path):
    store = AnnotationStore.create(tmp_path / "s", None, (101, 99), downsample=4, chunk=16)
    assert store.shape == (26, 25)
    block = store.read_region(90, 90, 50, 50)
    assert block.shape == (4, 3)
    edit = store.apply(90, 90, np.ones_like(block))
    assert edit.region == (88, 88, 13, 11)  # level 0 ends at the slide edge
    assert mask0(store)[22:, 22:].all()


def test_undo_restores_content_and_regions(geojson, tmp_path):
    store = AnnotationStore.create(
        tmp_path / "store", geojson, SHAPE, slide_mpp=MPP, mpp=1.0, chunk=64
    )
    m0 = mask0(store)
    store.apply(0, 0, np.full((70, 90), 1, np.uint8))
    m1 = mask0(store)
    store.apply(100, 120, np.full((200, 10), 2, np.uint8), label="second")
    assert [e.label for e in store.edits()] == ["edit", "second"]
    assert len(store.regions()) == 2
    # a new instance (the next session) can undo what an earlier one did
    store = AnnotationStore.open(store.root)
    assert store.undo().label == "second"
    np.testing.assert_array_equal(mask0(store), m1)
    assert store.regions() == [(0, 0, 140, 180)]
    store.undo()
    np.testing.assert_array_equal(mask0(store), m0)
    check_pyramid(store)
    assert store.regions() == []
    assert store.undo() is None
    assert not store.can_undo


def test_apply_refuses_windows_outside_the_store(tmp_path):
    store = AnnotationStore.create(tmp_path / "s", None, (64, 64), chunk=16)
    with pytest.raises(ValueError, match="outside"):
        store.apply(60, 0, np.ones((10, 10), np.uint8))
    with pytest.raises(ValueError, match="labels"):
        store.apply(0, 0, np.full((4, 4), 0.5))
    assert not store.can_undo


def _crash_script(root, crash_in):
    return textwrap.dedent(
        f"""
        import os
        import numpy as np
        from napari_msunet.io.annotation_store import AnnotationStore
        store = AnnotationStore.open({str(root)!r})
        if {crash_in!r} == "undo":
            store.apply(0, 0, np.full((100, 100), 2, np.uint8))
        calls = []
        real = AnnotationStore._update_pyramid

        def crash(self, window):
            calls.append(window)
            real(self, window)
            os._exit(3)  # killed after level 0 and the pyramid were (partly) written

        AnnotationStore._update_pyramid = crash
        if {crash_in!r} == "apply":
            store.apply(0, 0, np.full((100, 100), 2, np.uint8))
        else:
            store.undo()
        """
    )


@pytest.mark.parametrize("crash_in", ["apply", "undo"])
def test_a_crash_mid_edit_is_rolled_back_on_opening(geojson, tmp_path, crash_in):
    store = AnnotationStore.create(
        tmp_path / "store", geojson, SHAPE, slide_mpp=MPP, mpp=1.0, chunk=64
    )
    store.apply(300, 300, np.full((20, 20), 1, np.uint8))
    before, regions = mask0(store), store.regions()
    store.close()  # hand the store to the other process (one program edits it at a time)
    out = subprocess.run(
        [sys.executable, "-c", _crash_script(store.root, crash_in)], capture_output=True
    )
    assert out.returncode == 3, out.stderr.decode()
    # the crashed process left level 0 changed (apply) or half restored (undo) ...
    if crash_in == "apply":
        assert not np.array_equal(mask0(store), before)
    reopened = AnnotationStore.open(store.root)
    # ... and opening the store rolls the interrupted operation back, pyramid included
    np.testing.assert_array_equal(mask0(reopened), before)
    check_pyramid(reopened)
    assert reopened.regions() == regions
    assert [e.region for e in reopened.edits()] == [(300, 300, 40, 40)]
    leftovers = [p for p in store.root.rglob("*") if p.name.endswith((".tmp", ".trash"))]
    assert leftovers == []


def test_a_failed_chunk_write_leaves_the_old_chunk_whole(tmp_path, monkeypatch):
    store = AnnotationStore.create(tmp_path / "s", None, (128, 128), chunk=32)
    store.apply(0, 0, np.full((32, 32), 1, np.uint8))
    chunk = store.mask_path / "0" / "c" / "0" / "0"
    old = chunk.read_bytes()
    real = os.replace

    def failing(src, dst):
        if "mask.ome.zarr" in str(dst):
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(WriterError, match="rolled back"):
        store.apply(0, 0, np.full((32, 32), 2, np.uint8))
    monkeypatch.undo()
    assert chunk.read_bytes() == old
    assert not [p for p in store.mask_path.rglob("*") if p.name.endswith(".tmp")]
    reopened = AnnotationStore.open(store.root)  # the unfinished edit is gone
    assert [e.index for e in reopened.edits()] == [1]
    assert (mask0(reopened)[:32, :32] == 1).all()


def test_slidespec_trains_on_the_store_and_its_corrected_regions(spec, tmp_path):
    from napari_msunet.io.synthetic import write_synthetic_slide
    from napari_msunet.training.slide_dataset import SlidePatchDataset, SlideSpec

    slide = write_synthetic_slide(tmp_path / "s.svs", spec, "svs")
    geojson = spec.write_geojson(tmp_path / "s.geojson")
    store = AnnotationStore.create(
        tmp_path / "store", geojson, SHAPE, slide_mpp=MPP, mpp=1.0, chunk=64
    )
    edit = np.zeros((64, 64), np.uint8)
    edit[8:40, 8:40] = 2
    store.apply(400, 600, edit)  # store px (200, 300)
    names = ("Background", "Germinal centre", "Sinus")
    ds = SlidePatchDataset(
        SlideSpec(slide, store.mask_path, regions=store.regions_path),
        1.0,
        [(200, 300), (0, 0)],
        64,
        64,
        names,
    )
    np.testing.assert_array_equal(ds[0]["mask"].numpy(), edit)
    assert (ds[1]["mask"] == 255).all()  # outside every corrected region: unannotated


def test_cancelled_creation_leaves_nothing_and_can_be_done_again(geojson, tmp_path):
    stop = threading.Event()
    kwargs = {"slide_mpp": MPP, "chunk": 64, "stop": stop}
    gen = AnnotationStore.iter_create(tmp_path / "store", geojson, SHAPE, **kwargs)
    next(gen)
    stop.set()
    assert run_to_end(gen) is None
    assert not AnnotationStore.exists(tmp_path / "store")
    assert not (tmp_path / "store.creating").exists()
    store = AnnotationStore.create(tmp_path / "store", geojson, SHAPE, slide_mpp=MPP, chunk=64)
    ann = read_geojson(geojson)
    np.testing.assert_array_equal(
        mask0(store), rasterise_array(ann, SHAPE, 1, labels=ann.class_to_label)
    )
    assert not (tmp_path / "store.creating").exists()
    with pytest.raises(WriterError, match="exists"):
        AnnotationStore.create(tmp_path / "store", geojson, SHAPE)


def test_a_crashed_creation_is_never_mixed_into_the_next(tmp_path):
    import shutil

    root, shape = tmp_path / "store", (4096, 2048)  # two 2048-pixel windows at chunk 256
    gen = AnnotationStore.iter_create(root, np.ones(shape, np.uint8), shape, chunk=256)
    next(gen), next(gen)  # the first window of the all-ones source is written
    shutil.copytree(root.with_name("store.creating"), tmp_path / "crashed")
    gen.close()
    (tmp_path / "crashed").rename(root.with_name("store.creating"))  # as a crash leaves it
    store = AnnotationStore.create(root, None, shape, chunk=256)  # another source: empty
    assert mask0(store).max() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store", "store.lock"]


def test_creation_memory_does_not_grow_with_the_slide(tmp_path):
    big = SyntheticSlideSpec(8192, 8192, seed=2, n_regions=8)
    gj = big.write_geojson(tmp_path / "big.geojson")
    tracemalloc.start()
    try:
        store = AnnotationStore.create(tmp_path / "store", gj, big.shape)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert store.shape == (8192, 8192)  # a 64 MB mask at uint8
    assert peak < 40e6


def test_rejected_candidates_are_remembered(tmp_path):
    store = AnnotationStore.create(tmp_path / "s", None, (64, 64))
    store.reject((1, 2, 3, 4), 1)
    store.reject((1, 2, 3, 4), 1)
    assert AnnotationStore.open(store.root).rejected() == [{"bbox": [1, 2, 3, 4], "label": 1}]


def test_store_downsample():
    assert store_downsample(0.25, 1.0) == 4
    assert store_downsample(0.2527, 1.0) == 4
    assert store_downsample(0.5, 0.27) == 1
    assert store_downsample(None, 1.0) == 1
