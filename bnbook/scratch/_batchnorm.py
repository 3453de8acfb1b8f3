"""Batch normalization from scratch, in NumPy only.

Two pure kernels do the arithmetic and return ``(out, cache)``; the layer
:class:`BatchNorm` only holds parameters, running statistics and the mode.
Conventions are PyTorch's: ``momentum`` weights the *new* batch statistic, the
batch is normalized with the biased variance, and the running variance stores
the unbiased one.

This module never imports torch. The chapters that explain it are
``chapters/02_batch_statistics``, ``03_scale_and_shift``, ``04_training_vs_inference``
and ``05_gradient_flow``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from bnbook._checks import check_eps, check_momentum, check_num_features

__all__ = [
    "BNCache",
    "BatchNorm",
    "batch_norm_backward",
    "batch_norm_backward_graph",
    "batch_norm_forward",
    "batch_norm_inference_forward",
    "reduction_axes",
]


class BNCache(NamedTuple):
    """What the backward pass needs from a forward pass.

    Attributes
    ----------
    x_hat : ndarray, shape (N, C, *)
        The normalized input.
    inv_std : ndarray, shape (C,)
        ``1 / sqrt(var + eps)`` per channel.
    gamma : ndarray of shape (C,), or None
        The scale that was applied (None when there was none).
    has_beta : bool
        Whether a shift was applied (so ``dbeta`` is returned).
    mean, var : ndarray, shape (C,)
        The statistics used to normalize (the variance is the biased one).
    batch_stats : bool
        True when the statistics came from the batch itself (training), so
        the gradient flows through them; False when they were fixed numbers.
    """

    x_hat: np.ndarray
    inv_std: np.ndarray
    gamma: np.ndarray | None
    has_beta: bool
    mean: np.ndarray
    var: np.ndarray
    batch_stats: bool


def _accumulator(dtype: np.dtype) -> type:
    """The dtype statistics accumulate in: float64 for half and single precision, as torch does on a CPU."""
    return np.float64 if np.dtype(dtype).itemsize < 8 else np.dtype(dtype).type


def reduction_axes(ndim: int) -> tuple[int, ...]:
    """Axes that batch statistics reduce over: every axis but the channel axis 1."""
    return (0, *range(2, ndim))


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a (C,) vector so that it broadcasts against an (N, C, *) array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _affine(x_hat: np.ndarray, gamma: np.ndarray | None, beta: np.ndarray | None) -> np.ndarray:
    if gamma is None and beta is None:
        return x_hat.copy()  # y must not share memory with the cached x_hat
    if gamma is None:
        y = x_hat.copy()
    else:
        y = x_hat * _per_channel(gamma.astype(x_hat.dtype, copy=False), x_hat.ndim)
    if beta is not None:
        y += _per_channel(beta.astype(x_hat.dtype, copy=False), x_hat.ndim)
    return y


def batch_norm_forward(
    x: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, BNCache]:
    r"""Normalize ``x`` with its own batch statistics (training mode).

    .. math::

        \mu_c = \frac{1}{m}\sum_i x_{ic}, \qquad
        \sigma_c^2 = \frac{1}{m}\sum_i (x_{ic} - \mu_c)^2, \qquad
        y_{ic} = \gamma_c \frac{x_{ic} - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c

    where :math:`i` runs over the :math:`m` values of channel :math:`c`
    (every axis except axis 1). The variance is computed in two passes, on
    the centred values, which stays accurate when the mean is large compared
    to the spread; :math:`E[x^2] - E[x]^2` would not. For float16 and float32
    input the statistics and the centred values are computed in float64, as
    torch does on a CPU, so a float32 batch near 1e4 normalizes correctly and
    the squared deviations of a float16 batch cannot overflow. An empty batch
    (N = 0) gives an empty output.

    Parameters
    ----------
    x : ndarray, shape (N, C) or (N, C, *spatial)
        Input. The output has the same dtype.
    gamma, beta : ndarray, shape (C,), optional
        Scale and shift. None leaves the normalized value unscaled/unshifted.
    eps : float
        Added to the variance before the square root.

    Returns
    -------
    y : ndarray, same shape and dtype as ``x``
    cache : BNCache
        Everything :func:`batch_norm_backward` needs, plus the batch mean and
        biased variance, per channel (float64 for float16 and float32 input).
    """
    axes = reduction_axes(x.ndim)
    acc = _accumulator(x.dtype)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if x.size == 0:  # an empty batch: empty output, as in torch
        mean, var = np.zeros(shape, acc), np.zeros(shape, acc)
        xc = x.astype(acc)
    else:
        mean = x.mean(axis=axes, dtype=acc, keepdims=True)
        xc = x.astype(acc) - mean
        var = np.square(xc).mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + eps)
    xc *= inv_std  # normalize in place: the centred copy is not needed any more
    x_hat = xc.astype(x.dtype, copy=False)
    y = _affine(x_hat, gamma, beta)
    return y, BNCache(
        x_hat,
        inv_std.reshape(-1).astype(x.dtype),
        gamma,
        beta is not None,
        mean.reshape(-1),
        var.reshape(-1),
        True,
    )


def batch_norm_inference_forward(
    x: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    gamma: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, BNCache]:
    r"""Normalize ``x`` with fixed statistics (inference mode).

    .. math::

        y_{ic} = \gamma_c \frac{x_{ic} - \hat\mu_c}{\sqrt{\hat\sigma_c^2 + \epsilon}} + \beta_c

    where :math:`\hat\mu_c, \hat\sigma_c^2` are given (usually running
    averages), so each output depends on its own input only.

    Parameters
    ----------
    x : ndarray, shape (N, C, *)
    mean, var : ndarray, shape (C,)
        The statistics to normalize with.
    gamma, beta : ndarray, shape (C,), optional
    eps : float

    Returns
    -------
    y : ndarray, same shape and dtype as ``x``
    cache : BNCache
        With ``batch_stats=False``: the backward pass is a per-channel scale.
    """
    dt = x.dtype
    acc = _accumulator(dt)
    inv_std64 = 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)
    centred = x.astype(acc) - _per_channel(np.asarray(mean, dtype=acc), x.ndim)
    x_hat = (centred * _per_channel(inv_std64.astype(acc), x.ndim)).astype(dt, copy=False)
    inv_std = inv_std64.astype(dt)
    mu = np.asarray(mean).astype(dt)
    y = _affine(x_hat, gamma, beta)
    return y, BNCache(x_hat, inv_std, gamma, beta is not None, mu, np.asarray(var).astype(dt), False)


def batch_norm_backward(
    dy: np.ndarray, cache: BNCache
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    r"""Gradients of a batch-norm forward pass, in the simplified closed form.

    With :math:`g_{ic} = \partial L / \partial y_{ic}` and :math:`m` values
    per channel:

    .. math::

        \frac{\partial L}{\partial \beta_c} = \sum_i g_{ic}, \qquad
        \frac{\partial L}{\partial \gamma_c} = \sum_i g_{ic}\,\hat x_{ic}, \\
        \frac{\partial L}{\partial x_{ic}} = \frac{\gamma_c}{\sqrt{\sigma_c^2+\epsilon}}
        \left( g_{ic} - \frac{1}{m}\frac{\partial L}{\partial \beta_c}
        - \hat x_{ic}\,\frac{1}{m}\frac{\partial L}{\partial \gamma_c} \right)

    The two subtracted terms are the paths through the batch mean and the
    batch variance; with fixed statistics (``cache.batch_stats`` False) they
    vanish and the gradient is the per-channel scale alone.

    Parameters
    ----------
    dy : ndarray, shape (N, C, *)
        Upstream gradient, same shape as the forward output.
    cache : BNCache
        From :func:`batch_norm_forward` or :func:`batch_norm_inference_forward`.

    Returns
    -------
    dx : ndarray, shape (N, C, *)
    dgamma, dbeta : ndarray of shape (C,), or None
        None when the forward pass had no ``gamma`` (``beta``).
    """
    x_hat, inv_std, gamma, has_beta, _, _, batch_stats = cache
    nd = x_hat.ndim
    axes = reduction_axes(nd)
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    scale = inv_std if gamma is None else inv_std * gamma.astype(inv_std.dtype, copy=False)
    if batch_stats:
        m = max(x_hat.size // x_hat.shape[1], 1)
        # dx = scale * (dy - dbeta/m - x_hat * dgamma/m), updated in place on one new array
        dx = dy - _per_channel(dbeta / m, nd)
        dx -= x_hat * _per_channel(dgamma / m, nd)
        dx *= _per_channel(scale, nd)
    else:
        dx = dy * _per_channel(scale, nd)
    return (
        dx.astype(dy.dtype, copy=False),
        dgamma if gamma is not None else None,
        dbeta if has_beta else None,
    )


def batch_norm_backward_graph(
    dy: np.ndarray,
    x: np.ndarray,
    gamma: np.ndarray | None = None,
    eps: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The same gradients, walked node by node back through the forward graph.

    Slower than :func:`batch_norm_backward` and kept for teaching: every line
    is one local chain-rule step,
    :math:`\partial L/\partial\hat x`, :math:`\partial L/\partial\sigma^2`,
    :math:`\partial L/\partial\mu`, then :math:`\partial L/\partial x`:

    .. math::

        \frac{\partial L}{\partial \sigma^2} = \sum_i \frac{\partial L}{\partial \hat x_i}
            (x_i-\mu)\left(-\tfrac12\right)(\sigma^2+\epsilon)^{-3/2}, \\
        \frac{\partial L}{\partial \mu} = -\sum_i \frac{\partial L}{\partial \hat x_i}
            \frac{1}{\sqrt{\sigma^2+\epsilon}}
            + \frac{\partial L}{\partial \sigma^2}\,\frac{-2}{m}\sum_i (x_i-\mu), \\
        \frac{\partial L}{\partial x_i} =
            \frac{\partial L}{\partial \hat x_i}\frac{1}{\sqrt{\sigma^2+\epsilon}}
            + \frac{\partial L}{\partial \sigma^2}\frac{2(x_i-\mu)}{m}
            + \frac{\partial L}{\partial \mu}\frac{1}{m}

    Parameters
    ----------
    dy, x : ndarray, shape (N, C, *)
    gamma : ndarray, shape (C,), optional
    eps : float

    Returns
    -------
    dx : ndarray, shape (N, C, *)
    dgamma, dbeta : ndarray, shape (C,)
    """
    nd = x.ndim
    axes = reduction_axes(nd)
    m = x.size // x.shape[1]
    g = np.ones(x.shape[1], dtype=x.dtype) if gamma is None else gamma
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = (xc**2).mean(axis=axes, keepdims=True)
    std = np.sqrt(var + eps)
    x_hat = xc / std

    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    dx_hat = dy * _per_channel(g, nd)
    dvar = (dx_hat * xc * -0.5 * std**-3).sum(axis=axes, keepdims=True)
    dmu = (-dx_hat / std).sum(axis=axes, keepdims=True) + dvar * (-2.0 / m) * xc.sum(
        axis=axes, keepdims=True
    )
    dx = dx_hat / std + dvar * 2.0 * xc / m + dmu / m
    return dx, dgamma, dbeta


def _to_numpy(value: Any) -> np.ndarray:
    """NumPy copy of an array-like or a torch tensor (without importing torch)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.array(value)


class BatchNorm:
    r"""A batch-normalization layer in NumPy with PyTorch's semantics.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    In training mode the statistics are the batch's own (biased variance),
    and the running estimates are updated as
    ``running = (1 - momentum) * running + momentum * batch_stat``, with the
    *unbiased* variance. ``momentum`` is PyTorch's: it weights the new value
    (Keras and the original paper weight the old one, 0.9 or 0.99). With
    ``momentum=None`` the running estimates are a cumulative average. In
    eval mode the running estimates are used, unless
    ``track_running_stats=False``, in which case batch statistics are used
    in both modes.

    Parameters
    ----------
    num_features : int
        C, the size of axis 1 of the input.
    eps : float
        Added to the variance; must be > 0.
    momentum : float in [0, 1] or None
    affine : bool
        Whether to learn ``gamma`` (init 1) and ``beta`` (init 0).
    track_running_stats : bool

    Shape
    -----
    Input (N, C) or (N, C, *spatial); output the same. Statistics are per
    channel over every other axis. Float inputs keep their dtype; integer
    inputs are computed in float64. Parameters and running statistics are
    float64.

    Examples
    --------
    >>> bn = BatchNorm(3)
    >>> y = bn(np.random.default_rng(0).normal(5.0, 2.0, size=(16, 3)))
    >>> dx = bn.backward(np.ones_like(y))
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
    ) -> None:
        self.num_features = check_num_features(num_features)
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        c = self.num_features
        self.gamma: np.ndarray | None = np.ones(c) if self.affine else None
        self.beta: np.ndarray | None = np.zeros(c) if self.affine else None
        self.grad_gamma: np.ndarray | None = None
        self.grad_beta: np.ndarray | None = None
        self.running_mean: np.ndarray | None = None
        self.running_var: np.ndarray | None = None
        self.num_batches_tracked: int | None = None
        if self.track_running_stats:
            self.reset_running_stats()
        self.training = True
        self._cache: BNCache | None = None
        self._out_shape: tuple[int, ...] | None = None

    # --- state -------------------------------------------------------------
    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, counter 0."""
        if self.track_running_stats:
            self.running_mean = np.zeros(self.num_features)
            self.running_var = np.ones(self.num_features)
            self.num_batches_tracked = 0

    def train(self, mode: bool = True) -> BatchNorm:
        """Switch to training mode (or to eval mode with ``mode=False``)."""
        if not isinstance(mode, bool):
            raise ValueError(f"training mode is expected to be boolean, got {mode!r}")
        self.training = mode
        return self

    def eval(self) -> BatchNorm:
        """Switch to eval mode: use running statistics, if tracked."""
        return self.train(False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state under PyTorch's keys."""
        state: dict[str, np.ndarray] = {}
        if self.affine:
            state["weight"] = self.gamma.copy()
            state["bias"] = self.beta.copy()
        if self.track_running_stats:
            state["running_mean"] = self.running_mean.copy()
            state["running_var"] = self.running_var.copy()
            state["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state under PyTorch's keys (NumPy arrays or torch tensors).

        Raises ``ValueError`` on missing or unexpected keys or a wrong shape;
        nothing is changed unless every entry is valid.
        """
        expected = list(self.state_dict())
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if missing or unexpected:
            raise ValueError(
                f"state_dict does not match: missing keys {missing}, unexpected keys {unexpected}"
            )
        new: dict[str, np.ndarray] = {}
        for key in expected:
            value = _to_numpy(state_dict[key])
            want = () if key == "num_batches_tracked" else (self.num_features,)
            if value.shape != want:
                raise ValueError(f"{key}: expected shape {want}, got {value.shape}")
            if not np.issubdtype(value.dtype, np.number):
                raise ValueError(f"{key}: expected numbers, got dtype {value.dtype}")
            new[key] = value
        if self.affine:
            self.gamma = new["weight"].astype(np.float64)
            self.beta = new["bias"].astype(np.float64)
        if self.track_running_stats:
            self.running_mean = new["running_mean"].astype(np.float64)
            self.running_var = new["running_var"].astype(np.float64)
            self.num_batches_tracked = int(new["num_batches_tracked"])

    # --- forward / backward ------------------------------------------------
    def _check_input(self, x: Any) -> np.ndarray:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as err:
            raise TypeError(f"BatchNorm expects a numeric array, could not convert input: {err}") from err
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
            raise TypeError(f"BatchNorm expects a numeric array, got dtype {arr.dtype}")
        if np.iscomplexobj(arr):
            raise TypeError("BatchNorm expects real numbers, got a complex array")
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float64)
        if arr.ndim < 2:
            raise ValueError(
                f"BatchNorm expects input of shape (N, C) or (N, C, *spatial), got {arr.ndim}D input "
                f"of shape {arr.shape}"
            )
        if arr.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm expects {self.num_features} channels on axis 1, got {arr.shape[1]} "
                f"(input shape {arr.shape})"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError("BatchNorm input contains non-finite values (nan or inf)")
        return arr

    def _uses_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def __call__(self, x: Any) -> np.ndarray:
        """Normalize ``x`` (N, C, *) and, in training mode, update the running statistics."""
        x = self._check_input(x)
        if self._uses_batch_stats():
            m = x.size // self.num_features
            if m == 1:
                raise ValueError(
                    f"Expected more than 1 value per channel when training, got input size {x.shape}"
                )
            y, cache = batch_norm_forward(x, self.gamma, self.beta, self.eps)
            if self.training and self.track_running_stats:
                self._update_running_stats(cache.mean, cache.var, m)
        else:
            y, cache = batch_norm_inference_forward(
                x, self.running_mean, self.running_var, self.gamma, self.beta, self.eps
            )
        self._cache = cache
        self._out_shape = y.shape
        return y

    def _update_running_stats(self, mean: np.ndarray, var: np.ndarray, m: int) -> None:
        self.num_batches_tracked += 1
        if m == 0:  # an empty batch counts, but carries no statistics (as in torch)
            return
        mean = mean.astype(np.float64)
        var_unbiased = var.astype(np.float64) * (m / (m - 1))
        f = 1.0 / self.num_batches_tracked if self.momentum is None else self.momentum
        self.running_mean = (1.0 - f) * self.running_mean + f * mean
        self.running_var = (1.0 - f) * self.running_var + f * var_unbiased

    def backward(self, dy: Any) -> np.ndarray:
        """Gradient with respect to the last input; sets ``grad_gamma`` and ``grad_beta``."""
        if self._cache is None:
            raise RuntimeError("backward called before any forward pass")
        dy_arr = np.asarray(dy)
        if not np.issubdtype(dy_arr.dtype, np.number) or dy_arr.dtype == np.bool_:
            raise TypeError(f"dy must be a numeric array, got dtype {dy_arr.dtype}")
        if dy_arr.shape != self._out_shape:
            raise ValueError(
                f"dy has shape {dy_arr.shape}, but the last output had shape {self._out_shape}"
            )
        dy_arr = dy_arr.astype(self._cache.x_hat.dtype, copy=False)
        dx, dgamma, dbeta = batch_norm_backward(dy_arr, self._cache)
        self.grad_gamma, self.grad_beta = dgamma, dbeta
        return dx

    def __repr__(self) -> str:
        return (
            f"BatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats})"
        )
