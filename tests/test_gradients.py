"""Gradient checks: finite differences for the NumPy kernels, ``torch.autograd.gradcheck`` for nn.

Every analytic backward pass is compared against centred differences in
float64, with a stated tolerance (relative error below 1e-7). The checker
itself is first tested against closed-form derivatives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from bnbook import scratch
from bnbook.gradcheck import numerical_gradient, relative_error
from bnbook.nn import BatchNormFunction

#: Largest accepted relative error between analytic and numerical gradients (float64).
REL_TOL = 1e-7
EPS = 1e-5

SHAPES = {"2D": (6, 3), "3D": (3, 2, 4), "4D": (2, 3, 2, 3)}


def _data(shape, rng):
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    x = rng.uniform(-2.0, 2.0, c).reshape(view) + rng.uniform(0.5, 2.0, c).reshape(view) * rng.normal(
        size=shape
    )
    return x, rng.normal(size=shape), rng.uniform(0.5, 2.0, c), rng.normal(size=c)


# --- the checker itself -----------------------------------------------------------


def test_numerical_gradient_of_square_is_2x_dy(rng) -> None:
    x = rng.normal(size=(3, 4))
    dy = rng.normal(size=(3, 4))
    before = x.copy()
    grad = numerical_gradient(lambda v: v**2, x, dy)
    np.testing.assert_array_equal(x, before)  # the point is left unchanged
    assert grad.shape == x.shape and grad.dtype == np.float64
    # centred differences are exact for quadratics, up to rounding
    np.testing.assert_allclose(grad, 2 * x * dy, rtol=1e-8, atol=1e-9)


def test_numerical_gradient_of_linear_map_is_transpose(rng) -> None:
    a = rng.normal(size=(5, 4))
    x, dy = rng.normal(size=4), rng.normal(size=5)
    np.testing.assert_allclose(numerical_gradient(lambda v: a @ v, x, dy), a.T @ dy, rtol=1e-8, atol=1e-9)


def test_numerical_gradient_of_sin_is_cos(rng) -> None:
    x, dy = rng.normal(size=7), rng.normal(size=7)
    # the centred difference of sin errs by h^2/6 |cos|, about 2e-11 at h=1e-5
    assert relative_error(numerical_gradient(np.sin, x, dy), np.cos(x) * dy) < 1e-9


def test_numerical_gradient_sees_the_perturbed_point_only(rng) -> None:
    """f receives arrays that differ from x in exactly one entry, by exactly +-h."""
    x = rng.normal(size=(2, 3))
    seen = []

    def f(v):
        seen.append(v.copy())
        return v.sum()

    numerical_gradient(f, x, np.ones(()), h=0.25)
    assert len(seen) == 2 * x.size
    for v in seen:
        diff = (v - x).ravel()
        assert np.count_nonzero(diff) == 1 and abs(np.abs(diff).max() - 0.25) < 1e-12


def test_relative_error_closed_forms() -> None:
    assert relative_error(np.ones(3), np.ones(3)) == 0.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    # |a-b| = sqrt(2), |a| + |b| = 2
    assert relative_error(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(np.sqrt(2) / 2)
    assert relative_error(np.array([2.0]), np.array([1.0])) == pytest.approx(1 / 3)
    assert relative_error(np.array([1.0]), np.array([-1.0])) == pytest.approx(1.0)


def test_relative_error_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="shape"):
        relative_error(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError):
        relative_error(np.zeros((3, 1)), np.zeros(3))


def test_checker_catches_a_wrong_gradient(rng) -> None:
    """A gradient off by 1% is reported as wrong: the tolerance used below can fail."""
    x, dy = rng.normal(size=5), rng.normal(size=5)
    assert relative_error(numerical_gradient(lambda v: v**3, x, dy), 3.03 * x**2 * dy) > 1e-3


# --- scratch kernels against finite differences ---------------------------------


def _numerical_param_grads(x, gamma, beta, dy) -> tuple:
    """Centred-difference gradients of batch_norm_forward with respect to gamma and beta.

    ``gamma`` may be None (no scale): the beta gradient is then taken without one,
    and the gamma gradient is taken at gamma = 1.
    """
    g = np.ones_like(beta) if gamma is None else gamma
    num_dgamma = numerical_gradient(lambda v: scratch.batch_norm_forward(x, v, beta, EPS)[0], g, dy)
    num_dbeta = numerical_gradient(lambda v: scratch.batch_norm_forward(x, gamma, v, EPS)[0], beta, dy)
    return num_dgamma, num_dbeta


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_batch_norm_forward_backward_against_finite_differences(shape, affine, rng) -> None:
    x, dy, gamma, beta = _data(shape, rng)
    g, b = (gamma, beta) if affine else (None, None)
    _, cache = scratch.batch_norm_forward(x, g, b, EPS)
    dx, dgamma, dbeta = scratch.batch_norm_backward(dy, cache)
    num_dx = numerical_gradient(lambda v: scratch.batch_norm_forward(v, g, b, EPS)[0], x, dy)
    assert relative_error(dx, num_dx) < REL_TOL
    if not affine:
        assert dgamma is None and dbeta is None
        return
    num_dgamma, num_dbeta = _numerical_param_grads(x, gamma, beta, dy)
    assert relative_error(dgamma, num_dgamma) < REL_TOL
    assert relative_error(dbeta, num_dbeta) < REL_TOL


@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_batch_norm_forward_gamma_only_and_beta_only(shape, rng) -> None:
    x, dy, gamma, beta = _data(shape, rng)
    _, cache = scratch.batch_norm_forward(x, gamma, None, EPS)
    dx, dgamma, dbeta = scratch.batch_norm_backward(dy, cache)
    assert dbeta is None
    assert (
        relative_error(dx, numerical_gradient(lambda v: scratch.batch_norm_forward(v, gamma)[0], x, dy))
        < REL_TOL
    )
    _, cache = scratch.batch_norm_forward(x, None, beta, EPS)
    dx, dgamma, dbeta = scratch.batch_norm_backward(dy, cache)
    assert dgamma is None
    assert relative_error(dx, numerical_gradient(lambda v: scratch.batch_norm_forward(v)[0], x, dy)) < REL_TOL
    num_dbeta = numerical_gradient(lambda v: scratch.batch_norm_forward(x, None, v, EPS)[0], beta, dy)
    assert relative_error(dbeta, num_dbeta) < REL_TOL


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_batch_norm_backward_graph_against_finite_differences(shape, affine, rng) -> None:
    x, dy, gamma, beta = _data(shape, rng)
    g = gamma if affine else None
    dx, dgamma, dbeta = scratch.batch_norm_backward_graph(dy, x, g, EPS)
    num_dx = numerical_gradient(lambda v: scratch.batch_norm_forward(v, g, beta, EPS)[0], x, dy)
    num_dgamma, _ = _numerical_param_grads(x, gamma, beta, dy)
    _, num_dbeta = _numerical_param_grads(x, g, beta, dy)
    assert relative_error(dx, num_dx) < REL_TOL
    assert relative_error(dbeta, num_dbeta) < REL_TOL
    # dgamma is sum(dy * x_hat) whether or not gamma was used
    assert relative_error(dgamma, num_dgamma) < REL_TOL


@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_two_backward_passes_agree_to_rounding(shape, rng) -> None:
    x, dy, gamma, beta = _data(shape, rng)
    _, cache = scratch.batch_norm_forward(x, gamma, beta, EPS)
    closed = scratch.batch_norm_backward(dy, cache)
    graph = scratch.batch_norm_backward_graph(dy, x, gamma, EPS)
    for a, b in zip(closed, graph, strict=True):
        assert relative_error(a, b) < 1e-12


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=list(SHAPES))
def test_inference_forward_backward_against_finite_differences(shape, affine, rng) -> None:
    x, dy, gamma, beta = _data(shape, rng)
    c = shape[1]
    mean, var = rng.normal(size=c), rng.uniform(0.5, 2.0, c)
    g, b = (gamma, beta) if affine else (None, None)

    def f(v, gg=g, bb=b):
        return scratch.batch_norm_inference_forward(v, mean, var, gg, bb, EPS)[0]

    y, cache = scratch.batch_norm_inference_forward(x, mean, var, g, b, EPS)
    assert cache.batch_stats is False
    dx, dgamma, dbeta = scratch.batch_norm_backward(dy, cache)
    assert relative_error(dx, numerical_gradient(f, x, dy)) < REL_TOL
    # with fixed statistics the Jacobian is diagonal: a per-channel scale
    view = (1, c) + (1,) * (len(shape) - 2)
    scale = (gamma if affine else 1.0) / np.sqrt(var + EPS)
    np.testing.assert_allclose(dx, dy * np.reshape(scale, view) * np.ones(shape), rtol=1e-12)
    if affine:
        assert relative_error(dgamma, numerical_gradient(lambda v: f(x, v, b), gamma, dy)) < REL_TOL
        assert relative_error(dbeta, numerical_gradient(lambda v: f(x, g, v), beta, dy)) < REL_TOL
    else:
        assert dgamma is None and dbeta is None


@pytest.mark.parametrize("mode", ["train", "eval", "no-track-eval"])
def test_layer_backward_against_finite_differences(mode, rng) -> None:
    """BatchNorm.backward differentiates the layer's last call, in each mode."""
    shape = (4, 3, 2)
    x, dy, gamma, beta = _data(shape, rng)
    running = (rng.normal(size=3), rng.uniform(0.5, 2.0, 3))

    def make(g=gamma, b=beta):
        layer = scratch.BatchNorm(3, track_running_stats=mode != "no-track-eval")
        layer.gamma, layer.beta = g.copy(), b.copy()
        if layer.track_running_stats:
            layer.running_mean, layer.running_var = running[0].copy(), running[1].copy()
        return layer.train(mode == "train")

    layer = make()
    layer(x)
    dx = layer.backward(dy)
    assert relative_error(dx, numerical_gradient(lambda v: make()(v), x, dy)) < REL_TOL
    assert relative_error(layer.grad_gamma, numerical_gradient(lambda v: make(g=v)(x), gamma, dy)) < REL_TOL
    assert relative_error(layer.grad_beta, numerical_gradient(lambda v: make(b=v)(x), beta, dy)) < REL_TOL


