"""Writes that fail say so in one line (issue 12, item 12).

A read-only disk, a folder the user may not write, a full disk: every command that writes
prints ``msunet <cmd>: error: ...`` naming the output, the folder and the cause, exits with
status 2 and prints no traceback; a write cut short by a full disk leaves no half-written file
under its final name and no temporary file. The disks are real: a small tmpfs mounted for the
test (which needs root, as this VM and CI have; elsewhere the tests skip). Root ignores file
permissions, so "permission denied" is made by dropping root's override capability
(``setpriv``) or, failing that, by running as ``nobody``.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from napari_msunet._atomic import atomic_write_bytes
from napari_msunet.errors import WriterError
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, save_model

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="tmpfs mounts and capabilities: Linux"
)

CLASSES = ("Background", "Germinal centre", "Sinus")  # as SyntheticSlideSpec's GeoJSON


def msunet(*args, cwd=None, prefix=(), preexec_fn=None):
    return subprocess.run(
        [*prefix, sys.executable, "-m", "napari_msunet.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        preexec_fn=preexec_fn,
    )


def _mount(mountpoint: Path, options: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def _unmount(mountpoint: Path) -> None:
    subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


@pytest.fixture
def disk(tmp_path):
    """A 4 MB tmpfs: a small disk that can be filled."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    _mount(mnt, "size=4m")
    try:
        yield mnt
    finally:
        _unmount(mnt)


@pytest.fixture
def read_only(tmp_path):
    """A read-only tmpfs holding an empty folder ``existing``."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    _mount(mnt, "size=1m")
    try:
        (mnt / "existing").mkdir()
        proc = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True)
        if proc.returncode:
            pytest.skip("cannot remount the tmpfs read-only")
        yield mnt
    finally:
        _unmount(mnt)


def _fill(mnt: Path, leave: int) -> None:
    """Fill the disk at ``mnt`` up to ``leave`` bytes free."""
    size = shutil.disk_usage(mnt).free - leave
    with open(mnt / "filler", "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, size))


def _model(path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("unet", n_classes=3, widths=(4, 8))
    header = ModelHeader.for_model(
        model,
        class_names=CLASSES,
        input_um_per_px=4.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=64,
    )
    return save_model(path, model, header)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """Inputs every command can read: a 1024² slide, its GeoJSON, a tiny model and a
    finished prediction (its labels and GeoJSON export)."""
    root = tmp_path_factory.mktemp("inputs")
    spec = SyntheticSlideSpec(1024, 1024, seed=4)
    slide = write_synthetic_slide(root / "s.svs", spec, "svs")
    spec.write_geojson(root / "s.geojson")
    model = _model(root / "m.safetensors")
    proc = msunet("predict", slide, "--model", model, "--out", root / "pred", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    return {
        "root": root,
        "slide": slide,
        "geojson": root / "s.geojson",
        "model": model,
        "labels": root / "pred" / "labels.ome.zarr",
        "pred_geojson": root / "pred" / "prediction.geojson",
    }


def _commands(case, out: Path) -> dict[str, list]:
    """Each writing command, writing under ``out``."""
    c, slide, model = case, case["slide"], case["model"]
    fine = ["--annotations", c["geojson"], "--steps", "2", "--batch-size", "2", "--device", "cpu"]
    return {
        "predict": ["predict", slide, "--model", model, "--device", "cpu", "--out", out / "pred"],
        "predict-into": ["predict", slide, "--model", model, "--device", "cpu", "--out", out],
        "export-geojson": ["export-geojson", c["labels"], "--out", out / "x.geojson"],
        "rasterize-zarr": [
            "rasterize",
            c["pred_geojson"],
            "--slide",
            slide,
            "--out",
            out / "m.ome.zarr",
        ],
        "rasterize-tif": [
            "rasterize",
            c["pred_geojson"],
            "--slide",
            slide,
            "--out",
            out / "m.ome.tif",
        ],
        "synthetic": ["synthetic", out / "x.svs", "--size", "512"],
        "evaluate": [
            *("evaluate", "--pred", c["labels"], "--truth", c["pred_geojson"], "--slide", slide),
            *("--out", out / "ev"),
        ],
        "finetune": [
            *("finetune", "--model", model, "--slides", slide, *fine),
            *("--out", out / "ft.safetensors"),
        ],
        "demo": ["demo", "--headless", "--device", "cpu", "--out", out / "demo"],
    }


def _assert_one_clear_error(proc, command: str, folder: Path, cause: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"msunet {command}: error: "), proc.stderr
    assert str(folder) in lines[0], proc.stderr
    assert cause in lines[0], proc.stderr


@pytest.mark.parametrize(
    "name",
    [
        "predict",
        "predict-into",
        "export-geojson",
        "rasterize-zarr",
        "rasterize-tif",
        "synthetic",
        "evaluate",
        "finetune",
        "demo",
    ],
)
def test_a_read_only_disk_is_one_clear_error(case, read_only, name):
    """Before: a PermissionError traceback on ``.prediction.run.json.tmp`` (read-only
    folder), a bare OSError from export-geojson, synthetic and demo."""
    out = read_only / "existing" if name == "predict-into" else read_only
    args = _commands(case, out)[name]
    proc = msunet(*args, cwd=case["root"])
    _assert_one_clear_error(proc, args[0], out, "is read-only")


def test_train_on_a_read_only_disk_is_one_clear_error(case, read_only, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"out: {read_only / 'run'}\n"
        "data:\n  slides:\n"
        f"    - {{slide: {case['slide']}, annotation: {case['geojson']}, split: train}}\n"
        f"    - {{slide: {case['slide']}, annotation: {case['geojson']}, split: val}}\n"
        f"train: {{class_names: {list(CLASSES)}, mpp: 4.0, patch: 64, batch_size: 2,\n"
        "  epochs: 1, steps_per_epoch: 1, device: cpu, model_overrides: {widths: [4, 8]}}\n"
    )
    proc = msunet("train", "--config", config)
    _assert_one_clear_error(proc, "train", read_only, "is read-only")


def _unprivileged(folder: Path, inputs: Path):
    """How to run the CLI so that ``folder`` (made here, owned by root or nobody) cannot be
    written while ``inputs`` can be read: (argv prefix, preexec_fn). Skips where neither
    way works."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop privileges")
    setpriv = shutil.which("setpriv")
    if setpriv and subprocess.run([setpriv, "--help"], capture_output=True).returncode == 0:
        os.chown(folder, 65534, 65534)  # root without CAP_DAC_OVERRIDE may not write there
        folder.chmod(0o755)
        return [setpriv, "--bounding-set=-dac_override,-dac_read_search"], None
    exe = Path(os.path.realpath(sys.executable))
    reachable = [*exe.parents, exe, *inputs.parents, inputs]
    if not all(p.stat().st_mode & stat.S_IXOTH for p in reachable):
        pytest.skip("no setpriv, and nobody may not run this interpreter or read the inputs")
    folder.chmod(0o755)  # owned by root: nobody may not write there

    def as_nobody():
        os.setgid(65534)
        os.setgroups([])
        os.setuid(65534)

    return [], as_nobody


