"""Tissue detection reports progress and can be stopped (issue 12, item 9).

On a slide without a pyramid, tissue detection must decode all of level 0: ``predict`` on a
10⁶ x 10⁶ px flat slide decoded 3 TB of pixels with no record and no way to stop. Now detection
reads the level in windows of bounded cost, yields ``"tissue"`` records between them (from
``iter_detect_tissue`` and from ``iter_predict_slide``), honours ``stop`` between them, and warns
up front when a flat slide makes it decode more than ``FLAT_WARN_PX`` pixels.
"""

from __future__ import annotations

import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from inference_helpers import header_for, make_model

from napari_msunet.inference import InferenceConfig, iter_predict_slide
from napari_msunet.io import tissue as tissue_mod
from napari_msunet.io.slide import SlideWarning, open_slide
from napari_msunet.io.synthetic import SyntheticSlideSpec
from napari_msunet.io.tissue import TISSUE, detect_tissue, iter_detect_tissue

SPEC = SyntheticSlideSpec(2048, 2048, seed=5, mpp=0.25)
CFG = InferenceConfig(tile=256, device="cpu", chunk=256)


@pytest.fixture(scope="module")
def flat(tmp_path_factory) -> Path:
    """A 2048² tiled TIFF at 0.25 µm/px without a pyramid (levels /2 /4 are computed)."""
    path = tmp_path_factory.mktemp("flat") / "flat.tif"
    res = 1e4 / SPEC.mpp
    tifffile.imwrite(
        path,
        SPEC.image(),
        tile=(256, 256),
        compression="zlib",
        resolution=(res, res),
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    return path


def _drive(gen):
    records = []
    try:
        while True:
            records.append(next(gen))
    except StopIteration as done:
        return records, done.value


def test_windows_report_progress_and_give_the_same_mask(flat, monkeypatch):
    with open_slide(flat) as slide:
        assert not slide.pyramidal
        whole = detect_tissue(slide)  # the default budget: one window, no record
        records, none = _drive(iter_detect_tissue(slide))
        assert records == []
        assert none.mask.shape == whole.mask.shape
        monkeypatch.setattr(tissue_mod, "WINDOW_PX", 1 << 18)  # 16 windows of 128² at /4
        records, windowed = _drive(iter_detect_tissue(slide))
    assert [r.stage for r in records] == [TISSUE] * 17
    assert [r.done for r in records] == list(range(17))
    assert {r.total for r in records} == {16}
    np.testing.assert_array_equal(windowed.mask, whole.mask)
    assert windowed.downsample == whole.downsample
    assert windowed.threshold == whole.threshold
    assert 0.05 < whole.fraction < 0.95


def _flat_giant(path: Path, side: int = 1_000_000, tile: int = 1024) -> Path:
    """A flat tiled TIFF of ``side``² px whose tiles all point at one blank (white) tile."""
    data = zlib.compress(b"\xff" * (tile * tile * 3), 9)
    n = (-(-side // tile)) ** 2
    tags = [
        (256, 4, [side]),
        (257, 4, [side]),
        (258, 3, [8, 8, 8]),
        (259, 3, [8]),
        (262, 3, [2]),
        (277, 3, [3]),
        (322, 4, [tile]),
        (323, 4, [tile]),
    ]
    head = 8 + 2 + 12 * (len(tags) + 2) + 4
    offsets_at, counts_at = head + len(data), head + len(data) + 4 * n
    ifd = struct.pack("<H", len(tags) + 2)
    for code, typ, values in tags:
        if typ == 3 and len(values) == 3:  # BitsPerSample: stored after the tile counts
            ifd += struct.pack("<HHII", code, typ, 3, counts_at + 4 * n)
        elif typ == 3:
            ifd += struct.pack("<HHIHH", code, typ, 1, values[0], 0)
        else:
            ifd += struct.pack("<HHII", code, typ, 1, values[0])
    ifd += struct.pack("<HHII", 324, 4, n, offsets_at)
    ifd += struct.pack("<HHII", 325, 4, n, counts_at)
    ifd += struct.pack("<I", 0)
    body = (
        data
        + np.full(n, head, "<u4").tobytes()
        + np.full(n, len(data), "<u4").tobytes()
        + struct.pack("<HHH", 8, 8, 8)
    )
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + body)
    return path


def test_flat_giant_slide_warns_reports_and_stops(tmp_path):
    path = _flat_giant(tmp_path / "giant.tif")
    with pytest.warns(SlideWarning, match="resolution"):  # no resolution tags: mpp given below
        slide = open_slide(path)
    assert not slide.pyramidal
    assert slide.shape == (1_000_000, 1_000_000)
    stop = threading.Event()
    gen = iter_detect_tissue(slide, mpp=0.25, stop=stop)
    with pytest.warns(SlideWarning, match=r"has no pyramid.*1,000,000 x 1,000,000 px.*no-tissue"):
        first = next(gen)
    assert (first.stage, first.done) == (TISSUE, 0)
    assert first.total > 10_000  # 10¹² px in windows of 2²⁴ decoded pixels
    assert next(gen).done == 1  # one window read: 4096² px of level 0
    stop.set()
    records, result = _drive(gen)
    assert records == []
    assert result is None
    slide.close()


def test_predict_yields_tissue_records_first_and_stops_during_them(flat, tmp_path, monkeypatch):
    monkeypatch.setattr(tissue_mod, "WINDOW_PX", 1 << 18)
    model = make_model("unet", seed=1)
    header = header_for(model, class_colours=((0, 0, 0), (0, 200, 0)))
    with open_slide(flat) as slide:
        gen = iter_predict_slide(slide, model, header, CFG, tmp_path / "a")
        records = []
        while not records or records[-1].stage == TISSUE:
            records.append(next(gen))
        gen.close()
        assert records[0].stage == TISSUE
        assert records[-1].stage == "tiles"
        assert [r.done for r in records[:-1]] == list(range(17))

        calls = []

        def stop() -> bool:
            calls.append(1)
            return len(calls) >= 3  # during tissue detection: before its fourth window

        records, result = _drive(
            iter_predict_slide(slide, model, header, CFG, tmp_path / "b", stop=stop)
        )
    assert {r.stage for r in records} == {TISSUE}
    assert records[-1].done == 3
    assert not result.completed
    assert result.tiles_computed == 0
    out = tmp_path / "b"
    assert not out.exists() or not [p.name for p in out.iterdir()]  # nothing written, no lock
