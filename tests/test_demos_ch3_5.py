"""Tests of the experiment helpers of chapters 3-5 (bnbook.demos.scale_shift, running_stats, gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnbook import scratch
from bnbook.demos import gradients, running_stats, scale_shift


def test_tangent_radius_matches_the_sigmoid() -> None:
    r = scale_shift.tangent_radius(0.1)
    sig = 1.0 / (1.0 + np.exp(-r))
    assert (sig - 0.5) / (r / 4.0) == pytest.approx(0.9, abs=1e-9)
    with pytest.raises(ValueError):
        scale_shift.tangent_radius(1.5)


def test_identity_gap_shrinks_like_one_over_sqrt_m() -> None:
    gaps = scale_shift.identity_gap([16, 256], n_batches=300, seed=0)
    rms = {m: np.sqrt(np.mean(g[:, 1] ** 2)) for m, g in gaps.items()}
    assert 3.0 < rms[16] / rms[256] < 5.0  # sqrt(256 / 16) = 4


def test_identity_gap_with_population_gamma_beta_is_sqrt_one_and_a_half_over_m() -> None:
    pop = scale_shift.identity_gap([16, 64], n_batches=400, seed=1, fit="population")
    fitted = scale_shift.identity_gap([16, 64], n_batches=400, seed=1, fit="batch")
    for m in (16, 64):
        rms_pop = np.sqrt(np.mean(pop[m][:, 1] ** 2))
        rms_fit = np.sqrt(np.mean(fitted[m][:, 1] ** 2))
        assert rms_pop == pytest.approx(np.sqrt(1.5 / m), rel=0.08)
        assert 1.2 < rms_fit / rms_pop < 1.6  # the fitting batch adds its own noise: about sqrt(2)
    with pytest.raises(ValueError):
        scale_shift.identity_gap([16], fit="running")


@pytest.mark.parametrize("momentum", [0.1, 0.01])
def test_debias_running_stats_is_the_weighted_average_of_the_batches(momentum: float) -> None:
    rng = np.random.default_rng(0)
    batches = rng.normal(3.0, 0.2, size=(40, 16, 2))
    layer = torch.nn.BatchNorm1d(2, momentum=momentum, dtype=torch.float64)
    for b in batches:
        layer(torch.from_numpy(b))
    running_stats.debias_running_stats(torch.nn.Sequential(layer))
    weights = momentum * (1.0 - momentum) ** np.arange(len(batches))[::-1]  # newest batch weighs most
    weights /= weights.sum()
    mean = (weights[:, None] * batches.mean(axis=1)).sum(axis=0)
    var = (weights[:, None] * batches.var(axis=1, ddof=1)).sum(axis=0)
    np.testing.assert_allclose(layer.running_mean.numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(layer.running_var.numpy(), var, rtol=1e-10)


def test_grade_backward_passes_the_reference_and_fails_a_wrong_gradient() -> None:
    def reference(dy, x, gamma, eps):
        _, cache = scratch.batch_norm_forward(x, gamma, np.zeros_like(gamma), eps)
        return scratch.batch_norm_backward(dy, cache)

    def direct_path_only(dy, x, gamma, eps):  # forgets the paths through the statistics
        dx, dgamma, dbeta = reference(dy, x, gamma, eps)
        ax = (0, *range(2, x.ndim))
        s = np.sqrt(x.var(ax, keepdims=True) + eps)
        return dy * gamma.reshape((1, -1) + (1,) * (x.ndim - 2)) / s, dgamma, dbeta

    assert all(c.error < c.bound for c in gradients.grade_backward(reference))
    bad = gradients.grade_backward(direct_path_only)
    assert not any(c.error < c.bound for c in bad)
    assert "NO" in gradients.checks_table(bad)


def test_affine_control_pairs_the_same_seeds_with_and_without_gamma_beta() -> None:
    runs = scale_shift.affine_control([0, 1], lr=1.0, steps=20, sizes=(64, 16, 10))
    assert set(runs) == {True, False}
    for r in runs.values():
        assert r.shape == (2, 2) and np.isfinite(r).all()
        assert ((r[:, 0] >= 0) & (r[:, 0] <= 1)).all()
    again = scale_shift.affine_control([0], lr=1.0, steps=20, sizes=(64, 16, 10))
    np.testing.assert_array_equal(again[True][0], runs[True][0])  # deterministic per seed
