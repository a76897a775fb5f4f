"""iter_predict_slide end to end: outputs and metadata, background skipping, stop/close and resume,
refusals and bad inputs. One 4096² synthetic slide (1024² at 1 µm/px) with large white areas,
a narrow U-Net with tiles of 256 (16 tiles)."""

from __future__ import annotations

import itertools
import json
import shutil
import threading

import numpy as np
import pytest
import zarr
from inference_helpers import NORM, header_for, make_model
from PIL import Image

from napari_msunet.errors import ConfigError, MsunetError, SlideError, WriterError
from napari_msunet.inference import (
    InferenceConfig,
    PredictionResult,
    SlideOutputs,
    TileProgress,
    iter_predict_slide,
    predict_array,
    predict_slide,
)
from napari_msunet.inference.engine import _on_tissue
from napari_msunet.io.prediction_record import read_prediction_record
from napari_msunet.io.slide import SlideWarning, open_slide
from napari_msunet.io.tissue import detect_tissue
from napari_msunet.io.working_image import SlideReader, working_geometry
from napari_msunet.io.writers import partial_path
from napari_msunet.progress import Progress

CFG = InferenceConfig(tile=256, device="cpu", chunk=256)


def batches(progress: list[Progress]) -> list[Progress]:
    """The records yielded after a batch (stage "tiles", not the one before the first batch)."""
    return [p for p in progress[1:] if p.stage == "tiles"]


def run(gen, stop_after: int | None = None, on_batch=None):
    """Drive a prediction generator; return (progress list, result or None if closed).

    ``stop_after``: close it after that many batches; ``on_batch(n)``: called after each.
    """
    seen: list[Progress] = []
    try:
        while True:
            seen.append(next(gen))
            n = len(batches(seen))
            if seen[-1].stage == "tiles" and n and on_batch is not None:
                on_batch(n)
            if stop_after is not None and n >= stop_after:
                gen.close()
                return seen, None
    except StopIteration as done:
        return seen, done.value


@pytest.fixture(scope="module")
def model():
    return make_model("unet", seed=1)


@pytest.fixture(scope="module")
def header(model):
    return header_for(model, class_colours=((0, 0, 0), (0, 200, 0)))


@pytest.fixture(scope="module")
def full_run(slide_path, model, header, tmp_path_factory):
    """One uninterrupted prediction: (result, progress records, output folder)."""
    out = tmp_path_factory.mktemp("full") / "out"
    with open_slide(slide_path) as slide:
        progress, result = run(iter_predict_slide(slide, model, header, CFG, out))
    return result, progress, out


def _level0(path):
    return zarr.open_group(path, mode="r")["0"][...]


def test_outputs_and_metadata(full_run, slide_path):
    result, progress, out = full_run
    assert isinstance(result, PredictionResult)
    assert result.completed
    assert result.shape == (1024, 1024)
    assert result.mpp == pytest.approx(1.0)
    assert result.downsample == (4.0, 4.0)
    assert result.level == 1
    assert result.tile == 256
    assert result.margin == 96
    assert result.batch_size == 1
    assert result.tiles_total == 16
    assert result.tiles_computed + result.tiles_skipped == 16
    assert result.tiles_resumed == 0
    assert result.overhead == pytest.approx((448 / 256) ** 2)
    assert all(isinstance(p, Progress) for p in progress)
    assert [p.stage for p in progress[-2:]] == ["pyramid", "pyramid"]
    assert [(p.done, p.total) for p in progress[-2:]] == [(0, 1), (1, 1)]
    tiles = progress[:-2]
    assert all(isinstance(p, TileProgress) and p.stage == "tiles" for p in tiles)
    assert (tiles[0].done, tiles[0].total) == (0, result.tiles_total - result.tiles_skipped)
    assert [p.done for p in tiles[1:]] == list(range(1, result.tiles_computed + 1))
    assert tiles[-1].skipped == result.tiles_skipped
    assert tiles[-1].tiles_per_s > 0
    assert tiles[-1].mpx_per_s > 0
    assert all(a.elapsed_s <= b.elapsed_s for a, b in itertools.pairwise(progress))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["labels.ome.zarr", "prediction.json", "probabilities.ome.zarr", "tissue.png"]
    labels = zarr.open_group(out / "labels.ome.zarr", mode="r")
    assert labels["0"].shape == (1024, 1024)
    assert labels["0"].dtype == np.uint8
    meta = labels.attrs["napari_msunet_prediction"]
    assert meta["mpp"] == pytest.approx(1.0)
    assert meta["level0_downsample"] == [4.0, 4.0]
    assert labels.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"][0][
        "scale"
    ] == [1.0, 1.0]
    props = labels.attrs["ome"]["image-label"]["properties"]
    assert [p["class"] for p in props] == ["background", "region"]
    probs = zarr.open_group(out / "probabilities.ome.zarr", mode="r")["0"]
    assert probs.shape == (2, 1024, 1024)
    manifest = json.loads((out / "prediction.json").read_text())
    assert manifest["output"]["level0_downsample"] == [4.0, 4.0]
    assert manifest["resolved"]["margin"] == 96
    assert manifest["tiles"]["computed"] > 0
    assert manifest["slide"]["path"] == str(slide_path)
    assert InferenceConfig.from_dict(manifest["config"]) == CFG
    tissue = np.asarray(Image.open(out / "tissue.png"))
    assert tissue.shape == tuple(manifest["tissue"]["shape"])
    assert tissue.max() == 255
    assert not (out / "prediction.run.json").exists()


