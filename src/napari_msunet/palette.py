"""Every colour napari-msunet draws with, and the rule that keeps them apart.

Colours meet on one screen: a lab's QuPath class colours (an annotation), the model's class
colours (a prediction), the TP/FP/FN of a comparison. Two rules:

- **the comparison never looks like a class**: its three colours are checked against the
  class colours of the two layers it compares and any too close to one (or to each other)
  is replaced from :data:`RESERVE` (:func:`comparison_colours`). A QuPath class coloured
  (0, 200, 0) made TP green and the class one colour before;
- **no red-green pair by default**: about 8 % of men cannot tell the paper's green TP from
  its red FP. The default scheme, :data:`SAFE`, takes Okabe and Ito's colour-blind-safe
  colours (blue TP, orange FP, reddish purple FN); :data:`PAPER` keeps the paper's green,
  red and blue for whoever wants the figures to match it.

Distances are "redmean" RGB distances (a cheap approximation of perceived difference that
weighs green most), in 0-765; :data:`MIN_DISTANCE` is the least two colours on one screen
may be apart. No Qt or napari here: the CLI's overlay PNG uses the same colours.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

__all__ = [
    "CLASS_COLOURS",
    "COMPARISON_SCHEMES",
    "DEFAULT_SCHEME",
    "MIN_DISTANCE",
    "PAPER",
    "RESERVE",
    "REVIEW_COLOURS",
    "SAFE",
    "as_rgba_floats",
    "colour_distance",
    "comparison_colours",
]

Colour = tuple[int, int, int]

SAFE = "colour-blind safe"
PAPER = "paper (green, red, blue)"

#: TP / FP / FN colours of each scheme, by the codes' names.
COMPARISON_SCHEMES: dict[str, dict[str, Colour]] = {
    # Okabe & Ito (2008), "Color Universal Design": blue, orange, reddish purple
    SAFE: {"TP": (0, 114, 178), "FP": (230, 159, 0), "FN": (204, 121, 167)},
    PAPER: {"TP": (0, 255, 0), "FP": (255, 0, 0), "FN": (0, 0, 255)},
}
DEFAULT_SCHEME = SAFE

#: Replacements for a comparison colour that meets a class colour (more Okabe-Ito, then
#: bright ones that rarely occur as class colours).
RESERVE: tuple[Colour, ...] = (
    (86, 180, 233),  # sky blue
    (0, 158, 115),  # bluish green
    (240, 228, 66),  # yellow
    (213, 94, 0),  # vermillion
    (255, 255, 255),
    (0, 255, 255),
    (255, 0, 255),
    (128, 0, 255),
)  # no black: it vanishes among hematoxylin-dark nuclei

#: Colours given to classes that bring none (label 1 first); a QuPath class keeps its own.
CLASS_COLOURS: tuple[Colour, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)

#: Review boxes: suspected missing (cyan) and wrong (magenta) annotations, the region being
#: drawn (white). The comparison keeps away from them too.
REVIEW_COLOURS: dict[str, Colour] = {
    "missing": (0, 255, 255),
    "wrong": (255, 0, 255),
    "edit": (255, 255, 255),
}

#: The least redmean distance between two colours drawn together.
MIN_DISTANCE = 120.0


def colour_distance(a: Iterable[int], b: Iterable[int]) -> float:
    """Redmean distance between two RGB colours (0 for equal, about 765 for black-white)."""
    r1, g1, b1 = (int(v) for v in a)
    r2, g2, b2 = (int(v) for v in b)
    rm = (r1 + r2) / 2
    dr, dg, db = r1 - r2, g1 - g2, b1 - b2
    return math.sqrt((2 + rm / 256) * dr * dr + 4 * dg * dg + (2 + (255 - rm) / 256) * db * db)


def comparison_colours(
    scheme: str = DEFAULT_SCHEME, avoid: Iterable[Iterable[int]] = ()
) -> dict[str, Colour]:
    """TP / FP / FN colours of ``scheme``, each at least :data:`MIN_DISTANCE` from every
    colour in ``avoid`` (the class colours on screen), from the review boxes'
    (:data:`REVIEW_COLOURS`) and from each other.

    A colour that clashes is replaced by the colour of :data:`RESERVE` farthest from all
    the others on screen (class colours and the comparison colours already chosen).
    """
    if scheme not in COMPARISON_SCHEMES:
        raise ValueError(f"unknown colour scheme {scheme!r}: one of {list(COMPARISON_SCHEMES)}")
    taken: list[Colour] = [tuple(int(v) for v in c)[:3] for c in avoid]  # type: ignore[misc]
    taken += REVIEW_COLOURS.values()
    out: dict[str, Colour] = dict(COMPARISON_SCHEMES[scheme])
    for name, colour in COMPARISON_SCHEMES[scheme].items():
        # every other colour on screen: the classes and the comparison's other two
        others = taken + [c for n, c in out.items() if n != name]
        if all(colour_distance(colour, o) >= MIN_DISTANCE for o in others):
            continue
        choices = [c for c in RESERVE if c not in out.values()]
        # the replacement farthest from everything on screen (the first that merely passes
        # gave a sky-blue FP beside a blue TP: apart by the measure, alike to the eye)
        out[name] = max(choices, key=lambda c: min(colour_distance(c, o) for o in others))
    return out


def as_rgba_floats(colours: Mapping[int, Colour]) -> dict[int, tuple[float, float, float, float]]:
    """``{label: (r, g, b, 1.0)}`` in 0-1, napari's ``DirectLabelColormap`` convention."""
    return {k: (*(v / 255 for v in c), 1.0) for k, c in colours.items()}
