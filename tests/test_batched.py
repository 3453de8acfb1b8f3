"""bnbook.batched: K networks trained as one batched model, checked member by member against torch.nn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnbook.batched import BatchedMLP, evaluate_batched, train_batched

ACT = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU}


def _data(dtype=torch.float32, n=120, d=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def _reference_net(model: BatchedMLP, k: int) -> nn.Sequential:
    """An independent torch.nn.Sequential with member k's initial weights, built layer by layer here."""
    layers = []
    sizes, last = model.sizes, len(model.sizes) - 2
    b = 0
    dtype = model.weights[0].dtype
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        bias = not model.batch_norm or i == last
        lin = nn.Linear(fan_in, fan_out, bias=bias, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(model.weights[i][k].T)
            if bias:
                lin.bias.copy_(model.biases[b][k])
                b += 1
        layers.append(lin)
        if i < last:
            if model.batch_norm:
                layers.append(nn.BatchNorm1d(fan_out, momentum=model.momentum, dtype=dtype))
            layers.append(ACT[model.activation]())
    return nn.Sequential(*layers)


def _train_reference(net, x, y, lr, steps, batch_size, seed):
    """Plain SGD with torch.optim.SGD, drawing each step's batch like train_batched documents."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    losses = []
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses)


CASES = [
    pytest.param(dict(batch_norm=True, activation="sigmoid", init="default"), id="bn-sigmoid-default"),
    pytest.param(dict(batch_norm=False, activation="sigmoid", init="default"), id="plain-sigmoid-default"),
    pytest.param(dict(batch_norm=True, activation="relu", init="kaiming"), id="bn-relu-kaiming"),
    pytest.param(dict(batch_norm=False, activation="tanh", init="xavier"), id="plain-tanh-xavier"),
]


@pytest.mark.parametrize("cfg", CASES)
@pytest.mark.parametrize(
    "dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-10)], ids=["float32", "float64"]
)
def test_each_member_matches_a_network_trained_alone(cfg, dtype, tol) -> None:
    x, y = _data(dtype)
    seeds, lrs = [3, 11, 5], [0.05, 0.3, 1.0]
    model = BatchedMLP([6, 8, 7, 4], seeds=seeds, dtype=dtype, **cfg)
    refs = [_reference_net(model, k) for k in range(3)]
    hist = train_batched(model, x, y, lrs, steps=25, batch_size=10, eval_every=5, x_eval=x, y_eval=y)
    assert hist.loss.shape == (3, 25) and hist.eval_acc.shape == (3, 6)
    np.testing.assert_array_equal(hist.eval_steps, [0, 5, 10, 15, 20, 25])
    for k, net in enumerate(refs):
        ref_loss = _train_reference(net, x, y, lrs[k], 25, 10, seeds[k])
        np.testing.assert_allclose(hist.loss[k], ref_loss, rtol=tol, atol=tol)
        linears = [m for m in net if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            torch.testing.assert_close(model.weights[i][k].T, lin.weight.detach(), rtol=tol, atol=tol)
        norms = [m for m in net if isinstance(m, nn.BatchNorm1d)]
        for i, bn in enumerate(norms):
            torch.testing.assert_close(model.gammas[i][k], bn.weight.detach(), rtol=tol, atol=tol)
            torch.testing.assert_close(model.betas[i][k], bn.bias.detach(), rtol=tol, atol=tol)
            torch.testing.assert_close(model.running_means[i][k], bn.running_mean, rtol=tol, atol=tol)
            torch.testing.assert_close(model.running_vars[i][k], bn.running_var, rtol=tol, atol=tol)
        # final evaluation in eval mode (running statistics) matches the reference's
        net.eval()
        with torch.no_grad():
            acc = (net(x).argmax(1) == y).double().mean().item()
        assert hist.eval_acc[k, -1] == pytest.approx(acc, abs=1e-12)


def test_default_init_is_torch_linear_init() -> None:
    """With init="default", member k starts where torch.manual_seed(seed_k) + nn.Linear layers start."""
    sizes = [6, 9, 5, 3]
    model = BatchedMLP(sizes, seeds=[7, 42], batch_norm=False)
    for k, seed in enumerate([7, 42]):
        torch.manual_seed(seed)
        lins = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        for i, lin in enumerate(lins):
            torch.testing.assert_close(model.weights[i][k].T, lin.weight.detach(), rtol=0, atol=1e-7)
            torch.testing.assert_close(model.biases[i][k], lin.bias.detach(), rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "init,expected_std",
    [("xavier", math.sqrt(2 / (400 + 300))), ("kaiming", math.sqrt(2 / 400)), ("normal", 0.05)],
)
def test_init_schemes_have_their_closed_form_spread(init, expected_std) -> None:
    scale = 0.05 if init == "normal" else 1.0
    model = BatchedMLP(
        [400, 300, 10],
        seeds=[0, 1],
        activation="relu" if init == "kaiming" else "tanh",
        init=init,
        init_scale=scale,
        dtype=torch.float64,
    )
    w = model.weights[0].detach()
    gain = 5 / 3 if init == "xavier" else 1.0  # torch.nn.init.calculate_gain("tanh")
    assert w.std().item() == pytest.approx(gain * expected_std, rel=0.01)
    assert torch.all(model.biases[-1] == 0)


def test_init_scale_multiplies_the_weights() -> None:
    a = BatchedMLP([5, 4, 3], seeds=[1, 2], init="xavier", init_scale=1.0, dtype=torch.float64)
    b = BatchedMLP([5, 4, 3], seeds=[1, 2], init="xavier", init_scale=[1.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(b.weights[0][0], a.weights[0][0])
    torch.testing.assert_close(b.weights[0][1], 10 * a.weights[0][1])


def test_running_statistics_match_torch_batchnorm1d_and_eval_uses_them() -> None:
    torch.manual_seed(0)
    model = BatchedMLP([5, 6, 3], seeds=[0, 1], batch_norm=True, momentum=0.3, dtype=torch.float64)
    bns = [nn.BatchNorm1d(6, momentum=0.3, dtype=torch.float64) for _ in range(2)]
    for _ in range(4):
        x = torch.randn(2, 9, 5, dtype=torch.float64) * 3 + 1
        with torch.no_grad():
            model(x)
            for k in range(2):
                bns[k](x[k] @ model.weights[0][k])
    for k in range(2):
        torch.testing.assert_close(model.running_means[0][k], bns[k].running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model.running_vars[0][k], bns[k].running_var, rtol=1e-12, atol=1e-12)
    # In eval mode each example is normalized with the running statistics: a batch of one works,
    # and an example's output does not depend on its batch mates.
    model.eval()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        full = model(x)
        single = model(x[:, :1])
        ref = torch.cat([model.member(k).eval()(x[k]).unsqueeze(0) for k in range(2)])
    torch.testing.assert_close(full[:, :1], single, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(full, ref, rtol=1e-12, atol=1e-12)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, :1], single)  # training mode uses the batch's statistics


def test_a_diverging_member_leaves_the_others_bit_identical() -> None:
    x, y = _data()
    seeds = [0, 1, 2]

    def go(lrs):
        model = BatchedMLP([6, 8, 8, 4], seeds=seeds, activation="relu", batch_norm=True, init_scale=30.0)
        return model, train_batched(
            model, x, y, lrs, steps=30, batch_size=8, eval_every=10, x_eval=x, y_eval=y
        )

    m_ok, h_ok = go([0.1, 0.2, 0.1])
    m_bad, h_bad = go([0.1, 1e30, 0.1])
    assert h_bad.diverged.tolist() == [False, True, False] and not h_ok.diverged.any()
    assert np.isnan(h_bad.loss[1, -1]) and h_bad.eval_acc[1, -1] == pytest.approx(0.25)
    assert np.isnan(h_bad.eval_loss[1, -1])
    for k in (0, 2):
        np.testing.assert_array_equal(h_bad.loss[k], h_ok.loss[k])
        np.testing.assert_array_equal(h_bad.eval_acc[k], h_ok.eval_acc[k])
        for p_bad, p_ok in zip(m_bad.parameters(), m_ok.parameters(), strict=True):
            assert torch.equal(p_bad[k], p_ok[k])


def test_member_copies_weights_and_mode() -> None:
    model = BatchedMLP([4, 5, 3], seeds=[0, 1], batch_norm=True).eval()
    net = model.member(1)
    assert not net.training
    x = torch.randn(6, 4)
    torch.testing.assert_close(net(x), model(x)[1])


def test_evaluate_batched_reports_chance_for_non_finite_members() -> None:
    model = BatchedMLP([4, 5, 3], seeds=[0, 1])
    with torch.no_grad():
        model.weights[0][1].fill_(float("nan"))
    x, y = torch.randn(9, 4), torch.randint(0, 3, (9,))
    loss, acc = evaluate_batched(model, x, y)
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and acc[1] == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sizes=[4]),
        dict(sizes=[4, 0, 3]),
        dict(seeds=[]),
        dict(activation="gelu"),
        dict(init="orthogonal"),
        dict(init=["default"]),
        dict(init_scale=[1.0, 2.0, 3.0]),
        dict(init_scale=0.0),
        dict(momentum=0.0),
        dict(eps=0.0),
    ],
    ids=lambda kw: next(iter(kw)) + "=" + repr(next(iter(kw.values()))),
)
def test_bad_model_arguments_raise_value_error(kwargs) -> None:
    args = dict(sizes=[4, 5, 3], seeds=[0, 1]) | kwargs
    with pytest.raises(ValueError):
        BatchedMLP(**args)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lrs=[0.1]),
        dict(lrs=-0.1),
        dict(lrs=float("inf")),
        dict(steps=-1),
        dict(batch_size=1),
        dict(seeds=[1]),
        dict(eval_every=-1),
        dict(x_eval=torch.zeros(3, 4)),
    ],
    ids=lambda kw: next(iter(kw)),
)
def test_bad_training_arguments_raise_value_error(kwargs) -> None:
    model = BatchedMLP([4, 5, 3], seeds=[0, 1], batch_norm=True)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    args = dict(lrs=0.1, steps=2, batch_size=4) | kwargs
    with pytest.raises(ValueError):
        train_batched(model, x, y, **args)


def test_bad_input_shapes_raise_value_error() -> None:
    model = BatchedMLP([4, 5, 3], seeds=[0, 1])
    with pytest.raises(ValueError):
        model(torch.zeros(3, 2, 4))
    with pytest.raises(ValueError):
        train_batched(model, torch.zeros(10, 5), torch.zeros(10, dtype=torch.long), 0.1, 1)
    with pytest.raises(ValueError):
        model.member(2)


def _autograd_steps(model: BatchedMLP, x, y, lrs, steps, batch_size):
    """The step train_batched documents, taken by autograd on BatchedMLP.forward: the reference."""
    k = model.k
    gens = [torch.Generator().manual_seed(s) for s in model.seeds]
    lr = torch.tensor(lrs, dtype=model.weights[0].dtype)
    params = list(model.parameters())
    model.train()
    for _ in range(steps):
        idx = torch.stack([torch.randint(0, x.shape[0], (batch_size,), generator=g) for g in gens])
        logits = model(x[idx])
        per = F.cross_entropy(logits.reshape(k * batch_size, -1), y[idx].reshape(-1), reduction="none")
        for p in params:
            p.grad = None
        per.view(k, batch_size).mean(1).sum().backward()
        with torch.no_grad():
            for p in params:
                p.sub_(p.grad * lr.view(-1, *([1] * (p.dim() - 1))))


@pytest.mark.parametrize("cfg", CASES)
def test_the_written_out_step_is_autograds_bit_for_bit_and_needs_no_graph(cfg) -> None:
    """train_batched writes the backward pass out: autograd's numbers, no .grad, and it runs under no_grad."""
    x, y = _data()
    lrs = [0.05, 0.5, 3.0]
    ours = BatchedMLP([6, 8, 7, 4], seeds=[3, 11, 5], **cfg)
    ref = BatchedMLP([6, 8, 7, 4], seeds=[3, 11, 5], **cfg)
    with torch.no_grad():  # autograd cannot train in here; the written-out step can
        train_batched(ours, x, y, lrs, steps=20, batch_size=10)
    _autograd_steps(ref, x, y, lrs, steps=20, batch_size=10)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert all(p.grad is None for p in ours.parameters())


def test_record_is_called_every_record_every_steps_and_collected() -> None:
    x, y = _data()
    model = BatchedMLP([6, 8, 4], seeds=[0, 1], batch_norm=True)
    seen = []

    def record(step, m):
        assert m is model and m.training
        seen.append(step)
        return step, m.weights[0].detach().clone()

    hist = train_batched(model, x, y, 0.1, steps=10, batch_size=8, record=record, record_every=4)
    assert seen == [0, 4, 8] and [r[0] for r in hist.records] == [0, 4, 8]
    assert not torch.equal(hist.records[0][1], hist.records[-1][1])  # recorded while training
    assert train_batched(model, x, y, 0.1, steps=2, batch_size=8).records == []
    with pytest.raises(ValueError):
        train_batched(model, x, y, 0.1, steps=2, batch_size=8, record=record, record_every=0)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_evaluate_some_members_gives_their_numbers_of_the_whole(batch_norm) -> None:
    x, y = _data()
    model = BatchedMLP([6, 8, 8, 4], seeds=[0, 1, 2, 3], batch_norm=batch_norm)
    train_batched(model, x, y, [0.1, 0.5, 1.0, 2.0], steps=15, batch_size=8)
    loss, acc = evaluate_batched(model, x, y)
    some_loss, some_acc = evaluate_batched(model, x, y, members=[3, 1])
    np.testing.assert_array_equal(some_acc, acc[[3, 1]])
    np.testing.assert_array_equal(some_loss, loss[[3, 1]])
    assert model.training
    for bad in ([], [4], [-1]):
        with pytest.raises(ValueError):
            evaluate_batched(model, x, y, members=bad)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
def test_selected_members_train_on_exactly_as_inside_the_whole_model(batch_norm) -> None:
    x, y = _data()
    inits = ["default", "xavier"] * 2
    model = BatchedMLP([6, 8, 8, 4], seeds=[0, 1, 2, 3], batch_norm=batch_norm, init=inits)
    train_batched(model, x, y, [0.1, 0.5, 1.0, 2.0], steps=10, batch_size=8)
    part = model.select([2, 0])
    assert part.seeds == [2, 0] and part.inits == ["default", "default"] and part.training
    for a, b in zip(part.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b[[2, 0]])
    train_batched(model, x, y, [0.1, 0.5, 1.0, 2.0], steps=10, batch_size=8)
    train_batched(part, x, y, [1.0, 0.1], steps=10, batch_size=8)
    for a, b in zip(part.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b[[2, 0]])
    with pytest.raises(ValueError):
        model.select([4])


def test_frozen_parameters_keep_their_values_in_training() -> None:
    """A parameter with requires_grad=False is left alone, as autograd's step would leave it."""
    torch.manual_seed(0)
    model = BatchedMLP([64, 16, 10], seeds=[0, 1], batch_norm=True)
    model.gammas[0].requires_grad_(False)
    frozen = model.gammas[0].detach().clone()
    moving = model.weights[0].detach().clone()
    x, y = torch.randn(100, 64), torch.randint(0, 10, (100,))
    train_batched(model, x, y, lrs=0.5, steps=20, batch_size=16)
    assert torch.equal(model.gammas[0], frozen)
    assert not torch.equal(model.weights[0], moving)
