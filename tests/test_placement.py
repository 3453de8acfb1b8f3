"""Tests of the chapter 6 experiments (bnbook.demos.placement) against torch and closed forms."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from bnbook.demos import placement as pl

SIZES = (64, 64, 64, 10)


def _types(model: nn.Module) -> list[str]:
    return [type(m).__name__ for m in model]


@pytest.mark.parametrize(
    ("placement", "expected"),
    [
        ("before", ["Linear", "BatchNorm1d", "Tanh"] * 2 + ["Linear"]),
        ("after", ["Linear", "Tanh", "BatchNorm1d"] * 2 + ["Linear"]),
        ("none", ["Linear", "Tanh"] * 2 + ["Linear"]),
    ],
    ids=["before", "after", "none"],
)
def test_placement_mlp_order(placement: str, expected: list[str]) -> None:
    assert _types(pl.placement_mlp(SIZES, placement)) == expected


def test_parameter_counts_match_closed_form() -> None:
    # two hidden Linear 64x64 layers, two BN layers with gamma and beta, a 64 -> 10 head with bias
    no_bias = 2 * 64 * 64 + 2 * (2 * 64) + (64 * 10 + 10)
    assert pl.count_parameters(pl.placement_mlp(SIZES, "before")) == no_bias
    assert pl.count_parameters(pl.placement_mlp(SIZES, "before", bias=True)) == no_bias + 2 * 64
    assert pl.count_parameters(pl.placement_mlp(SIZES, "after")) == no_bias + 2 * 64
    # bias=None means: no bias only where BN follows the Linear directly
    assert pl.placement_mlp(SIZES, "before")[0].bias is None
    assert pl.placement_mlp(SIZES, "after")[0].bias is not None


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="placement"):
        pl.placement_mlp(SIZES, "middle")
    with pytest.raises(ValueError, match="sizes"):
        pl.placement_mlp([64], "before")
    with pytest.raises(ValueError, match="threshold"):
        pl.saturated_fraction(np.zeros(3), threshold=0.0)


def test_saturation_threshold_is_where_tanh_slope_is_one_tenth() -> None:
    z = torch.tensor([pl.SATURATION_Z], dtype=torch.float64, requires_grad=True)
    torch.tanh(z).backward()
    assert z.grad.item() == pytest.approx(0.1, abs=1e-12)
    assert pl.SATURATION_Z == pytest.approx(1.818, abs=1e-3)


def test_saturated_fraction_of_a_standard_normal(rng: np.random.Generator) -> None:
    z = rng.standard_normal(400_000)
    expected = math.erfc(pl.SATURATION_Z / math.sqrt(2))  # P(|Z| > t) for Z ~ N(0, 1)
    assert pl.saturated_fraction(z) == pytest.approx(expected, abs=2e-3)
    assert pl.saturated_fraction([z[:10], z[10:]]) == pl.saturated_fraction(z)


def test_activation_inputs_match_a_manual_forward() -> None:
    torch.manual_seed(0)
    model = pl.placement_mlp(SIZES, "before").double()
    x = torch.rand(50, 64, dtype=torch.float64)
    lin, bn = model[0], model[1]
    with torch.no_grad():
        h = lin(x)
        manual_batch = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        manual_eval = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    model.train()
    z_batch = pl.activation_inputs(model, x, batch_stats=True)
    assert len(z_batch) == 2 and z_batch[0].shape == (50, 64)
    np.testing.assert_allclose(z_batch[0], manual_batch.numpy(), atol=1e-12)
    assert torch.equal(bn.running_mean, torch.zeros(64, dtype=torch.float64))  # the copy ran, not the model
    assert model.training
    z_eval = pl.activation_inputs(model, x, batch_stats=False)
    np.testing.assert_allclose(z_eval[0], manual_eval.numpy(), atol=1e-12)
    assert model.training


def _loss_at_bias(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, k: int, h: float) -> float:
    with torch.no_grad():
        model[0].bias[k] += h
        loss = nn.functional.cross_entropy(model(x), y).item()
        model[0].bias[k] -= h
    return loss


@pytest.mark.parametrize("placement", ["before", "none"])
def test_bias_gradient_against_finite_differences(placement: str) -> None:
    torch.manual_seed(1)
    model = pl.placement_mlp(SIZES, placement, bias=True).double()
    x, y = torch.rand(32, 64, dtype=torch.float64), torch.randint(0, 10, (32,))
    if placement == "before":  # give the eval mode running statistics that differ from the batch's
        model.train()
        with torch.no_grad():
            model(torch.rand(256, 64, dtype=torch.float64) * 2)
    for train_mode in (True, False):
        model.train(train_mode)
        h = 1e-6
        fd = max(
            abs(_loss_at_bias(model, x, y, k, h) - _loss_at_bias(model, x, y, k, -h)) / (2 * h)
            for k in range(64)
        )
        got = pl.bias_gradient(model, x, y, train_mode)
        assert model.training == train_mode
        if placement == "before" and train_mode:
            assert got < 1e-12 and fd < 1e-8
        else:
            assert got > 1e-4
            assert got == pytest.approx(fd, rel=1e-5)


def test_bias_pair_trains_the_same_network() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(200, 64, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (200,), generator=gen)
    steps = 30
    pair = pl.train_bias_pair(seed=5, lr=0.3, data=(x[:150], y[:150], x[150:], y[150:]), steps=steps)
    assert pair.logit_diff_batch < 1e-10  # batch statistics: the bias cancels exactly
    assert pair.max_bias_change < 1e-12
    # Running statistics: the running mean absorbs the bias only as fast as it forgets its initial 0,
    # so after t steps the two running means differ by b * (1 - (1 - momentum) ** t).
    bn0, bn1, lin1 = pair.model_without[1], pair.model_with[1], pair.model_with[0]
    expected = lin1.bias.detach() * (1 - (1 - bn1.momentum) ** steps)
    np.testing.assert_allclose((bn1.running_mean - bn0.running_mean).numpy(), expected.numpy(), atol=1e-10)
    assert pair.logit_diff_eval > 1e-4


def test_summarize_means_and_spreads() -> None:
    def run(placement: str, acc: float) -> pl.PlacementRun:
        z = [np.array([[0.0, 3.0]])]
        return pl.PlacementRun(placement, 0.1, 0, np.arange(2), np.ones(2), np.array([0.1, acc]), z, z)

    table = pl.summarize([run("before", a) for a in (0.90, 0.94, 0.98)] + [run("after", 0.5)])
    row = table["before", 0.1]
    assert row["acc_mean"] == pytest.approx(0.94)
    assert row["acc_std"] == pytest.approx(0.04)
    assert (row["acc_min"], row["acc_max"]) == (0.90, 0.98)
    assert row["sat_final"] == 0.5
    assert list(table) == [("before", 0.1), ("after", 0.1)]


def test_figures_draw_what_the_chapter_reads() -> None:
    import matplotlib.pyplot as plt

    z_init = [np.array([[0.0, 3.0, -0.5, 0.2]])]  # one of four inputs beyond the threshold
    z_final = [np.array([[2.5, 3.0, -2.0, 0.1]])]  # three of four
    runs = [
        pl.PlacementRun(
            p,
            lr,
            s,
            np.arange(3) * 10,
            np.array([2.0, 1.0, 0.5]),
            np.array([0.1, 0.9, 0.95]),
            z_init,
            z_final,
        )
        for p in ("before", "after")
        for lr in (0.1, 1.0)
        for s in (0, 1)
    ]
    fig = pl.plot_curves(runs, [0.1, 1.0])
    assert len(fig.axes) == 4
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [2.0, 1.0, 0.5])  # mean over seeds
    plt.close(fig)
    fig = pl.plot_histograms(runs, lr=1.0)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert labels == ["BN before tanh (75.0% saturated)", "BN after tanh (75.0% saturated)"]
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == "BN before tanh (25.0% saturated)"
    plt.close(fig)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("placement", ["before", "after", "none"])
def test_stack_trains_each_member_as_train_classifier_does(placement: str, activation: str) -> None:
    from bnbook.models import train_classifier

    gen = torch.Generator().manual_seed(4)
    x = torch.rand(120, 64, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (120,), generator=gen)
    seeds, lrs = [3, 4, 5], [0.1, 0.5, 0.5]
    nets = []
    for s in seeds:
        torch.manual_seed(s)
        nets.append(pl.placement_mlp(SIZES, placement, activation=activation).double())
    stack = pl.PlacementStack([copy.deepcopy(n) for n in nets])
    assert stack.placement == placement and stack.activation == activation
    pl.train_stack(stack, x, y, lrs, seeds, steps=15, batch_size=16)
    for net, got, lr, s in zip(nets, stack.unstack(), lrs, seeds, strict=True):
        train_classifier(net, x, y, steps=15, lr=lr, batch_size=16, seed=s)
        for (name, a), b in zip(net.state_dict().items(), got.state_dict().values(), strict=True):
            assert torch.allclose(a.double(), b.double(), atol=1e-12), name


def test_excess_kurtosis_closed_forms(rng: np.random.Generator) -> None:
    # two values +-1 with equal weight: m4 = m2 = 1, so the excess kurtosis is 1 - 3 = -2
    z = np.array([[1.0, 5.0], [-1.0, 3.0]] * 4)
    np.testing.assert_allclose(pl.excess_kurtosis(z), [-2.0, -2.0])
    big = np.column_stack([rng.standard_normal(400_000), rng.uniform(-1, 1, 400_000)])
    np.testing.assert_allclose(pl.excess_kurtosis(big), [0.0, -1.2], atol=0.03)
    with pytest.raises(ValueError, match="constant"):
        pl.excess_kurtosis(np.ones((5, 2)))
    with pytest.raises(ValueError, match="shape"):
        pl.excess_kurtosis(np.ones(5))


def test_run_names_have_a_book_wide_look() -> None:
    from bnbook.plots import series

    assert pl.run_name("none", "lsuv") == "none+lsuv"
    assert pl.STYLE["before"]["color"] == series("bn")["color"]
    assert pl.STYLE["none+lsuv"]["marker"] == series("lsuv")["marker"]


def test_relu_networks_and_bad_activation() -> None:
    net = pl.placement_mlp(SIZES, "after", activation="relu")
    assert _types(net) == ["Linear", "ReLU", "BatchNorm1d"] * 2 + ["Linear"]
    with pytest.raises(ValueError, match="activation"):
        pl.placement_mlp(SIZES, "before", activation="gelu")


def test_fixed_norm_holds_the_hidden_weight_norms_and_changes_no_function() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(96, 64, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (96,), generator=gen)
    data = (x, y, x[:40], y[:40])
    runs = pl.train_placements(
        ["before"], [0.5], [1, 2], data, steps=12, batch_size=16, record_every=6, fixed_norm=True
    )
    free = pl.train_placements(["before"], [0.5], [1, 2], data, steps=12, batch_size=16, record_every=6)
    for run, other in zip(runs, free, strict=True):
        start, end = run.weight_norms
        np.testing.assert_allclose(end, start, rtol=1e-12)  # held
        assert np.all(other.weight_norms[1] > other.weight_norms[0])  # free norms only grow
        np.testing.assert_allclose(start, other.weight_norms[0])
    # with batch norm right after each Linear, rescaling W changes nothing in training mode (up to eps)
    net = copy.deepcopy(free[0].model).train()
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        for m in scaled:
            if isinstance(m, nn.Linear) and m is not scaled[-1]:
                m.weight.mul_(5)
        assert (net(x) - scaled(x)).abs().max().item() < 1e-3


@pytest.mark.parametrize("placement", ["before", "after"])
def test_stack_in_eval_mode_gives_each_members_numbers_bit_for_bit(placement: str) -> None:
    """Without autograd, eval-mode batch norm runs in the stack's own layout: the layer's numbers exactly."""
    torch.manual_seed(0)
    nets = [pl.placement_mlp([8, 6, 6, 3], placement).double() for _ in range(3)]
    stack = pl.PlacementStack(nets)
    x = torch.randn(40, 8, dtype=torch.float64)
    pl.train_stack(stack, x, torch.randint(0, 3, (40,)), [0.5, 1.0, 2.0], [1, 2, 3], steps=5, batch_size=8)
    stack.eval()
    xs = torch.randn(10, 8, dtype=torch.float64)
    with torch.no_grad():
        fast = stack(xs)
    with torch.enable_grad():  # the layer's own path, through the transposed layout
        slow = stack(xs).detach()
    assert torch.equal(fast, slow)
    for k, net in enumerate(stack.unstack()):
        with torch.no_grad():
            torch.testing.assert_close(fast[k], net.eval()(xs), rtol=1e-12, atol=1e-12)
