"""Numerical gradients for checking backward passes (chapter 5)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["numerical_gradient", "relative_error"]


def numerical_gradient(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, dy: np.ndarray, h: float = 1e-5
) -> np.ndarray:
    r"""Centred-difference gradient of :math:`\sum f(x) \odot dy` with respect to ``x``.

    .. math::

        \frac{\partial}{\partial x_k} \sum_j f(x)_j\, dy_j \approx
        \frac{\sum_j \big(f(x + h e_k) - f(x - h e_k)\big)_j\, dy_j}{2h}

    The error is :math:`O(h^2)`; in float64 with ``h=1e-5`` expect a relative
    error near 1e-9 against a correct analytic gradient.

    Parameters
    ----------
    f : callable
        Maps an array shaped like ``x`` to an array shaped like ``dy``.
    x : ndarray, any shape, floating point
        The point. It is not modified (the function works on a copy).
    dy : ndarray
        The upstream gradient that contracts the output.
    h : float
        Step size.

    Returns
    -------
    ndarray, shape and dtype of ``x``
    """
    x = np.array(x, dtype=np.result_type(x, np.float32), copy=True)
    dy = np.asarray(dy)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + h
        plus = np.sum(f(x) * dy)
        flat[k] = old - h
        minus = np.sum(f(x) * dy)
        flat[k] = old
        gflat[k] = (plus - minus) / (2.0 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    r"""Relative error of two arrays as a whole.

    .. math::

        \frac{\lVert a-b\rVert_2}{\max(\lVert a\rVert_2 + \lVert b\rVert_2,\ 10^{-300})}

    Using norms of the whole arrays keeps entries that are nearly zero from
    dominating. For float64 gradients, 1e-8 or less means they agree; 1e-4 or
    more means one of them is wrong.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"relative_error needs equal shapes, got {a.shape} and {b.shape}")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / max(denom, 1e-300))
