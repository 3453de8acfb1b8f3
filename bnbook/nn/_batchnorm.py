"""Batch normalization for PyTorch, with bnbook's own autograd Function.

:class:`BatchNorm1d`, :class:`BatchNorm2d` and :class:`BatchNorm3d` are drop-in
replacements for ``torch.nn``'s: same constructor, parameters, buffers,
``state_dict`` keys, train/eval behaviour and errors. The arithmetic runs in
:class:`BatchNormFunction`, whose backward pass is the analytic closed form
(chapter 5), not autograd through the mean and variance, and which never calls
torch's native batch-norm kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.nn import Module, Parameter, init

from bnbook._checks import check_eps, check_momentum, check_num_features, check_spatial_rank

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchNormFunction", "batch_norm"]


def _runs(t: Tensor) -> Tensor:
    """View (N, C, *) as (N, C, M): each sample's values of one channel in a row."""
    return t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))


def _channel_sum(t: Tensor) -> Tensor:
    """Per-channel sum of an (N, C, *) tensor, shape (C,).

    Summing each sample's contiguous run of values first and then across the
    batch is several times faster on a CPU than one reduction over dims (0, 2, ...).
    """
    return _runs(t).sum(-1).sum(0)


def _channel_sumsq(t: Tensor) -> Tensor:
    """Per-channel sum of squares of an (N, C, *) tensor, shape (C,), in one pass over ``t``."""
    return torch.linalg.vector_norm(_runs(t), dim=-1).square().sum(0)


def _bcast(v: Tensor, ndim: int) -> Tensor:
    """View a (C,) tensor so that it broadcasts against (N, C, *)."""
    return v.view((1, -1) + (1,) * (ndim - 2))


class BatchNormFunction(torch.autograd.Function):
    r"""``y = (x - mean) / sqrt(var + eps) * weight + bias`` with an analytic backward.

    ``forward(x, weight, bias, mean, var, eps)`` returns ``(y, mean, var, xc)``.
    When ``mean`` and ``var`` are None they are the batch's own statistics,
    computed here in two passes (the mean, then the biased variance of the
    centred values ``xc``) and returned so that the caller can update running
    estimates; ``xc`` is kept for the backward pass, which is the closed form

    .. math::

        \frac{\partial L}{\partial x} = \frac{\gamma}{\sqrt{\sigma^2+\epsilon}}
        \Big(g - \overline{g} - \hat x\,\overline{g\hat x}\Big)

    (bars are per-channel means over the :math:`m` values of a channel). When
    ``mean`` and ``var`` are given they are constants: ``xc`` is empty, and the
    backward pass is the per-channel scale alone. Only ``y`` is differentiable.
    """

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor | None,
        var: Tensor | None,
        eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        nd = x.dim()
        # Half-precision inputs are computed in float32 and returned in their own dtype, like torch.
        cd = torch.promote_types(x.dtype, torch.float32)
        w = None if weight is None else weight.to(cd)
        b = None if bias is None else bias.to(cd)
        if mean is None:
            m = max(x.numel() // x.shape[1], 1)
            xw = x.to(cd)
            mean = _channel_sum(xw) / m
            xc = xw - _bcast(mean, nd)
            var = _channel_sumsq(xc) / m
            invstd = torch.rsqrt(var + eps)
            scale = invstd if w is None else invstd * w
            if b is None:
                y = xc * _bcast(scale, nd)
            else:
                y = torch.addcmul(_bcast(b, nd), xc, _bcast(scale, nd))
            return y.to(x.dtype), mean, var, xc
        # Copies: the caller's buffers must not come back as outputs of this Function.
        mean, var = mean.to(cd, copy=True), var.to(cd, copy=True)
        invstd = torch.rsqrt(var + eps)
        scale = invstd if w is None else invstd * w
        shift = -mean * scale if b is None else b - mean * scale
        y = torch.addcmul(_bcast(shift, nd), x.to(cd), _bcast(scale, nd))
        return y.to(x.dtype), mean, var, x.new_empty(0, dtype=cd)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, bias, mean_in, _, eps = inputs
        _, mean, var, xc = output
        ctx.batch_stats = mean_in is None
        # With batch statistics keep the centred input; otherwise the input itself.
        ctx.save_for_backward(xc if ctx.batch_stats else x, weight, mean, var)
        ctx.eps = eps
        ctx.x_dtype = x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.mark_non_differentiable(mean, var, xc)
        # No zero-filled gradients for the non-differentiable outputs (xc is as big as x).
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor, *_unused: Tensor | None):
        saved, weight, mean, var = ctx.saved_tensors
        if dy is None:  # y did not reach the loss
            return None, None, None, None, None, None
        cd = mean.dtype
        nd = saved.dim()
        c = saved.shape[1]
        dy = dy.to(cd)
        invstd = torch.rsqrt(var + ctx.eps)
        k = invstd if weight is None else invstd * weight.to(cd)
        xc = saved if ctx.batch_stats else saved.to(cd) - _bcast(mean, nd)
        dbeta = _channel_sum(dy)
        buf = dy * xc  # becomes dx below: one buffer the size of x, not two
        dgamma = _channel_sum(buf) * invstd
        if ctx.batch_stats:
            m = max(saved.numel() // c, 1)
            # dx = k * (dy - dbeta/m - x_hat * dgamma/m), with x_hat = xc * invstd
            dx = torch.addcmul(_bcast(-k * dbeta / m, nd), xc, _bcast(-k * invstd * dgamma / m, nd), out=buf)
            dx.addcmul_(dy, _bcast(k, nd))
        else:
            dx = dy * _bcast(k, nd)
        dx = dx.to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        dw = dgamma.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = dbeta.to(ctx.bias_dtype) if ctx.bias_dtype is not None and ctx.needs_input_grad[2] else None
        return dx, dw, db, None, None, None


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    r"""Functional batch norm with the semantics of ``torch.nn.functional.batch_norm``.

    .. math::

        y = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \gamma + \beta

    In training mode :math:`\mu, \sigma^2` are the batch's (biased variance)
    and the running buffers, when given, are updated in place:
    ``running = (1 - momentum) * running + momentum * batch_stat`` with the
    unbiased variance. Otherwise the running buffers are used.

    Parameters
    ----------
    input : Tensor, shape (N, C, *)
    running_mean, running_var : Tensor of shape (C,), or None
        Required when ``training`` is False.
    weight, bias : Tensor, shape (C,), optional
    training : bool
    momentum : float
    eps : float

    Returns
    -------
    Tensor, same shape as ``input``.
    """
    if input.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, *), got {input.dim()}D input")
    c = input.shape[1]
    if training:
        m = input.numel() // c
        if m == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )
        y, mean, var, _ = BatchNormFunction.apply(input, weight, bias, None, None, eps)
        if m > 1 and (running_mean is not None or running_var is not None):
            with torch.no_grad():
                if running_mean is not None:
                    running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                if running_var is not None:
                    running_var.lerp_((var * (m / (m - 1))).to(running_var.dtype), momentum)
        return y
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var must be given when training is False")
    y = BatchNormFunction.apply(input, weight, bias, running_mean, running_var, eps)[0]
    return y


