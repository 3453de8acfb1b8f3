"""bnbook.stats: paired differences over seeds and the verdicts the prose draws from them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnbook.stats import _signed_rank_cdf, paired, paired_ranks, verdict


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


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_signed_rank_distribution_against_enumeration(n: int) -> None:
    signs = np.array(np.meshgrid(*[[0, 1]] * n)).reshape(n, -1)  # every subset of the ranks 1..n
    totals = (np.arange(1, n + 1)[:, None] * signs).sum(0)
    exact = np.array([(totals <= t).mean() for t in range(n * (n + 1) // 2 + 1)])
    np.testing.assert_allclose(_signed_rank_cdf(n), exact, rtol=0, atol=1e-15)


def test_rank_interval_excludes_zero_exactly_when_the_signed_rank_test_rejects() -> None:
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    rejected = 0
    for _ in range(400):
        n = int(rng.integers(6, 25))
        d = rng.normal(rng.normal(0.0, 0.6), 1.0, size=n)
        r = paired_ranks(d, np.zeros(n))
        rejects = wilcoxon(d, method="exact").pvalue <= 0.05
        rejected += rejects
        assert (r.lo > 0 or r.hi < 0) == rejects
        assert r.lo <= r.estimate <= r.hi
    assert 50 < rejected < 350  # both outcomes were exercised


def test_hodges_lehmann_estimate_is_the_median_of_walsh_averages() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=11), rng.normal(size=11)
    d = a - b
    walsh = [(d[i] + d[j]) / 2 for i in range(11) for j in range(i, 11)]
    r = paired_ranks(a, b)
    assert r.estimate == pytest.approx(np.median(walsh)) and r.n == 11 and r.n_pos == int((d > 0).sum())
    shifted = paired_ranks(a + 0.5, b)
    assert (shifted.estimate, shifted.lo, shifted.hi) == pytest.approx(
        (r.estimate + 0.5, r.lo + 0.5, r.hi + 0.5)
    )
    counts = f"{r.n_pos} positive, {11 - r.n_pos} negative, 0 zero"
    assert (
        r.n_neg == 11 - r.n_pos
        and r.text() == f"{r.estimate:+.3f} (95%: {r.lo:+.3f} to {r.hi:+.3f}; {counts})"
    )
    assert r.text(counts=False) == f"{r.estimate:+.3f} (95%: {r.lo:+.3f} to {r.hi:+.3f})"


def test_one_run_that_died_does_not_decide_the_rank_verdict() -> None:
    ours = np.array([0.980, 0.984, 0.973, 0.980, 0.980, 0.980, 0.980, 0.973, 0.978, 0.973])
    theirs = np.array([0.964, 0.955, 0.964, 0.950, 0.944, 0.973, 0.927, 0.960, 0.964, 0.962])
    assert verdict(paired(ours, theirs)) == verdict(paired_ranks(ours, theirs)) == "higher"
    died = theirs.copy()
    died[3] = 0.087  # the same seed ends near chance
    assert verdict(paired(ours, died)) == "about the same"  # one seed rules the mean and the t-interval
    r = paired_ranks(ours, died)
    assert r.verdict == "higher" and r.estimate == pytest.approx(
        paired_ranks(ours, theirs).estimate, abs=0.002
    )


def test_rank_interval_needs_six_pairs() -> None:
    five = paired_ranks([1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5)
    assert (
        five.n_pos == 5 and math.isnan(five.lo) and math.isnan(five.hi) and verdict(five) == "about the same"
    )
    six = paired_ranks([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [0.0] * 6)
    assert six.lo == 1.0 and verdict(six) == "higher"  # T = 21: probability 1/64 on each side
    left_out = paired_ranks([1.0, float("nan"), 2.0, 3.0, 4.0, 5.0, 6.0], [0.0] * 7)
    assert left_out.n == 6 and left_out == six
    empty = paired_ranks([float("nan")], [0.0])
    assert empty.n == 0 and math.isnan(empty.estimate)
    with pytest.raises(ValueError, match="same length"):
        paired_ranks([1.0, 2.0], [1.0])


def test_rank_interval_with_ties_is_conservative_and_counts_zeros() -> None:
    r = paired_ranks([0.5, 0.5, 0.6, 0.5, 0.7, 0.5, 0.5, 0.5], [0.5, 0.4, 0.5, 0.5, 0.5, 0.6, 0.5, 0.5])
    assert (r.n, r.n_pos, r.n_neg) == (8, 3, 1) and r.text().endswith("3 positive, 1 negative, 4 zero)")
    # with no true difference on a grid of values the interval excludes 0 in well under 5% of
    # samples, where the t-interval on the same numbers is at its nominal rate
    rng = np.random.default_rng(2)
    draws = rng.integers(-2, 3, size=(2000, 20)) / 449  # differences of whole test images, many ties
    ranks = np.mean([not (p.lo <= 0 <= p.hi) for p in (paired_ranks(d, np.zeros(20)) for d in draws)])
    t = np.mean([not (p.lo <= 0 <= p.hi) for p in (paired(d, np.zeros(20)) for d in draws)])
    assert 0 < ranks < 0.03 and 0.035 < t < 0.07
