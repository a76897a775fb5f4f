"""Per-image, object and boundary scores, constant baselines and paired bootstrap CIs, on
cases whose answer can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_msunet.evaluation.image_scores import (
    boundary_f1,
    constant_baselines,
    dice,
    object_scores,
    score_image,
)
from napari_msunet.evaluation.paired import paired_bootstrap, paired_t


def _boxes(shape, *boxes):
    m = np.zeros(shape, bool)
    for y0, x0, y1, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_a_perfect_segmentation_scores_perfectly():
    t = _boxes((64, 64), (5, 5, 20, 20), (30, 30, 50, 60))
    s = score_image(t, t)
    assert (s.dice, s.minority_dice, s.object_f1, s.object_dice) == (1.0, 1.0, 1.0, 1.0)
    assert s.object_hausdorff == 0.0
    assert s.boundary_f1 == 1.0


def test_object_f1_counts_objects_covering_more_than_half():
    truth = _boxes((60, 100), (0, 0, 10, 10), (0, 30, 10, 40), (0, 60, 10, 70))
    # covers all of object 1, 60 % of object 2, 40 % of object 3, plus a false object
    pred = _boxes((60, 100), (0, 0, 10, 10), (0, 30, 10, 36), (0, 60, 10, 64), (40, 40, 50, 50))
    f1, _, _ = object_scores(pred, truth)
    # TP = 2 (objects 1 and 2), 4 predicted and 3 true objects: F1 = 2 * 2 / (4 + 3)
    assert f1 == pytest.approx(4 / 7)


def test_object_dice_and_hausdorff_weight_objects_by_area():
    truth = _boxes((40, 40), (0, 0, 10, 10))  # one object of 100 px
    pred = _boxes((40, 40), (0, 0, 10, 5))  # half of it
    f1, odice, haus = object_scores(pred, truth)
    assert f1 == 0.0  # covers exactly half: not more than half
    assert odice == pytest.approx(2 * 50 / 150)  # one pair, both directions the same
    assert haus == pytest.approx(5.0)  # the truth's right column is 5 px from the prediction


def test_empty_sides_have_defined_scores():
    empty, some = np.zeros((20, 20), bool), _boxes((20, 20), (2, 2, 6, 6))
    assert object_scores(empty, empty) == (1.0, 1.0, 0.0)
    f1, odice, haus = object_scores(empty, some)
    assert (f1, odice) == (0.0, 0.0)
    assert haus == pytest.approx(np.hypot(20, 20))
    assert dice(empty, empty) == 1.0
    assert boundary_f1(empty, some) == 0.0


def test_boundary_f1_tolerates_small_shifts_only():
    truth = _boxes((80, 80), (20, 20, 60, 60))
    shifted = _boxes((80, 80), (22, 22, 62, 62))  # 2 px off
    assert boundary_f1(shifted, truth, tolerance=3) == 1.0
    assert boundary_f1(shifted, truth, tolerance=1) < 0.2


def test_constant_baselines_show_what_a_trivial_model_scores():
    truths = [_boxes((50, 50), (0, 0, 40, 50)), _boxes((50, 50), (10, 10, 30, 30))]
    base = constant_baselines(truths)
    fg = base["all foreground"]
    assert fg["dice"] == pytest.approx(np.mean([2 * 2000 / 4500, 2 * 400 / 2900]))
    assert fg["minority_dice"] == 0.0
    assert base["all background"]["dice"] == 0.0


def test_paired_bootstrap_finds_a_consistent_gain_and_not_noise():
    rng = np.random.default_rng(1)
    a = rng.uniform(0.6, 0.9, 200)
    better = paired_bootstrap(a, a + 0.02 + rng.normal(0, 0.01, 200))
    assert better.significant
    assert 0.015 < better.low < better.mean < better.high < 0.025
    noise = paired_bootstrap(a, a + rng.normal(0, 0.05, 200))
    assert not noise.significant
    assert noise.low < 0 < noise.high
    # grouped resampling (the same image under several seeds) gives a wider interval
    groups = np.repeat(np.arange(40), 5)
    b = a + np.repeat(rng.normal(0.01, 0.05, 40), 5)
    pairs, grouped = paired_bootstrap(a, b), paired_bootstrap(a, b, groups=groups)
    assert grouped.high - grouped.low > pairs.high - pairs.low
    assert "*" in better.text()


def test_crossed_bootstrap_counts_the_seed_to_seed_spread():
    # 5 seeds x 100 images: B beats A on every image of seeds 0-3, loses on seed 4 (a run
    # that went wrong). Resampling only images sees a sure gain; resampling the seeds too
    # sees that a new run could land on the bad side.
    rng = np.random.default_rng(2)
    seeds, images = np.meshgrid(np.arange(5), np.arange(100), indexing="ij")
    a = rng.uniform(0.6, 0.9, seeds.shape)
    gain = np.where(seeds == 4, -0.06, 0.03) + rng.normal(0, 0.01, seeds.shape)
    b = a + gain
    by_image = paired_bootstrap(a, b, groups=images)
    crossed = paired_bootstrap(a, b, groups=images, runs=seeds)
    assert by_image.significant
    assert by_image.low > 0
    assert crossed.mean == pytest.approx(by_image.mean)
    assert not crossed.significant
    # a gain the same in every seed stays significant under the crossed resampling
    steady = paired_bootstrap(
        a, a + 0.03 + rng.normal(0, 0.01, seeds.shape), groups=images, runs=seeds
    )
    assert steady.significant
    assert 0.025 < steady.low < steady.high < 0.035
    with pytest.raises(ValueError, match="needs groups"):
        paired_bootstrap(a, b, runs=seeds)


def test_paired_t_interval_of_five_seeds():
    a = np.array([0.80, 0.82, 0.84, 0.81, 0.83])
    d = np.array([0.01, 0.03, 0.02, 0.00, 0.04])
    ci = paired_t(a, a + d)
    # mean 0.02, sd 0.0158, t(0.975, 4) = 2.7764: half-width 0.0196
    assert ci.mean == pytest.approx(0.02)
    assert ci.low == pytest.approx(0.02 - 2.7764 * np.std(d, ddof=1) / np.sqrt(5), abs=1e-4)
    assert ci.significant
    # wider than the percentile bootstrap of the same five pairs, which cannot see past them
    boot = paired_bootstrap(a, a + d)
    assert ci.high - ci.low > boot.high - boot.low
    with pytest.raises(ValueError, match="at least 2"):
        paired_t(a[:1], a[:1])
