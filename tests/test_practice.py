"""Tests of the chapter 7 helpers (bnbook.demos.practice) against torch.optim.Adam and closed forms."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from bnbook.demos import practice


def _adam_steps(grads: list[float]) -> list[float]:
    p = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([p], lr=1.0)
    seen = practice.watch_largest_step(opt, [p])
    steps = []
    for g in grads:
        old = p.detach().clone()
        p.grad = torch.tensor([g], dtype=torch.float64)
        opt.step()
        steps.append(abs((p.detach() - old).item()))
    assert seen["largest"] == pytest.approx(max(steps), rel=1e-12)
    return steps


def test_adam_step_factors_against_torch() -> None:
    sparse, worst = practice.adam_step_factors()
    assert sparse == pytest.approx(0.1 / np.sqrt(0.001))  # about 3.16
    t = 5000
    # a lone gradient after t - 1 zero gradients: the step approaches the sparse bound from below
    last = _adam_steps([0.0] * (t - 1) + [1.0])[-1]
    assert 0.97 * sparse < last < sparse
    # a gradient that grows by beta2 / beta1 per step approaches the supremum from below
    biggest = max(_adam_steps([(0.999 / 0.9) ** (i - t) for i in range(t)]))
    assert 0.97 * worst < biggest < worst
    assert biggest > 2 * sparse
    # a constant gradient moves the parameter by the learning rate
    assert _adam_steps([2.5] * 20)[-1] == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="beta"):
        practice.adam_step_factors(0.9, 0.5)


def test_plot_gamma_drift_takes_runs_of_different_lengths() -> None:
    fig, ax = plt.subplots()
    practice.plot_gamma_drift(ax, 10, {0.01: np.ones((2, 4)), 0.001: np.zeros((2, 2))})
    xs = sorted(len(line.get_xdata()) for line in ax.lines)
    assert xs == [2, 4]
    plt.close(fig)


def test_scale_track_follows_the_gamma_output_symmetry() -> None:
    from bnbook.models import small_cnn

    torch.manual_seed(0)
    model = small_cnn(norm_layer=torch.nn.BatchNorm2d).double()
    x = torch.rand(40, 1, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 10, (40,))
    with torch.no_grad():  # give the layers some non-trivial values and statistics
        model.train()
        model(x)
        model[5].weight.uniform_(0.5, 1.5)
        model[5].bias.uniform_(-0.2, 0.2)
    before = practice.scale_track(model, x, y)
    assert model.training  # mode restored
    with torch.no_grad():
        model[5].weight.mul_(2)
        model[5].bias.mul_(2)
        model[9].weight.div_(2)
    after = practice.scale_track(model, x, y)
    # gamma doubles, the output weights halve, logits and loss stay (ReLU and max-pool pass the factor)
    np.testing.assert_allclose(after, before * np.array([2.0, 0.5, 1.0, 1.0]), rtol=1e-10)
    logits = model.eval()(x)
    assert after[3] == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-12)