@pytest.mark.parametrize("name", ["predict", "predict-into", "export-geojson", "synthetic"])
def test_a_folder_the_user_may_not_write_is_one_clear_error(case, tmp_path, name):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    tmp_path.chmod(0o755)
    prefix, preexec = _unprivileged(theirs, case["root"])
    args = _commands(case, theirs)[name]
    proc = msunet(*args, cwd=case["root"], prefix=prefix, preexec_fn=preexec)
    _assert_one_clear_error(proc, args[0], theirs, "permission denied")
    assert list(theirs.iterdir()) == []


def _leftovers(folder: Path) -> list[str]:
    """Temporary files of an atomic write or of a zarr store's creation."""
    return [
        str(p)
        for p in folder.rglob("*")
        if p.name.endswith(".tmp") or ".init-" in p.name or ".old-" in p.name
    ]


def _complete(folder: Path) -> None:
    """Every file under its final name is whole: the JSON parses, the PNGs decode."""
    for name in ("prediction.json", "prediction.geojson", "prediction.run.json"):
        if (folder / name).exists():
            json.loads((folder / name).read_text())
    for name in ("prediction.png", "tissue.png"):
        if (folder / name).exists():
            Image.open(folder / name).load()


@pytest.mark.parametrize("free_kb", [0, 4, 8, 20, 28, 40])
def test_a_full_disk_at_any_stage_is_one_clear_error(case, disk, free_kb):
    """The disk fills at the lock, the run record, the stores' creation or their tiles,
    depending on how much is left: always one line, no half file, no temporary file."""
    _fill(disk, free_kb * 1024)
    out = disk / "pred"
    proc = msunet("predict", case["slide"], "--model", case["model"], "--out", out)
    _assert_one_clear_error(proc, "predict", disk, "the disk is full")
    assert "MB free" in proc.stderr
    assert _leftovers(disk) == []
    if out.exists():
        _complete(out)
        assert not (out / "prediction.json").exists()


