"""Comparisons over seeds: the paired difference and the verdict the prose may draw from it.

Every chapter that compares two settings trains both with the same seeds
(same initial weights where they share them, same mini-batches), so the
honest summary is the mean of the per-seed differences with its standard
error and a 95% Student-t interval. The book's wording rule lives in
:func:`verdict`: "higher" (or "better") only when that interval excludes 0
on the positive side, "lower" when it excludes it on the negative side, and
"about the same" when it contains 0, so that every verdict follows from
the numbers on the same page.

Some outcomes are heavy-tailed: at a large learning rate a network without
normalization can blow up on a few seeds and end near chance. One such seed
rules a mean and widens a t-interval until nothing can be decided, and
whether a given seed blows up can depend on round-off, so the verdict would
change from one CPU to another. :func:`paired_ranks` is the comparison for
such outcomes: the Hodges-Lehmann estimate of the paired shift with the
exact interval of the Wilcoxon signed-rank test, where a run that died
counts as one large difference and not as a number to average.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Paired", "RankPaired", "paired", "paired_ranks", "verdict"]


class Paired(NamedTuple):
    """A paired difference ``a - b`` over seeds.

    Attributes
    ----------
    mean, se : float
        Mean of the differences and its standard error (sample standard
        deviation over :math:`\\sqrt{n}`).
    lo, hi : float
        The 95% interval, ``mean ± t(0.975, n - 1) * se``.
    n : int
        Seeds with a finite difference.
    n_pos : int
        How many of them are positive.
    """

    mean: float
    se: float
    lo: float
    hi: float
    n: int
    n_pos: int

    @property
    def verdict(self) -> str:
        """``"higher"``, ``"lower"`` or ``"about the same"``: :func:`verdict` with its default words."""
        return verdict(self)

    def text(self, digits: int = 3) -> str:
        """``"+0.011 ± 0.003 (95%: +0.003 to +0.019)"`` with ``digits`` decimals."""
        d = digits
        return f"{self.mean:+.{d}f} ± {self.se:.{d}f} (95%: {self.lo:+.{d}f} to {self.hi:+.{d}f})"


def _differences(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> np.ndarray:
    """The finite entries of ``a - b`` for two equal-length 1-D sequences (NaN pairs left out)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D sequences of the same length, got shapes {a.shape} and {b.shape}")
    d = a - b
    return d[np.isfinite(d)]


def paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Paired:
    """The paired difference ``a - b`` of two equal-length 1-D sequences (one entry per seed).

    Seeds where either value is NaN (a diverged run) are left out and not
    counted in ``n``. With fewer than 2 finite pairs the standard error and
    the interval are NaN.

    >>> p = paired([0.9, 0.8, 0.85], [0.7, 0.75, 0.8])
    >>> round(p.mean, 3), p.n, p.n_pos
    (0.1, 3, 3)
    """
    d = _differences(a, b)
    n = int(d.size)
    if n < 2:
        mean = float(d.mean()) if n else math.nan
        return Paired(mean, math.nan, math.nan, math.nan, n, int((d > 0).sum()))
    from scipy.stats import t as student_t

    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(student_t.ppf(0.975, n - 1)) * se
    mean = float(d.mean())
    return Paired(mean, se, mean - half, mean + half, n, int((d > 0).sum()))


