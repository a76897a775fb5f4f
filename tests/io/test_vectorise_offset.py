"""vectorise(offset=...): a mask covering a window of the slide lands at its level-0 place."""

from __future__ import annotations

import numpy as np

from napari_msunet.io.rasterise import rasterise_array
from napari_msunet.io.vectorise import vectorise


def test_offset_moves_polygons_to_the_window_after_scaling():
    window = np.zeros((20, 30), np.uint8)
    window[2:6, 3:9] = 1
    anns = vectorise(window, {"GC": 1}, downsample=2.0, offset=(100, 40))
    assert anns[0].geometry.bounds == (40 + 6, 100 + 4, 40 + 18, 100 + 12)
    # rasterised back on the slide at the window's scale: the window's pixels, in place
    slide = rasterise_array(anns, (200, 200), downsample=2.0)
    np.testing.assert_array_equal(slide[50:60, 20:35], window[:10, :15])
    assert slide.sum() == window.sum()


def test_no_offset_is_unchanged():
    mask = np.zeros((8, 8), np.uint8)
    mask[1:3, 1:4] = 1
    assert vectorise(mask, offset=(0, 0))[0].geometry.equals(vectorise(mask)[0].geometry)