def test_background_tiles_are_skipped_and_left_zero(full_run, slide_path, model):
    """Tiles of bare glass are never computed and stay 0 in both outputs; computed tiles hold
    the same values as predict_array on the working image (the same engine path)."""
    result, progress, out = full_run
    assert 0 < result.tiles_skipped < 16
    assert result.tissue_fraction is not None
    assert 0.1 < result.tissue_fraction < 0.9
    labels = _level0(out / "labels.ome.zarr")
    probs = _level0(out / "probabilities.ome.zarr")
    with open_slide(slide_path) as slide:
        geom = working_geometry(slide, 1.0)
        working = SlideReader(slide, geom).read(0, 0, *geom.shape)
        tissue = detect_tissue(slide, CFG.tissue_settings)
    ref_labels, ref_probs = predict_array(working, model, NORM, CFG)
    # labels are background wherever the tissue mask says glass, also inside computed tiles
    on_tissue = _on_tissue(np.ones(geom.shape, np.uint8), tissue, 0, 0, geom.downsample) > 0
    assert 0 < on_tissue.mean() < 1
    ref_labels = np.where(on_tissue, ref_labels, 0)
    computed = np.zeros((4, 4), bool)
    for ty in range(4):
        for tx in range(4):
            sl = np.s_[ty * 256 : (ty + 1) * 256, tx * 256 : (tx + 1) * 256]
            computed[ty, tx] = probs[(slice(None), *sl)].sum(0).min() > 0
            if computed[ty, tx]:
                assert np.array_equal(labels[sl], ref_labels[sl])
                assert np.array_equal(probs[(slice(None), *sl)], ref_probs[(slice(None), *sl)])
            else:
                assert not labels[sl].any()
                assert not probs[(slice(None), *sl)].any()
                # and it really is glass
                assert working[sl].min() >= 235
    assert computed.sum() == result.tiles_computed
    assert len(batches(progress)) == result.tiles_computed


def test_all_glass_slide_computes_nothing(tmp_path, model, header):
    path = tmp_path / "glass.png"
    Image.fromarray(np.full((600, 800, 3), 243, np.uint8)).save(path)
    with pytest.warns(SlideWarning, match="µm/px unknown"):
        slide = open_slide(path)
    with slide:
        _, result = run(iter_predict_slide(slide, model, header, CFG, tmp_path / "o", mpp=1.0))
    assert result.completed
    assert result.tiles_computed == 0
    assert result.tiles_skipped == 12
    assert not _level0(tmp_path / "o" / "labels.ome.zarr").any()


