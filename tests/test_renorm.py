"""Batch Renormalization and ghost batch norm, against torch's BatchNorm, finite differences and NumPy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from bnbook import nn as bnn
from bnbook import scratch
from bnbook.gradcheck import numerical_gradient

SHAPES = {
    "1d": (bnn.BatchRenorm1d, nn.BatchNorm1d, (8, 3)),
    "2d": (bnn.BatchRenorm2d, nn.BatchNorm2d, (4, 3, 3, 2)),
}


def _inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.7


def _set_params(layer, seed=1):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(3, generator=gen, dtype=torch.float64) + 0.5)
        layer.bias.copy_(torch.randn(3, generator=gen, dtype=torch.float64))
    return layer


@pytest.mark.parametrize("kind", SHAPES)
def test_limits_one_and_zero_train_like_batch_norm(kind) -> None:
    renorm_cls, bn_cls, shape = SHAPES[kind]
    results = []
    for cls in (bn_cls, renorm_cls):
        layer = _set_params(cls(3, dtype=torch.float64))
        x = _inputs(shape).requires_grad_()
        y = layer(x)
        (y.sin() * y).sum().backward()
        results.append((y.detach(), x.grad, layer.weight.grad, layer.bias.grad))
    for ref, ours in zip(*results, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def _clipped_layer(cls, r_max=1.5, d_max=0.5):
    """Running statistics far from the batch's, so both corrections sit at their limits."""
    layer = _set_params(cls(3, r_max=r_max, d_max=d_max, dtype=torch.float64))
    with torch.no_grad():
        layer.running_mean.fill_(-5.0)
        layer.running_var.fill_(50.0)
    layer.momentum = 0.0  # gradcheck calls forward many times; keep the running statistics still
    return layer


@pytest.mark.parametrize("kind", SHAPES)
def test_gradcheck_where_corrections_are_constant(kind) -> None:
    renorm_cls, _, shape = SHAPES[kind]
    layer = _clipped_layer(renorm_cls)
    x = _inputs(shape).requires_grad_()

    def fn(xx, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (xx,))

    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()
    assert gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_scratch_kernels_against_torch_and_finite_differences() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 2.0, size=(6, 3, 2))
    gamma, beta = rng.uniform(0.5, 1.5, 3), rng.normal(size=3)
    rm, rv = np.array([0.3, -0.2, 0.4]), np.array([3.0, 5.0, 2.5])  # r and d inside their limits
    dy = rng.normal(size=x.shape)
    y, cache = scratch.batch_renorm_forward(x, rm, rv, gamma, beta, 1e-5, r_max=3.0, d_max=5.0)
    assert np.all(np.abs(cache.r - 1) > 1e-3) and np.all(cache.d != 0)  # the corrections act
    dx, dgamma, dbeta = scratch.batch_renorm_backward(dy, cache)
    # torch, with r and d detached as the paper prescribes
    layer = bnn.BatchRenorm1d(3, r_max=3.0, d_max=5.0, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(gamma))
        layer.bias.copy_(torch.from_numpy(beta))
        layer.running_mean.copy_(torch.from_numpy(rm))
        layer.running_var.copy_(torch.from_numpy(rv))
    xt = torch.from_numpy(x).requires_grad_()
    yt = layer(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, layer.weight.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(dbeta, layer.bias.grad.numpy(), rtol=1e-10)
    new_mean, new_var = scratch.batch_renorm_running_update(rm, rv, cache, 0.01, 1e-5)
    np.testing.assert_allclose(layer.running_mean.numpy(), new_mean, rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.numpy(), new_var, rtol=1e-12)
    # finite differences where r and d are clipped, so that they are truly constant
    rm_far, rv_far = np.full(3, -5.0), np.full(3, 50.0)

    def forward(xx):
        return scratch.batch_renorm_forward(xx, rm_far, rv_far, gamma, beta, 1e-5, 1.5, 0.5)[0]

    _, far = scratch.batch_renorm_forward(x, rm_far, rv_far, gamma, beta, 1e-5, 1.5, 0.5)
    assert np.allclose(far.r, 1 / 1.5) and np.allclose(np.abs(far.d), 0.5)
    dx_far, _, _ = scratch.batch_renorm_backward(dy, far)
    num = numerical_gradient(forward, x, dy)
    np.testing.assert_allclose(dx_far, num, rtol=1e-6, atol=1e-8)


def test_unlimited_corrections_make_training_equal_eval() -> None:
    """With limits that never clip, r and d undo the batch statistics: x_hat = (x - mu) / sigma."""
    layer = _set_params(bnn.BatchRenorm2d(3, r_max=1e6, d_max=1e6, momentum=0.0, dtype=torch.float64))
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([0.2, -0.1, 0.5], dtype=torch.float64))
        layer.running_var.copy_(torch.tensor([1.5, 0.7, 2.0], dtype=torch.float64))
    x = _inputs((4, 3, 3, 2))
    train_out = layer(x)
    torch.testing.assert_close(train_out, layer.eval()(x), rtol=1e-10, atol=1e-10)


