"""A prediction folder is written by one run at a time, its manifest last, and nothing a user
put there is replaced without ``overwrite`` (issue 12, items 1-3). Real second processes
hold the folder or are killed with SIGKILL part-way through publishing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from napari_msunet.errors import WriterError
from napari_msunet.inference import InferenceConfig, SlideOutputs, iter_predict_slide
from napari_msunet.io.prediction_record import read_prediction_record
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.io.writers import partial_path
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, save_model
from napari_msunet.progress import run_to_end

HOLDER = Path(__file__).with_name("hold_prediction.py")
CONFIG = InferenceConfig(target_mpp=4.0, device="cpu", tile=64, chunk=64)  # as the holder's
FINISHED = [
    "labels.ome.zarr",
    "prediction.geojson",
    "prediction.json",
    "prediction.png",
    "probabilities.ome.zarr",
    "tissue.png",
]

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL and fork-free pids: POSIX")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 1024² slide at 1 µm/px (256² at the model's 4 µm/px) and a tiny model file."""
    root = tmp_path_factory.mktemp("folder")
    slide = write_synthetic_slide(root / "s.svs", SyntheticSlideSpec(1024, 1024, seed=4), "svs")
    torch.manual_seed(0)
    model = build_model("unet", n_classes=3, widths=(4, 8))
    header = ModelHeader.for_model(
        model,
        class_names=("Background", "Germinal centre", "Sinus"),
        input_um_per_px=4.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=64,
    )
    return slide, save_model(root / "m.safetensors", model, header), model, header


def _second(case, out, mode):
    slide, model_file, _, _ = case
    return subprocess.Popen(
        [sys.executable, str(HOLDER), str(slide), str(model_file), str(out), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _predict(case, out, **kwargs):
    slide_path, _, model, header = case
    with open_slide(slide_path) as slide:
        return run_to_end(iter_predict_slide(slide, model, header, CONFIG, out, **kwargs))


def test_a_second_run_into_a_folder_in_use_is_refused_at_start(case, tmp_path):
    out = tmp_path / "out"
    proc = _second(case, out, "hold")
    try:
        assert proc.stdout.readline().strip() == "holding"
        lock = out / "prediction.lock"
        assert json.loads(lock.read_text())["pid"] == proc.pid
        slide_path, _, model, header = case
        with open_slide(slide_path) as slide:
            gen = iter_predict_slide(slide, model, header, CONFIG, out, overwrite=True)
            with pytest.raises(WriterError) as info:
                next(gen)  # refused before its first record: no tile computed
        message = str(info.value)
        assert f"process {proc.pid}" in message
        assert "hold_prediction.py" in message  # the holder's program
        assert os.uname().nodename in message  # and host
        assert str(lock) in message
        assert json.loads(lock.read_text())["pid"] == proc.pid  # the holder's, untouched
    finally:
        proc.communicate("\n", timeout=60)
    assert proc.returncode == 0
    assert not (out / "prediction.lock").exists()  # released by close()
    result = _predict(case, out)  # free again: resumes what the holder started
    assert result.completed


def test_the_lock_of_a_killed_run_is_taken_over(case, tmp_path):
    out = tmp_path / "out"
    proc = _second(case, out, "hold")
    assert proc.stdout.readline().strip() == "holding"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert json.loads((out / "prediction.lock").read_text())["pid"] == proc.pid  # left behind
    assert _predict(case, out).completed
    assert not (out / "prediction.lock").exists()


def test_a_second_task_of_one_process_is_refused_too(case, tmp_path):
    out = tmp_path / "out"
    slide_path, _, model, header = case
    with open_slide(slide_path) as slide:
        first = iter_predict_slide(slide, model, header, CONFIG, out)
        next(first)  # holds the folder
        with pytest.raises(WriterError, match="another task of this program"):
            next(iter_predict_slide(slide, model, header, CONFIG, out))
        first.close()
    assert not (out / "prediction.lock").exists()
    assert _predict(case, out).completed


@pytest.mark.parametrize("mode", ["kill-pyramid", "kill-exports"])
def test_a_run_killed_while_publishing_is_finished_by_a_plain_rerun(case, tmp_path, mode):
    out = tmp_path / "out"
    proc = _second(case, out, mode)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    names = sorted(p.name for p in out.iterdir())
    assert "prediction.json" not in names  # the manifest is the last write
    assert "prediction.run.json" in names
    assert read_prediction_record(out) is None  # not a finished prediction
    if mode == "kill-pyramid":
        assert (out / "labels.ome.zarr").is_dir()
        assert partial_path(out / "probabilities.ome.zarr").is_dir()
    else:
        assert {"labels.ome.zarr", "probabilities.ome.zarr", "tissue.png"} <= set(names)
        assert "prediction.png" not in names
    labels_chunk = next(p for p in (out / "labels.ome.zarr").rglob("c/*/*") if p.is_file())
    stamp = labels_chunk.stat().st_mtime_ns
    result = _predict(case, out, exports=True)  # no overwrite, no restart
    assert result.completed
    assert result.tiles_computed == 0  # nothing recomputed
    assert result.tiles_resumed > 0
    assert sorted(p.name for p in out.iterdir()) == FINISHED
    assert labels_chunk.stat().st_mtime_ns == stamp  # the published store was kept
    manifest = json.loads((out / "prediction.json").read_text())
    assert manifest["geojson"] == "prediction.geojson"
    assert manifest["preview"] == "prediction.png"
    assert read_prediction_record(out) is not None


def test_an_error_in_the_exports_leaves_a_folder_a_rerun_finishes(case, tmp_path, monkeypatch):
    import napari_msunet.inference.preview as preview

    out = tmp_path / "out"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(preview, "prediction_preview", full_disk)
    with pytest.raises(OSError, match="No space"):
        _predict(case, out, exports=True)
    assert not (out / "prediction.json").exists()
    assert (out / "prediction.geojson").exists()  # written before the failure
    monkeypatch.undo()
    result = _predict(case, out, exports=True)
    assert result.completed
    assert result.tiles_computed == 0
    assert sorted(p.name for p in out.iterdir()) == FINISHED


@pytest.mark.parametrize("name", ["tissue.png", "prediction.geojson", "labels.ome.zarr"])
def test_a_users_file_in_the_folder_is_refused_before_any_work(case, tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / name
    if name.endswith(".zarr"):
        theirs.mkdir()
        (theirs / "zarr.json").write_text("{}")
    else:
        theirs.write_bytes(b"a user's file")
    slide_path, _, model, header = case
    with open_slide(slide_path) as slide:
        gen = iter_predict_slide(slide, model, header, CONFIG, out, exports=True)
        with pytest.raises(WriterError, match=f"{name}.*overwrite"):
            next(gen)
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else written
    if not name.endswith(".zarr"):
        assert theirs.read_bytes() == b"a user's file"
    # the same folder with --overwrite: replaced
    assert _predict(case, out, exports=True, overwrite=True).completed
    assert sorted(p.name for p in out.iterdir()) == FINISHED


def test_explicit_outputs_lock_beside_their_manifest(case, tmp_path):
    outputs = SlideOutputs.in_dir(tmp_path / "shared", prefix="s1.")
    assert outputs.lock == tmp_path / "shared" / "s1.prediction.lock"
    stop = threading.Event()
    stop.set()
    assert not _predict(case, outputs, stop=stop).completed
    assert not outputs.lock.exists()
