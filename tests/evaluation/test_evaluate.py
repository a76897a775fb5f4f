"""evaluate(): end to end on files, and every bad-input path."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import shapely
import tifffile
from PIL import Image

from napari_msunet.errors import AnnotationError, MsunetError, SlideError, WriterError
from napari_msunet.evaluation import (
    FN,
    FP,
    TP,
    EvaluationWarning,
    evaluate,
    iter_evaluate,
)
from napari_msunet.evaluation.overlay import OVERLAY_COLORS_RGBA8
from napari_msunet.io.annotations import Annotation, AnnotationSet
from napari_msunet.io.geojson import write_geojson
from napari_msunet.io.ome_zarr import write_ome_zarr
from napari_msunet.io.rasterise import rasterise_array
from napari_msunet.progress import Progress

H, W = 600, 800


def _pred_array() -> np.ndarray:
    pred = np.zeros((H, W), np.uint8)
    pred[100:300, 100:300] = 1  # GC, 200 x 200
    pred[400:500, 500:700] = 2  # Sinus, 100 x 200
    return pred


def _write_pred(path, pred=None, **kw):
    kw.setdefault("class_names", ["background", "GC", "Sinus"])
    return write_ome_zarr(
        path, _pred_array() if pred is None else pred, kind="labels", chunk=128, **kw
    )


def _truth_annotations(scale: float = 1.0) -> AnnotationSet:
    # Sinus first, so that the file numbers it 1 while the prediction calls it 2
    return AnnotationSet.from_annotations(
        [
            Annotation(shapely.box(*(v * scale for v in (500, 450, 700, 550))), "Sinus"),
            Annotation(shapely.box(*(v * scale for v in (150, 150, 350, 350))), "GC"),
        ]
    )


@pytest.fixture
def files(tmp_path):
    pred = _write_pred(tmp_path / "pred.ome.zarr", mpp=0.5)
    truth = write_geojson(_truth_annotations(), tmp_path / "truth.geojson")
    return pred, truth


def test_geojson_truth_against_ome_zarr_prediction(tmp_path, files):
    pred, truth = files
    with warnings.catch_warnings():
        warnings.simplefilter("error", EvaluationWarning)
        result = evaluate(pred, truth, out_dir=tmp_path / "out")
    m = result.metrics
    # GC: prediction [100, 300)², truth [150, 350)²: overlap 150² = 22 500
    gc = m["GC"]
    assert (gc.label, gc.tp, gc.fp, gc.fn) == (1, 22500, 17500, 17500)
    assert gc.iou == 22500 / 57500
    assert gc.dice == 45000 / 80000
    # Sinus: prediction rows [400, 500), truth rows [450, 550), same columns: overlap 50 x 200
    sinus = m["Sinus"]
    assert (sinus.label, sinus.tp, sinus.fp, sinus.fn) == (2, 10000, 10000, 10000)
    assert sinus.iou == 1 / 3
    assert sinus.dice == 0.5
    assert m.mean_iou == pytest.approx((22500 / 57500 + 1 / 3) / 2)
    assert result.matching.by == "name"
    assert result.matching.truth_to_eval == {1: 2, 2: 1}
    assert result.shape == (H, W)
    assert result.mpp == 0.5

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "report.csv", "report.json"]
    data = json.loads((out / "report.json").read_text())
    assert data == json.loads(json.dumps(result.to_dict()))
    assert data["prediction"] == str(pred.absolute())
    assert data["truth"] == str(truth.absolute())
    assert data["truth_source"]["kind"] == "geojson"
    assert data["truth_source"]["downsample"] == 1.0
    assert data["pixels"] == {"total": H * W, "counted": H * W, "excluded": 0}
    assert data["mpp"] == 0.5
    assert data["mpp_source"] == "prediction"
    assert data["overlay"]["shows"] == "foreground (all classes)"
    assert data["confusion_matrix"]["matrix"][2][2] == 10000
    with open(out / "report.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["name"] for r in rows] == ["background", "GC", "Sinus", "foreground"]
    assert float(rows[2]["iou"]) == 1 / 3

    # the overlay PNG: map on top (no slide: white), legend below
    with Image.open(out / "overlay.png") as img:
        px = np.asarray(img.convert("RGB"))
    assert img.width == W
    assert img.height > H
    # the default (colour-blind-safe) colours: TP blue, FP orange, FN reddish purple
    assert tuple(px[200, 200]) == OVERLAY_COLORS_RGBA8[TP][:3]  # both
    assert tuple(px[120, 120]) == OVERLAY_COLORS_RGBA8[FP][:3]  # prediction only
    assert tuple(px[320, 320]) == OVERLAY_COLORS_RGBA8[FN][:3]  # truth only
    assert tuple(px[50, 50]) == (255, 255, 255)

    levels = result.overlay_levels
    # the prediction's pyramid (chunk 128: four levels), truth rasterised at each level
    assert [lv.shape for lv in levels] == [(600, 800), (300, 400), (150, 200), (75, 100)]
    l0 = levels[0].compute()
    assert (l0[200, 200], l0[120, 120], l0[320, 320], l0[50, 50]) == (TP, FP, FN, 0)
    assert levels[1].compute()[100, 100] == TP


def test_geojson_with_slide_at_a_coarser_prediction(tmp_path):
    from napari_msunet.io.geojson import read_geojson
    from napari_msunet.io.slide import open_slide
    from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide

    spec = SyntheticSlideSpec(1024, 1536, seed=3, mpp=0.25)
    slide = write_synthetic_slide(tmp_path / "s.svs", spec, "svs", tile=256)
    truth = tmp_path / "s.geojson"
    spec.write_geojson(truth)
    anns = read_geojson(truth)
    # a perfect prediction at 1 µm/px (downsample 4), labels in another order than the file's
    names = {c.name: c.label for c in anns.classes}
    swapped = {n: 3 - lab for n, lab in names.items()}
    pred = rasterise_array(anns, (1024, 1536), 4, labels=swapped)
    pred_names = ["background", *sorted(swapped, key=swapped.get)]
    pred_path = write_ome_zarr(
        tmp_path / "p.ome.zarr", pred, kind="labels", mpp=1.0, class_names=pred_names
    )
    result = evaluate(pred_path, truth, out_dir=tmp_path / "out", slide=slide)
    for c in result.metrics.foreground_classes:
        assert c.truth_pixels > 0
        assert c.iou == 1.0
        assert c.dice == 1.0
    assert result.report["truth_source"]["downsample"] == 4.0
    assert result.report["slide_downsample"] == 4.0
    assert result.report["slide"] == str(slide.absolute())
    # over the slide thumbnail: the picture is not white where there is tissue
    with Image.open(tmp_path / "out" / "overlay.png") as img:
        assert img.size[0] >= 384
        assert np.asarray(img)[:256].std() > 5

    # the same prediction claimed at 0.5 µm/px does not fit the slide's 0.25 µm/px x 4
    bad = write_ome_zarr(
        tmp_path / "bad.ome.zarr", pred, kind="labels", mpp=0.5, class_names=pred_names
    )
    with pytest.raises(AnnotationError, match=r"bad.ome.zarr.*does the prediction belong"):
        evaluate(bad, truth, out_dir=tmp_path / "o2", slide=slide)
    # a prediction with another aspect ratio does not fit either
    odd = write_ome_zarr(tmp_path / "odd.ome.zarr", pred[:, :200], kind="labels")
    with pytest.raises(AnnotationError, match="aspect ratios differ"):
        evaluate(odd, truth, out_dir=tmp_path / "o3", slide=slide)
    # without the slide the annotations reach beyond the 1 µm/px prediction
    with pytest.raises(AnnotationError, match=r"s.geojson.*give the slide"):
        evaluate(pred_path, truth, out_dir=tmp_path / "o4")
    with open_slide(slide) as s:
        assert s.shape == (1024, 1536)


def test_mask_truth_matched_by_name_with_ignore_and_region(tmp_path):
    pred = _write_pred(tmp_path / "pred.ome.zarr")
    truth = np.zeros((H, W), np.uint8)
    truth[100:300, 100:300] = 7  # GC, numbered 7 by this file
    truth[400:500, 500:600] = 3  # Sinus, half of the predicted one
    truth[:, 700:] = 255  # not annotated
    names = ["background", *[f"unused {i}" for i in range(1, 3)], "Sinus", *[""] * 3, "GC"]
    tpath = write_ome_zarr(tmp_path / "truth.ome.zarr", truth, kind="labels", class_names=names)
    region = np.ones((H // 4, W // 4), np.uint8)
    region[:, : 120 // 4] = 0  # outside the tissue: columns < 120
    rpath = tmp_path / "tissue.png"
    Image.fromarray(region * 255).save(rpath)
    with pytest.warns(EvaluationWarning, match="unused 1"):
        result = evaluate(pred, tpath, out_dir=tmp_path / "out", ignore_label=255, region=rpath)
    m = result.metrics
    assert result.matching.truth_to_eval[7] == 1
    assert result.matching.truth_to_eval[3] == 2
    assert (m["GC"].tp, m["GC"].fp, m["GC"].fn) == (200 * 180, 0, 0)
    assert (m["Sinus"].tp, m["Sinus"].fp, m["Sinus"].fn) == (100 * 100, 100 * 100, 0)
    assert result.report["pixels"]["excluded"] == H * 100 + H * 120
    assert result.metrics["unused 1"].iou != result.metrics["unused 1"].iou  # NaN: absent
    assert result.report["truth_source"] == {"kind": "mask", "level": 0, "mpp": None}


def test_mask_truth_at_a_finer_level_uses_the_matching_pyramid_level(tmp_path):
    pred = _pred_array()[::2, ::2]
    ppath = write_ome_zarr(
        tmp_path / "p.ome.zarr", pred, kind="labels", class_names=["background", "GC", "Sinus"]
    )
    tpath = _write_pred(tmp_path / "t.ome.zarr")  # the full-resolution labels, 2 levels
    result = evaluate(ppath, tpath, out_dir=tmp_path / "out")
    assert result.report["truth_source"]["level"] == 1
    assert result.metrics["GC"].iou == 1.0
    assert result.metrics["Sinus"].iou == 1.0


def test_png_prediction_with_class_names_and_progress(tmp_path, files):
    _, truth = files
    png = tmp_path / "pred.png"
    Image.fromarray(_pred_array()).save(png)
    # a cancel (closing the generator) writes nothing
    gen = iter_evaluate(png, truth, out_dir=tmp_path / "out", class_names=["GC", "Sinus"])
    assert isinstance(next(gen), Progress)
    gen.close()
    assert not (tmp_path / "out").exists()
    gen = iter_evaluate(
        png, truth, out_dir=tmp_path / "out", class_names=["GC", "Sinus"], overlay_max_side=256
    )
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        result = stop.value
    assert all(isinstance(s, Progress) for s in steps)
    assert steps[-1].done == steps[-1].total == len(steps)
    assert result.metrics["Sinus"].iou == 1 / 3
    assert result.mpp is None
    assert [lv.shape for lv in result.overlay_levels] == [(600, 800), (300, 400)]


def test_existing_outputs_are_refused_before_any_work(tmp_path, files):
    pred, truth = files
    out = tmp_path / "out"
    evaluate(pred, truth, out_dir=out)
    before = (out / "report.json").read_bytes()
    with pytest.raises(WriterError, match=r"report.json: already exists"):
        evaluate(pred, tmp_path / "missing.geojson", out_dir=out)  # refused before reading
    assert (out / "report.json").read_bytes() == before
    result = evaluate(pred, truth, out_dir=out, overwrite=True)
    assert result.outputs["json"] == out / "report.json"
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "report.csv", "report.json"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(WriterError, match="is a file"):
        evaluate(pred, truth, out_dir=tmp_path / "afile")


def _bad(tmp_path, files, **kw):
    pred, truth = files
    args = {"pred": pred, "truth": truth, "out_dir": tmp_path / "out"} | kw
    return evaluate(args.pop("pred"), args.pop("truth"), **args)


def test_bad_inputs_name_the_file(tmp_path, files, monkeypatch):
    _pred, truth = files
    monkeypatch.chdir(tmp_path)  # errors name files as given, here relative
    with pytest.raises(AnnotationError, match=r"^nope.ome.zarr: mask not found"):
        _bad(tmp_path, files, pred="nope.ome.zarr")
    with pytest.raises(AnnotationError, match=r"nope.png: mask not found"):
        _bad(tmp_path, files, truth=tmp_path / "nope.png")
    with pytest.raises(AnnotationError, match=r"nope.geojson: file does not exist"):
        _bad(tmp_path, files, truth=tmp_path / "nope.geojson")
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{not json")
    with pytest.raises(AnnotationError, match=r"garbage.geojson: is not valid JSON"):
        _bad(tmp_path, files, truth=garbage)
    rgb = tmp_path / "rgb.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(rgb)  # a colour, not a grey mask as RGB
    with pytest.raises(AnnotationError, match=r"rgb.png: is a colour"):
        _bad(tmp_path, files, pred=rgb)
    with pytest.raises(AnnotationError, match=r"truth.geojson: is GeoJSON, but the prediction"):
        _bad(tmp_path, files, pred=truth)
    with pytest.raises(SlideError, match=r"nope\.svs"):
        _bad(tmp_path, files, slide=tmp_path / "nope.svs")
    with pytest.raises(MsunetError, match="ignore_label"):
        _bad(tmp_path, files, ignore_label=-1)


def test_shape_mismatch_gives_both_shapes_and_the_fix(tmp_path, files):
    _pred, _ = files
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((300, 401), np.uint8)).save(small)
    with pytest.raises(AnnotationError) as err:
        _bad(tmp_path, files, truth=small)
    msg = str(err.value)
    assert "small.png" in msg
    assert "401 x 300" in msg
    assert "800 x 600" in msg
    assert "msunet rasterize" in msg
    assert "GeoJSON with the slide" in msg


def test_geojson_reaching_beyond_the_prediction_without_slide(tmp_path, files):
    _pred, _ = files
    far = write_geojson(_truth_annotations(scale=4), tmp_path / "far.geojson")
    with pytest.raises(AnnotationError, match=r"far.geojson: annotations reach x = 2800"):
        _bad(tmp_path, files, truth=far)


@pytest.mark.filterwarnings("ignore::napari_msunet.evaluation.EvaluationWarning")
def test_instance_ids_and_bad_regions_are_refused(tmp_path, files):
    ids = np.zeros((H, W), np.uint16)
    ids[5, 5] = 5000
    ipath = tmp_path / "ids.tif"
    tifffile.imwrite(ipath, ids)
    with pytest.raises(AnnotationError, match=r"ids.tif: holds label 5000.*instance mask"):
        _bad(tmp_path, files, pred=ipath)
    region = tmp_path / "region.png"
    Image.fromarray(np.ones((10, 40), np.uint8)).save(region)
    with pytest.raises(AnnotationError, match=r"region.png: is 40 x 10 pixels"):
        _bad(tmp_path, files, region=region)