def test_train_and_eval_agree_once_running_statistics_converge() -> None:
    gen = torch.Generator().manual_seed(5)
    layer = bnn.BatchRenorm1d(3, momentum=0.05, r_max=3.0, d_max=5.0, dtype=torch.float64)
    big = torch.randn(4096, 3, generator=gen, dtype=torch.float64) * torch.tensor([2.0, 0.5, 1.0]) + 3.0
    for _ in range(600):
        layer(big)
    y_train = layer(big)
    y_eval = layer.eval()(big)
    assert (y_train - y_eval).abs().max() < 1e-6


@pytest.mark.parametrize("kind", SHAPES)
def test_state_dict_like_batch_norm(kind) -> None:
    renorm_cls, bn_cls, shape = SHAPES[kind]
    layer = renorm_cls(3, r_max=2.0, d_max=1.0)
    layer(_inputs(shape).float())
    bn = bn_cls(3)
    assert list(layer.state_dict()) == list(bn.state_dict())
    bn.load_state_dict(layer.state_dict())
    x = _inputs(shape).float()
    torch.testing.assert_close(bn.eval()(x), layer.eval()(x))
    fresh = renorm_cls(3)
    fresh.load_state_dict(bn.state_dict())
    torch.testing.assert_close(fresh.eval()(x), layer(x))


@pytest.mark.parametrize(
    ("r_max", "d_max"),
    [(0.5, 0.0), (1.0, -0.1), (float("nan"), 0.0), (float("inf"), 0.0), ("3", 1.0), (True, 0)],
)
def test_bad_limits_in_constructor(r_max, d_max) -> None:
    with pytest.raises(ValueError, match="r_max|d_max"):
        bnn.BatchRenorm1d(3, r_max=r_max, d_max=d_max)


@pytest.mark.parametrize("value", [0.99, -1.0, float("nan"), "2", None])
def test_bad_limits_set_later_change_nothing(value) -> None:
    layer = bnn.BatchRenorm1d(3, r_max=2.0, d_max=1.0)
    with pytest.raises(ValueError, match="r_max"):
        layer.r_max = value
    with pytest.raises(ValueError, match="d_max"):
        layer.d_max = -1.0 if value == 0.99 else value
    assert (layer.r_max, layer.d_max) == (2.0, 1.0)
    layer.r_max, layer.d_max = 3.0, 5.0  # what a schedule does between steps
    assert (layer.r_max, layer.d_max) == (3.0, 5.0)


def test_refused_input_changes_nothing() -> None:
    layer = bnn.BatchRenorm1d(3)
    before = copy.deepcopy(layer.state_dict())
    for bad in (torch.ones(4, 3, dtype=torch.long), torch.ones(4, 5), torch.ones(1, 3), torch.ones(4)):
        with pytest.raises(ValueError):
            layer(bad)
    for key, value in before.items():
        assert torch.equal(layer.state_dict()[key], value)


