"""msunet demo never replaces a prediction/ or evaluation/ folder it did not make (issue 12,
item 3, beyond the sample files): it records its output folders in its record before writing
them, refuses anyone else's, and a rerun into its own folder redoes its work."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from napari_msunet.demo import SAMPLE_RECORD, build_sample_slide, claim_outputs, iter_demo
from napari_msunet.errors import WriterError
from napari_msunet.progress import run_to_end


def msunet(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", *map(str, args)],
        capture_output=True,
        text=True,
    )


def _stopped_demo(out, **kwargs):
    """The demo up to its first prediction batch: sample built, outputs claimed."""
    stop = threading.Event()
    stop.set()
    return run_to_end(iter_demo(out, device="cpu", stop=stop, **kwargs))


@pytest.mark.parametrize("name", ["prediction", "evaluation"])
def test_a_users_output_folder_is_refused_before_any_work(tmp_path, name):
    theirs = tmp_path / name / "report.json"
    theirs.parent.mkdir()
    theirs.write_text("mine")
    proc = msunet("demo", "--headless", "--device", "cpu", "--out", tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"msunet demo: error: {tmp_path / name}: exists and was not made by the demo" in (
        proc.stderr
    )
    assert "--overwrite" in proc.stderr
    assert "--out" in proc.stderr
    assert theirs.read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["report.json"]
    assert not (tmp_path / "prediction" / "labels.ome.zarr").exists()


def test_overwrite_replaces_a_users_output_folder(tmp_path):
    (tmp_path / "prediction").mkdir()
    (tmp_path / "prediction" / "tissue.png").write_bytes(b"a user's file")
    with pytest.raises(WriterError, match="prediction: exists and was not made by the demo"):
        _stopped_demo(tmp_path)
    results = _stopped_demo(tmp_path, overwrite=True)  # goes on to the prediction
    assert results["evaluation"] is None
    assert (tmp_path / "prediction").is_dir()


def test_a_demo_killed_while_predicting_still_owns_its_folders(tmp_path):
    """The record names the output folders before the first byte of them is written, so a
    demo that stopped (or was killed) part-way is rerun into its own folder."""
    _stopped_demo(tmp_path)
    record = json.loads((tmp_path / SAMPLE_RECORD).read_text())
    assert record["outputs"] == ["prediction", "evaluation"]
    assert record["files"]["sample.svs"] == (tmp_path / "sample.svs").stat().st_size
    (tmp_path / "prediction").mkdir(exist_ok=True)
    (tmp_path / "prediction" / "prediction.run.json").write_text("{}")  # its partial work
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "report.json").write_text("{}")
    _stopped_demo(tmp_path)  # not refused


def test_the_claim_survives_a_rebuilt_sample(tmp_path):
    """A sample rebuilt (from an older scale) keeps the record's output folders."""
    files = build_sample_slide(tmp_path)
    claim_outputs(tmp_path)
    text = files.slide.read_bytes()
    files.slide.write_bytes(text.replace(b"MPP = 1.0000", b"MPP = 0.2700", 1))
    record = json.loads((tmp_path / SAMPLE_RECORD).read_text())
    record["files"]["sample.svs"] = files.slide.stat().st_size
    (tmp_path / SAMPLE_RECORD).write_text(json.dumps(record))
    build_sample_slide(tmp_path)
    record = json.loads((tmp_path / SAMPLE_RECORD).read_text())
    assert record["outputs"] == ["prediction", "evaluation"]
    assert set(record["files"]) == {"sample.svs", "sample.geojson", "sample_mask.ome.tif"}


def test_folders_of_a_demo_before_the_record_listed_them(tmp_path):
    """A demo folder of the previous version: the record names only the sample files. Its
    prediction (whose manifest names the demo's slide) and evaluation (whose report names
    the demo's prediction) are the demo's; a prediction of another slide is not."""
    build_sample_slide(tmp_path)
    pred, ev = tmp_path / "prediction", tmp_path / "evaluation"
    pred.mkdir()
    ev.mkdir()
    manifest = {"slide": {"path": str(tmp_path / "sample.svs")}}
    (pred / "prediction.json").write_text(json.dumps(manifest))
    report = {"prediction": str(pred / "labels.ome.zarr")}
    (ev / "report.json").write_text(json.dumps(report))
    claim_outputs(tmp_path)
    assert json.loads((tmp_path / SAMPLE_RECORD).read_text())["outputs"] == [
        "prediction",
        "evaluation",
    ]
    other = tmp_path / "other"
    build_sample_slide(other)
    (other / "prediction").mkdir()
    manifest = {"slide": {"path": str(tmp_path / "my-slide.svs")}}
    (other / "prediction" / "prediction.json").write_text(json.dumps(manifest))
    with pytest.raises(WriterError, match="prediction: exists and was not made by the demo"):
        claim_outputs(other)
    assert "outputs" not in json.loads((other / SAMPLE_RECORD).read_text())


def test_an_empty_output_folder_is_taken(tmp_path):
    (tmp_path / "prediction").mkdir()
    (tmp_path / "evaluation").mkdir()
    claim_outputs(tmp_path)


@pytest.mark.slow
def test_a_rerun_of_the_demo_into_its_own_folder_works(tmp_path):
    for _ in range(2):
        proc = msunet("demo", "--headless", "--device", "cpu", "--out", tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert "slide-level foreground IoU" in proc.stdout
    assert (tmp_path / "evaluation" / "report.json").exists()