class RankPaired(NamedTuple):
    """A paired difference ``a - b`` over seeds, summarized by ranks.

    Attributes
    ----------
    estimate : float
        The Hodges-Lehmann estimate: the median of the ``n (n + 1) / 2``
        Walsh averages ``(d_i + d_j) / 2``, ``i <= j``, of the differences.
    lo, hi : float
        The 95% interval that goes with it: the Walsh averages at the exact
        critical values of the signed-rank statistic. It excludes 0 exactly
        when the exact two-sided Wilcoxon signed-rank test rejects at 5%.
    n : int
        Seeds with a finite difference.
    n_pos, n_neg : int
        How many of them are positive and negative (the rest are exactly 0).
    """

    estimate: float
    lo: float
    hi: float
    n: int
    n_pos: int
    n_neg: int

    @property
    def verdict(self) -> str:
        """``"higher"``, ``"lower"`` or ``"about the same"``: :func:`verdict` with its default words."""
        return verdict(self)

    def text(self, digits: int = 3, counts: bool = True) -> str:
        """``"+0.011 (95%: +0.003 to +0.019; 17 positive, 2 negative, 1 zero)"`` with ``digits`` decimals.

        ``counts=False`` leaves out the signs of the differences: ``"+0.011 (95%: +0.003 to +0.019)"``.
        """
        d = digits
        interval = f"{self.estimate:+.{d}f} (95%: {self.lo:+.{d}f} to {self.hi:+.{d}f}"
        if not counts:
            return interval + ")"
        zero = self.n - self.n_pos - self.n_neg
        return interval + f"; {self.n_pos} positive, {self.n_neg} negative, {zero} zero)"


def _signed_rank_cdf(n: int) -> np.ndarray:
    """``P(T <= t)`` for ``t = 0 .. n(n+1)/2``, T the signed-rank statistic of ``n`` pairs under H0."""
    counts = np.zeros(n * (n + 1) // 2 + 1)
    counts[0] = 1.0
    for r in range(1, n + 1):  # each rank is in the positive set or not, with probability 1/2
        counts[r:] = counts[r:] + counts[:-r].copy()
    return np.cumsum(counts) / 2.0**n


def paired_ranks(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> RankPaired:
    """The paired difference ``a - b`` summarized by ranks, for heavy-tailed outcomes.

    Seeds where either value is NaN are left out, as in :func:`paired`. The
    95% interval needs at least 6 finite pairs (with 5, even five positive
    differences out of five have a two-sided probability of 1/16); with fewer,
    ``lo`` and ``hi`` are NaN and :func:`verdict` says "about the same".

    The exact interval assumes differences without ties or zeros. Accuracies lie on a grid (one
    image is ``1/n``), so many differences tie or are 0, and then the interval is conservative:
    with no true difference it excludes 0 in fewer than 5% of experiments, and "about the same"
    comes more readily than with a t-interval on the same numbers. Where that matters, compare the
    verdict of :func:`paired` as well.

    >>> ours = [0.98, 0.97, 0.98, 0.97, 0.98, 0.98, 0.97]
    >>> theirs = [0.96, 0.96, 0.95, 0.09, 0.96, 0.97, 0.95]  # one run ended near chance
    >>> r = paired_ranks(ours, theirs)
    >>> r.n_pos, r.verdict
    (7, 'higher')
    """
    d = _differences(a, b)
    n = int(d.size)
    n_pos, n_neg = int((d > 0).sum()), int((d < 0).sum())
    if n == 0:
        return RankPaired(math.nan, math.nan, math.nan, 0, 0, 0)
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2.0)
    estimate = float(np.median(walsh))
    # c: the largest t with P(T <= t) <= 2.5%; the test rejects exactly when T <= c or T >= M - c
    below = np.nonzero(_signed_rank_cdf(n) <= 0.025)[0]
    if below.size == 0:
        return RankPaired(estimate, math.nan, math.nan, n, n_pos, n_neg)
    c = int(below[-1])
    return RankPaired(estimate, float(walsh[c]), float(walsh[walsh.size - 1 - c]), n, n_pos, n_neg)


def verdict(
    p: Paired | RankPaired, higher: str = "higher", lower: str = "lower", same: str = "about the same"
) -> str:
    """``higher`` if the 95% interval lies above 0, ``lower`` if below, else ``same``.

    >>> verdict(paired([2.0, 3.0, 4.0], [1.0, 1.5, 2.0]), "better", "worse")
    'better'
    """
    if p.lo > 0:
        return higher
    if p.hi < 0:
        return lower
    return same