def test_a_disk_that_fills_while_writing_the_preview(disk, tmp_path):
    """Before: PIL's OSError traceback. Now one line naming prediction.png; no half PNG, no
    manifest; the stores are kept, and a plain rerun once there is space finishes the folder
    without computing a tile."""
    slide = write_synthetic_slide(
        tmp_path / "s.svs", SyntheticSlideSpec(2048, 2048, seed=4, mpp=1.0), "svs"
    )
    model = _model(tmp_path / "m.safetensors")
    # measure a finished run on this disk: the preview is by far its largest file
    first = disk / "first"
    proc = msunet("predict", slide, "--model", model, "--out", first)
    assert proc.returncode == 0, proc.stderr
    used = sum(p.stat().st_blocks * 512 for p in first.rglob("*") if p.is_file())
    preview = (first / "prediction.png").stat().st_size
    assert preview > used / 2  # else the free space below would not single out the preview
    shutil.rmtree(first)
    # room for everything before the preview, and half the preview
    _fill(disk, used - preview // 2)
    out = disk / "pred"
    proc = msunet("predict", slide, "--model", model, "--out", out)
    _assert_one_clear_error(proc, "predict", disk, "the disk is full")
    assert "prediction.png" in proc.stderr
    assert not (out / "prediction.png").exists()
    assert not (out / "prediction.json").exists()
    assert (out / "labels.ome.zarr").is_dir()
    assert _leftovers(disk) == []
    _complete(out)
    (disk / "filler").unlink()
    proc = msunet("predict", slide, "--model", model, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "0 tiles computed" in proc.stdout
    _complete(out)
    assert (out / "prediction.json").exists()


def test_a_full_disk_never_leaves_half_a_file(disk):
    """The atomic writer: the old file stays whole, the temporary one is removed."""
    target = disk / "report.json"
    target.write_bytes(b"old")
    _fill(disk, 8192)
    with pytest.raises(WriterError, match=r"report\.json: cannot be written: the disk is full"):
        atomic_write_bytes(target, b"x" * 100_000, overwrite=True)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "report.json"]


def test_a_read_only_disk_leaves_no_error_of_the_cleanup(read_only):
    """Even the removal of a temporary file that was never made fails on a read-only disk;
    the error is the write's."""
    with pytest.raises(WriterError, match="is read-only"):
        atomic_write_bytes(read_only / "existing" / "a.json", b"{}")


@pytest.mark.parametrize(
    ("code", "filename", "expect"),
    [
        (errno.EROFS, "x.png", "{tmp}/x.png: {tmp} is read-only"),
        (errno.ENOSPC, None, "writing OUT: the disk is full"),
        (errno.EACCES, "x.png", "{tmp}/x.png: permission denied"),
        (errno.ENOENT, "a.svs", "{tmp}/a.svs: No such file or directory"),
    ],
)
def test_the_cli_says_an_escaped_os_error_in_one_line(
    monkeypatch, capsys, tmp_path, code, filename, expect
):
    """The last resort in main(): an OSError that a library raises past the writers."""
    from napari_msunet import cli

    name = None if filename is None else str(tmp_path / filename)

    def fail(args):
        raise OSError(code, os.strerror(code), name)

    monkeypatch.setitem(cli.COMMANDS, "synthetic", fail)
    assert cli.main(["synthetic", "OUT"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("msunet synthetic: error: "), err
    assert expect.format(tmp=tmp_path) in err, err


def test_the_cli_keeps_the_traceback_of_an_os_error_that_is_a_bug(monkeypatch):
    from napari_msunet import cli

    def fail(args):
        raise OSError(errno.EINVAL, "Invalid argument")  # no file, not the disk

    monkeypatch.setitem(cli.COMMANDS, "synthetic", fail)
    with pytest.raises(OSError, match="Invalid argument"):
        cli.main(["synthetic", "OUT"])