class _NormBase(Module):
    """State of a batch-norm layer: parameters, buffers and their reset."""

    _version = 2

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        factory = {"device": device, "dtype": dtype}
        super().__init__()
        self.num_features = check_num_features(num_features)
        self.eps = check_eps(eps)
        self.momentum = check_momentum(momentum)
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        """Running mean 0, running variance 1, counter 0."""
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running statistics, and the scale to 1 and the shift to 0."""
        self.reset_running_stats()
        if self.affine:
            init.ones_(self.weight)
            if self.bias is not None:
                init.zeros_(self.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}"
        )

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        # Version 1 checkpoints had no counter; like torch, keep the current one (or 0).
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            current = self.num_batches_tracked
            usable = current is not None and current.device != torch.device("meta")
            state_dict[key] = current if usable else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class _BatchNorm(_NormBase):
    """Adds ``forward``: decide the mode, then call :func:`batch_norm`."""

    _ranks: tuple[int, ...] = ()

    def _check_input_dim(self, input: Tensor) -> None:
        check_spatial_rank(input.dim(), self._ranks, type(self).__name__)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects {self.num_features} channels on dim 1, "
                f"got {input.shape[1]} (input size {tuple(input.shape)})"
            )
        use_batch_stats = self.training or self.running_mean is None
        if use_batch_stats and input.numel() // input.shape[1] == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        # Like torch: buffers are passed unless training without tracking.
        pass_buffers = not self.training or self.track_running_stats
        return batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )


class BatchNorm1d(_BatchNorm):
    r"""Batch norm over a (N, C) or (N, C, L) input; drop-in for ``torch.nn.BatchNorm1d``.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics are per channel over N (and L). Training uses the batch's biased
    variance; ``running_var`` stores the unbiased one. ``momentum`` weights the
    new batch statistic (not optimizer momentum); ``None`` means a cumulative
    average.

    Examples
    --------
    >>> bn = BatchNorm1d(4)
    >>> y = bn(torch.randn(8, 4))
    """

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    r"""Batch norm over a (N, C, H, W) input; drop-in for ``torch.nn.BatchNorm2d``.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics are per channel over (N, H, W); see :class:`BatchNorm1d`.
    """

    _ranks = (4,)


class BatchNorm3d(_BatchNorm):
    r"""Batch norm over a (N, C, D, H, W) input; drop-in for ``torch.nn.BatchNorm3d``.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics are per channel over (N, D, H, W); see :class:`BatchNorm1d`.
    """

    _ranks = (5,)
