"""The msunet CLI as a user runs it: a subprocess, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest


def msunet(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", *map(str, args)],
        capture_output=True,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"msunet {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "demo.svs"
    msunet("synthetic", out, "--size", 3000, "--height", 2000, "--mpp", 0.5)
    return out


def test_synthetic_and_info(synthetic):
    assert synthetic.is_file()
    assert synthetic.with_suffix(".geojson").is_file()
    rec = json.loads(msunet("info", synthetic, "--json").stdout)
    assert rec["format"] == "svs"
    assert (rec["width"], rec["height"]) == (3000, 2000)
    assert rec["mpp"] == pytest.approx(0.5)
    assert rec["levels"][1]["downsample"] == pytest.approx(4, rel=0.01)
    text = msunet("info", synthetic).stdout
    assert "level 0: 3000 x 2000" in text


def test_synthetic_refuses_overwrite(synthetic):
    proc = msunet("synthetic", synthetic, "--size", 500, check=False)
    assert proc.returncode == 2
    assert "already exists" in proc.stderr


def test_bad_slide_exit_code(tmp_path):
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    proc = msunet("info", bad, check=False)
    assert proc.returncode == 2
    assert str(bad) in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = msunet("info", tmp_path / "missing.ndpi", check=False)
    assert proc.returncode == 2
    assert "not found" in proc.stderr


def test_help():
    out = msunet("--help").stdout
    for cmd in ("info", "synthetic"):
        assert cmd in out


def test_rasterize_and_export_round_trip(synthetic, tmp_path):
    from napari_msunet.io.geojson import read_geojson
    from napari_msunet.io.masks import open_mask
    from napari_msunet.io.rasterise import rasterise_array

    geojson = synthetic.with_suffix(".geojson")
    for out in (tmp_path / "mask.ome.zarr", tmp_path / "mask.ome.tif"):
        msunet("rasterize", geojson, "--slide", synthetic, "--out", out)
        mask = open_mask(out)
        assert mask.shape == (2000, 3000)
        assert mask.mpp == pytest.approx(0.5)
        assert {c.name for c in mask.classes} == {"Germinal centre", "Sinus"}
        assert len(mask.levels) >= 2
        level0 = mask.levels[0].compute()
        expected = rasterise_array(read_geojson(geojson), (2000, 3000))
        np.testing.assert_array_equal(level0, expected)
        back = tmp_path / f"{out.name}.geojson"
        msunet("export-geojson", out, "--out", back)
        again = rasterise_array(read_geojson(back), (2000, 3000))
        np.testing.assert_array_equal(again, level0)  # exact round trip
    # a mask made at a coarser level exports to level-0 coordinates
    coarse = tmp_path / "coarse.ome.zarr"
    msunet("rasterize", geojson, "--slide", synthetic, "--out", coarse, "--level", 1)
    back = tmp_path / "coarse.geojson"
    msunet("export-geojson", coarse, "--out", back, "--slide", synthetic)
    full = rasterise_array(read_geojson(back), (2000, 3000))
    truth = rasterise_array(read_geojson(geojson), (2000, 3000))
    assert ((full > 0) == (truth > 0)).mean() > 0.99


def test_rasterize_refuses_to_overwrite_and_bad_mask(synthetic, tmp_path):
    out = tmp_path / "m.ome.tif"
    geojson = synthetic.with_suffix(".geojson")
    msunet("rasterize", geojson, "--slide", synthetic, "--out", out)
    proc = msunet("rasterize", geojson, "--slide", synthetic, "--out", out, check=False)
    assert proc.returncode == 2
    assert "exists" in proc.stderr
    rgb = tmp_path / "rgb.png"
    from PIL import Image

    colour = np.zeros((10, 10, 3), np.uint8)
    colour[2:5, 2:5] = (200, 30, 30)  # a colour-coded mask (a grey one saved as RGB is read)
    Image.fromarray(colour).save(rgb)
    proc = msunet("export-geojson", rgb, "--out", tmp_path / "x.geojson", check=False)
    assert proc.returncode == 2
    assert "not a label mask" in proc.stderr
    bad = tmp_path / "bad.geojson"
    bad.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature"')
    proc = msunet(
        "rasterize", bad, "--slide", synthetic, "--out", tmp_path / "b.ome.zarr", check=False
    )
    assert proc.returncode == 2
    assert str(bad) in proc.stderr


def test_evaluate_reports_known_iou(synthetic, tmp_path):
    import json as _json

    from napari_msunet.io.geojson import read_geojson
    from napari_msunet.io.rasterise import rasterise_array

    geojson = synthetic.with_suffix(".geojson")
    data = _json.loads(geojson.read_text())
    data["features"] = data["features"][::2]  # the "prediction" misses every other region
    partial = tmp_path / "partial.geojson"
    partial.write_text(_json.dumps(data))
    pred = tmp_path / "pred.ome.zarr"
    msunet("rasterize", partial, "--slide", synthetic, "--out", pred)
    out = tmp_path / "eval"
    text = msunet(
        "evaluate", "--pred", pred, "--truth", geojson, "--slide", synthetic, "--out", out
    ).stdout
    assert "foreground" in text
    report = _json.loads((out / "report.json").read_text())
    truth = rasterise_array(read_geojson(geojson), (2000, 3000)) > 0
    guess = rasterise_array(read_geojson(partial), (2000, 3000)) > 0
    expected = (truth & guess).sum() / (truth | guess).sum()
    fg = report["metrics"]["foreground"] if "metrics" in report else report["foreground"]
    assert fg["iou"] == pytest.approx(expected, abs=1e-9)
    assert (out / "overlay.png").stat().st_size > 1000
    proc = msunet(
        "evaluate",
        "--pred",
        pred,
        "--truth",
        geojson,
        "--slide",
        synthetic,
        "--out",
        out,
        check=False,
    )
    assert proc.returncode == 2  # refuses to overwrite the report
