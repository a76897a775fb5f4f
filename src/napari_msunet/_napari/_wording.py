"""Places and sizes said the way a pathologist reads them: µm and mm, x before y.

"level-0 region (3400, 3400, 900, 900)" left a user to guess the order and the unit. With the
slide's µm/px a region reads "900 × 900 µm at x 3.40 mm, y 3.40 mm" (the top-left corner, from
the slide's top-left, as QuPath and the napari scale bar count); without it, the same in
level-0 pixels, named as such.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["describe_region", "length"]


def length(um: float) -> str:
    """A length: µm below 1 mm (no decimals), mm from there (two decimals)."""
    return f"{um / 1000:.2f} mm" if abs(um) >= 1000 else f"{um:.0f} µm"


def describe_region(region: Sequence[float], mpp: float | None) -> str:
    """``(y, x, h, w)`` in level-0 pixels as "w × h µm at x …, y …" (pixels without µm/px)."""
    y, x, h, w = (float(v) for v in region)
    if not mpp:
        return f"{w:.0f} × {h:.0f} px at x {x:.0f}, y {y:.0f} (level-0 pixels)"
    size = f"{length(w * mpp)} × {length(h * mpp)}"
    if size.count("µm") == 2:  # "900 µm × 900 µm" reads better as "900 × 900 µm"
        size = f"{w * mpp:.0f} × {h * mpp:.0f} µm"
    return f"{size} at x {length(x * mpp)}, y {length(y * mpp)}"
