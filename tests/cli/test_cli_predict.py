"""msunet predict as a subprocess on a synthetic slide; every bad input gives exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from napari_msunet.io.geojson import read_geojson
from napari_msunet.io.masks import open_mask
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, save_model


def msunet(*args):
    return subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    spec = SyntheticSlideSpec(2048, 2048, seed=4, mpp=1.0)
    slide = write_synthetic_slide(root / "s.svs", spec, "svs")
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
    return root, slide, save_model(root / "m.safetensors", model, header)


def test_predict_writes_all_outputs(case):
    root, slide, model = case
    out = root / "out"
    proc = msunet("predict", slide, "--model", model, "--out", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "512 x 512 px at 4 µm/px" in proc.stdout
    for name in (
        "labels.ome.zarr",
        "probabilities.ome.zarr",
        "prediction.geojson",
        "prediction.png",
        "prediction.json",
        "tissue.png",
    ):
        assert (out / name).exists(), name
    labels = open_mask(out / "labels.ome.zarr")
    assert labels.shape == (512, 512)
    assert labels.mpp == pytest.approx(4.0)
    manifest = json.loads((out / "prediction.json").read_text())
    assert manifest  # the engine's manifest
    # the GeoJSON holds exactly the predicted regions, in level-0 coordinates
    from napari_msunet.io.rasterise import rasterise_array

    anns = read_geojson(out / "prediction.geojson")
    lab0 = labels.levels[0].compute()
    back = rasterise_array(anns, (2048, 2048), 4.0, labels=anns.class_to_label)
    names = {c.label: c.name for c in labels.classes}
    for cls in anns.classes:
        pred_label = next(k for k, v in names.items() if v == cls.name)
        np.testing.assert_array_equal(back == cls.label, lab0 == pred_label)
    # a finished prediction is not overwritten by accident
    again = msunet("predict", slide, "--model", model, "--out", out, "--device", "cpu")
    assert again.returncode == 2
    assert "--overwrite" in again.stderr or "overwrite" in again.stderr


def test_bad_inputs(case, tmp_path):
    _, slide, model = case
    proc = msunet("predict", tmp_path / "missing.svs", "--model", model, "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert "not found" in proc.stderr
    bad_model = tmp_path / "model.safetensors"
    bad_model.write_bytes(b"\x80\x04pickle")
    proc = msunet("predict", slide, "--model", bad_model, "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert str(bad_model) in proc.stderr
    # a slide without µm/px needs --mpp
    flat = tmp_path / "flat.tif"
    tifffile.imwrite(flat, SyntheticSlideSpec(512, 512).image(), tile=(256, 256), metadata=None)
    proc = msunet("predict", flat, "--model", model, "--out", tmp_path / "o2", "--device", "cpu")
    assert proc.returncode == 2
    assert "--mpp" in proc.stderr
    proc = msunet(
        "predict",
        flat,
        "--model",
        model,
        "--out",
        tmp_path / "o3",
        "--device",
        "cpu",
        "--mpp",
        "1.0",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_interrupted_run_by_another_model_is_refused_until_restart(case, tmp_path):
    """The refusal names the CLI's real flag, and ``--restart`` discards the interrupted run."""
    import threading

    from napari_msunet.inference import InferenceConfig, iter_predict_slide
    from napari_msunet.io.slide import open_slide
    from napari_msunet.progress import run_to_end

    _, slide, model = case
    out = tmp_path / "o"
    torch.manual_seed(1)
    other = build_model("unet", n_classes=3, widths=(4, 8))
    stop = threading.Event()
    stop.set()  # stopped before its first batch: the partial stores and run record stay
    with open_slide(slide) as s:
        cfg = InferenceConfig(target_mpp=4.0, device="cpu")
        norm = ((0.5,) * 3, (0.25,) * 3)
        first = run_to_end(iter_predict_slide(s, other, norm, cfg, out, stop=stop))
    assert not first.completed
    proc = msunet("predict", slide, "--model", model, "--out", out, "--device", "cpu")
    assert proc.returncode == 2
    assert "interrupted prediction made with a different" in proc.stderr
    assert "model" in proc.stderr
    assert "msunet predict --restart" in proc.stderr
    proc = msunet("predict", slide, "--model", model, "--out", out, "--device", "cpu", "--restart")
    assert proc.returncode == 0, proc.stderr
    assert "0 resumed" in proc.stdout


def test_a_users_tissue_png_is_refused_before_any_work(case, tmp_path, capsys):
    """Issue 12 item 3: ``--out DIR`` holding the user's ``tissue.png`` is refused at start,
    naming it, with nothing written (in-process: the subprocess start would dominate)."""
    from napari_msunet.cli import main

    _, slide, model = case
    out = tmp_path / "o"
    out.mkdir()
    (out / "tissue.png").write_bytes(b"my tissue mask")
    args = ["predict", str(slide), "--model", str(model), "--out", str(out), "--device", "cpu"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(out / "tissue.png") in err
    assert "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["tissue.png"]
    assert (out / "tissue.png").read_bytes() == b"my tissue mask"


def test_two_slides_with_one_name_are_refused_before_any_work(case, tmp_path, capsys):
    """Issue 12 item 15: ``predict a/x.svs b/x.svs --out d`` would write both into ``d/x``;
    the second failed with a misleading "holds a finished prediction"."""
    from napari_msunet.cli import main

    _, slide, model = case
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "x.svs", tmp_path / "b" / "x.svs"
    first.symlink_to(slide)
    second.symlink_to(slide)
    out = tmp_path / "d"
    args = ["predict", str(first), str(second), "--model", str(model), "--out", str(out)]
    assert main([*args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{first} and {second} would both write their prediction to {out / 'x'}" in err
    assert not out.exists()


def test_without_a_model_the_bundled_one_is_used_and_named(tmp_path):
    from napari_msunet.models.bundled import bundled_model_path

    slide = write_synthetic_slide(
        tmp_path / "small.svs", SyntheticSlideSpec(768, 768, seed=2, mpp=1.0), "svs"
    )
    out = tmp_path / "out"
    proc = msunet("predict", slide, "--out", out, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert "bundled default model" in first
    assert str(bundled_model_path()) in first
    manifest = json.loads((out / "prediction.json").read_text())
    assert manifest["class_names"] == ["Background", "Gland"]
