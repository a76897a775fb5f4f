"""Streaming pyramidal writers: OME-Zarr (resumable, block by block) and OME-TIFF (tile by tile)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_msunet.errors import WriterError
from napari_msunet.io.writers import (
    OmeZarrWriter,
    default_n_levels,
    downsample,
    level_shapes,
    partial_path,
    write_ome_tiff,
    write_ome_zarr,
)

RNG = np.random.default_rng(7)


def _mean_ref(a: np.ndarray) -> np.ndarray:
    """Independent 2 × 2 mean: edge-padded, rounded half up for integers."""
    h, w = a.shape[-2:]
    pad = [(0, 0)] * (a.ndim - 2) + [(0, h % 2), (0, w % 2)]
    b = np.pad(a, pad, mode="edge").astype(np.float64)
    m = b.reshape(*b.shape[:-2], b.shape[-2] // 2, 2, b.shape[-1] // 2, 2).mean(axis=(-3, -1))
    return np.floor(m + 0.5).astype(a.dtype) if a.dtype.kind in "iu" else m.astype(a.dtype)


def _pyramid_ref(a: np.ndarray, kind: str, n: int) -> list[np.ndarray]:
    out = [a]
    for _ in range(n - 1):
        out.append(out[-1][..., ::2, ::2] if kind == "labels" else _mean_ref(out[-1]))
    return out


def _labels(h: int = 1000, w: int = 1300) -> np.ndarray:
    return RNG.integers(0, 4, (h, w), dtype=np.uint8)


def _probs(c: int = 3, h: int = 999, w: int = 1301) -> np.ndarray:
    return RNG.integers(0, 256, (c, h, w), dtype=np.uint8)


def _blocks(shape, ys, xs):
    """Unaligned blocks tiling ``shape`` along the cuts ``ys`` × ``xs``, in shuffled order."""
    ys, xs = [0, *ys, shape[-2]], [0, *xs, shape[-1]]
    blocks = [
        (ys[i], xs[j], ys[i + 1] - ys[i], xs[j + 1] - xs[j])
        for i in range(len(ys) - 1)
        for j in range(len(xs) - 1)
    ]
    order = RNG.permutation(len(blocks))
    return [blocks[i] for i in order]


def _read_zarr_levels(path: Path) -> tuple[list[np.ndarray], dict]:
    group = zarr.open_group(path, mode="r")
    ome = group.attrs["ome"]
    paths = [d["path"] for d in ome["multiscales"][0]["datasets"]]
    return [group[p][:] for p in paths], dict(group.attrs)


# ------------------------------------------------------------------------------------------
# pyramid geometry


def test_level_geometry():
    assert default_n_levels((16384, 16384), 512) == 7  # ... 512 -> 256 < 512
    assert default_n_levels((1000, 1300), 256) == 3
    assert default_n_levels((100, 5000), 512) == 1
    assert level_shapes((999, 1301), 3) == [(999, 1301), (500, 651), (250, 326)]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_mean_downsample_matches_reference_on_odd_edges(dtype):
    a = (RNG.random((2, 7, 9)) * 200).astype(dtype)
    np.testing.assert_allclose(downsample(a, "probabilities"), _mean_ref(a), rtol=1e-6)
    assert downsample(np.full((5, 5), 7, dtype), "probabilities").tolist() == [[7] * 3] * 3


# ------------------------------------------------------------------------------------------
# OME-Zarr


def test_zarr_labels_round_trip_unaligned_blocks(tmp_path):
    lab = _labels()
    out = tmp_path / "pred.labels.ome.zarr"
    with OmeZarrWriter(out, lab.shape, kind="labels", chunk=256, mpp=0.5) as w:
        for y, x, h, ww in _blocks(lab.shape, [333, 700], [411, 900]):
            w.write_region(y, x, lab[y : y + h, x : x + ww])
        assert w.done_chunks().all()
        assert w.finalize() == out
    levels, _ = _read_zarr_levels(out)
    ref = _pyramid_ref(lab, "labels", 3)
    assert len(levels) == 3
    for got, want in zip(levels, ref, strict=True):
        np.testing.assert_array_equal(got, want)


def test_zarr_probabilities_round_trip_mean(tmp_path):
    prob = _probs()
    out = tmp_path / "pred.prob.ome.zarr"
    with OmeZarrWriter(out, prob.shape[1:], kind="probabilities", n_channels=3, chunk=128) as w:
        for y, x, h, ww in _blocks(prob.shape, [100, 513, 800], [250, 777]):
            w.write_region(y, x, prob[:, y : y + h, x : x + ww])
        w.finalize()
    levels, _ = _read_zarr_levels(out)
    ref = _pyramid_ref(prob, "probabilities", default_n_levels(prob.shape, 128))
    assert len(levels) == len(ref) == 4
    for got, want in zip(levels, ref, strict=True):
        np.testing.assert_array_equal(got, want)


def test_zarr_ngff_metadata(tmp_path):
    out = tmp_path / "m.ome.zarr"
    names = ["background", "germinal centre", "sinus"]
    with OmeZarrWriter(
        out, (600, 700), kind="labels", chunk=128, mpp=0.25, class_names=names,
        class_colors=["#000000", (0, 255, 0), (0.0, 0.0, 1.0, 0.5)],
    ) as w:  # fmt: skip
        w.finalize()
    doc = json.loads((out / "zarr.json").read_text())
    assert doc["zarr_format"] == 3
    assert doc["node_type"] == "group"
    ome = doc["attributes"]["ome"]
    assert ome["version"] == "0.5"
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert all(a["unit"] == "micrometer" and a["type"] == "space" for a in ms["axes"])
    scales = [d["coordinateTransformations"][0] for d in ms["datasets"]]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2", "3"]
    assert all(s["type"] == "scale" for s in scales)
    assert [s["scale"] for s in scales] == [[0.25 * 2**k] * 2 for k in range(4)]
    label = ome["image-label"]
    assert label["colors"][1] == {"label-value": 1, "rgba": [0, 255, 0, 255]}
    assert label["colors"][2]["rgba"] == [0, 0, 255, 128]
    assert [p["class"] for p in label["properties"]] == names
    arr = json.loads((out / "1" / "zarr.json").read_text())
    assert arr["dimension_names"] == ["y", "x"]
    assert arr["shape"] == [300, 350]
    assert not (out / "msunet-done.jsonl").exists()


def test_zarr_probability_metadata_without_mpp_is_in_pixels(tmp_path):
    out = write_ome_zarr(tmp_path / "p.ome.zarr", _probs(2, 300, 200), chunk=64)
    ome = zarr.open_group(out, mode="r").attrs["ome"]
    ms = ome["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert "unit" not in ms["axes"][1]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == [
        [1.0, 1.0, 1.0],
        [1.0, 2.0, 2.0],
        [1.0, 4.0, 4.0],
    ]
    assert len(ome["omero"]["channels"]) == 2


def test_write_ome_zarr_from_dask_and_zarr_sources(tmp_path):
    lab = _labels(700, 900)
    src = da.from_array(lab, chunks=(300, 300))
    a = write_ome_zarr(tmp_path / "a.ome.zarr", src, chunk=128, mpp=1.0)
    z = zarr.create_array(tmp_path / "src.zarr", shape=lab.shape, chunks=(256, 256), dtype="u1")
    z[:] = lab
    b = write_ome_zarr(tmp_path / "b.ome.zarr", z, chunk=128, mpp=1.0)
    for out in (a, b):
        levels, _ = _read_zarr_levels(out)
        for got, want in zip(levels, _pyramid_ref(lab, "labels", len(levels)), strict=True):
            np.testing.assert_array_equal(got, want)


def test_unwritten_chunks_read_as_fill_value(tmp_path):
    out = tmp_path / "sparse.ome.zarr"
    with OmeZarrWriter(out, (512, 512), chunk=128, fill_value=0) as w:
        w.write_region(0, 0, np.full((128, 128), 3, np.uint8))
        w.finalize()
    levels, _ = _read_zarr_levels(out)
    assert levels[0][:128, :128].min() == 3
    assert levels[0][128:].max() == 0
    assert levels[1][:64, :64].min() == 3
    assert levels[1][64:].max() == 0


# ------------------------------------------------------------------------------------------
# publishing, resume, overwrite


def test_nothing_is_published_before_finalize(tmp_path):
    out = tmp_path / "x.ome.zarr"
    w = OmeZarrWriter(out, (300, 300), chunk=128)
    w.write_region(0, 0, np.ones((300, 300), np.uint8))
    assert not out.exists()
    assert partial_path(out).is_dir()
    w.finalize()
    assert out.is_dir()
    assert not partial_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]


_CRASH = """
import os, sys
import numpy as np
from napari_msunet.io.writers import OmeZarrWriter
lab = np.load(sys.argv[2])
w = OmeZarrWriter(sys.argv[1], lab.shape, chunk=128, mpp=1.0)
for y, x in [(0, 0), (0, 300), (150, 0)]:
    w.write_region(y, x, lab[y : y + 150, x : x + 300])
