"""msunet demo --headless: bundled sample slide + bundled model -> prediction and evaluation."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from napari_msunet.demo import (
    SAMPLE_RECORD,
    build_sample_slide,
    default_model_path,
    iter_demo,
    sample_data_dir,
)
from napari_msunet.errors import WriterError
from napari_msunet.evaluation.overlay import OVERLAY_COLORS_RGBA8
from napari_msunet.io.mosaic import EBHI_UM_PER_PX
from napari_msunet.io.slide import open_slide
from napari_msunet.models.checkpoint import read_header
from napari_msunet.progress import Progress


def test_bundled_sample_is_credited_and_complete():
    data = sample_data_dir()
    assert "CC BY 4.0" in (data / "CREDIT.txt").read_text()
    assert len(list((data / "images").glob("*.jpg"))) == 48
    assert len(list((data / "masks").glob("*.png"))) == 48


def test_default_model_header():
    header = read_header(default_model_path())
    assert header.architecture == "msunet"
    assert header.class_names == ("Background", "Gland")
    assert "EBHI-Seg" in json.dumps(header.training)
    assert default_model_path().stat().st_size < 20e6
    # the scale of the EBHI-Seg images, measured from their tissue (examples/estimate_pixel_size.py)
    assert header.input_um_per_px == EBHI_UM_PER_PX
    assert header.class_colours[1] not in {c[:3] for c in OVERLAY_COLORS_RGBA8.values()}


def test_sample_is_reused_at_its_scale_and_rebuilt_from_an_older_scale(tmp_path):
    files = build_sample_slide(tmp_path)
    with open_slide(files.slide) as slide:
        assert slide.mpp == pytest.approx(EBHI_UM_PER_PX)
    stamp = files.slide.stat().st_mtime_ns
    assert build_sample_slide(tmp_path).slide.stat().st_mtime_ns == stamp  # reused
    # a sample left by a version that wrote 0.27 µm/px is rebuilt, not reused
    text = files.slide.read_bytes()
    old = text.replace(b"MPP = 1.0000", b"MPP = 0.2700", 1)  # same length: offsets hold
    assert old != text
    files.slide.write_bytes(old)
    with open_slide(files.slide) as slide:
        assert slide.mpp == pytest.approx(0.27)
    build_sample_slide(tmp_path)
    with open_slide(files.slide) as slide:
        assert slide.mpp == pytest.approx(EBHI_UM_PER_PX)


@pytest.mark.slow
def test_demo_headless(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_msunet.cli",
            "demo",
            "--headless",
            "--out",
            str(tmp_path),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "slide-level foreground IoU" in proc.stdout
    report = json.loads((tmp_path / "evaluation" / "report.json").read_text())
    fg = report["metrics"]["foreground"] if "metrics" in report else report["foreground"]
    assert fg["dice"] > 0.7  # the bundled model on tiles it never trained on
    assert (tmp_path / "evaluation" / "overlay.png").exists()
    assert (tmp_path / "prediction" / "labels.ome.zarr").exists()


def test_iter_demo_yields_progress_records_and_stops_cleanly(tmp_path):
    """Every record is a Progress with its stage; a stop leaves no final-named output."""
    stop = threading.Event()
    stop.set()  # the sample is still built; the prediction stops before its first batch
    gen = iter_demo(tmp_path, device="cpu", stop=stop)
    records = []
    try:
        while True:
            records.append(next(gen))
    except StopIteration as end:
        results = end.value
    assert all(isinstance(r, Progress) for r in records)
    assert [(r.stage, r.done, r.total) for r in records[:2]] == [("build", 0, 1), ("build", 1, 1)]
    assert [r.stage for r in records[2:]] == ["tiles"]
    assert not results["prediction"].completed
    assert results["evaluation"] is None
    assert results["files"].slide.is_file()
    assert not (tmp_path / "prediction" / "labels.ome.zarr").exists()
    assert not (tmp_path / "evaluation").exists()


@pytest.mark.parametrize("name", ["sample.svs", "sample.geojson"])
def test_the_demo_never_replaces_a_users_file(tmp_path, name):
    """Issue 12 item 3: only files the demo wrote itself (named, at their size, in its
    ``sample.msunet-demo.json``) are reused or rebuilt; a user's file is refused, untouched."""
    theirs = tmp_path / name
    theirs.write_bytes(b"a user's file")
    with pytest.raises(WriterError, match=f"{name}.*not written by the demo"):
        build_sample_slide(tmp_path)
    assert theirs.read_bytes() == b"a user's file"
    gen = iter_demo(tmp_path, device="cpu")  # msunet demo --out: refused before predicting
    assert next(gen).stage == "build"
    with pytest.raises(WriterError, match=name):
        next(gen)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_the_demos_own_sample_is_recognised_with_or_without_its_record(tmp_path):
    files = build_sample_slide(tmp_path)
    record = json.loads((tmp_path / SAMPLE_RECORD).read_text())
    assert record["files"]["sample.svs"] == files.slide.stat().st_size
    stamp = files.slide.stat().st_mtime_ns
    files.annotation.write_text("{}")  # the demo's file edited: no longer its own
    with pytest.raises(WriterError, match=r"sample\.geojson"):
        build_sample_slide(tmp_path)
    assert files.annotation.read_text() == "{}"
    (tmp_path / SAMPLE_RECORD).unlink()  # a sample of a version before the record:
    assert build_sample_slide(tmp_path).slide.stat().st_mtime_ns == stamp  # ours by its slide
