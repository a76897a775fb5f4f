"""One palette: comparison colours never look like a class, and no red-green pair by default."""

from __future__ import annotations

import itertools

import pytest

from napari_msunet.evaluation.overlay import FN, FP, OVERLAY_COLORS_RGBA8, TP
from napari_msunet.palette import (
    COMPARISON_SCHEMES,
    DEFAULT_SCHEME,
    MIN_DISTANCE,
    PAPER,
    SAFE,
    colour_distance,
    comparison_colours,
)


def test_default_is_colour_blind_safe_and_used_by_the_core_overlay():
    assert DEFAULT_SCHEME == SAFE
    safe = COMPARISON_SCHEMES[SAFE]
    assert [OVERLAY_COLORS_RGBA8[c][:3] for c in (TP, FP, FN)] == [
        safe["TP"],
        safe["FP"],
        safe["FN"],
    ]
    # no pure green against red: TP is blue, FP orange (Okabe & Ito)
    assert safe["TP"][2] > safe["TP"][1] > safe["TP"][0]
    assert safe["FP"][0] > safe["FP"][1] > safe["FP"][2]


@pytest.mark.parametrize("scheme", [SAFE, PAPER])
def test_a_qupath_class_coloured_like_tp_gets_another_tp(scheme):
    tp = COMPARISON_SCHEMES[scheme]["TP"]
    clash = (max(tp[0] - 10, 0), tp[1], tp[2])  # a class colour a few levels off TP
    got = comparison_colours(scheme, avoid=[clash, (255, 255, 0)])
    assert got["TP"] != tp
    for colour in got.values():
        assert colour_distance(colour, clash) >= MIN_DISTANCE
        assert colour_distance(colour, (255, 255, 0)) >= MIN_DISTANCE
    for a, b in itertools.combinations(got.values(), 2):
        assert colour_distance(a, b) >= MIN_DISTANCE
    # colours nobody clashes with stay as the scheme says
    assert got["FN"] == COMPARISON_SCHEMES[scheme]["FN"]


def test_the_paper_scheme_is_kept_when_nothing_clashes():
    assert comparison_colours(PAPER, avoid=[(255, 255, 0)]) == COMPARISON_SCHEMES[PAPER]
    assert comparison_colours(PAPER, avoid=[(0, 200, 0)])["TP"] != (0, 255, 0)


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="unknown colour scheme"):
        comparison_colours("rainbow")
