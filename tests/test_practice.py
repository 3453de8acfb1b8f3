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


@pytest.mark.parametrize("batch_norm", [True, False])
def test_seed_stack_cnn_starts_as_small_cnn_and_gives_its_copies_back(batch_norm: bool) -> None:
    from bnbook.models import small_cnn

    seeds = [0, 5]
    stack = practice.SeedStackCNN(seeds, batch_norm=batch_norm, norm_layer=torch.nn.BatchNorm2d)
    x = torch.rand(2, 6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    out = stack(x)
    assert out.shape == (2, 6, 10)
    for k, seed in enumerate(seeds):
        torch.manual_seed(seed)
        alone = small_cnn(batch_norm=batch_norm, norm_layer=torch.nn.BatchNorm2d)
        torch.testing.assert_close(out[k], alone(x[k]), rtol=1e-5, atol=1e-5)  # training mode
        member = stack.member(k)
        assert member.training
        for (name, a), (_, b) in zip(member.state_dict().items(), alone.state_dict().items(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)  # running stats updated alike
    shared = stack.eval()(x[0])  # one batch for every copy
    torch.testing.assert_close(shared[1], stack.member(1).eval()(x[0]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="member index"):
        stack.member(2)
    with pytest.raises(ValueError, match="shape"):
        stack(torch.zeros(3, 4, 1, 8, 8))


@pytest.mark.parametrize("kind", ["cnn", "cnn-channels-last", "mlp"])
def test_fit_stack_trains_each_copy_as_fit_trains_it_alone(kind: str) -> None:
    from bnbook import training
    from bnbook.batched import BatchedMLP
    from bnbook.data import load_digits
    from bnbook.models import mlp, small_cnn

    data = load_digits(seed=0)
    x, y = torch.from_numpy(data.x_train[:200]), torch.from_numpy(data.y_train[:200])
    x_val, y_val = torch.from_numpy(data.x_test[:100]), torch.from_numpy(data.y_test[:100])
    seeds = [2, 3]
    if kind == "mlp":
        stack = BatchedMLP([64, 16, 10], seeds, activation="relu", batch_norm=True)
    else:
        stack = practice.SeedStackCNN(
            seeds, norm_layer=torch.nn.BatchNorm2d, channels=(4, 8), channels_last=kind.endswith("last")
        )
        x, x_val = x.view(-1, 1, 8, 8), x_val.view(-1, 1, 8, 8)
    seen = []
    history = practice.fit_stack(
        stack,
        x,
        y,
        optimizer=torch.optim.Adam(stack.parameters(), lr=0.01),
        epochs=2,
        batch_size=32,
        x_val=x_val,
        y_val=y_val,
        on_epoch_end=lambda epoch, model: seen.append(epoch),
    )
    assert seen == [1, 2] and history["step_loss"].shape == (2, 12) and history["val_acc"].shape == (2, 2)
    for k, seed in enumerate(seeds):
        torch.manual_seed(seed)
        if kind == "mlp":
            alone = mlp([64, 16, 10], "relu", batch_norm=True, norm_layer=torch.nn.BatchNorm1d)
        else:
            alone = small_cnn(norm_layer=torch.nn.BatchNorm2d, channels=(4, 8))
        ref = training.fit(
            alone,
            x,
            y,
            optimizer=torch.optim.Adam(alone.parameters(), lr=0.01),
            epochs=2,
            batch_size=32,
            device="cpu",
            seed=seed,
            progress=False,
            x_val=x_val,
            y_val=y_val,
        )
        np.testing.assert_allclose(history["step_loss"][k], ref.step_loss, rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(history["val_acc"][k], ref.val_acc)
    np.testing.assert_array_equal(practice.stack_accuracy(stack, x_val, y_val), history["val_acc"][:, -1])
    if kind != "mlp":
        drift = practice.stack_gamma_drift(stack)
        np.testing.assert_allclose(drift[1], practice.gamma_drift(stack.member(1)), rtol=1e-12)
    with pytest.raises(ValueError, match="epochs"):
        practice.fit_stack(
            stack, x, y, optimizer=torch.optim.Adam(stack.parameters()), epochs=0, batch_size=32
        )