os._exit(3)  # killed before finalize
"""


def test_crash_leaves_only_partial_and_resume_keeps_chunks(tmp_path):
    lab = _labels(450, 600)
    np.save(tmp_path / "lab.npy", lab)
    out = tmp_path / "crash.ome.zarr"
    proc = subprocess.run([sys.executable, "-c", _CRASH, str(out), str(tmp_path / "lab.npy")])
    assert proc.returncode == 3
    assert not out.exists()
    assert partial_path(out).is_dir()

    with OmeZarrWriter(out, lab.shape, chunk=128, mpp=1.0) as w:
        assert w.resumed
        assert sorted(w.done_regions()) == [
            (0, 0, 150, 300),
            (0, 300, 150, 300),
            (150, 0, 150, 300),
        ]
        assert w.is_done(0, 0, 300, 300)
        assert w.is_done(10, 10, 5, 500)
        assert not w.is_done(150, 300, 150, 300)
        assert not w.is_done(0, 0, 450, 600)
        done = w.done_chunks()  # 128-pixel chunks: rows 0 and (1, cols 0-1) are complete
        assert done.shape == (4, 5)
        assert done.sum() == 7
        assert done[0].all()
        assert done[1, :2].all()
        for y, x, h, ww in [(150, 300, 150, 300), (300, 0, 150, 600)]:
            assert not w.is_done(y, x, h, ww)
            w.write_region(y, x, lab[y : y + h, x : x + ww])
        w.finalize()
    levels, _ = _read_zarr_levels(out)
    for got, want in zip(levels, _pyramid_ref(lab, "labels", len(levels)), strict=True):
        np.testing.assert_array_equal(got, want)


def test_truncated_progress_record_counts_as_not_written(tmp_path):
    out = tmp_path / "t.ome.zarr"
    w = OmeZarrWriter(out, (256, 256), chunk=128)
    w.write_region(0, 0, np.ones((128, 256), np.uint8))
    w.close()
    with (partial_path(out) / "msunet-done.jsonl").open("a") as f:
        f.write("[128, 0, 12")  # a crash in the middle of a line
    with pytest.warns(RuntimeWarning, match="ignored 1 unreadable"):
        w = OmeZarrWriter(out, (256, 256), chunk=128)
    assert w.done_regions() == [(0, 0, 128, 256)]
    assert w.done_chunks().tolist() == [[True, True], [False, False]]
    w.write_region(128, 0, np.full((128, 256), 2, np.uint8))
    w.close()
    w = OmeZarrWriter(out, (256, 256), chunk=128)  # the new record starts on a fresh line
    assert w.done_regions() == [(0, 0, 128, 256), (128, 0, 128, 256)]
    w.finalize()
    assert _read_zarr_levels(out)[0][0][:, 0].tolist() == [1] * 128 + [2] * 128


def test_cancelled_generator_keeps_partial_for_resume(tmp_path):
    lab = _labels(256, 256)
    out = tmp_path / "gen.ome.zarr"

    def job():
        with OmeZarrWriter(out, lab.shape, chunk=128) as w:
            for y, x, h, ww in [(0, 0, 128, 256), (128, 0, 128, 256)]:
                if not w.is_done(y, x, h, ww):
                    w.write_region(y, x, lab[y : y + h, x : x + ww])
                    yield y
            w.finalize()

    gen = job()
    next(gen)
    gen.close()  # what worker.quit() does
    assert partial_path(out).exists()
    assert not out.exists()
    assert list(job()) == [128]  # the rerun skips the first half
    np.testing.assert_array_equal(_read_zarr_levels(out)[0][0], lab)


def test_resume_with_different_parameters_is_refused(tmp_path):
    out = tmp_path / "r.ome.zarr"
    w = OmeZarrWriter(out, (300, 300), chunk=128, mpp=1.0)
    w.write_region(0, 0, np.ones((128, 128), np.uint8))
    w.close()
    with pytest.raises(WriterError, match=r"different parameters \(chunk, n_levels\)") as err:
        OmeZarrWriter(out, (300, 300), chunk=64, mpp=1.0)
    assert str(partial_path(out)) in str(err.value)
    with pytest.raises(WriterError, match="mpp"):
        OmeZarrWriter(out, (300, 300), chunk=128, mpp=0.5)
    fresh = OmeZarrWriter(out, (300, 300), chunk=64, mpp=1.0, resume=False)
    assert not fresh.resumed
    assert fresh.done_regions() == []
    fresh.discard()
    assert not partial_path(out).exists()


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "o.ome.zarr"
    write_ome_zarr(out, np.ones((200, 200), np.uint8), chunk=64)
    with pytest.raises(WriterError, match="overwrite=True") as err:
        OmeZarrWriter(out, (200, 200))
    assert str(out) in str(err.value)
    with pytest.raises(WriterError, match="overwrite=True"):
        write_ome_tiff(out, np.ones((200, 200), np.uint8))
    write_ome_zarr(out, np.full((100, 50), 2, np.uint8), chunk=64, overwrite=True)
    levels, _ = _read_zarr_levels(out)
    assert levels[0].shape == (100, 50)
    assert (levels[0] == 2).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.ome.zarr"]


# ------------------------------------------------------------------------------------------
# bad input


@pytest.fixture
def writer(tmp_path):
    with OmeZarrWriter(tmp_path / "bad.ome.zarr", (300, 400), chunk=128) as w:
        yield w


@pytest.mark.parametrize(
    ("y", "x", "block", "match"),
    [
        (0, 0, np.zeros((10, 10), np.float32), "does not fit the output dtype"),
        (0, 0, np.zeros((10, 10), np.int64), "does not fit the output dtype"),
        (0, 0, np.zeros((2, 10, 10), np.uint8), r"must be \(h, w\)"),
        (295, 0, np.zeros((10, 10), np.uint8), "outside the output"),
        (0, -1, np.zeros((10, 10), np.uint8), "outside the output"),
        (0, 395, np.zeros((10, 10), np.uint8), "outside the output"),
    ],
)
def test_bad_blocks(writer, y, x, block, match):
    with pytest.raises(WriterError, match=match) as err:
        writer.write_region(y, x, block)
    assert str(err.value).startswith(str(writer.path))
    assert writer.done_regions() == []


def test_bad_probability_block_and_use_after_finalize(tmp_path):
    with OmeZarrWriter(tmp_path / "p.ome.zarr", (64, 64), kind="probabilities", n_channels=2) as w:
        with pytest.raises(WriterError, match=r"must be \(2, h, w\)"):
            w.write_region(0, 0, np.zeros((3, 8, 8), np.uint8))
        w.write_region(0, 0, np.zeros((2, 8, 8), np.uint8))
        w.finalize()
        with pytest.raises(WriterError, match="finalized"):
            w.write_region(0, 0, np.zeros((2, 8, 8), np.uint8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "masks"}, "kind must be"),
        ({"dtype": np.float32}, "integer dtype"),
        ({"kind": "probabilities"}, "n_channels or class_names"),
        (
            {"kind": "probabilities", "n_channels": 2, "dtype": np.int16},
            "unsigned integer or float",
        ),
        ({"chunk": 8}, "chunk must be"),
        ({"mpp": -1}, "positive number"),
        ({"class_colors": ["red"]}, "cannot read colour"),
        ({"fill_value": -1}, "does not fit"),
    ],
)
def test_bad_writer_parameters(tmp_path, kwargs, match):
    with pytest.raises(WriterError, match=match) as err:
        OmeZarrWriter(tmp_path / "w.ome.zarr", (100, 100), **kwargs)
    assert str(tmp_path / "w.ome.zarr") in str(err.value)


def test_unwritable_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for call in (
        lambda p: OmeZarrWriter(p, (64, 64)),
        lambda p: write_ome_zarr(p, np.zeros((64, 64), np.uint8)),
        lambda p: write_ome_tiff(p, np.zeros((64, 64), np.uint8)),
    ):
        target = blocker / "out.ome"
        with pytest.raises(WriterError, match="cannot create the output folder") as err:
            call(target)
        assert str(target) in str(err.value)


@pytest.mark.parametrize(
    ("source", "kwargs", "match"),
    [
        (np.zeros((2, 3, 4, 5), np.uint8), {}, "2-D"),
        (np.zeros((0, 5), np.uint8), {}, "empty"),
        (np.zeros((5, 5), np.float32), {}, "integer dtype"),
        (np.zeros((5, 5), np.uint8), {"kind": "probabilities"}, "3-D"),
        ([[1, 2], [3, 4]], {}, "must be an array"),
        (np.zeros((5, 5), np.int64), {}, "cast the labels"),
        (np.zeros((5, 5), np.uint8), {"tile": 100}, "multiple of 16"),
        (np.zeros((5, 5), np.uint8), {"compression": "jpeg"}, "compression must be"),
    ],
)
def test_bad_tiff_sources(tmp_path, source, kwargs, match):
    out = tmp_path / "bad.ome.tif"
    with pytest.raises(WriterError, match=match) as err:
        write_ome_tiff(out, source, **kwargs)
    assert str(out) in str(err.value)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# OME-TIFF


def test_tiff_labels_round_trip_and_metadata(tmp_path):
    lab = _labels()
    out = write_ome_tiff(
        tmp_path / "l.ome.tif", lab, tile=256, mpp=0.5, class_names=["bg", "gc", "s", "x"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.ome.tif"]
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert series.axes == "YX"
        assert len(series.levels) == 3
        assert [lv.shape for lv in series.levels] == [(1000, 1300), (500, 650), (250, 325)]
        for lv, want in zip(series.levels, _pyramid_ref(lab, "labels", 3), strict=True):
            np.testing.assert_array_equal(lv.asarray(), want)
        page = tif.pages[0]
        assert page.is_tiled
        assert page.tilewidth == 256
        assert page.compression == 8
        assert len(page.subifds) == 2
        xres = page.tags["XResolution"].value
        assert abs(xres[0] / xres[1] - 1e4 / 0.5) < 1e-3  # pixels per cm
        meta = tifffile.xml2dict(tif.ome_metadata)["OME"]
    pixels = meta["Image"]["Pixels"]
    assert pixels["PhysicalSizeX"] == 0.5
    assert pixels["PhysicalSizeXUnit"] == "µm"
    assert pixels["PhysicalSizeY"] == 0.5
    classes = meta["StructuredAnnotations"]["MapAnnotation"]["Value"]["M"]
    assert json.loads(classes[1]["value"])["class"] == "gc"


@pytest.mark.parametrize("wrap", ["numpy", "dask-aligned", "dask-misaligned", "zarr", "bool"])
def test_tiff_sources_of_every_kind_give_the_same_pyramid(tmp_path, wrap):
    lab = _labels(600, 520) % 2 if wrap == "bool" else _labels(600, 520)
    src = {
        "numpy": lambda: lab,
        "dask-aligned": lambda: da.from_array(lab, chunks=(64, 128)),  # tiles read directly
        "dask-misaligned": lambda: da.from_array(lab, chunks=(200, 300)),  # staged first
        "zarr": lambda: zarr.array(lab, chunks=(256, 256)),
        "bool": lambda: da.from_array(lab.astype(bool), chunks=(100, 100)),
    }[wrap]()
    out = write_ome_tiff(tmp_path / "s.ome.tif", src, tile=128)
    with tifffile.TiffFile(out) as tif:
        levels = [lv.asarray() for lv in tif.series[0].levels]
    assert levels[0].dtype == np.uint8
    ref = _pyramid_ref(lab, "labels", default_n_levels(lab.shape, 128))
    assert len(levels) == len(ref) == 4
    for got, want in zip(levels, ref, strict=True):
        np.testing.assert_array_equal(got, want)


def test_tiff_probabilities_match_zarr_pyramid(tmp_path):
    prob = _probs()
    src = da.from_array(prob, chunks=(3, 300, 300))  # lazy, misaligned, multi-channel
    tif_path = write_ome_tiff(tmp_path / "p.ome.tif", src, tile=128, class_names=["a", "b", "c"])
    zarr_levels, _ = _read_zarr_levels(write_ome_zarr(tmp_path / "p.ome.zarr", src, chunk=128))
    ref = _pyramid_ref(prob, "probabilities", default_n_levels(prob.shape, 128))
    with tifffile.TiffFile(tif_path) as tif:
        series = tif.series[0]
        assert series.axes == "CYX"
        assert len(series.levels) == len(ref) == len(zarr_levels)
        for lv, want, z in zip(series.levels, ref, zarr_levels, strict=True):
            np.testing.assert_array_equal(lv.asarray(), want)
            np.testing.assert_array_equal(z, want)
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert "PhysicalSizeX" not in pixels
    assert [c["Name"] for c in pixels["Channel"]] == ["a", "b", "c"]


def test_tiff_overwrite_replaces_atomically(tmp_path):
    out = tmp_path / "o.ome.tif"
    write_ome_tiff(out, np.ones((64, 64), np.uint8))
    write_ome_tiff(out, np.full((32, 48), 5, np.uint16), overwrite=True)
    assert tifffile.imread(out).tolist() == np.full((32, 48), 5).tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.ome.tif"]


def test_tiff_failure_leaves_no_files(tmp_path):
    class Broken:
        shape, dtype, ndim = (300, 300), np.dtype(np.uint8), 2

        def __getitem__(self, index):
            raise RuntimeError("disk on fire")

    with pytest.raises(WriterError, match=r"cannot read the source at \[0:128, 0:128\]: disk"):
        write_ome_tiff(tmp_path / "b.ome.tif", Broken(), tile=128)
    assert list(tmp_path.iterdir()) == []
    # the OME-Zarr writer keeps its partial output: a rerun resumes once the source is fixed
    with pytest.raises(WriterError, match="cannot read the source at") as err:
        write_ome_zarr(tmp_path / "b.ome.zarr", Broken(), chunk=128)
    assert str(tmp_path / "b.ome.zarr") in str(err.value)
    assert [p.name for p in tmp_path.iterdir()] == ["b.ome.zarr.partial"]


# ------------------------------------------------------------------------------------------
# memory


_MEMORY = """
import json, resource, sys, time
import dask.array as da
import numpy as np
from napari_msunet.io.writers import write_ome_tiff, write_ome_zarr

