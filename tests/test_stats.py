"""bnbook.stats: paired differences over seeds and the verdicts the prose draws from them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnbook.stats import paired, verdict


def test_paired_difference_against_a_hand_computation() -> None:
    a, b = [0.90, 0.92, 0.95, 0.91, 0.93], [0.88, 0.91, 0.92, 0.90, 0.90]
    d = np.array(a) - np.array(b)  # 0.02, 0.01, 0.03, 0.01, 0.03
    p = paired(a, b)
    se = d.std(ddof=1) / math.sqrt(5)
    assert p.mean == pytest.approx(0.02) and p.se == pytest.approx(se) and (p.n, p.n_pos) == (5, 5)
    assert (p.lo, p.hi) == pytest.approx((0.02 - 2.7764 * se, 0.02 + 2.7764 * se), rel=1e-4)  # t(0.975, 4)
    assert p.text() == f"+0.020 ± {se:.3f} (95%: {p.lo:+.3f} to {p.hi:+.3f})"


def test_verdicts_follow_the_interval() -> None:
    a, b = [0.90, 0.92, 0.95, 0.91, 0.93], [0.88, 0.91, 0.92, 0.90, 0.90]
    assert verdict(paired(a, b)) == "higher" and verdict(paired(b, a)) == "lower"
    assert verdict(paired([1.0, 2.0, 3.0], [2.0, 1.0, 3.0])) == "about the same"
    assert verdict(paired(a, b), "better", "worse") == "better"


def test_diverged_seeds_are_left_out() -> None:
    p = paired([1.0, float("nan"), 3.0, 2.0], [0.5, 0.2, 2.0, 1.0])
    assert p.n == 3 and p.mean == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    one = paired([1.0, float("nan")], [0.0, 0.0])
    assert one.n == 1 and math.isnan(one.se) and verdict(one) == "about the same"


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="same length"):
        paired([1.0, 2.0], [1.0])
