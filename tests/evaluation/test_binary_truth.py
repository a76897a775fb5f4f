"""Unnamed binary truth masks (0/1, 0/255, a grey mask saved as RGB) score the model's class.

The commonest truth there is, a PNG with 255 = foreground, used to be compared by value: a
"class 255" row with IoU 0 beside the model's class at IoU 0. Now one foreground value is one
class, matched to the model's only class or to the class named with ``--truth-class``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from napari_msunet.evaluation import EvaluationWarning, evaluate
from napari_msunet.evaluation.matching import match_values
from napari_msunet.io.ome_zarr import write_ome_zarr

H, W = 300, 400


def _pred(path, names):
    pred = np.zeros((H, W), np.uint8)
    pred[50:150, 50:250] = 1
    if len(names) > 2:
        pred[200:280, 300:380] = 2
    return write_ome_zarr(path, pred, kind="labels", chunk=128, class_names=names)


def _truth() -> np.ndarray:
    truth = np.zeros((H, W), bool)
    truth[60:160, 40:240] = True  # overlaps the predicted class 1
    return truth


def _save(path, mask, mode):
    if mode == "RGB":
        Image.fromarray(np.stack([mask] * 3, axis=-1)).save(path)
    else:
        Image.fromarray(mask).save(path)
    return path


def _evaluate_cli(pred, truth, out, *extra):
    cmd = [sys.executable, "-m", "napari_msunet.cli", "evaluate", "--pred", str(pred)]
    cmd += ["--truth", str(truth), "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True)


@pytest.mark.parametrize(
    ("value", "mode"), [(1, "L"), (255, "L"), (255, "RGB")], ids=["0-1", "0-255", "grey-rgb"]
)
def test_a_binary_mask_scores_the_models_only_class(tmp_path, value, mode):
    pred = _pred(tmp_path / "pred.ome.zarr", ["Background", "Gland"])
    truth = _save(tmp_path / "truth.png", (_truth() * value).astype(np.uint8), mode)
    run = _evaluate_cli(pred, truth, tmp_path / "report")
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rows = {c["name"]: c for c in report["classes"]}
    assert set(rows) == {"background", "Gland"}  # no "class 255" row
    assert "class 255" not in run.stdout
    assert rows["Gland"]["iou"] == pytest.approx(report["foreground"]["iou"])
    p, t = np.zeros((H, W), bool), _truth()
    p[50:150, 50:250] = True
    assert rows["Gland"]["iou"] == pytest.approx((p & t).sum() / (p | t).sum())
    assert report["class_matching"]["unmatched_truth"] == []


def test_a_binary_mask_against_a_model_of_two_classes_needs_the_class_named(tmp_path):
    pred = _pred(tmp_path / "pred.ome.zarr", ["Background", "Germinal centre", "Sinus"])
    truth = _save(tmp_path / "truth.png", (_truth() * 255).astype(np.uint8), "L")
    run = _evaluate_cli(pred, truth, tmp_path / "r1")
    assert run.returncode == 0, run.stderr
    assert "255" in run.stderr  # warned: the value has no class in the model
    report = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert report["class_matching"]["unmatched_truth"] == ["value 255"]
    named = _evaluate_cli(pred, truth, tmp_path / "r2", "--truth-class", "germinal CENTRE")
    assert named.returncode == 0, named.stderr
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    rows = {c["name"]: c for c in report["classes"]}
    assert rows["Germinal centre"]["iou"] > 0.6
    assert report["class_matching"]["unmatched_truth"] == []
    wrong = _evaluate_cli(pred, truth, tmp_path / "r3", "--truth-class", "Gland")
    assert wrong.returncode == 2
    assert "'Gland' is not a class of the prediction" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_a_multi_valued_mask_is_compared_by_value_and_unknown_values_named(tmp_path):
    pred = _pred(tmp_path / "pred.ome.zarr", ["Background", "GC", "Sinus"])
    truth = np.zeros((H, W), np.uint8)
    truth[50:150, 50:250] = 1
    truth[200:280, 300:380] = 7
    with pytest.warns(EvaluationWarning, match=r"values \[7\] have no class"):
        result = evaluate(pred, _save(tmp_path / "t.png", truth, "L"), out_dir=tmp_path / "r")
    assert result.matching.unmatched_truth == ("value 7",)
    assert result.matching.unmatched_pred == ("Sinus",)
    rows = {c.name: c for c in result.metrics.classes}
    assert rows["GC"].iou == pytest.approx(1.0)


def test_a_colour_coded_mask_is_still_refused_with_the_fix(tmp_path):
    pred = _pred(tmp_path / "pred.ome.zarr", ["Background", "Gland"])
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[10:20, 10:20] = (255, 0, 0)
    run = _evaluate_cli(pred, _save(tmp_path / "c.png", rgb, "L"), tmp_path / "r")
    assert run.returncode == 2
    assert "c.png: is a colour (RGB) image" in run.stderr


def test_match_values_rules():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert match_values({1: "Gland"}, [255]).truth_to_eval == {255: 1}
        assert match_values({1: "Gland"}, [1]).truth_to_eval == {}
        assert match_values({1: "Gland"}, []).truth_to_eval == {}
        assert match_values({1: "A", 2: "B"}, [9], truth_class="b").truth_to_eval == {9: 2}
    with pytest.raises(ValueError, match="2 foreground values"):
        match_values({1: "A", 2: "B"}, [1, 2], truth_class="A")


def test_compare_in_napari_matches_a_binary_layer_the_same_way():
    from napari_msunet.evaluation import LabelPyramid, compare

    p = np.zeros((H, W), np.uint8)
    p[50:150, 50:250] = 1
    pred = LabelPyramid((p,), 1.0, {1: "Gland"}, "prediction")
    truth = LabelPyramid(((_truth() * 255).astype(np.uint8),), 1.0, None, "mask.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the binary case needs no warning
        result = compare(pred, truth)
    rows = {c.name: c for c in result.metrics.classes}
    t = _truth()
    assert rows["Gland"].iou == pytest.approx(
        (p.astype(bool) & t).sum() / (p.astype(bool) | t).sum()
    )
    assert result.matching.unmatched_truth == ()
