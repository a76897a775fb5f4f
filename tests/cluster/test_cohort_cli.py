"""``msunet predict --scheduler``: a cohort over a real dask scheduler and two workers.

The scheduler and the workers are the real ``dask scheduler`` / ``dask worker`` programs on
127.0.0.1; the slides are real-format files (Aperio SVS, OME-TIFF, NDPI-like); the model is the
bundled one. Each slide's labels must equal a one-process ``msunet predict``.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import zarr

from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models.bundled import bundled_model_path
from napari_msunet.models.checkpoint import load_model, save_model

pytest.importorskip("distributed")
from cluster_case import start_cluster

FORMATS = {"a.svs": "svs", "b.ome.tiff": "ome-tiff", "c.ndpi": "ndpi"}


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    paths = []
    for k, (name, fmt) in enumerate(FORMATS.items()):
        spec = SyntheticSlideSpec(1536, 1536, seed=10 + k, mpp=0.5)
        paths.append(write_synthetic_slide(root / name, spec, fmt, tile=256))
    return paths


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("dask"), 2)
    yield c
    c.close()


def _predict(slides, out, *extra):
    cmd = [sys.executable, "-m", "napari_msunet.cli", "predict", *map(str, slides)]
    cmd += ["--model", str(bundled_model_path()), "--out", str(out), "--device", "cpu", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _labels(folder):
    return np.asarray(zarr.open_group(folder / "labels.ome.zarr", mode="r")["0"])


@pytest.fixture(scope="module")
def baseline(slides, tmp_path_factory):
    out = tmp_path_factory.mktemp("one-process")
    run = _predict(slides, out)
    assert run.returncode == 0, run.stderr
    return out


def _stem(path):
    return path.name.split(".")[0]


def test_a_cohort_on_two_workers_equals_the_one_process_run(slides, cluster, baseline, tmp_path):
    out = tmp_path / "cohort"
    run = _predict(slides, out, "--scheduler", cluster.address)
    assert run.returncode == 0, run.stdout + run.stderr
    for slide in slides:
        assert np.array_equal(_labels(out / _stem(slide)), _labels(baseline / _stem(slide)))
        assert (out / _stem(slide) / "prediction.geojson").is_file()
    rows = list(csv.DictReader((out / "cohort-report.csv").open()))
    assert [r["status"] for r in rows] == ["done"] * 3
    assert {r["worker"] for r in rows} <= {"w0", "w1"}
    assert "3 done, 0 skipped, 0 failed of 3 slides" in run.stdout
    # the same command again: every slide is finished, nothing is recomputed
    again = _predict(slides, out, "--scheduler", cluster.address)
    assert again.returncode == 0, again.stderr
    assert "0 done, 3 skipped, 0 failed" in again.stdout
    # another model into the same folders: refused slide by slide, nothing replaced
    other = tmp_path / "other.safetensors"
    model, header = load_model(bundled_model_path())
    torch.nn.init.zeros_(next(model.parameters()))
    save_model(other, model, header)
    before = _labels(out / _stem(slides[0]))
    cmd = [sys.executable, "-m", "napari_msunet.cli", "predict", *map(str, slides)]
    cmd += ["--model", str(other), "--out", str(out), "--device", "cpu"]
    cmd += ["--scheduler", cluster.address]
    refused = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 1
    assert "0 done, 0 skipped, 3 failed" in refused.stdout
    assert "made with another model" in (out / "cohort-report.csv").read_text()
    assert np.array_equal(_labels(out / _stem(slides[0])), before)


def test_an_unreadable_slide_fails_alone_and_is_named(slides, cluster, tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header and nothing else
    out = tmp_path / "cohort"
    # the model's bytes shipped to the workers (for workers that do not see the client's files)
    run = _predict([slides[0], bad, slides[1]], out, "--scheduler", cluster.address, "--ship-model")
    assert run.returncode == 1
    rows = {
        r["slide"].rsplit("/", 1)[-1]: r for r in csv.DictReader((out / "cohort-report.csv").open())
    }
    assert rows["broken.svs"]["status"] == "failed"
    assert "broken.svs" in rows["broken.svs"]["error"]
    assert rows["a.svs"]["status"] == rows["b.ome.tiff"]["status"] == "done"
    assert "broken.svs" in run.stdout


def _started(slides, out, address, until="*/*.partial"):
    """``msunet predict --scheduler`` running, once a file matching ``until`` exists (by
    default the first slide's stores)."""
    cmd = [sys.executable, "-m", "napari_msunet.cli", "predict", *map(str, slides)]
    cmd += ["--model", str(bundled_model_path()), "--out", str(out), "--device", "cpu"]
    cmd += ["--scheduler", address]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(p.stat().st_size for p in out.glob(until)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return run


def test_a_worker_killed_mid_run_loses_nothing(slides, baseline, tmp_path):
    cluster = start_cluster(tmp_path / "dask", 2)
    try:
        out = tmp_path / "cohort"
        run = _started(slides, out, cluster.address)
        victim = cluster.workers[0]
        victim.send_signal(signal.SIGKILL)  # a worker lost while it writes a slide
        victim.wait(timeout=30)
        stdout, stderr = run.communicate(timeout=600)
        assert run.returncode == 0, stdout + stderr
        for slide in slides:
            assert np.array_equal(_labels(out / _stem(slide)), _labels(baseline / _stem(slide)))
        rows = list(csv.DictReader((out / "cohort-report.csv").open()))
        assert [r["status"] for r in rows] == ["done"] * 3
    finally:
        cluster.close()


def test_a_local_cluster_of_two_workers_gives_the_same_labels(slides, baseline, tmp_path):
    out = tmp_path / "local"
    run = _predict(slides[:2], out, "--workers", "2")
    assert run.returncode == 0, run.stdout + run.stderr
    for slide in slides[:2]:
        assert np.array_equal(_labels(out / _stem(slide)), _labels(baseline / _stem(slide)))
    assert "on 2 worker(s)" in run.stdout


def _probabilities(folder):
    return np.asarray(zarr.open_group(folder / "probabilities.ome.zarr", mode="r")["0"])


def test_a_slide_split_over_the_workers_equals_the_one_process_run(
    slides, cluster, baseline, tmp_path
):
    out = tmp_path / "split"
    run = _predict(slides[:2], out, "--scheduler", cluster.address, "--split", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    for slide in slides[:2]:
        folder = out / _stem(slide)
        assert np.array_equal(_labels(folder), _labels(baseline / _stem(slide)))
        assert np.array_equal(_probabilities(folder), _probabilities(baseline / _stem(slide)))
        assert not (folder / ".msunet-shares").exists()  # the shares are gone once published
        tiles = json.loads((folder / "prediction.json").read_text())["tiles"]
        assert tiles["adopted"] == tiles["total"] - tiles["skipped"]  # all from the shares
        assert tiles["computed"] == 0
    rows = list(csv.DictReader((out / "cohort-report.csv").open()))
    assert [r["status"] for r in rows] == ["done"] * 2
    assert "2 done, 0 skipped, 0 failed of 2 slides" in run.stdout


def test_split_without_a_cluster_is_refused(slides, tmp_path):
    run = _predict(slides[:1], tmp_path / "x", "--split", "2")
    assert run.returncode == 2
    assert "--split" in run.stderr
    assert "Traceback" not in run.stderr


def test_ctrl_c_stops_the_slides_running_on_the_workers(cluster, tmp_path):
    # slides of a few dozen tiles each, so that a slide running on to its end is seen
    big = [
        write_synthetic_slide(
            tmp_path / f"{n}.svs", SyntheticSlideSpec(6144, 6144, seed=k, mpp=0.5)
        )
        for k, n in enumerate(("p", "q"))
    ]
    out = tmp_path / "stopped"
    # once a tile is done (on a busy machine the stores can exist long before), so that the
    # rerun below has tiles to resume
    run = _started(big, out, cluster.address, until="*/labels.ome.zarr.partial/msunet-done.jsonl")
    run.send_signal(signal.SIGINT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stdout + stderr
    assert "interrupted" in stderr, stdout + stderr
    # the table and the report still say what became of each slide
    assert "of 2 slides in" in stdout, stdout
    assert "stopped" in stdout, stdout
    stopped_rows = list(csv.DictReader((out / "cohort-report.csv").open()))
    assert "stopped" in {r["status"] for r in stopped_rows}
    # the workers stop the slides they run, not only the client: their folders' locks go
    # within a batch or two, and no slide runs on to its end
    deadline = time.monotonic() + 60
    while list(out.glob("*/prediction.lock")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(out.glob("*/prediction.lock"))
    assert not list(out.glob("*/prediction.json"))
    assert list(out.glob("*/labels.ome.zarr.partial"))
    again = _predict(big, out, "--scheduler", cluster.address)  # resumes
    assert again.returncode == 0, again.stdout + again.stderr
    rows = list(csv.DictReader((out / "cohort-report.csv").open()))
    assert [r["status"] for r in rows] == ["done"] * 2
    assert sum(int(r["resumed"]) for r in rows) > 0
