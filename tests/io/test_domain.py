"""The domain check: a slide's tissue against the training data's stain and texture statistics.

The reference is the bundled model's own record (its EBHI-Seg training patches); in-domain
tissue is the bundled EBHI-Seg sample (validation patches the model never trained on), the
foreign stain is scikit-image's DAB immunohistochemistry image.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from napari_msunet.io.domain import FEATURES, DomainStats, check_domain, window_features
from napari_msunet.models.bundled import bundled_model_path, sample_data_dir
from napari_msunet.models.checkpoint import read_header


@pytest.fixture(scope="module")
def bundled_stats():
    stats = DomainStats.from_training(read_header(bundled_model_path()).training)
    assert stats is not None
    assert "EBHI-Seg" in stats.description
    return stats


def _sample_patches(n=12):
    paths = sorted((sample_data_dir() / "images").glob("*.jpg"))[:n]
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def _ihc_windows():
    ihc = data.immunohistochemistry()
    return [ihc[y : y + 224, x : x + 224] for y in (0, 144, 288) for x in (0, 144, 288)]


def test_unseen_patches_of_the_training_kind_pass(bundled_stats):
    check = check_domain(bundled_stats, _sample_patches())
    assert check.windows == 12
    assert not check.far
    assert check.rms < 1.0


def test_an_immunostain_is_flagged_with_reasons_in_words(bundled_stats):
    check = check_domain(bundled_stats, _ihc_windows())
    assert check.far
    text = check.message("default_model.safetensors")
    assert text.startswith("This tissue looks unlike what default_model.safetensors was trained on")
    assert "EBHI-Seg" in text
    assert "SD)" in text  # the features that are off, with their distance
    assert check.to_dict()["far"] is True


def test_paler_stain_of_the_same_tissue_moves_the_density(bundled_stats):
    patches = _sample_patches()
    pale = []
    for p in patches:
        od = -np.log10((p.astype(np.float32) + 1) / 256) * 0.5
        pale.append(np.clip(256 * 10 ** (-od) - 1, 0, 255).astype(np.uint8))
    normal, faded = check_domain(bundled_stats, patches), check_domain(bundled_stats, pale)
    density = FEATURES.index("stain density")
    assert faded.z[density] < normal.z[density] - 2
    assert faded.far
    assert any("paler stain" in r for r in faded.reasons())


def test_background_windows_are_not_measured(bundled_stats):
    white = np.full((224, 224, 3), 245, np.uint8)
    assert window_features(white) is None
    assert check_domain(bundled_stats, [white, white]) is None


def test_pooled_statistics_equal_those_of_all_windows():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 0.3, (40, 5)), rng.normal(2, 0.5, (25, 5))
    pooled = DomainStats.of(a, "a").pooled(DomainStats.of(b, "b"))
    whole = DomainStats.of(np.concatenate([a, b]))
    assert pooled.windows == 65
    assert np.allclose(pooled.mean, whole.mean, atol=1e-5)
    assert np.allclose(pooled.std, whole.std, atol=1e-5)
    assert pooled.description == "a; b"


@pytest.mark.parametrize(
    "training",
    [None, {}, {"domain": "x"}, {"domain": {"features": ["other"], "mean": [1], "std": [1]}}],
)
def test_a_header_without_usable_statistics_has_none(training):
    assert DomainStats.from_training(training) is None


def test_round_trip_through_the_header_record(bundled_stats):
    assert DomainStats.from_training({"domain": bundled_stats.to_dict()}) == bundled_stats


def test_a_thin_strip_at_the_image_edge_is_not_measured():
    strip = np.full((1, 224, 3), 120, np.uint8)  # a tile clipped to one row
    assert window_features(strip) is None


def test_a_feature_constant_in_training_does_not_flag_every_slide(bundled_stats):
    patches = _sample_patches()
    dense = FEATURES.index("dense share")
    std = list(bundled_stats.std)
    std[dense] = 0.0  # e.g. pale training data: no densely stained pixel anywhere
    stats = DomainStats(bundled_stats.mean, tuple(std), bundled_stats.windows)
    assert not check_domain(stats, patches).far
