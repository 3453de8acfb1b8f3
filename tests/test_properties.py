"""Property tests (hypothesis): what batch norm must satisfy for any input.

Inputs are small tensors of any rank 2..4 with per-channel scales from 1e-3
to 1e3 and offsets up to 1e3, built on hypothesis-chosen values (which include
constant channels). Tolerances are stated relative to the conditioning of
each channel, ``1 + max|x| / sqrt(var + eps)``: rounding in ``x - mean`` is of
the order of ``max|x|`` times the machine epsilon, and normalizing multiplies
it by ``1 / sqrt(var + eps)``.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bnbook import nn as bnn
from bnbook import scratch

EPS = 1e-5
#: Rounding allowance per unit of conditioning, float64 (machine epsilon is 2.2e-16).
ULPS = 1e-12
#: Kept quick for the unit run; set BNBOOK_HYPOTHESIS_EXAMPLES=2000 for a thorough search.
FAST = settings(
    max_examples=int(os.environ.get("BNBOOK_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def shapes(draw) -> tuple[int, ...]:
    rank = draw(st.integers(2, 4))
    n = draw(st.integers(2, 5))
    c = draw(st.integers(1, 5))
    spatial = draw(st.lists(st.integers(1, 3), min_size=rank - 2, max_size=rank - 2))
    return (n, c, *spatial)


@st.composite
def batches(draw, shape=None) -> np.ndarray:
    """float64 (N, C, *) input: hypothesis values in [-1, 1], scaled and shifted per channel."""
    shape = shape or draw(shapes())
    c = shape[1]
    view = (1, c) + (1,) * (len(shape) - 2)
    base = draw(
        arrays(np.float64, shape, elements=st.floats(-1.0, 1.0, allow_nan=False, allow_infinity=False))
    )
    scale = np.array(draw(st.lists(st.sampled_from([1e-3, 0.1, 1.0, 7.0, 1e3]), min_size=c, max_size=c)))
    offset = np.array(draw(st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=c, max_size=c)))
    return base * scale.reshape(view) + offset.reshape(view)


def _axes(x: np.ndarray) -> tuple[int, ...]:
    return (0, *range(2, x.ndim))


def _per_channel(v: np.ndarray, x: np.ndarray) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _stats(x: np.ndarray, eps: float = EPS):
    """Independent per-channel statistics: biased variance, 1/std and conditioning."""
    var = x.var(axis=_axes(x))
    inv_std = 1.0 / np.sqrt(var + eps)
    cond = 1.0 + np.abs(x).max(axis=_axes(x)) * inv_std
    return var, inv_std, cond


def _channel_max(a: np.ndarray) -> np.ndarray:
    return np.abs(a).max(axis=_axes(a)) if a.size else np.zeros(a.shape[1])


# --- training-mode output ------------------------------------------------------


@FAST
@given(batches())
def test_train_output_has_zero_mean_and_shrunk_unit_variance(x) -> None:
    y = scratch.BatchNorm(x.shape[1])(x)
    var, _, cond = _stats(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.all(np.abs(y.mean(axis=_axes(x))) <= ULPS * cond)
    # biased variance of the output: var / (var + eps), exactly in exact arithmetic
    np.testing.assert_array_less(np.abs(y.var(axis=_axes(x)) - var / (var + EPS)), 10 * ULPS * cond**2)


@FAST
@given(batches(), st.sampled_from([np.float32, np.float64]))
def test_dtype_and_shape_preserved(x, dtype) -> None:
    x = x.astype(dtype)
    layer = scratch.BatchNorm(x.shape[1])
    y = layer(x)
    dx = layer.backward(np.ones_like(y))
    assert y.shape == x.shape and y.dtype == dtype and dx.shape == x.shape and dx.dtype == dtype
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    yt = bnn.batch_norm(torch.from_numpy(x), None, None, training=True)
    assert tuple(yt.shape) == x.shape and yt.dtype == torch.from_numpy(x).dtype


# --- against torch ------------------------------------------------------------


def _train_step(batch_norm, x, gamma, beta, dy) -> tuple:
    """Output and gradients (x, gamma, beta) of a functional batch norm in training mode."""
    xt, gt, bt = (torch.from_numpy(a).requires_grad_(True) for a in (x, gamma, beta))
    y = batch_norm(xt, None, None, gt, bt, training=True, eps=EPS)
    return (y, *torch.autograd.grad(y, (xt, gt, bt), torch.from_numpy(dy)))


@FAST
@given(st.data())
def test_scratch_and_nn_match_torch_in_training(data) -> None:
    x = data.draw(batches())
    c = x.shape[1]
    gamma = data.draw(arrays(np.float64, c, elements=st.floats(-3, 3, allow_nan=False)))
    beta = data.draw(arrays(np.float64, c, elements=st.floats(-3, 3, allow_nan=False)))
    dy = data.draw(arrays(np.float64, x.shape, elements=st.floats(-1, 1, allow_nan=False)))
    _, inv_std, cond = _stats(x)

    y_ref, dx_ref, dg_ref, db_ref = _train_step(F.batch_norm, x, gamma, beta, dy)

    layer = scratch.BatchNorm(c)
    layer.gamma, layer.beta = gamma.copy(), beta.copy()
    y = layer(x)
    dx = layer.backward(dy)

    y_nn, dx_nn, dg_nn, db_nn = _train_step(bnn.batch_norm, x, gamma, beta, dy)

    k = (np.abs(gamma) + 1.0) * inv_std
    dy_max = _channel_max(dy) + 1.0
    for name, ours_y, ours_dx, ours_dg, ours_db in (
        ("scratch", y, dx, layer.grad_gamma, layer.grad_beta),
        ("nn", y_nn.detach().numpy(), dx_nn.numpy(), dg_nn.numpy(), db_nn.numpy()),
    ):
        y_err = _channel_max(ours_y - y_ref.detach().numpy())
        assert np.all(y_err <= ULPS * (np.abs(gamma) + 1) * cond), (name, y_err)
        dx_err = _channel_max(ours_dx - dx_ref.numpy())
        assert np.all(dx_err <= 10 * ULPS * k * dy_max * cond), (name, dx_err)
        m = x.size // c
        assert np.all(np.abs(ours_dg - dg_ref.numpy()) <= 10 * ULPS * m * dy_max * cond), name
        assert np.all(np.abs(ours_db - db_ref.numpy()) <= 10 * ULPS * m * dy_max), name


@FAST
@given(st.data())
def test_scratch_matches_torch_in_eval(data) -> None:
    x = data.draw(batches())
    c = x.shape[1]
    mean = data.draw(arrays(np.float64, c, elements=st.floats(-1e3, 1e3, allow_nan=False)))
    var = data.draw(arrays(np.float64, c, elements=st.floats(0.0, 1e3, allow_nan=False)))
    layer = scratch.BatchNorm(c).eval()
    layer.running_mean, layer.running_var = mean.copy(), var.copy()
    y = layer(x)
    ref = F.batch_norm(torch.from_numpy(x), torch.from_numpy(mean), torch.from_numpy(var), eps=EPS).numpy()
    inv_std = 1.0 / np.sqrt(var + EPS)
    bound = ULPS * (1.0 + (_channel_max(x) + np.abs(mean)) * inv_std)
    assert np.all(_channel_max(y - ref) <= bound)


# --- gradient structure ----------------------------------------------------------


@FAST
@given(st.data())
def test_dx_sums_to_zero_and_is_nearly_orthogonal_to_x_hat(data) -> None:
    """Shifting x by a per-channel constant doesn't change y, so sum(dx) = 0; and
    sum(dx * x_hat) = k * eps / (var + eps) * sum(dy * x_hat): zero up to eps."""
    x = data.draw(batches())
    dy = data.draw(arrays(np.float64, x.shape, elements=st.floats(-1, 1, allow_nan=False)))
    gamma = data.draw(arrays(np.float64, x.shape[1], elements=st.floats(0.1, 3, allow_nan=False)))
    _, cache = scratch.batch_norm_forward(x, gamma, None, EPS)
    dx, _, _ = scratch.batch_norm_backward(dy, cache)
    var, inv_std, cond = _stats(x)
    axes = _axes(x)
    x_hat = (x - _per_channel(x.mean(axis=axes), x)) * _per_channel(inv_std, x)
    k = gamma * inv_std
    m = x.size // x.shape[1]
    bound = 10 * ULPS * k * m * (_channel_max(dy) + 1) * cond
    assert np.all(np.abs(dx.sum(axis=axes)) <= bound)
    expected = k * EPS / (var + EPS) * (dy * x_hat).sum(axis=axes)
    assert np.all(np.abs((dx * x_hat).sum(axis=axes) - expected) <= bound * cond)


# --- invariances -----------------------------------------------------------------


@FAST
@given(st.data())
def test_invariant_to_per_channel_shift(data) -> None:
    x = data.draw(batches())
    c = x.shape[1]
    shift = data.draw(arrays(np.float64, c, elements=st.floats(-1e3, 1e3, allow_nan=False)))
    y, _ = scratch.batch_norm_forward(x, eps=EPS)
    y_shifted, _ = scratch.batch_norm_forward(x + _per_channel(shift, x), eps=EPS)
    _, inv_std, cond = _stats(x)
    bound = 10 * ULPS * (cond + np.abs(shift) * inv_std)
    assert np.all(_channel_max(y_shifted - y) <= bound)


@FAST
@given(st.data())
def test_positive_scaling_only_rescales_eps(data) -> None:
    """y(a x; eps) = y(x; eps / a^2) per channel, for a > 0: scale-invariant up to eps."""
    x = data.draw(batches())
    c = x.shape[1]
    a = data.draw(arrays(np.float64, c, elements=st.sampled_from([1e-2, 0.5, 3.0, 1e2])))
    scaled_eps = EPS / a**2
    y_scaled, _ = scratch.batch_norm_forward(x * _per_channel(a, x), eps=EPS)
    # reference: normalize each channel of x with its own eps / a^2
    var = x.var(axis=_axes(x))
    expected = (x - _per_channel(x.mean(axis=_axes(x)), x)) / _per_channel(np.sqrt(var + scaled_eps), x)
    cond = 1.0 + _channel_max(x) / np.sqrt(var + scaled_eps)
    assert np.all(_channel_max(y_scaled - expected) <= 10 * ULPS * cond)
    # and when the variance dominates eps, the output does not change at all
    big = var > 1e3 * EPS * np.maximum(1.0, 1.0 / a**2)  # eps and eps / a^2 both negligible
    y, _ = scratch.batch_norm_forward(x, eps=EPS)
    drift = _channel_max(y_scaled - y)  # at most |x_hat| * eps / (2 var) <= sqrt(m) * 5e-4
    assert np.all(drift[big] <= 5e-4 * np.sqrt(x.size // c) + 10 * ULPS * cond[big])


# --- eval mode is per sample ------------------------------------------------------


@FAST
@given(st.data())
def test_eval_output_depends_only_on_each_sample(data) -> None:
    x = data.draw(batches())
    n, c = x.shape[:2]
    perm = np.array(data.draw(st.permutations(range(n))))
    layer = scratch.BatchNorm(c)
    layer.running_mean = data.draw(arrays(np.float64, c, elements=st.floats(-10, 10, allow_nan=False)))
    layer.running_var = data.draw(arrays(np.float64, c, elements=st.floats(0.01, 10, allow_nan=False)))
    layer.gamma = data.draw(arrays(np.float64, c, elements=st.floats(-2, 2, allow_nan=False)))
    layer.eval()
    y = layer(x)
    np.testing.assert_array_equal(layer(x[perm]), y[perm])
    np.testing.assert_array_equal(layer(x[-1:]), y[-1:])  # a single sample is fine in eval mode

    module = (
        bnn.BatchNorm1d(c, dtype=torch.float64) if x.ndim <= 3 else bnn.BatchNorm2d(c, dtype=torch.float64)
    )
    with torch.no_grad():
        module.running_mean.copy_(torch.from_numpy(layer.running_mean))
        module.running_var.copy_(torch.from_numpy(layer.running_var))
        module.weight.copy_(torch.from_numpy(layer.gamma))
        module.eval()
        yt = module(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(module(torch.from_numpy(x[perm])).numpy(), yt[perm], rtol=1e-15, atol=0)
        np.testing.assert_allclose(yt, y, rtol=1e-12, atol=1e-12 * (1 + np.abs(y).max()))


@FAST
@given(st.data())
def test_train_output_is_permutation_equivariant(data) -> None:
    """Batch statistics don't depend on the order of the samples."""
    x = data.draw(batches())
    perm = np.array(data.draw(st.permutations(range(x.shape[0]))))
    y, _ = scratch.batch_norm_forward(x, eps=EPS)
    y_perm, _ = scratch.batch_norm_forward(x[perm], eps=EPS)
    _, _, cond = _stats(x)
    assert np.all(_channel_max(y_perm - y[perm]) <= 10 * ULPS * cond)