def test_schedule() -> None:
    assert bnn.renorm_limits(0) == (1.0, 0.0) == bnn.renorm_limits(5000)
    r, d = bnn.renorm_limits(15000)
    assert r == pytest.approx(1 + 2 * 10000 / 35000) and d == pytest.approx(5 * 10000 / 20000)
    assert bnn.renorm_limits(10**6) == (3.0, 5.0)
    small = bnn.renorm_limits(50, warmup=10, r_max_at=90, d_max_at=60)
    assert small == (pytest.approx(2.0), pytest.approx(4.0))
    with pytest.raises(ValueError):
        bnn.renorm_limits(5, warmup=10, r_max_at=5)


# --- ghost batch norm ------------------------------------------------------------------------------
def test_ghost_with_one_piece_is_batch_norm() -> None:
    ref = _set_params(nn.BatchNorm1d(3, dtype=torch.float64))
    ghost = bnn.GhostBatchNorm(copy.deepcopy(ref), ghost_size=16)
    for layer in (ref, ghost):
        x = _inputs((16, 3)).requires_grad_()
        layer(x).pow(3).sum().backward()
        layer.grads = (x.grad,)
    torch.testing.assert_close(ghost.grads[0], ref.grads[0], rtol=0, atol=0)
    for key, value in ref.state_dict().items():
        torch.testing.assert_close(ghost.norm.state_dict()[key], value, rtol=0, atol=0)


def test_ghost_pieces_are_separate_batches() -> None:
    ref = _set_params(bnn.BatchNorm2d(3, dtype=torch.float64))
    ghost = bnn.GhostBatchNorm(copy.deepcopy(ref), ghost_size=4)
    x = _inputs((13, 3, 2, 2))  # pieces of 4, 4 and 5 (the single last sample joins the previous piece)
    expected = torch.cat([ref(x[:4]), ref(x[4:8]), ref(x[8:])])
    torch.testing.assert_close(ghost(x), expected, rtol=0, atol=0)
    assert int(ghost.norm.num_batches_tracked) == 3
    ghost.eval()
    ref.eval()
    torch.testing.assert_close(ghost(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("bad", [1, 0, 2.5, True])
def test_ghost_bad_arguments(bad) -> None:
    with pytest.raises(ValueError, match="ghost_size"):
        bnn.GhostBatchNorm(nn.BatchNorm1d(3), bad)
    with pytest.raises(ValueError, match="batch-norm"):
        bnn.GhostBatchNorm(nn.LayerNorm(3), 4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("ghost", [False, True], ids=["renorm", "ghost-renorm"])
def test_jit_trace_of_renorm_matches_eager_and_saves(ghost) -> None:
    """A traced renorm layer (alone, or in ghost batches) replays eager training: outputs, gradients,
    running buffers, and a save and load (a Python Function in the trace could not be saved)."""
    import io

    def make():
        torch.manual_seed(0)
        layer = bnn.BatchRenorm1d(4, momentum=0.2, r_max=1.5, d_max=0.5)
        with torch.no_grad():
            layer.running_mean.uniform_(-1, 1)
            layer.running_var.uniform_(0.5, 2)
            layer.weight.uniform_(0.5, 2)
            layer.bias.uniform_(-1, 1)
        return bnn.GhostBatchNorm(layer, 6) if ghost else layer

    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(12, 4, generator=gen) * 2 + 1
    x = (torch.randn(12, 4, generator=gen) * 3 - 1).requires_grad_()
    dy = torch.randn(12, 4, generator=gen)
    traced_layer, eager = make(), make()
    traced = torch.jit.trace(traced_layer, x0, check_trace=False)
    eager(x0)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    results = []
    for run in (traced, eager):
        xi = x.detach().clone().requires_grad_()
        y = run(xi)
        y.backward(dy)
        results.append((y.detach(), xi.grad))
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    for (name, got), ref in zip(traced_layer.state_dict().items(), eager.state_dict().values(), strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6, msg=name)
    assert loaded(x.detach()).shape == x.shape