# --- torch.autograd.gradcheck on the autograd Function ---------------------------


def _gradcheck_inputs(shape, weight: bool, bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_(True)
    w = (torch.rand(c, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True) if weight else None
    b = torch.randn(c, generator=gen, dtype=torch.float64).requires_grad_(True) if bias else None
    return x, w, b


def _differentiable(x, w, b):
    return tuple(t for t in (x, w, b) if t is not None)


PARAMS = [pytest.param(w, b, id=f"weight={w},bias={b}") for w in (True, False) for b in (True, False)]


@pytest.mark.parametrize(("weight", "bias"), PARAMS)
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 4), (2, 3, 2, 2)], ids=["2D", "3D", "4D"])
def test_gradcheck_train_path(shape, weight, bias) -> None:
    x, w, b = _gradcheck_inputs(shape, weight, bias)

    def fn(*args):
        it = iter(args)
        xx = next(it)
        ww = next(it) if weight else None
        bb = next(it) if bias else None
        return BatchNormFunction.apply(xx, ww, bb, None, None, 1e-3)[0]

    assert gradcheck(fn, _differentiable(x, w, b), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize(("weight", "bias"), PARAMS)
@pytest.mark.parametrize(
    "stats_dtype", [torch.float64, torch.float32], ids=["stats-float64", "stats-float32"]
)
def test_gradcheck_eval_path(weight, bias, stats_dtype) -> None:
    shape = (3, 2, 4)
    x, w, b = _gradcheck_inputs(shape, weight, bias, seed=1)
    mean = torch.tensor([0.3, -1.0], dtype=stats_dtype)
    var = torch.tensor([0.5, 2.0], dtype=stats_dtype)

    def fn(*args):
        it = iter(args)
        xx = next(it)
        ww = next(it) if weight else None
        bb = next(it) if bias else None
        return BatchNormFunction.apply(xx, ww, bb, mean, var, 1e-3)[0]

    assert gradcheck(fn, _differentiable(x, w, b), eps=1e-6, atol=1e-8, rtol=1e-6)
    # the statistics are constants: untouched, and the output is the closed form
    y = fn(*_differentiable(x, w, b))
    view = (1, 2, 1)
    expected = (x - mean.double().view(view)) / torch.sqrt(var.double().view(view) + 1e-3)
    if w is not None:
        expected = expected * w.view(view)
    if b is not None:
        expected = expected + b.view(view)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_only_some_inputs_require_grad() -> None:
    x, w, b = _gradcheck_inputs((4, 3), True, True)
    w.requires_grad_(False)
    assert gradcheck(
        lambda xx, bb: BatchNormFunction.apply(xx, w, bb, None, None, 1e-5)[0], (x, b), atol=1e-8, rtol=1e-6
    )
    x.requires_grad_(False)
    w.requires_grad_(True)
    assert gradcheck(
        lambda ww: BatchNormFunction.apply(x, ww, None, None, None, 1e-5)[0], (w,), atol=1e-8, rtol=1e-6
    )


def test_function_returns_batch_mean_and_biased_variance() -> None:
    x, w, b = _gradcheck_inputs((4, 3, 5), True, True)
    _, mean, var, *_ = BatchNormFunction.apply(x, w, b, None, None, 1e-5)
    xn = x.detach().numpy()
    np.testing.assert_allclose(mean.numpy(), xn.mean(axis=(0, 2)), rtol=1e-13)
    np.testing.assert_allclose(var.numpy(), xn.var(axis=(0, 2)), rtol=1e-12)  # ddof=0
    assert not mean.requires_grad and not var.requires_grad
