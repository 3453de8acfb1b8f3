r"""Batch Renormalization (Ioffe, 2017) in NumPy: a kernel pair in the style of the BN kernels.

In training, batch renorm normalizes with the batch statistics and then
corrects the result towards what the running statistics would have given:

.. math::

    \sigma_\mathcal{B} = \sqrt{\tfrac1m \textstyle\sum_i (x_i - \mu_\mathcal{B})^2 + \epsilon}, \qquad
    r = \mathrm{clip}_{[1/r_{max},\, r_{max}]}\Big(\frac{\sigma_\mathcal{B}}{\sigma}\Big), \qquad
    d = \mathrm{clip}_{[-d_{max},\, d_{max}]}\Big(\frac{\mu_\mathcal{B} - \mu}{\sigma}\Big),

    \hat x_i = \frac{x_i - \mu_\mathcal{B}}{\sigma_\mathcal{B}}\, r + d, \qquad y_i = \gamma \hat x_i + \beta

where :math:`\mu` and :math:`\sigma = \sqrt{\hat\sigma^2 + \epsilon}` come from
the running statistics. :math:`r` and :math:`d` are treated as constants in
the backward pass. With :math:`r_{max} = 1, d_{max} = 0` it is batch norm.
The running statistics follow the paper, :math:`\mu \leftarrow \mu + \alpha(\mu_\mathcal{B} - \mu)`
and :math:`\sigma \leftarrow \sigma + \alpha(\sigma_\mathcal{B} - \sigma)`, and are stored as
``running_mean`` and ``running_var`` :math:`= \sigma^2 - \epsilon`, the keys batch norm uses.
See ``chapters/13_small_batches``.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from bnbook._checks import check_eps
from bnbook.scratch._batchnorm import BNCache, batch_norm_backward, batch_norm_forward

__all__ = [
    "RenormCache",
    "batch_renorm_backward",
    "batch_renorm_forward",
    "batch_renorm_running_update",
    "check_renorm_limits",
    "renorm_limits",
]


class RenormCache(NamedTuple):
    r"""What :func:`batch_renorm_backward` needs, and what the layer needs to update its statistics.

    Attributes
    ----------
    bn : BNCache
        The cache of the plain batch-norm forward pass (no affine map).
    r, d : ndarray, shape (C,)
        The corrections that were applied (constants for the gradient).
    gamma : ndarray of shape (C,), or None
    has_beta : bool
    x_hat : ndarray, shape (N, C, *)
        The renormalized input, before ``gamma`` and ``beta``.
    batch_mean, batch_std : ndarray, shape (C,)
        :math:`\mu_\mathcal{B}` and :math:`\sigma_\mathcal{B}` (with eps inside the root).
    """

    bn: BNCache
    r: np.ndarray
    d: np.ndarray
    gamma: np.ndarray | None
    has_beta: bool
    x_hat: np.ndarray
    batch_mean: np.ndarray
    batch_std: np.ndarray


def check_renorm_limits(r_max: object, d_max: object) -> tuple[float, float]:
    """Return ``(r_max, d_max)`` as floats, or raise ``ValueError`` unless r_max >= 1 and d_max >= 0."""
    for name, value in (("r_max", r_max), ("d_max", d_max)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a number, got {value!r}")
    r, d = float(r_max), float(d_max)
    if not r >= 1.0 or r == float("inf"):
        raise ValueError(
            f"r_max must be a finite number >= 1 (1 means no correction of the scale), got {r_max}"
        )
    if not d >= 0.0 or d == float("inf"):
        raise ValueError(
            f"d_max must be a finite number >= 0 (0 means no correction of the shift), got {d_max}"
        )
    return r, d


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_renorm_forward(
    x: np.ndarray,
    running_mean: np.ndarray,
    running_var: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
    r_max: float = 1.0,
    d_max: float = 0.0,
) -> tuple[np.ndarray, RenormCache]:
    """Batch renorm in training mode: ``(out, cache)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, *)
    running_mean, running_var : ndarray, shape (C,)
        The running statistics before this step (not changed here).
    gamma, beta : ndarray, shape (C,), optional
    eps : float
    r_max, d_max : float
        Limits of the corrections, ``r_max >= 1``, ``d_max >= 0``.

    Returns
    -------
    out : ndarray, same shape and dtype as ``x``
    cache : RenormCache
    """
    eps = check_eps(eps)
    r_max, d_max = check_renorm_limits(r_max, d_max)
    x_bn, bn_cache = batch_norm_forward(x, None, None, eps)
    batch_mean = bn_cache.mean.astype(np.float64)
    batch_std = np.sqrt(bn_cache.var.astype(np.float64) + eps)
    sigma = np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    r = np.clip(batch_std / sigma, 1.0 / r_max, r_max)
    d = np.clip((batch_mean - np.asarray(running_mean, dtype=np.float64)) / sigma, -d_max, d_max)
    nd = x.ndim
    x_hat = x_bn * _per_channel(r.astype(x_bn.dtype), nd) + _per_channel(d.astype(x_bn.dtype), nd)
    y = x_hat if gamma is None else x_hat * _per_channel(gamma.astype(x_hat.dtype), nd)
    if beta is not None:
        y = y + _per_channel(beta.astype(x_hat.dtype), nd)
    y = y.astype(x.dtype, copy=False)
    return y, RenormCache(bn_cache, r, d, gamma, beta is not None, x_hat, batch_mean, batch_std)


def batch_renorm_backward(
    dy: np.ndarray, cache: RenormCache
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    r"""Gradients of :func:`batch_renorm_forward`, with ``r`` and ``d`` held constant.

    .. math::

        \frac{\partial L}{\partial \beta} = \sum_i g_i, \qquad
        \frac{\partial L}{\partial \gamma} = \sum_i g_i \hat x_i, \qquad
        \frac{\partial L}{\partial x} = \mathrm{BN}'\big(g \gamma r\big)

    where :math:`\mathrm{BN}'` is batch norm's backward pass: the gradient
    reaching the batch-normalized value is :math:`g\gamma r`.

    Returns
    -------
    dx : ndarray, shape (N, C, *)
    dgamma, dbeta : ndarray of shape (C,), or None
    """
    nd = dy.ndim
    axes = (0, *range(2, nd))
    dbeta = dy.sum(axis=axes) if cache.has_beta else None
    dgamma = (dy * cache.x_hat).sum(axis=axes) if cache.gamma is not None else None
    scale = cache.r if cache.gamma is None else cache.r * cache.gamma
    dx_bn = dy * _per_channel(scale.astype(dy.dtype), nd)
    dx, _, _ = batch_norm_backward(dx_bn, cache.bn)
    return dx, dgamma, dbeta


def batch_renorm_running_update(
    running_mean: np.ndarray, running_var: np.ndarray, cache: RenormCache, momentum: float, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    r"""The paper's update of the running statistics, as new arrays.

    :math:`\mu \leftarrow \mu + \alpha(\mu_\mathcal{B} - \mu)` and
    :math:`\sigma \leftarrow \sigma + \alpha(\sigma_\mathcal{B} - \sigma)`, with
    :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}`; the new ``running_var`` is
    :math:`\sigma^2 - \epsilon`.
    """
    mean = np.asarray(running_mean, dtype=np.float64)
    sigma = np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    new_mean = mean + momentum * (cache.batch_mean - mean)
    new_sigma = sigma + momentum * (cache.batch_std - sigma)
    return new_mean, new_sigma**2 - eps


def renorm_limits(
    step: int,
    warmup: int = 5000,
    r_max_end: float = 3.0,
    r_max_at: int = 40000,
    d_max_end: float = 5.0,
    d_max_at: int = 25000,
) -> tuple[float, float]:
    """``(r_max, d_max)`` at ``step`` under the paper's warm-up schedule.

    Batch norm (``r_max = 1``, ``d_max = 0``) for the first ``warmup`` steps;
    then both limits relax linearly, ``r_max`` reaching ``r_max_end`` at step
    ``r_max_at`` and ``d_max`` reaching ``d_max_end`` at step ``d_max_at``, and
    stay there. The defaults are the paper's (Ioffe 2017, section 4.1:
    5k steps of plain BN, r_max = 3 at 40k, d_max = 5 at 25k); a small
    experiment scales the step counts down.

    >>> renorm_limits(0), renorm_limits(40000)
    ((1.0, 0.0), (3.0, 5.0))
    """
    if step < 0 or warmup < 0 or r_max_at <= warmup or d_max_at <= warmup:
        raise ValueError(
            f"need step >= 0, warmup >= 0 and both end steps after warmup, got step={step}, "
            f"warmup={warmup}, r_max_at={r_max_at}, d_max_at={d_max_at}"
        )
    check_renorm_limits(r_max_end, d_max_end)

    def ramp(end_value: float, start_value: float, end_step: int) -> float:
        t = min(max((step - warmup) / (end_step - warmup), 0.0), 1.0)
        return float(start_value + t * (end_value - start_value))

    return ramp(r_max_end, 1.0, r_max_at), ramp(d_max_end, 0.0, d_max_at)