def test_stop_then_resume_equals_uninterrupted(full_run, slide_path, model, header, tmp_path):
    result, _, full_out = full_run
    out = tmp_path / "out"
    calls = {"n": 0}

    def stop() -> bool:  # checked before every batch: allow three
        calls["n"] += 1
        return calls["n"] > 3

    with open_slide(slide_path) as slide:
        _, first = run(iter_predict_slide(slide, model, header, CFG, out, stop=stop))
        assert not first.completed
        assert first.tiles_computed == 3
        assert partial_path(out / "labels.ome.zarr").is_dir()
        assert not (out / "labels.ome.zarr").exists()
        assert (out / "prediction.run.json").exists()
        _, second = run(iter_predict_slide(slide, model, header, CFG, out))
    assert second.completed
    assert second.tiles_resumed == 3
    assert second.tiles_computed == result.tiles_computed - 3
    for name in ("labels.ome.zarr", "probabilities.ome.zarr"):
        a, b = _level0(out / name), _level0(full_out / name)
        assert np.array_equal(a, b), name
        # and the whole pyramid
        za, zb = zarr.open_group(out / name, mode="r"), zarr.open_group(full_out / name, mode="r")
        assert np.array_equal(za["2"][...], zb["2"][...])


@pytest.mark.parametrize("how", ["close", "event", "callable"])
def test_interrupted_run_leaves_only_resumable_state(slide_path, model, header, tmp_path, how):
    """Closed or stopped after two batches: the finished tiles stay in the ``.partial`` stores
    beside the run record, no final-named output exists, no thread is left, a rerun resumes."""
    out = tmp_path / "out"
    event, flag = threading.Event(), {"stop": False}
    stop = {"close": None, "event": event, "callable": lambda: flag["stop"]}[how]

    def after(n: int) -> None:
        if n >= 2:
            event.set()
            flag["stop"] = True

    before = {t.ident for t in threading.enumerate()}
    with open_slide(slide_path) as slide:
        gen = iter_predict_slide(slide, model, header, CFG, out, stop=stop)
        progress, result = run(gen, stop_after=2 if how == "close" else None, on_batch=after)
        if how == "close":
            assert result is None
        else:
            assert not result.completed
            assert result.tiles_computed == 2
        assert progress[-1].stage == "tiles"
        assert progress[-1].done == 2
        leftover = [
            t.name for t in threading.enumerate() if t.ident not in before and "msunet" in t.name
        ]
        assert leftover == []
        assert sorted(p.name for p in out.iterdir()) == [
            "labels.ome.zarr.partial",
            "prediction.run.json",
            "probabilities.ome.zarr.partial",
        ]
        assert read_prediction_record(out) is None  # no finished prediction there
        log = partial_path(out / "labels.ome.zarr") / "msunet-done.jsonl"
        assert len(log.read_text().splitlines()) == 2
        again = predict_slide(slide, model, header, CFG, out)  # the eager twin resumes too
    assert again.completed
    assert again.tiles_resumed == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.ome.zarr",
        "prediction.json",
        "probabilities.ome.zarr",
        "tissue.png",
    ]


def test_prediction_record_reads_the_manifest(full_run, model, header, tmp_path):
    result, _, out = full_run
    record = read_prediction_record(out)
    assert record.labels == out / "labels.ome.zarr"
    assert record.probabilities == out / "probabilities.ome.zarr"
    assert record.region is None
    assert record.shape == result.shape
    assert record.mpp == pytest.approx(result.mpp)
    assert record.class_names == ("background", "region")
    assert record.same_header(header)
    assert record.same_header(header.to_dict())
    assert not record.same_header(header_for(model, class_names=("background", "gland")))
    from napari_msunet.inference.outputs import model_fingerprint

    assert record.model_fingerprint == model_fingerprint(model)
    assert read_prediction_record(tmp_path) is None
    (tmp_path / "prediction.json").write_text("{not json")
    with pytest.raises(MsunetError, match="cannot read"):
        read_prediction_record(tmp_path)
    (tmp_path / "prediction.json").write_text('{"format": "something else"}')
    with pytest.raises(MsunetError, match="not a prediction manifest"):
        read_prediction_record(tmp_path)


def test_event_stop_before_start(slide_path, model, header, tmp_path):
    ev = threading.Event()
    ev.set()
    with open_slide(slide_path) as slide:
        progress, result = run(
            iter_predict_slide(slide, model, header, CFG, tmp_path / "o", stop=ev)
        )
    assert not result.completed
    assert result.tiles_computed == 0
    assert [(p.stage, p.done) for p in progress] == [("tiles", 0)]


