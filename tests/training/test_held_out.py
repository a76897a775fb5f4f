"""Held-out regions and the parent-vs-version verdict (issue 13, item 3).

Every fine-tune keeps some annotated regions out of training (stratified by class, or the
user's), scores the parent and the new version there, and records both in the version's
header; the verdict says whether the version got better or worse.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from napari_msunet.io.domain import DomainStats
from napari_msunet.io.synthetic import SyntheticSlideSpec, write_synthetic_slide
from napari_msunet.models import build_model
from napari_msunet.models.checkpoint import ModelHeader, read_header, save_model
from napari_msunet.progress import run_to_end
from napari_msunet.training.finetune import FinetuneWarning, iter_finetune
from napari_msunet.training.held_out import choose_held_out, drop_held_out
from napari_msunet.training.held_out_scores import (
    WORSE_BY,
    HeldOutVerdict,
    ModelScores,
)
from napari_msunet.training.slide_dataset import SlideSpec, patch_positions

NAMES = ("Background", "Germinal centre", "Sinus")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A slide with 16 regions of two classes and a tiny parent that knows glands."""
    root = tmp_path_factory.mktemp("held")
    spec = SyntheticSlideSpec(1024, 1024, seed=7, mpp=1.0, n_regions=16, region_size=(0.05, 0.08))
    slide = write_synthetic_slide(root / "s.svs", spec, "svs")
    spec.write_geojson(root / "s.geojson")
    torch.manual_seed(0)
    model = build_model("msunet", n_classes=2, widths=(4, 8))
    header = ModelHeader.for_model(
        model,
        class_names=("Background", "Gland"),
        class_colours=((0, 0, 0), (200, 200, 0)),
        input_um_per_px=4.0,
        norm_mean=(0.5,) * 3,
        norm_std=(0.25,) * 3,
        tile_size=32,
    )
    save_model(root / "gland.safetensors", model, header)
    return root, SlideSpec(slide, root / "s.geojson")


def _classes(path):
    features = json.loads(path.read_text())["features"]
    out: dict[str, int] = {}
    for f in features:
        name = f["properties"]["classification"]["name"]
        out[name] = out.get(name, 0) + 1
    return out


def test_the_tool_holds_out_a_share_of_every_class(case):
    _root, spec = case
    counts = _classes(spec.annotation)
    assert set(counts) == set(NAMES[1:])
    held = choose_held_out([spec], 4.0, NAMES, fraction=0.25, seed=3)
    assert not held.reason
    assert held.how == "auto"
    by_class: dict[str, int] = {}
    for r in held.regions:
        by_class[r.class_name] = by_class.get(r.class_name, 0) + 1
        assert r.source == "object"
    # every class is represented, and none is held out entirely
    assert set(by_class) == set(NAMES[1:])
    for name, n in by_class.items():
        assert 1 <= n < counts[name]
    # the same seed keeps out the same regions (a resumed run scores what it did not train on)
    again = choose_held_out([spec], 4.0, NAMES, fraction=0.25, seed=3)
    assert [r.box for r in again.regions] == [r.box for r in held.regions]


def test_training_patches_never_touch_a_held_out_region(case):
    _root, spec = case
    held = choose_held_out([spec], 4.0, NAMES, fraction=0.25, seed=0)
    pos = patch_positions(spec, 4.0, 32, class_names=NAMES)
    kept = drop_held_out(spec, pos, 4.0, 32, held)
    assert 0 < len(kept) < len(pos)
    for y, x in kept:  # working px at 4 µm/px = 4 level-0 px
        y0, x0, y1, x1 = 4 * y, 4 * x, 4 * (y + 32), 4 * (x + 32)
        for bx0, by0, bx1, by1 in held.boxes(spec.slide):
            assert not (bx0 < x1 and bx1 > x0 and by0 < y1 and by1 > y0)


def test_a_single_corrected_region_is_not_held_out(case, tmp_path):
    _root, spec = case
    regions = tmp_path / "regions.geojson"
    box = [[0, 0], [400, 0], [400, 400], [0, 400], [0, 0]]
    regions.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": [box]},
                        "properties": {"objectType": "annotation"},
                    }
                ],
            }
        )
    )
    one = SlideSpec(spec.slide, spec.annotation, regions=regions)
    held = choose_held_out([one], 4.0, NAMES)
    assert not held.regions
    assert "too few corrected regions" in held.reason


def test_the_users_held_out_regions_and_slides(case, tmp_path):
    _root, spec = case
    chosen = choose_held_out([spec], 4.0, NAMES, fraction=0.25, seed=0)
    # the user's GeoJSON: two of the annotated regions
    features = json.loads(spec.annotation.read_text())["features"][:2]
    user = tmp_path / "held.geojson"
    user.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    mine = SlideSpec(spec.slide, spec.annotation, held_out=user)
    held = choose_held_out([mine], 4.0, NAMES)
    assert held.how == "user"
    assert len(held.regions) == 2
    assert {r.source for r in held.regions} == {"user"}
    # a whole slide kept out: every annotated region of it is scored
    whole = choose_held_out([], 4.0, NAMES, held_out_slides=[spec])
    assert whole.how == "user"
    assert len(whole.regions) > len(chosen.regions)
    assert {r.source for r in whole.regions} == {"slide"}


