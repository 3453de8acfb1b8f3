"""bnbook.scratch in low precision and at the edges: float64 accumulation, float16 spread, empty batches.

References are float64 NumPy computed here and torch's own layer, never the code under test.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from bnbook.scratch import BatchNorm, batch_norm_backward, batch_norm_forward


def _reference(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    x64 = x.astype(np.float64)
    axes = (0, *range(2, x.ndim))
    mean = x64.mean(axis=axes, keepdims=True)
    return (x64 - mean) / np.sqrt(x64.var(axis=axes, keepdims=True) + eps)


@pytest.mark.parametrize("shape", [(256, 3), (16, 3, 4, 4)], ids=["2D", "4D"])
def test_float32_large_offset_matches_float64(shape) -> None:
    rng = np.random.default_rng(0)
    x = (1e4 + rng.normal(size=shape)).astype(np.float32)
    y, cache = batch_norm_forward(x)
    assert y.dtype == np.float32
    ref = _reference(x)
    assert np.abs(y - ref).max() < 1e-3
    # at least as accurate as torch's own CPU kernel on the same batch
    yt = torch.nn.functional.batch_norm(torch.from_numpy(x), None, None, training=True).numpy()
    assert np.abs(y - ref).max() <= np.abs(yt - ref).max() + 1e-6
    np.testing.assert_allclose(cache.mean, x.astype(np.float64).mean(axis=(0, *range(2, x.ndim))), rtol=1e-12)


def test_float32_offset_shows_why_accumulation_matters() -> None:
    """The control: the same batch, statistics accumulated in float32, is off by far more."""
    rng = np.random.default_rng(0)
    x = (1e4 + rng.normal(size=(256, 3))).astype(np.float32)
    mean32 = x.mean(axis=0, dtype=np.float32)
    naive = (x - mean32) / np.sqrt(((x - mean32) ** 2).mean(axis=0, dtype=np.float32) + 1e-5)
    good, _ = batch_norm_forward(x)
    ref = _reference(x)
    assert np.abs(good - ref).max() < np.abs(naive - ref).max()


@pytest.mark.parametrize("spread", [300.0, 2000.0])
def test_float16_large_spread_is_finite_and_correct(spread: float) -> None:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(64, 4)) * spread).astype(np.float16)
    layer = BatchNorm(4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either
        y = layer(x)
    assert y.dtype == np.float16 and np.all(np.isfinite(y))
    assert np.abs(y.astype(np.float64) - _reference(x)).max() < 1e-2
    unbiased = x.astype(np.float64).var(axis=0, ddof=1)
    np.testing.assert_allclose(layer.running_var, 0.9 + 0.1 * unbiased, rtol=1e-9)
    assert np.all(np.isfinite(layer.running_var))


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum-0.1", "cumulative"])
def test_empty_batch_like_torch(momentum) -> None:
    ours = BatchNorm(3, momentum=momentum)
    ref = torch.nn.BatchNorm1d(3, momentum=momentum, dtype=torch.float64)
    rng = np.random.default_rng(2)
    for batch in (np.empty((0, 3)), rng.normal(size=(8, 3)), np.empty((0, 3)), rng.normal(size=(8, 3))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            y = ours(batch)
            dx = ours.backward(np.ones_like(y))
        yt = ref(torch.from_numpy(batch))
        assert y.shape == tuple(yt.shape) == batch.shape and dx.shape == batch.shape
        np.testing.assert_allclose(ours.running_mean, ref.running_mean.numpy(), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(ours.running_var, ref.running_var.numpy(), rtol=1e-12)
        assert ours.num_batches_tracked == int(ref.num_batches_tracked)
    _, cache = batch_norm_forward(np.empty((0, 3, 2)))
    dx, dgamma, dbeta = batch_norm_backward(np.empty((0, 3, 2)), cache)
    assert dx.shape == (0, 3, 2) and dgamma is None and dbeta is None