n, chunk = 16384, 1024
row = (np.arange(n) // 97 % 5).astype(np.uint8)
col = (np.arange(n) // 61 % 5).astype(np.uint8)

def pattern(block_info=None):
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    return (row[y0:y1, None] + col[None, x0:x1]) % 5

src = da.map_blocks(pattern, chunks=((chunk,) * (n // chunk),) * 2, dtype=np.uint8)
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
result = {"base": peak()}
for name, fn in (("zarr", write_ome_zarr), ("tiff", write_ome_tiff)):
    t = time.perf_counter()
    fn(f"{sys.argv[1]}/big.{name}", src, mpp=1.0)
    result[name] = {"peak": peak(), "seconds": time.perf_counter() - t}
print(json.dumps(result))
"""


@pytest.mark.slow
def test_large_lazy_write_memory_is_bounded(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    array_bytes = 16384 * 16384
    for name in ("zarr", "tiff"):
        growth = result[name]["peak"] - result["base"]
        assert growth < array_bytes / 4, (name, growth / 2**20, result)
    with tifffile.TiffFile(tmp_path / "big.tiff") as tif:
        assert [lv.shape for lv in tif.series[0].levels][-1] == (256, 256)
        lv = tif.series[0].levels[2].asarray()
    row = np.arange(0, 16384, 4) // 97 % 5
    col = np.arange(0, 16384, 4) // 61 % 5
    np.testing.assert_array_equal(lv, (row[:, None] + col[None, :]) % 5)
    levels, _ = _read_zarr_levels(tmp_path / "big.zarr")
    np.testing.assert_array_equal(levels[2], lv)
