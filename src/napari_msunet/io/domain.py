"""Whether a slide looks like the images a model learnt from: stain and texture statistics.

A model trained on colon biopsies paints "Gland" on anything, in full colour: the epidermis
of a skin scan, an immunostain, a slide whose µm/px is wrong. A pathologist should be told
before trusting it (issue 15). So every model version stores, in its header, statistics of the
tissue it was trained on, and a prediction compares the slide's tissue with them.

The statistics are computed on windows of tissue at the model's working resolution (the same
µm/px the network sees), over the pixels that are not white background:

- **stain density**: mean optical density (OD, ``-log10(I/255)``) summed over R, G, B;
- **red share**, **green share**: the mean share of the OD in the red and in the green
  channel: the hue of the stain (H&E pink/purple, DAB brown, haematoxylin alone blue);
- **texture**: mean gradient magnitude of the grey image: how fine the structure is at the
  working scale (a slide whose stated µm/px is wrong by 2x moves it by about 2 SD);
- **dense share**: the share of tissue pixels with OD above :data:`DENSE_OD` (nuclei and
  other strongly stained structure).

The training statistics are the mean and standard deviation of each feature over the
training windows. A slide's features are the median over up to :data:`CHECK_WINDOWS` windows
of its tissue; each is turned into a z score against the training statistics. The slide is
*unlike the training data* when the root mean square of the z scores reaches
:data:`FAR_RMS` or one z score reaches :data:`FAR_Z`.

Calibration (the bundled model: 400 of its EBHI-Seg training patches at 1 µm/px; printed by
``examples/record_model_domain.py --calibrate``): its validation patches by diagnosis reach an
RMS of 0.70 at most (Normal), 200 random groups of 12 of them 0.65; the same 12 patches with
their stain 0.8x or 1.25x as dense 1.08 and 0.43 (not flagged), 0.6x as dense 1.92 (flagged:
paler stain -2.7 SD); magnified 2x (a µm/px wrong by 2) 1.02 with texture -2.0 SD (not
flagged: the check is not a µm/px test); a DAB immunostain 2.46 (flagged). The check
sees colour and texture; it cannot tell two H&E tissues apart whose stain and structure are
alike, so it is a warning, never a refusal.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CHECK_WINDOWS",
    "FAR_RMS",
    "FAR_Z",
    "FEATURES",
    "DomainCheck",
    "DomainStats",
    "check_domain",
    "window_features",
]

#: What each feature is called in the header and in messages (see the module docstring).
FEATURES = ("stain density", "red share", "green share", "texture", "dense share")
#: Optical density (summed over R, G, B) below which a pixel is background, not tissue.
TISSUE_OD = 0.2
#: Optical density above which a tissue pixel counts as densely stained.
DENSE_OD = 1.2
#: A window with less tissue than this share of its pixels is not used.
MIN_TISSUE = 0.1
#: Windows of a slide's tissue compared with the training statistics.
CHECK_WINDOWS = 12
#: Side of each window, in working pixels.
WINDOW = 224
#: Least SD of a feature, as a share of its mean (see :func:`check_domain`).
STD_FLOOR = 0.05
#: Limits of "unlike the training data": RMS of the z scores, or any one z score.
FAR_RMS = 1.5
FAR_Z = 2.5

_WORDS = {  # what a large positive / negative z score means, for a person
    "stain density": ("darker stain", "paler stain"),
    "red share": ("redder stain", "less red stain"),
    "green share": ("more eosin-like (pink) stain", "less pink stain (another stain?)"),
    "texture": (
        "finer structure than at the model's scale (is the µm/px right?)",
        "coarser structure than at the model's scale (is the µm/px right?)",
    ),
    "dense share": ("more densely stained tissue", "less densely stained tissue"),
}


def window_features(rgb: np.ndarray) -> np.ndarray | None:
    """The features of one ``(h, w, 3)`` uint8 window; ``None`` when it holds too little tissue."""
    f = np.asarray(rgb, dtype=np.float32)
    if f.ndim != 3 or min(f.shape[:2]) < 2:  # no gradient across a 1-pixel strip
        return None
    od = -np.log10((f + 1.0) / 256.0)
    total = od.sum(-1)
    tissue = total > TISSUE_OD
    if tissue.mean() < MIN_TISSUE:
        return None
    od_t, total_t = od[tissue], total[tissue]
    share = (od_t / total_t[:, None]).mean(0)
    gy, gx = np.gradient(f.mean(-1) / 255.0)
    texture = float(np.hypot(gy, gx)[tissue].mean())
    dense = float((total_t > DENSE_OD).mean())
    return np.array([total_t.mean(), share[0], share[1], texture, dense], dtype=np.float64)


def features_of(windows: Sequence[np.ndarray]) -> np.ndarray:
    """``(n, len(FEATURES))`` features of the windows that hold enough tissue."""
    rows = [v for w in windows if (v := window_features(w)) is not None]
    return np.array(rows, dtype=np.float64).reshape(-1, len(FEATURES))


@dataclass(frozen=True)
class DomainStats:
    """A model's training-data statistics, as its header stores them (``training["domain"]``).

    Attributes
    ----------
    mean, std
        Per feature (:data:`FEATURES`), over the training windows.
    windows
        How many windows they come from.
    description
        The training data in words ("EBHI-Seg colon biopsies (H&E)"), shown to the
        user beside the model's name.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    windows: int
    description: str = ""

    @classmethod
    def of(cls, features: np.ndarray, description: str = "") -> DomainStats | None:
        """Statistics of ``(n, F)`` window features; ``None`` for fewer than two windows."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or len(features) < 2:
            return None
        return cls(
            tuple(round(float(v), 6) for v in features.mean(0)),
            tuple(round(float(v), 6) for v in features.std(0)),
            len(features),
            description,
        )

    def pooled(self, other: DomainStats | None, description: str | None = None) -> DomainStats:
        """These statistics and ``other``'s as one sample (a fine-tune: parent's data and
        the new slides); ``description`` replaces both descriptions when given."""
        if other is None:
            return self if description is None else _with(self, description)
        n1, n2 = max(self.windows, 1), max(other.windows, 1)
        m1, m2 = np.array(self.mean), np.array(other.mean)
        v1, v2 = np.array(self.std) ** 2, np.array(other.std) ** 2
        n = n1 + n2
        m = (n1 * m1 + n2 * m2) / n
        v = (n1 * (v1 + (m1 - m) ** 2) + n2 * (v2 + (m2 - m) ** 2)) / n
        text = (
            description if description is not None else _join(self.description, other.description)
        )
        return DomainStats(
            tuple(round(float(x), 6) for x in m),
            tuple(round(float(x), 6) for x in np.sqrt(v)),
            n,
            text,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(FEATURES),
            "mean": list(self.mean),
            "std": list(self.std),
            "windows": self.windows,
            "description": self.description,
        }

    @classmethod
    def from_training(cls, training: Mapping[str, Any] | None) -> DomainStats | None:
        """The statistics a header's ``training`` record holds; ``None`` when it has none
        (a model made before, or elsewhere) or they are not of these features."""
        data = training.get("domain") if isinstance(training, Mapping) else None
        if not isinstance(data, Mapping) or list(data.get("features") or []) != list(FEATURES):
            return None
        try:
            mean = tuple(float(v) for v in data["mean"])
            std = tuple(float(v) for v in data["std"])
            windows = int(data.get("windows") or 0)
        except (KeyError, TypeError, ValueError):
            return None
        if len(mean) != len(FEATURES) or len(std) != len(FEATURES):
            return None
        return cls(mean, std, windows, str(data.get("description") or ""))


def _with(stats: DomainStats, description: str) -> DomainStats:
    return DomainStats(stats.mean, stats.std, stats.windows, description)


def _join(a: str, b: str) -> str:
    return a if not b or b == a else b if not a else f"{a}; {b}"


@dataclass(frozen=True)
class DomainCheck:
    """How far a slide's tissue lies from a model's training data.

    Attributes
    ----------
    z
        Per feature: (slide median - training mean) / training SD.
    rms
        Root mean square of ``z``.
    windows
        Windows of the slide's tissue measured.
    description
        The model's training data in words (from its header).
    """

    z: tuple[float, ...]
    rms: float
    windows: int
    description: str = ""

    @property
    def far(self) -> bool:
        """Whether the slide is unlike the training data (:data:`FAR_RMS`, :data:`FAR_Z`)."""
        return self.rms >= FAR_RMS or max(abs(v) for v in self.z) >= FAR_Z

    def reasons(self) -> list[str]:
        """The features furthest out (|z| >= 1.5), in words, the largest first."""
        order = sorted(range(len(self.z)), key=lambda i: -abs(self.z[i]))
        out = []
        for i in order:
            if abs(self.z[i]) >= 1.5:
                more, less = _WORDS[FEATURES[i]]
                out.append(f"{more if self.z[i] > 0 else less} ({self.z[i]:+.1f} SD)")
        return out

    def message(self, model_name: str) -> str:
        """One warning for a person: what is off, and what the model was trained on."""
        trained = f" ({self.description})" if self.description else ""
        why = "; ".join(self.reasons()) or f"{self.rms:.1f} SD from it overall"
        return (
            f"This tissue looks unlike what {model_name} was trained on{trained}: {why}. "
            "Check its predictions closely; fine-tune it on corrected regions of slides "
            "like this one."
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "z": dict(zip(FEATURES, [round(v, 3) for v in self.z], strict=True)),
            "rms": round(self.rms, 3),
            "windows": self.windows,
            "far": self.far,
        }


def check_domain(stats: DomainStats, windows: Sequence[np.ndarray]) -> DomainCheck | None:
    """Compare tissue ``windows`` (uint8 RGB at the model's scale) with ``stats``.

    ``None`` when no window holds enough tissue to measure.
    """
    features = features_of(windows)
    if not len(features):
        return None
    median = np.median(features, axis=0)
    # a feature that never varied in training (a constant share) would make any slide "far"
    mean = np.abs(np.array(stats.mean))
    std = np.maximum(np.array(stats.std), np.maximum(STD_FLOOR * mean, 1e-3))
    z = (median - np.array(stats.mean)) / std
    rms = float(math.sqrt(float((z**2).mean())))
    return DomainCheck(tuple(float(v) for v in z), rms, len(features), stats.description)