def test_a_fine_tune_records_parent_and_version_scores(case, tmp_path):
    root, spec = case
    out = tmp_path / "gc.safetensors"
    result = run_to_end(
        iter_finetune(
            root / "gland.safetensors",
            [spec],
            steps=3,
            batch_size=2,
            device="cpu",
            out=out,
            classes="replace",
        )
    )
    verdict = result.held_out
    assert verdict is not None
    assert verdict.version is not None
    assert verdict.parent is not None
    assert verdict.regions > 0
    assert verdict.pixels > 0
    # the parent never predicts a class it does not know: Dice 0 on the new classes
    assert verdict.parent.dice["Germinal centre"] == 0
    assert verdict.parent.mean_dice == 0
    header = read_header(out)
    recorded = HeldOutVerdict.from_header(header)
    assert recorded == verdict
    assert header.training["held_out"]["regions"][0]["class"] in NAMES
    assert recorded.summary().startswith("Dice on held-out regions: 0.00 → ")


def test_no_held_out_region_is_said_not_scored(case, tmp_path):
    root, spec = case
    out = tmp_path / "all.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("error", FinetuneWarning)  # the user's own choice: no warning
        result = run_to_end(
            iter_finetune(
                root / "gland.safetensors",
                [spec],
                steps=2,
                batch_size=2,
                device="cpu",
                out=out,
                classes="replace",
                held_out_fraction=0,
            )
        )
    verdict = HeldOutVerdict.from_header(read_header(out))
    assert verdict == result.held_out
    assert verdict.version is None
    assert verdict.delta is None
    assert not verdict.got_worse
    assert verdict.summary() == "No held-out score: no region was kept out of training " + (
        "(held-out share 0)"
    )


def test_the_verdict_flags_a_worse_version():
    def scores(mean):
        return ModelScores({"Background": 0.9, "Gland": mean}, {}, mean)

    better = HeldOutVerdict(scores(0.71), scores(0.78), 3, 1000)
    assert better.summary() == "Dice on held-out regions: 0.71 → 0.78 (+0.07)"
    assert not better.got_worse
    worse = HeldOutVerdict(scores(0.78), scores(0.60), 3, 1000)
    assert worse.got_worse
    assert worse.summary().endswith("(-0.18) — worse than its parent")
    same = HeldOutVerdict(scores(0.780), scores(0.780 - WORSE_BY / 2), 3, 1000)
    assert not same.got_worse
    assert same.summary() == "Dice on held-out regions: 0.78 → 0.78 (±0.00)"
    scratch = HeldOutVerdict(None, scores(0.5), 3, 1000)
    assert scratch.summary() == "Dice on held-out regions: 0.50 (no parent to compare)"


def _square(x, y, size):
    ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": "Corrected"}},
    }


def test_a_fine_tune_scores_the_corrected_regions_it_learnt_from(case, tmp_path):
    root, spec = case
    regions = tmp_path / "regions.geojson"
    squares = [_square(x, y, 300) for x, y in ((0, 0), (600, 0), (0, 600), (600, 600))]
    regions.write_text(json.dumps({"type": "FeatureCollection", "features": squares}))
    corrected = SlideSpec(spec.slide, spec.annotation, regions=regions)
    out = tmp_path / "gc-corrected.safetensors"
    result = run_to_end(
        iter_finetune(
            root / "gland.safetensors",
            [corrected],
            steps=2,
            batch_size=2,
            device="cpu",
            out=out,
            classes="replace",
            held_out_fraction=0.5,
        )
    )
    learnt = result.corrected
    assert learnt is not None
    assert learnt.parent is not None
    assert learnt.version is not None
    assert learnt.parent.mean_dice == 0  # the parent knew none of these classes
    header = read_header(out)
    held_boxes = {tuple(r["box"]) for r in header.training["held_out"]["regions"]}
    learnt_boxes = {tuple(r["box"]) for r in header.training["corrected"]["regions"]}
    assert held_boxes  # some corrected regions were kept out ...
    assert learnt_boxes  # ... the others were trained on, and scored apart from them
    assert not held_boxes & learnt_boxes
    assert len(held_boxes | learnt_boxes) == 4
    assert learnt.regions == len(learnt_boxes)
    assert HeldOutVerdict.from_header(header, "corrected") == learnt
    # the version records its training tissue's statistics for the domain check
    domain = DomainStats.from_training(header.training)
    assert domain.windows > 1
    assert "s.svs" in domain.description
    lines = result.score_lines()
    assert lines[0].startswith("Dice on held-out regions: ")
    assert lines[1].startswith("Dice on the corrected regions it learnt from: 0.00 → ")


def test_no_corrected_region_means_no_learnt_score(case, tmp_path):
    root, spec = case
    result = run_to_end(
        iter_finetune(
            root / "gland.safetensors",
            [spec],
            steps=1,
            batch_size=2,
            device="cpu",
            out=tmp_path / "plain.safetensors",
            classes="replace",
        )
    )
    assert result.corrected is None
    assert "corrected" not in read_header(tmp_path / "plain.safetensors").training
    assert len(result.score_lines()) == 1
