"""Paired comparisons of two methods: the bootstrap confidence interval of their difference.

Two training methods scored on the same images with the same seeds are paired: the question
is whether method B beats method A on the same data, not whether their means differ beyond
the spread of all runs. :func:`paired_bootstrap` resamples the pairs (images, or
seed x image cells) with replacement and gives the mean difference B - A with its
percentile confidence interval; the difference is called significant when the interval
excludes 0. With ``groups`` (images) and ``runs`` (seeds) both given, it resamples seeds and
images independently (a crossed design), so the interval holds for a new training run on new
images, not only for the seeds that happened to be drawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["PairedDifference", "paired_bootstrap", "paired_t"]


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``b - a`` over the pairs, its bootstrap CI, and whether the CI excludes 0."""

    mean: float
    low: float
    high: float
    n: int
    level: float

    @property
    def significant(self) -> bool:
        return self.low > 0 or self.high < 0

    def text(self, digits: int = 3) -> str:
        mark = " *" if self.significant else ""
        return f"{self.mean:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]{mark}"

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_resamples: int = 10_000,
    level: float = 0.95,
    seed: int = 0,
    groups: np.ndarray | None = None,
    runs: np.ndarray | None = None,
) -> PairedDifference:
    """Bootstrap CI of the mean of ``b - a`` over paired observations (NaN pairs dropped).

    ``groups`` (one label per pair, e.g. the image) resamples whole groups instead of pairs,
    for observations that are not independent (the same image under several seeds).
    ``runs`` (one label per pair, e.g. the seed; needs ``groups``) also resamples the runs,
    independently of the groups: each resample's mean is over the cells of the drawn runs
    and the drawn groups, so training randomness widens the interval as much as it should.
    """
    if runs is not None and groups is None:
        raise ValueError("runs= needs groups= (the runs are crossed with the groups)")
    diff, keep = _differences(a, b)
    if diff.size == 0:
        raise ValueError("no pair with both scores")
    rng = np.random.default_rng(seed)
    if runs is not None:
        means = _crossed_means(
            diff, np.asarray(runs).ravel()[keep], np.asarray(groups).ravel()[keep], rng, n_resamples
        )
    elif groups is None:
        picks = rng.integers(0, diff.size, (n_resamples, diff.size))
        means = diff[picks].mean(axis=1)
    else:
        g = np.asarray(groups).ravel()[keep]
        names, index = np.unique(g, return_inverse=True)
        sums = np.bincount(index, weights=diff, minlength=len(names))
        counts = np.bincount(index, minlength=len(names)).astype(float)
        picks = rng.integers(0, len(names), (n_resamples, len(names)))
        means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return PairedDifference(float(diff.mean()), float(low), float(high), int(diff.size), level)


def _differences(a, b) -> tuple[np.ndarray, np.ndarray]:
    """``b - a`` over the pairs where both are finite, and which pairs those are."""
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired scores must have one shape, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return (b - a)[keep], keep


def _crossed_means(diff, runs, groups, rng, n_resamples: int) -> np.ndarray:
    """Bootstrap means of ``diff`` resampling runs and groups independently.

    With ``S[r, g]`` the sum and ``C[r, g]`` the count of the cells of run r and group g, and
    ``u``, ``v`` how often each run and group was drawn, a resample's mean is
    ``u S v / u C v``: every drawn run paired with every drawn group.
    """
    _, r = np.unique(runs, return_inverse=True)
    _, g = np.unique(groups, return_inverse=True)
    n_r, n_g = r.max() + 1, g.max() + 1
    sums = np.zeros((n_r, n_g))
    counts = np.zeros((n_r, n_g))
    np.add.at(sums, (r, g), diff)
    np.add.at(counts, (r, g), 1.0)
    u = np.stack([np.bincount(p, minlength=n_r) for p in rng.integers(0, n_r, (n_resamples, n_r))])
    v = np.stack([np.bincount(p, minlength=n_g) for p in rng.integers(0, n_g, (n_resamples, n_g))])
    num = np.einsum("br,rg,bg->b", u, sums, v)
    den = np.einsum("br,rg,bg->b", u, counts, v)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = num / den
    return means[np.isfinite(means)]


def paired_t(a: np.ndarray, b: np.ndarray, *, level: float = 0.95) -> PairedDifference:
    """Student-t CI of the mean of ``b - a`` over a few paired observations (NaN pairs dropped).

    For a handful of pairs (5 seeds' final scores) a percentile bootstrap is too narrow: it
    can only draw the values seen and underestimates their spread by ``(n - 1) / n``. The t
    interval, ``mean ± t(n - 1) sd / sqrt(n)``, is the honest one there.
    """
    from scipy import stats

    diff, _ = _differences(a, b)
    if diff.size < 2:
        raise ValueError("a t interval needs at least 2 pairs")
    half = stats.t.ppf((1 + level) / 2, diff.size - 1) * diff.std(ddof=1) / np.sqrt(diff.size)
    mean = float(diff.mean())
    return PairedDifference(mean, mean - float(half), mean + float(half), int(diff.size), level)
