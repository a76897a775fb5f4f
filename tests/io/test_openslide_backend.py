"""open_slide through OpenSlide: a DICOM WSI and a Hamamatsu VMS (both written here), and an
Aperio SVS; pixels equal to OpenSlide's own reading, µm/px right, the engine and the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_msunet.errors import SlideError
from napari_msunet.io.slide import open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

openslide = pytest.importorskip("openslide")
pytest.importorskip("pydicom")
from openslide_formats import write_dicom_wsi, write_vms  # noqa: E402


@pytest.fixture(scope="module")
def tissue(tmp_path_factory):
    path = tmp_path_factory.mktemp("svs") / "tissue.svs"
    write_synthetic_slide(path, SyntheticSlideSpec(1400, 1800, seed=7, mpp=0.5), "svs", tile=256)
    with open_slide(path) as slide:
        return np.asarray(slide.levels[0])


@pytest.fixture(scope="module")
def dicom(tmp_path_factory, tissue):
    return write_dicom_wsi(tmp_path_factory.mktemp("dicom") / "case", tissue, mpp=0.5)


def _openslide_level(path, level):
    handle = openslide.OpenSlide(str(path))
    w, h = handle.level_dimensions[level]
    rgba = np.asarray(handle.read_region((0, 0), level, (w, h)))
    handle.close()
    return rgba[..., :3]


def test_a_dicom_wsi_opens_lazily_with_its_scale_and_pixels(dicom, tissue):
    with open_slide(dicom) as slide:
        assert slide.format == "openslide-dicom"
        assert slide.name == "case"  # the series' folder, not "level0.dcm"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.shape == tissue.shape[:2]
        assert slide.level_count >= 3
        assert slide.levels[0].chunksize[:2] == (256, 256)  # the file's tiles
        np.testing.assert_array_equal(np.asarray(slide.levels[0]), tissue)
        for level in range(slide.level_count):
            np.testing.assert_array_equal(
                np.asarray(slide.levels[level]), _openslide_level(dicom, level)
            )
        region = slide.read_region(1, 400, 600, 100, 120)  # level-0 corner, level-1 size
        np.testing.assert_array_equal(region, _openslide_level(dicom, 1)[200:300, 300:420])


def test_a_hamamatsu_vms_opens_with_its_scale_and_pixels(tmp_path, tissue):
    from PIL import Image

    image = np.ascontiguousarray(tissue[:1024, :1536])
    vms = write_vms(tmp_path / "vms", image, mpp=0.5)
    with open_slide(vms) as slide:
        assert slide.format == "openslide-hamamatsu"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.magnification == 20
        assert slide.shape == (1024, 1536)
        assert min(slide.levels[0].chunksize[:2]) >= 256  # not the 8-px MCU rows
        level0 = np.asarray(slide.levels[0])
        np.testing.assert_array_equal(level0, _openslide_level(vms, 0))
        decoded = np.asarray(Image.open(vms.parent / "image.jpg").convert("RGB"))
        np.testing.assert_array_equal(level0, decoded)  # the JPEG's own pixels


def test_where_tifffile_reads_the_file_it_stays_the_reader_and_both_agree(tmp_path):
    path = tmp_path / "both.svs"
    write_synthetic_slide(path, SyntheticSlideSpec(1500, 1100, seed=3, mpp=0.25), "svs", tile=256)
    from napari_msunet.io._openslide_backend import open_with_openslide

    with open_slide(path) as by_tifffile, open_with_openslide(path) as by_openslide:
        assert by_tifffile.format == "svs"
        assert by_openslide.format == "openslide-aperio"
        assert by_openslide.mpp == pytest.approx(by_tifffile.mpp)
        assert by_openslide.magnification == by_tifffile.magnification
        assert set(by_openslide.associated) >= {"thumbnail"}
        for a, b in zip(by_tifffile.levels, by_openslide.levels, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_msunet_predicts_dicom_series_into_folders_named_after_them(dicom, tissue, tmp_path):
    other = write_dicom_wsi(tmp_path / "second", tissue[:512, :768], mpp=0.5)
    cmd = [sys.executable, "-m", "napari_msunet.cli", "predict", str(dicom), str(other)]
    cmd += ["--out", str(tmp_path / "pred"), "--device", "cpu"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    # every series' files are called level0.dcm: the folders keep the slides apart
    assert (tmp_path / "pred" / "case" / "prediction.json").is_file()
    assert (tmp_path / "pred" / "second" / "prediction.json").is_file()
    info = subprocess.run(
        [sys.executable, "-m", "napari_msunet.cli", "info", str(dicom)],
        capture_output=True,
        text=True,
    )
    assert info.returncode == 0, info.stderr
    assert "0.5" in info.stdout


def test_unreadable_files_and_a_missing_openslide_are_named(tmp_path, monkeypatch):
    fake = tmp_path / "scan.mrxs"
    fake.write_text("[GENERAL]\nnot really a MIRAX index\n")
    with pytest.raises(SlideError, match=r"scan.mrxs"):
        open_slide(fake)
    monkeypatch.setitem(sys.modules, "openslide", None)  # as if it were not installed
    with pytest.raises(SlideError, match=r"napari-msunet\[openslide\]") as info:
        open_slide(fake)
    assert "MIRAX" in str(info.value)
