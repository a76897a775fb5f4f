"""An export holds its target's output lock: a second export to the same target is refused at
its start, naming the first (issue 12, "one output-folder lock for every command that
writes"). The holder is a real second process; a killed holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from napari_msunet.io import _store_lock
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

pytestmark = pytest.mark.skipif(os.name == "nt", reason="SIGKILL: POSIX")

#: A second program that holds the output lock of argv[1] until a line comes on stdin.
HOLDER = """
import sys
from napari_msunet.io import _store_lock
_store_lock.acquire(sys.argv[1], kind=_store_lock.OUTPUT)
print("holding", flush=True)
sys.stdin.readline()
_store_lock.release(sys.argv[1])
"""


def msunet(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", *map(str, args)],
        capture_output=True,
        text=True,
    )


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A slide, its GeoJSON and a label mask rasterised from it."""
    root = tmp_path_factory.mktemp("export")
    spec = SyntheticSlideSpec(1024, 1024, seed=2)
    slide = write_synthetic_slide(root / "s.svs", spec, "svs")
    geojson = spec.write_geojson(root / "s.geojson")
    mask = root / "mask.ome.zarr"
    proc = msunet("rasterize", geojson, "--slide", slide, "--out", mask, "--level", "1")
    assert proc.returncode == 0, proc.stderr
    return {"slide": slide, "geojson": geojson, "mask": mask}


def _hold(target):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "holding", proc.stderr.read()
    return proc


def _commands(case, target):
    return {
        "export-geojson": ["export-geojson", case["mask"], "--out", target],
        "rasterize": ["rasterize", case["geojson"], "--slide", case["slide"], "--out", target],
    }


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("export-geojson", "out.geojson"),
        ("rasterize", "out.ome.zarr"),
        ("rasterize", "out.ome.tif"),
    ],
)
def test_a_second_export_to_a_target_in_use_is_refused_at_start(case, tmp_path, command, name):
    target = tmp_path / name
    holder = _hold(target)
    try:
        proc = msunet(*_commands(case, target)[command])
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"msunet {command}: error: {target}: is being written by another program" in (
            proc.stderr
        )
        assert f"process {holder.pid}" in proc.stderr
        assert not os.path.lexists(target)  # refused before writing anything
    finally:
        holder.communicate("\n", timeout=30)
    assert not _store_lock.lock_path(target).exists()
    proc = msunet(*_commands(case, target)[command])  # free again: it goes through
    assert proc.returncode == 0, proc.stderr
    assert os.path.lexists(target)
    assert not _store_lock.lock_path(target).exists()  # released when done


def test_the_lock_of_a_killed_export_is_taken_over(case, tmp_path):
    target = tmp_path / "out.geojson"
    holder = _hold(target)
    holder.send_signal(signal.SIGKILL)
    holder.communicate(timeout=30)
    assert _store_lock.lock_path(target).exists()  # left behind by the killed program
    proc = msunet(*_commands(case, target)["export-geojson"])
    assert proc.returncode == 0, proc.stderr
    assert target.exists()
    assert not _store_lock.lock_path(target).exists()


def test_a_refused_export_leaves_the_targets_lock_alone(case, tmp_path):
    """An export refused because its target exists (no --overwrite) takes and gives back
    the lock; it never deletes another program's lock."""
    target = tmp_path / "out.geojson"
    target.write_text("{}")
    proc = msunet(*_commands(case, target)["export-geojson"])
    assert proc.returncode == 2
    assert "already exists" in proc.stderr
    assert target.read_text() == "{}"
    assert not _store_lock.lock_path(target).exists()
