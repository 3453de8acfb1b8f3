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


def test_affine_control_trains_what_one_network_per_seed_trains() -> None:
    import functools

    from bnbook import nn as bnn
    from bnbook.data import load_digits
    from bnbook.models import accuracy, mlp, train_classifier

    sizes, steps = (64, 16, 10), 30
    runs = scale_shift.affine_control([4], lr=1.0, steps=steps, sizes=sizes)
    x, y, x_held, y_held = (torch.from_numpy(a) for a in load_digits(seed=3))
    for affine in (True, False):
        torch.manual_seed(4)
        net = mlp(
            list(sizes),
            "sigmoid",
            batch_norm=True,
            norm_layer=functools.partial(bnn.BatchNorm1d, affine=affine),
        )
        hist = train_classifier(net, x, y, steps=steps, lr=1.0, batch_size=60, seed=4)
        assert runs[affine][0, 0] == pytest.approx(accuracy(net, x_held, y_held), abs=1e-6)
        assert runs[affine][0, 1] == pytest.approx(float(np.mean(hist.loss[-100:])), rel=1e-4)


def test_gamma_beta_frame_and_describe() -> None:
    x_hat = np.random.default_rng(0).standard_normal(5000)
    x_hat = (x_hat - x_hat.mean()) / x_hat.std()
    frame = scale_shift.gamma_beta_frame(x_hat, 2.0, -1.0)
    assert frame["mean"] == pytest.approx(-1.0) and frame["std"] == pytest.approx(2.0)
    assert frame["saturated"] > frame["saturated_ref"]
    text = scale_shift.make_gamma_beta_describe(x_hat)(gamma=2.0, beta=-1.0)
    assert (
        "mean -1.00" in text
        and "standard deviation 2.00" in text
        and f"{100 * frame['saturated']:.1f}%" in text
    )


def test_recalibration_study_grades_several_budgets_along_one_run() -> None:
    from bnbook.data import load_digits

    d = load_digits(seed=0)
    data = {k: torch.from_numpy(getattr(d, k)[:300]) for k in ("x_train", "y_train", "x_test", "y_test")}
    both = running_stats.recalibration_study(data, [1], momenta=(0.1,), steps=(4, 8), batch_size=16)
    for budget in (4, 8):
        alone = running_stats.recalibration_study(data, [1], momenta=(0.1,), steps=budget, batch_size=16)
        assert set(alone) == set(both[budget])
        for key, runs in alone.items():
            np.testing.assert_array_equal(runs, both[budget][key])
    with pytest.raises(ValueError, match="positive"):
        running_stats.recalibration_study(data, [1], steps=(0, 4))


def test_momentum_explorer_frame_draw_and_describe() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    draws = running_stats.explorer_draws([2, 8], 30, 2.0, 4.0, seed=0)
    frame = running_stats.momentum_frame(draws[2], 0.1, 2.0, 4.0)
    traj = running_stats.running_trajectory(draws[2], 0.1)
    assert frame["err_mean"] == pytest.approx(abs(traj.running_mean[-1] - 2.0))
    assert frame["n_above"] == int((traj.batch_var > 16.0).sum())
    text = running_stats.make_momentum_describe(draws, 2.0, 4.0)(momentum=0.1, batch_size=2)
    assert f"running mean is {traj.running_mean[-1]:.2f}" in text
    fig = Figure(figsize=(8, 3.2))
    running_stats.make_momentum_draw(draws, 2.0, 4.0)(fig, momentum=0.1, batch_size=8)
    assert len(fig.axes) == 2 and len(fig.legends) == 1 and fig.get_layout_engine() is None
    assert "momentum 0.1, batch size 8" in fig._suptitle.get_text()
