"""Comparisons over seeds: the paired difference and the verdict the prose may draw from it.

Every chapter that compares two settings trains both with the same seeds
(same initial weights where they share them, same mini-batches), so the
honest summary is the mean of the per-seed differences with its standard
error and a 95% Student-t interval. The book's wording rule lives in
:func:`verdict`: "higher" (or "better") only when that interval excludes 0
on the positive side, "lower" when it excludes it on the negative side, and
"about the same" when it contains 0, so that every verdict follows from
the numbers on the same page.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["Paired", "paired", "verdict"]


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


def paired(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Paired:
    """The paired difference ``a - b`` of two equal-length 1-D sequences (one entry per seed).

    Seeds where either value is NaN (a diverged run) are left out and not
    counted in ``n``. With fewer than 2 finite pairs the standard error and
    the interval are NaN.

    >>> p = paired([0.9, 0.8, 0.85], [0.7, 0.75, 0.8])
    >>> round(p.mean, 3), p.n, p.n_pos
    (0.1, 3, 3)
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"need two 1-D sequences of the same length, got shapes {a.shape} and {b.shape}")
    d = a - b
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n < 2:
        mean = float(d.mean()) if n else math.nan
        return Paired(mean, math.nan, math.nan, math.nan, n, int((d > 0).sum()))
    from scipy.stats import t as student_t

    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(student_t.ppf(0.975, n - 1)) * se
    mean = float(d.mean())
    return Paired(mean, se, mean - half, mean + half, n, int((d > 0).sum()))


def verdict(p: Paired, higher: str = "higher", lower: str = "lower", same: str = "about the same") -> str:
    """``higher`` if the 95% interval lies above 0, ``lower`` if below, else ``same``.

    >>> verdict(paired([2.0, 3.0, 4.0], [1.0, 1.5, 2.0]), "better", "worse")
    'better'
    """
    if p.lo > 0:
        return higher
    if p.hi < 0:
        return lower
    return same