def test_resume_with_another_model_is_refused(slide_path, model, header, tmp_path):
    out = tmp_path / "out"
    with open_slide(slide_path) as slide:
        run(iter_predict_slide(slide, model, header, CFG, out), stop_after=1)
        other = make_model("unet", seed=2)
        with pytest.raises(MsunetError, match="different model"):
            run(iter_predict_slide(slide, other, header_for(other), CFG, out))
        # resume=False discards the interrupted run
        _, result = run(iter_predict_slide(slide, other, header_for(other), CFG, out, resume=False))
    assert result.completed
    assert result.tiles_resumed == 0


def test_finished_output_is_refused_unless_overwrite(full_run, slide_path, model, header, tmp_path):
    _, _, full_out = full_run
    out = tmp_path / "copy"
    shutil.copytree(full_out, out)
    with open_slide(slide_path) as slide:
        with pytest.raises(WriterError, match=r"finished prediction.*overwrite"):
            next(iter_predict_slide(slide, model, header, CFG, out))
        cfg = InferenceConfig(tile=512, device="cpu", chunk=256, save_probabilities=False)
        _, result = run(iter_predict_slide(slide, model, header, cfg, out, overwrite=True))
    assert result.completed
    assert result.tile == 512
    assert not (out / "probabilities.ome.zarr").exists()  # stale: not made by this run
    assert json.loads((out / "prediction.json").read_text())["resolved"]["tile"] == 512


def test_unknown_mpp_needs_an_override(tmp_path, model, header):
    path = tmp_path / "plain.png"
    img = np.full((300, 400, 3), 240, np.uint8)
    img[50:250, 60:300] = (200, 120, 180)
    Image.fromarray(img).save(path)
    with pytest.warns(SlideWarning, match="µm/px unknown"):
        slide = open_slide(path)
    with slide:
        assert slide.mpp is None
        with pytest.raises(SlideError, match=r"resolution is unknown.*--mpp"):
            next(iter_predict_slide(slide, model, header, CFG, tmp_path / "o"))
        _, result = run(iter_predict_slide(slide, model, header, CFG, tmp_path / "o", mpp=0.5))
    assert result.completed
    assert result.shape == (150, 200)
    assert result.mpp == pytest.approx(1.0)
    assert result.downsample == (2.0, 2.0)


def test_model_must_take_rgb(slide_path, header, tmp_path):
    four = make_model("unet", in_channels=4)
    with open_slide(slide_path) as slide, pytest.raises(ConfigError, match="4 input channels"):
        next(iter_predict_slide(slide, four, header, CFG, tmp_path / "o"))
    with pytest.raises(ConfigError, match="4 input channels"):
        predict_array(np.zeros((64, 64, 3), np.uint8), four, NORM, CFG)


def test_bad_settings_fail_before_any_output(slide_path, model, header, tmp_path):
    with open_slide(slide_path) as slide:
        with pytest.raises(ConfigError, match="tile 250 is not a multiple"):
            next(
                iter_predict_slide(slide, model, header, InferenceConfig(tile=250), tmp_path / "o")
            )
        with pytest.raises(ConfigError, match="normalisation std"):
            next(iter_predict_slide(slide, model, ((0, 0, 0), (1, 0, 1)), CFG, tmp_path / "o"))
    assert not (tmp_path / "o").exists()  # nothing is created before the inputs are checked


def test_explicit_output_paths(slide_path, model, header, tmp_path):
    outputs = SlideOutputs.in_dir(tmp_path / "shared", prefix="s1.")
    cfg = InferenceConfig(tile=512, device="cpu", tissue=False)
    with open_slide(slide_path) as slide:
        _, result = run(iter_predict_slide(slide, model, header, cfg, outputs))
    assert result.tiles_skipped == 0
    assert result.tiles_computed == 4
    assert (tmp_path / "shared" / "s1.labels.ome.zarr").is_dir()
    assert (tmp_path / "shared" / "s1.prediction.json").is_file()
    assert not (tmp_path / "shared" / "s1.tissue.png").exists()
