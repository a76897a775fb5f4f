"""Matching truth classes to prediction classes by name, and relabelling lazily."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest

from napari_msunet.evaluation.matching import (
    EvaluationWarning,
    match_classes,
    normalise_names,
    remap_labels,
)


def test_match_by_name_across_different_numbering():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = match_classes({1: "GC", 2: "Sinus"}, {1: "sinus ", 2: "GC"})
    assert m.by == "name"
    assert m.truth_to_eval == {1: 2, 2: 1}
    assert m.names == {1: "GC", 2: "Sinus"}
    assert not m.identity
    assert m.unmatched_truth == ()
    assert m.unmatched_pred == ()


def test_unknown_truth_class_gets_its_own_label_never_merged():
    with pytest.warns(EvaluationWarning, match=r"\['Tumour'\] are not in the prediction"):
        m = match_classes({1: "GC", 2: "Sinus"}, {1: "Tumour", 2: "GC", 3: "Sinus"}, ignore_label=4)
    # fresh label above every known one, skipping the ignore label
    assert m.truth_to_eval == {1: 5, 2: 1, 3: 2}
    assert m.names[5] == "Tumour"
    assert m.unmatched_truth == ("Tumour",)


def test_prediction_class_missing_from_truth_is_listed():
    m = match_classes({1: "GC", 2: "Sinus"}, {7: "GC"})
    assert m.truth_to_eval == {7: 1}
    assert m.unmatched_pred == ("Sinus",)


def test_single_classes_with_different_names_are_paired_with_a_warning():
    with pytest.warns(EvaluationWarning, match="only class 'Unclassified'"):
        m = match_classes({1: "Germinal centre"}, {1: "Unclassified"})
    assert m.by == "single"
    assert m.truth_to_eval == {1: 1}
    assert m.names == {1: "Germinal centre"}


def test_by_label_when_a_side_has_no_names():
    with pytest.warns(EvaluationWarning, match="matched by label value"):
        m = match_classes({}, {1: "Sinus", 2: "GC"})
    assert m.by == "label"
    assert m.identity
    assert m.names == {1: "Sinus", 2: "GC"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = match_classes({1: "GC"}, {})
    assert m.by == "label"
    assert m.names == {1: "GC"}


def test_normalise_names():
    assert normalise_names(["GC", "Sinus"]) == {1: "GC", 2: "Sinus"}
    assert normalise_names({0: "background", 3: "GC", 4: ""}) == {3: "GC"}
    assert normalise_names(None) == {}
    with pytest.raises(TypeError):
        normalise_names("GC")
    with pytest.raises(ValueError, match=">= 0"):
        normalise_names({-1: "x"})


def test_remap_labels_swaps_lazily_and_widens():
    arr = da.from_array(np.array([[0, 1, 2, 3]], np.uint8), chunks=2)
    out = remap_labels(arr, {1: 2, 2: 1})
    np.testing.assert_array_equal(out.compute(), [[0, 2, 1, 3]])
    wide = remap_labels(arr, {3: 300})
    assert wide.dtype == np.uint16
    np.testing.assert_array_equal(wide.compute(), [[0, 1, 2, 300]])
    assert remap_labels(arr, {1: 1}) is arr
