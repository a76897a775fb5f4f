"""Regions said in µm and mm, x before y; level-0 pixels, named, when µm/px is unknown."""

from __future__ import annotations

from napari_msunet._napari._wording import describe_region, length


def test_regions_read_in_micrometres_and_millimetres():
    assert describe_region((6800, 6800, 1800, 1800), 0.5) == "900 × 900 µm at x 3.40 mm, y 3.40 mm"
    # (y, x, h, w): width first, x before y, as QuPath and the scale bar count
    assert describe_region((100, 200, 3000, 4000), 0.25) == "1.00 mm × 750 µm at x 50 µm, y 25 µm"


def test_without_pixel_size_the_unit_is_named():
    assert describe_region((3400, 3400, 900, 900), None) == (
        "900 × 900 px at x 3400, y 3400 (level-0 pixels)"
    )
    assert length(999) == "999 µm"
    assert length(1000) == "1.00 mm"
