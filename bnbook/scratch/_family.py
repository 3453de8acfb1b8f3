"""The normalization family from scratch, in NumPy only: layer, group and instance norm.

Batch norm (:mod:`bnbook.scratch._batchnorm`) computes one mean and one variance
per channel, over the batch and the spatial positions. Its relatives differ only
in the axes they reduce over, for an input of shape (N, C, H, W):

* **layer norm** (Ba, Kiros and Hinton, 2016): over the trailing
  ``normalized_shape`` of each sample, for example (C, H, W);
* **group norm** (Wu and He, 2018): over a group of C/G channels and the
  spatial positions of each sample;
* **instance norm** (Ulyanov, Vedaldi and Lempitsky, 2016): over the spatial
  positions of each sample and each channel.

None of them uses the batch axis, so a sample's output never depends on the
other samples in the batch, and training and inference compute the same
thing. Every kernel is a pure function that returns ``(y, cache)``; the
matching ``*_backward(dy, cache)`` returns ``(dx, dgamma, dbeta)``. The
conventions (biased variance, ``eps`` inside the square root, shapes of
``gamma`` and ``beta``) are PyTorch's ``torch.nn.functional.layer_norm``,
``group_norm`` and ``instance_norm``.

Statistics are accumulated in float64 whatever the input's floating dtype, and
the outputs come back in the input's dtype. This module never imports torch.
The chapter that explains it is ``chapters/09_limitations``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from bnbook._checks import check_eps

__all__ = [
    "NormCache",
    "group_norm",
    "group_norm_backward",
    "instance_norm",
    "instance_norm_backward",
    "layer_norm",
    "layer_norm_backward",
]


class NormCache(NamedTuple):
    """What the backward pass of a layer, group or instance norm needs.

    The statistics are computed on a *grouped view* of the input, a reshape
    in which the values that share one mean and one variance fill the
    ``axes`` of the view: (N, prod(normalized_shape)) for layer norm,
    (N, G, C/G * prod(spatial)) for group norm and (N, C, prod(spatial)) for
    instance norm.

    Attributes
    ----------
    x_hat : ndarray, float64, shape of the input
        The normalized input (before ``gamma`` and ``beta``).
    inv_std : ndarray, float64, shape of the grouped view with 1 on ``axes``
        ``1 / sqrt(var + eps)`` per group of values.
    mean, var : ndarray, float64, same shape as ``inv_std``
        The statistics used (the variance is the biased one).
    gamma : ndarray or None
        The scale that was applied (None when there was none).
    has_beta : bool
        Whether a shift was applied (so ``dbeta`` is returned).
    grouped_shape : tuple of int
        Shape of the grouped view.
    axes : tuple of int
        Axes of the grouped view that the statistics reduce over.
    param_shape : tuple of int
        Shape to which ``gamma`` and ``beta`` are reshaped to broadcast
        against the input, for example (1, C, 1, 1).
    weight_shape : tuple of int
        Shape of ``gamma`` and ``beta`` themselves: (C,) for group and
        instance norm, ``normalized_shape`` for layer norm.
    dtype : numpy dtype
        The input's dtype; the gradients come back in it.
    """

    x_hat: np.ndarray
    inv_std: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    gamma: np.ndarray | None
    has_beta: bool
    grouped_shape: tuple[int, ...]
    axes: tuple[int, ...]
    param_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    dtype: np.dtype


# --- shared arithmetic --------------------------------------------------------------------
def _as_float_array(x: object, name: str, min_ndim: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ValueError(f"{name} expects a real numeric array, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if arr.ndim < min_ndim:
        raise ValueError(f"{name} expects at least {min_ndim}D input, got {arr.ndim}D of shape {arr.shape}")
    return arr


def _check_param(p: object, shape: tuple[int, ...], what: str, name: str) -> np.ndarray | None:
    if p is None:
        return None
    arr = np.asarray(p)
    if arr.shape != shape:
        raise ValueError(f"{name}: {what} must have shape {shape}, got {arr.shape}")
    return arr


def _forward(
    x: np.ndarray,
    gamma: np.ndarray | None,
    beta: np.ndarray | None,
    eps: float,
    grouped_shape: tuple[int, ...],
    axes: tuple[int, ...],
    param_shape: tuple[int, ...],
    weight_shape: tuple[int, ...],
) -> tuple[np.ndarray, NormCache]:
    """Normalize the values that share ``axes`` of the grouped view, then scale and shift."""
    xg = x.astype(np.float64).reshape(grouped_shape)
    mean = xg.mean(axis=axes, keepdims=True)
    xc = xg - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)  # two passes: accurate when |mean| >> spread
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (xc * inv_std).reshape(x.shape)
    y = x_hat.copy() if gamma is None else x_hat * gamma.astype(np.float64).reshape(param_shape)
    if beta is not None:
        y += beta.astype(np.float64).reshape(param_shape)
    cache = NormCache(
        x_hat,
        inv_std,
        mean,
        var,
        gamma,
        beta is not None,
        grouped_shape,
        axes,
        param_shape,
        weight_shape,
        x.dtype,
    )
    return y.astype(x.dtype, copy=False), cache


def _backward(dy: object, cache: NormCache) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    r"""Closed-form gradients, shared by the three kernels.

    With :math:`g = \gamma \odot \partial L/\partial y` and :math:`M` values per group:
    :math:`\partial L/\partial x = \frac{1}{\sigma}\,(g - \overline{g} - \hat x\,\overline{g \hat x})`,
    where the bars average over the values of the group.
    """
    if not isinstance(cache, NormCache):
        raise ValueError(f"cache must be the NormCache of a forward pass, got {type(cache).__name__}")
    d = np.asarray(dy)
    if d.shape != cache.x_hat.shape:
        raise ValueError(f"dy has shape {d.shape}, but the forward output had shape {cache.x_hat.shape}")
    if d.dtype == np.bool_ or not np.issubdtype(d.dtype, np.number) or np.iscomplexobj(d):
        raise ValueError(f"dy must be a real numeric array, got dtype {d.dtype}")
    d = d.astype(np.float64)
    x_hat = cache.x_hat
    # gamma and beta are broadcast over the axes where param_shape is 1, so their gradients sum over
    # them (summing a size-1 axis of the weight itself changes nothing; the reshape restores it)
    sum_axes = tuple(i for i, s in enumerate(cache.param_shape) if s == 1)
    dbeta = d.sum(axis=sum_axes).reshape(cache.weight_shape) if cache.has_beta else None
    dgamma = None
    g = d
    if cache.gamma is not None:
        dgamma = (d * x_hat).sum(axis=sum_axes).reshape(cache.weight_shape)
        g = d * cache.gamma.astype(np.float64).reshape(cache.param_shape)
    gg = g.reshape(cache.grouped_shape)
    xh = x_hat.reshape(cache.grouped_shape)
    dx = gg - gg.mean(axis=cache.axes, keepdims=True)
    dx -= xh * (gg * xh).mean(axis=cache.axes, keepdims=True)
    dx *= cache.inv_std
    dt = cache.dtype
    return (
        dx.reshape(x_hat.shape).astype(dt),
        None if dgamma is None else dgamma.astype(dt),
        None if dbeta is None else dbeta.astype(dt),
    )


# --- layer norm ---------------------------------------------------------------------------
def layer_norm(
    x: np.ndarray,
    normalized_shape: int | Sequence[int],
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, NormCache]:
    r"""Layer normalization: each sample is normalized over its trailing ``normalized_shape``.

    .. math::

        \mu_n = \frac{1}{M}\sum_{j} x_{nj}, \qquad
        \sigma_n^2 = \frac{1}{M}\sum_{j} (x_{nj} - \mu_n)^2, \qquad
        y_{nj} = \gamma_j \frac{x_{nj} - \mu_n}{\sqrt{\sigma_n^2 + \epsilon}} + \beta_j

    where :math:`n` indexes everything before the normalized axes (the
    samples, and for a sequence also the positions), :math:`j` the
    :math:`M = \prod` ``normalized_shape`` values after them. As in
    ``torch.nn.functional.layer_norm``, ``gamma`` and ``beta`` have the
    shape ``normalized_shape`` (one value per element, not per channel).

    Parameters
    ----------
    x : ndarray, shape (*, *normalized_shape)
        Input; float16/32/64 keep their dtype, integers become float64.
    normalized_shape : int or sequence of int
        The trailing shape to normalize over, for example ``C`` for (N, C),
        or ``(C, H, W)`` for (N, C, H, W).
    gamma, beta : ndarray, shape normalized_shape, optional
        Elementwise scale and shift. None leaves the value unscaled/unshifted.
    eps : float
        Added to the variance before the square root; must be > 0.

    Returns
    -------
    y : ndarray, same shape and dtype as ``x``
    cache : NormCache
        For :func:`layer_norm_backward`; holds the float64 mean and biased
        variance of each sample, shape (prod(leading), 1).

    Raises
    ------
    ValueError
        If the trailing shape of ``x`` is not ``normalized_shape``, or
        ``gamma``/``beta`` do not have that shape, or ``eps`` is not positive.

    Examples
    --------
    >>> y, cache = layer_norm(np.arange(6.0).reshape(2, 3), 3)
    >>> np.round(y, 3)
    array([[-1.225,  0.   ,  1.225],
           [-1.225,  0.   ,  1.225]])
    """
    eps = check_eps(eps)
    if isinstance(normalized_shape, numbers.Integral) and not isinstance(normalized_shape, bool):
        shape = (int(normalized_shape),)
    else:
        try:
            if isinstance(normalized_shape, str):
                raise TypeError("a string")
            shape = tuple(int(s) for s in normalized_shape)  # type: ignore[union-attr]
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
            ) from err
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"normalized_shape must be non-empty with positive sizes, got {normalized_shape!r}")
    x = _as_float_array(x, "layer_norm", len(shape))
    k = len(shape)
    if x.shape[x.ndim - k :] != shape:
        raise ValueError(f"layer_norm: input of shape {x.shape} does not end with normalized_shape {shape}")
    gamma = _check_param(gamma, shape, "gamma", "layer_norm")
    beta = _check_param(beta, shape, "beta", "layer_norm")
    lead = int(np.prod(x.shape[: x.ndim - k], dtype=np.int64))
    grouped = (lead, int(np.prod(shape, dtype=np.int64)))
    param_shape = (1,) * (x.ndim - k) + shape
    return _forward(x, gamma, beta, eps, grouped, (1,), param_shape, shape)


def layer_norm_backward(
    dy: np.ndarray, cache: NormCache
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    r"""Gradients of :func:`layer_norm`.

    With :math:`g_{nj} = \gamma_j\,\partial L/\partial y_{nj}` and the
    :math:`M` values :math:`j` of sample :math:`n`:

    .. math::

        \frac{\partial L}{\partial x_{nj}} = \frac{1}{\sqrt{\sigma_n^2+\epsilon}}
        \Big(g_{nj} - \frac{1}{M}\sum_k g_{nk} - \hat x_{nj}\,\frac{1}{M}\sum_k g_{nk}\hat x_{nk}\Big),
        \qquad
        \frac{\partial L}{\partial \gamma_j} = \sum_n \frac{\partial L}{\partial y_{nj}}\hat x_{nj},
        \qquad
        \frac{\partial L}{\partial \beta_j} = \sum_n \frac{\partial L}{\partial y_{nj}}

    the same form as batch norm's backward pass, with the sums running over
    a sample's features instead of over the batch.

    Parameters
    ----------
    dy : ndarray, shape of the forward output
    cache : NormCache
        From :func:`layer_norm`.

    Returns
    -------
    dx : ndarray, shape and dtype of the input
    dgamma, dbeta : ndarray of shape normalized_shape, or None
        None when the forward pass had no ``gamma`` (``beta``).
    """
    return _backward(dy, cache)


# --- group norm ---------------------------------------------------------------------------
def _check_channels(x: np.ndarray, gamma: object, beta: object, name: str):
    c = x.shape[1]
    return _check_param(gamma, (c,), "gamma", name), _check_param(beta, (c,), "beta", name)


def group_norm(
    x: np.ndarray,
    num_groups: int,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, NormCache]:
    r"""Group normalization: each sample's channels are split into groups, normalized per group.

    .. math::

        \mu_{ng} = \frac{1}{M}\sum_{c \in g,\, s} x_{ncs}, \qquad
        \sigma_{ng}^2 = \frac{1}{M}\sum_{c \in g,\, s} (x_{ncs} - \mu_{ng})^2, \qquad
        y_{ncs} = \gamma_c \frac{x_{ncs} - \mu_{ng}}{\sqrt{\sigma_{ng}^2 + \epsilon}} + \beta_c

    where :math:`g` is the group of channel :math:`c` (channels
    :math:`gC/G, \dots, (g+1)C/G - 1`), :math:`s` runs over the spatial
    positions and :math:`M = (C/G) \cdot \prod \text{spatial}`. With
    ``num_groups=1`` this is layer norm over (C, *spatial) with per-channel
    ``gamma``; with ``num_groups=C`` it is instance norm. As in
    ``torch.nn.functional.group_norm``.

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, C, *spatial)
    num_groups : int
        G, a divisor of C.
    gamma, beta : ndarray, shape (C,), optional
        Per-channel scale and shift.
    eps : float

    Returns
    -------
    y : ndarray, same shape and dtype as ``x``
    cache : NormCache
        For :func:`group_norm_backward`; the float64 statistics have shape (N, G, 1).

    Raises
    ------
    ValueError
        If ``num_groups`` is not a positive divisor of C, ``x`` has fewer
        than 2 dimensions, or ``gamma``/``beta`` are not (C,).
    """
    eps = check_eps(eps)
    x = _as_float_array(x, "group_norm", 2)
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups <= 0:
        raise ValueError(f"group_norm: num_groups must be a positive integer, got {num_groups!r}")
    n, c = x.shape[0], x.shape[1]
    if c % num_groups:
        raise ValueError(
            f"group_norm: the number of channels C={c} must be divisible by num_groups={num_groups}"
        )
    gamma, beta = _check_channels(x, gamma, beta, "group_norm")
    grouped = (n, int(num_groups), x.size // max(n * int(num_groups), 1))
    param_shape = (1, c) + (1,) * (x.ndim - 2)
    return _forward(x, gamma, beta, eps, grouped, (2,), param_shape, (c,))


def group_norm_backward(
    dy: np.ndarray, cache: NormCache
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    r"""Gradients of :func:`group_norm`.

    The formula of :func:`layer_norm_backward`, with the averages taken over
    the :math:`M` values of one group of one sample, and
    :math:`\partial L/\partial\gamma_c`, :math:`\partial L/\partial\beta_c`
    summed over the samples and spatial positions of channel :math:`c`.

    Parameters
    ----------
    dy : ndarray, shape (N, C, *)
    cache : NormCache
        From :func:`group_norm`.

    Returns
    -------
    dx : ndarray, shape (N, C, *), the input's dtype
    dgamma, dbeta : ndarray of shape (C,), or None
    """
    return _backward(dy, cache)


# --- instance norm ------------------------------------------------------------------------
def instance_norm(
    x: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, NormCache]:
    r"""Instance normalization: each channel of each sample is normalized over its spatial positions.

    .. math::

        \mu_{nc} = \frac{1}{M}\sum_{s} x_{ncs}, \qquad
        \sigma_{nc}^2 = \frac{1}{M}\sum_{s} (x_{ncs} - \mu_{nc})^2, \qquad
        y_{ncs} = \gamma_c \frac{x_{ncs} - \mu_{nc}}{\sqrt{\sigma_{nc}^2 + \epsilon}} + \beta_c

    where :math:`s` runs over the :math:`M = \prod \text{spatial}` positions.
    This is group norm with one channel per group, and what
    ``torch.nn.functional.instance_norm`` computes without running statistics
    (the default of ``torch.nn.InstanceNorm2d``).

    Parameters
    ----------
    x : ndarray, shape (N, C, *spatial), at least one spatial axis
        With no spatial axis there is one value per channel and nothing to
        normalize over.
    gamma, beta : ndarray, shape (C,), optional
    eps : float

    Returns
    -------
    y : ndarray, same shape and dtype as ``x``
    cache : NormCache
        For :func:`instance_norm_backward`; the float64 statistics have shape (N, C, 1).

    Raises
    ------
    ValueError
        If ``x`` has fewer than 3 dimensions or ``gamma``/``beta`` are not (C,).
    """
    eps = check_eps(eps)
    x = _as_float_array(x, "instance_norm", 3)
    gamma, beta = _check_channels(x, gamma, beta, "instance_norm")
    n, c = x.shape[0], x.shape[1]
    grouped = (n, c, int(np.prod(x.shape[2:], dtype=np.int64)))
    param_shape = (1, c) + (1,) * (x.ndim - 2)
    return _forward(x, gamma, beta, eps, grouped, (2,), param_shape, (c,))


def instance_norm_backward(
    dy: np.ndarray, cache: NormCache
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    r"""Gradients of :func:`instance_norm`.

    The formula of :func:`layer_norm_backward`, with the averages taken over
    the spatial positions of one channel of one sample.

    Parameters
    ----------
    dy : ndarray, shape (N, C, *spatial)
    cache : NormCache
        From :func:`instance_norm`.

    Returns
    -------
    dx : ndarray, shape (N, C, *spatial), the input's dtype
    dgamma, dbeta : ndarray of shape (C,), or None
    """
    return _backward(dy, cache)
