"""Numerics: large means in float32, constant channels, dtypes.

References are closed forms (a normalized channel has standard deviation
``sqrt(var / (var + eps))``), float64 recomputations, and PyTorch's own layer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnbook import nn as bnn
from bnbook import scratch

EPS = 1e-5


def _large_mean_input(dtype=np.float32) -> np.ndarray:
    """Mean 1e4, standard deviation 1: float32 keeps only ~3 decimals of each deviation."""
    return (1e4 + np.random.default_rng(0).normal(size=(64, 4, 8))).astype(dtype)


def test_one_pass_variance_would_fail_the_large_mean_test() -> None:
    """E[x^2] - E[x]^2 in float32 is off by far more than 2e-3 here, so the tests below can fail."""
    x = _large_mean_input()
    mean = x.mean(axis=(0, 2))
    naive = (x * x).mean(axis=(0, 2)) - mean * mean
    assert np.max(np.abs(naive - x.astype(np.float64).var(axis=(0, 2)))) > 0.1


def test_scratch_normalizes_large_mean_float32() -> None:
    x = _large_mean_input()
    y = scratch.BatchNorm(4)(x)
    assert y.dtype == np.float32
    y64 = y.astype(np.float64)
    np.testing.assert_allclose(y64.std(axis=(0, 2)), 1.0, atol=2e-3)
    np.testing.assert_allclose(y64.mean(axis=(0, 2)), 0.0, atol=2e-3)


def test_nn_normalizes_large_mean_float32() -> None:
    x = torch.from_numpy(_large_mean_input())
    y = bnn.BatchNorm1d(4)(x).detach().double()
    assert bnn.BatchNorm1d(4)(x).dtype == torch.float32
    np.testing.assert_allclose(y.std(dim=(0, 2), unbiased=False).numpy(), 1.0, atol=2e-3)
    np.testing.assert_allclose(y.mean(dim=(0, 2)).numpy(), 0.0, atol=2e-3)


def test_nn_running_variance_accurate_for_large_mean_float32() -> None:
    x = _large_mean_input()
    module = bnn.BatchNorm1d(4, momentum=1.0)
    module(torch.from_numpy(x))
    expected = x.astype(np.float64).var(axis=(0, 2), ddof=1)
    np.testing.assert_allclose(module.running_var.numpy(), expected, rtol=5e-3)
    layer = scratch.BatchNorm(4, momentum=1.0)
    layer(x)
    np.testing.assert_allclose(layer.running_var, expected, rtol=5e-3)


# --- a constant channel ----------------------------------------------------------


def _with_constant_channel(dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3, 4))
    x[:, 1] = 3.25  # zero variance
    return x.astype(dtype), rng.normal(size=x.shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_zero_variance_channel_scratch(dtype) -> None:
    x, dy = _with_constant_channel(dtype)
    layer = scratch.BatchNorm(3)
    layer.beta = np.array([0.0, 0.5, 0.0])
    y = layer(x)
    dx = layer.backward(dy)
    assert np.all(np.isfinite(y)) and np.all(np.isfinite(dx))
    assert np.all(np.isfinite(layer.grad_gamma)) and np.all(np.isfinite(layer.grad_beta))
    np.testing.assert_array_equal(y[:, 1], 0.5)  # x - mean is exactly 0, so y = beta
    # closed form: x_hat = 0, so dx = gamma / sqrt(eps) * (dy - mean(dy))
    expected = (dy[:, 1] - dy[:, 1].mean()) / np.sqrt(EPS)
    np.testing.assert_allclose(dx[:, 1], expected, rtol=1e-4 if dtype == np.float32 else 1e-10)
    assert layer.grad_gamma[1] == 0.0
    assert layer.running_var[1] == pytest.approx(0.9)  # (1 - 0.1) * 1 + 0.1 * 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_zero_variance_channel_nn_matches_torch(dtype) -> None:
    x_np, dy_np = _with_constant_channel()
    results = []
    for cls in (bnn.BatchNorm1d, torch.nn.BatchNorm1d):
        module = cls(3, dtype=dtype)
        x = torch.tensor(x_np, dtype=dtype, requires_grad=True)
        y = module(x)
        y.backward(torch.tensor(dy_np, dtype=dtype))
        results.append((y.detach(), x.grad, module.weight.grad, module.running_var))
    for ours, ref in zip(*results, strict=True):
        assert torch.all(torch.isfinite(ours))
        rtol, atol = (1e-9, 1e-10) if dtype == torch.float64 else (1e-4, 1e-3)
        torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol)
    assert torch.all(results[0][0][:, 1] == 0)


def test_all_equal_input_eval_after_training_is_finite() -> None:
    layer = scratch.BatchNorm(2)
    layer(np.full((4, 2), 7.0))
    layer.eval()
    y = layer(np.full((3, 2), 7.0))
    assert np.all(np.isfinite(y))


# --- dtypes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "rtol"),
    [(np.float64, 1e-12), (np.float32, 1e-5), (np.float16, 2e-2)],
    ids=["float64", "float32", "float16"],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_scratch_preserves_float_dtype(dtype, rtol, mode) -> None:
    rng = np.random.default_rng(2)
    x64 = rng.normal(2.0, 3.0, size=(8, 3, 2))
    x = x64.astype(dtype)
    layer = scratch.BatchNorm(3)
    layer(x64)  # running statistics from a float64 batch
    layer.train(mode == "train")
    y = layer(x)
    dx = layer.backward(np.ones_like(y))
    assert y.dtype == dtype and dx.dtype == dtype
    # reference: the same float-rounded input, in float64, by torch
    ref = torch.nn.functional.batch_norm(
        torch.from_numpy(x.astype(np.float64)),
        torch.from_numpy(layer.running_mean.copy()),
        torch.from_numpy(layer.running_var.copy()),
        training=mode == "train",
        momentum=0.0,
    ).numpy()
    np.testing.assert_allclose(y.astype(np.float64), ref, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_nn_preserves_dtype_like_torch(dtype) -> None:
    x = torch.randn(8, 3, 2) * 3 + 2
    for cls in (bnn.BatchNorm1d, torch.nn.BatchNorm1d):
        module = cls(3, dtype=dtype)
        xd = x.to(dtype).requires_grad_(True)
        y = module(xd)
        y.sum().backward()
        assert y.dtype == dtype and xd.grad.dtype == dtype, cls
        assert module.running_mean.dtype == dtype, cls


def test_nn_keeps_half_input_dtype_with_float_parameters_like_torch() -> None:
    """Mixed precision: torch's BatchNorm1d accepts float16 input with float32 state and returns float16."""
    x = (torch.randn(8, 3) * 3 + 2).half()
    ref = torch.nn.BatchNorm1d(3)(x)
    assert ref.dtype == torch.float16
    ours = bnn.BatchNorm1d(3)(x)
    assert ours.dtype == torch.float16
    torch.testing.assert_close(ours, ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("int_dtype", [np.int64, np.int32, np.uint8, np.int8])
def test_scratch_integer_input_computed_in_float64(int_dtype) -> None:
    x = np.arange(24).reshape(6, 4).astype(int_dtype)
    x[::2] //= 2
    layer = scratch.BatchNorm(4)
    y = layer(x)
    assert y.dtype == np.float64
    xf = x.astype(np.float64)
    expected = (xf - xf.mean(axis=0)) / np.sqrt(xf.var(axis=0) + EPS)
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)
    dx = layer.backward(np.ones((6, 4), dtype=np.int64))
    assert dx.dtype == np.float64
    np.testing.assert_allclose(dx, 0.0, atol=1e-12)  # a constant upstream gradient gives zero dx
