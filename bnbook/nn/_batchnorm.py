"""Batch normalization for PyTorch, with bnbook's own autograd Function.

:class:`BatchNorm1d`, :class:`BatchNorm2d` and :class:`BatchNorm3d` are drop-in
replacements for ``torch.nn``'s, and subclasses of them: same constructor,
parameters, buffers, ``state_dict`` keys, train/eval behaviour and errors, and
every tool that looks for ``torch.nn.modules.batchnorm._BatchNorm`` (sync
conversion, module fusion, weight-decay filters) finds them. Only ``forward``
differs: the arithmetic runs in :class:`BatchNormFunction`, whose backward pass
is the analytic closed form (chapter 5), not autograd through the mean and
variance, and which never calls torch's native batch-norm kernel.

The Function also supports what torch's own layer supports: double backward
(gradient penalties), ``torch.func.vmap`` (eval mode) and forward-mode AD
(``torch.func.jvp``), and non-reentrant activation checkpointing.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.ao.quantization import fuser_method_mappings as _fusers
from torch.nn.modules import batchnorm as _torch_bn

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


def _reduce_dims(ndim: int) -> list[int]:
    return [0, *range(2, ndim)]


def _per_channel_count(x: Tensor) -> int:
    """How many values each channel of an (N, C, *) tensor has (0 when C == 0)."""
    return x.numel() // x.shape[1] if x.shape[1] else 0


def _check_floating(input: Tensor, who: str) -> None:
    if not (input.is_floating_point() and not input.is_complex()):
        raise ValueError(f"{who} expects a floating-point input, got dtype {input.dtype}")


class BatchNormFunction(torch.autograd.Function):
    r"""``y = (x - mean) / sqrt(var + eps) * weight + bias`` with an analytic backward.

    ``apply(x, weight, bias, mean, var, eps[, running_mean, running_var, momentum])``
    returns ``(y, mean, var)``.

    * When ``mean`` and ``var`` are None they are the batch's own statistics,
      computed here in two passes (the mean, then the biased variance of the
      centred values) and returned. If running buffers are given they are
      updated in place, inside the forward pass as torch's kernel does, with
      ``running = (1 - momentum) * running + momentum * batch_stat`` and the
      unbiased variance.
    * When ``mean`` and ``var`` are given they are constants (eval mode).

    The backward pass is the closed form

    .. math::

        \frac{\partial L}{\partial x} = \frac{\gamma}{\sqrt{\sigma^2+\epsilon}}
        \Big(g - \overline{g} - \hat x\,\overline{g\hat x}\Big)

    (bars are per-channel means over the :math:`m` values of a channel). Like
    torch's kernel it saves the input itself (not a float32 copy of a half
    input) and the per-channel mean and variance. Under ``create_graph=True``
    the same formula is evaluated with differentiable operations on the saved
    input, so a second derivative is exact. ``jvp`` gives forward-mode AD, and
    ``vmap`` rules are generated from ``forward``. Only ``y`` is differentiable.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor | None,
        var: Tensor | None,
        eps: float,
        running_mean: Tensor | None = None,
        running_var: Tensor | None = None,
        momentum: float = 0.0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        nd = x.dim()
        # Half-precision inputs are computed in float32 and returned in their own dtype, like torch.
        cd = torch.promote_types(x.dtype, torch.float32)
        w = None if weight is None else weight.to(cd)
        b = None if bias is None else bias.to(cd)
        if mean is None:
            m = _per_channel_count(x)
            xw = x.to(cd)
            mean = _channel_sum(xw) / max(m, 1)
            xc = xw - _bcast(mean, nd)
            var = _channel_sumsq(xc) / max(m, 1)
            if m > 1:
                with torch.no_grad():
                    if running_mean is not None:
                        running_mean.lerp_(mean.to(running_mean.dtype), momentum)
                    if running_var is not None:
                        running_var.lerp_((var * (m / (m - 1))).to(running_var.dtype), momentum)
            scale = torch.rsqrt(var + eps) if w is None else torch.rsqrt(var + eps) * w
            # The centred values become the output in place: one allocation the size of x.
            if b is None:
                y = xc.mul_(_bcast(scale, nd))
            else:
                y = torch.addcmul(_bcast(b, nd), xc, _bcast(scale, nd), out=xc)
            return y.to(x.dtype), mean, var
        # Copies: the caller's buffers must not come back as outputs of this Function.
        mean, var = mean.to(cd, copy=True), var.to(cd, copy=True)
        invstd = torch.rsqrt(var + eps)
        scale = invstd if w is None else invstd * w
        shift = -mean * scale if b is None else b - mean * scale
        y = torch.addcmul(_bcast(shift, nd), x.to(cd), _bcast(scale, nd))
        return y.to(x.dtype), mean, var

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        x, weight, bias, mean_in, _, eps = inputs[:6]
        _, mean, var = output
        ctx.batch_stats = mean_in is None
        ctx.eps = eps
        ctx.n_inputs = len(inputs)
        ctx.has_bias = bias is not None
        # The input itself, like torch's kernel: no float32 copy of a half input.
        ctx.save_for_backward(x, weight, mean, var)
        ctx.save_for_forward(x, weight, mean, var)
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, dy: Tensor | None, *_unused: Tensor | None):
        x, weight, mean, var = ctx.saved_tensors
        rest = (None,) * (ctx.n_inputs - 3)
        if dy is None:  # y did not reach the loss
            return (None, None, None, *rest)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: keep the graph of the backward pass
            dx, dw, db = _backward_differentiable(ctx, dy, x, weight, mean, var)
        else:
            dx, dw, db = _backward_fast(ctx, dy, x, weight, mean, var)
        dx = dx.to(x.dtype) if need_x else None
        dw = dw.to(weight.dtype) if weight is not None and need_w else None
        db = db.to(weight.dtype if weight is not None else x.dtype) if ctx.has_bias and need_b else None
        return (dx, dw, db, *rest)

    @staticmethod
    def jvp(ctx: Any, x_t: Tensor | None, w_t: Tensor | None, b_t: Tensor | None, *_unused: Any):
        x, weight, mean, var = ctx.saved_tensors
        nd = x.dim()
        cd = mean.dtype
        invstd = _bcast(torch.rsqrt(var + ctx.eps), nd)
        x_hat = (x.to(cd) - _bcast(mean, nd)) * invstd
        w = None if weight is None else _bcast(weight.to(cd), nd)
        y_t = torch.zeros_like(x_hat)
        if x_t is not None:
            xt = x_t.to(cd)
            if ctx.batch_stats:
                dims = _reduce_dims(nd)
                xt = xt - xt.mean(dims, keepdim=True)
                xt = invstd * (xt - x_hat * (x_hat * xt).mean(dims, keepdim=True))
            else:
                xt = xt * invstd
            y_t = y_t + (xt if w is None else xt * w)
        if w_t is not None:
            y_t = y_t + x_hat * _bcast(w_t.to(cd), nd)
        if b_t is not None:
            y_t = y_t + _bcast(b_t.to(cd), nd)
        return y_t.to(x.dtype), None, None


def _backward_fast(ctx: Any, dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, var: Tensor):
    """The closed form with in-place updates: two temporaries the size of ``x``."""
    cd = mean.dtype
    nd = x.dim()
    dy = dy.to(cd)
    invstd = torch.rsqrt(var + ctx.eps)
    k = invstd if weight is None else invstd * weight.to(cd)
    xc = x.to(cd) - _bcast(mean, nd)
    dbeta = _channel_sum(dy)
    buf = dy * xc  # becomes dx below
    dgamma = _channel_sum(buf) * invstd
    if not ctx.needs_input_grad[0]:
        return None, dgamma, dbeta
    if ctx.batch_stats:
        m = max(_per_channel_count(x), 1)
        # dx = k * (dy - dbeta/m - x_hat * dgamma/m), with x_hat = xc * invstd
        dx = torch.addcmul(_bcast(-k * dbeta / m, nd), xc, _bcast(-k * invstd * dgamma / m, nd), out=buf)
        dx.addcmul_(dy, _bcast(k, nd))
    else:
        dx = torch.mul(dy, _bcast(k, nd), out=buf)
    return dx, dgamma, dbeta


def _backward_differentiable(
    ctx: Any, dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, var: Tensor
):
    """The same closed form, written so that autograd can differentiate it again.

    With batch statistics the mean and variance are recomputed from the saved
    input, so that their dependence on ``x`` is part of the graph.
    """
    cd = mean.dtype
    nd = x.dim()
    dims = _reduce_dims(nd)
    g = dy.to(cd)
    xw = x.to(cd)
    if ctx.batch_stats:
        mu = xw.mean(dims, keepdim=True)
        xc = xw - mu
        invstd = torch.rsqrt((xc * xc).mean(dims, keepdim=True) + ctx.eps)
    else:
        xc = xw - _bcast(mean, nd)
        invstd = _bcast(torch.rsqrt(var + ctx.eps), nd)
    x_hat = xc * invstd
    dbeta = g.sum(dims)
    dgamma = (g * x_hat).sum(dims)
    k = invstd if weight is None else invstd * _bcast(weight.to(cd), nd)
    if ctx.batch_stats:
        m = max(_per_channel_count(x), 1)
        dx = k * (g - _bcast(dbeta, nd) / m - x_hat * _bcast(dgamma, nd) / m)
    else:
        dx = k * g
    return dx, dgamma, dbeta


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    function: Any = None,
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
    input : Tensor, shape (N, C, *), floating point
    running_mean, running_var : Tensor of shape (C,), or None
        Required when ``training`` is False.
    weight, bias : Tensor, shape (C,), optional
    training : bool
    momentum : float
    eps : float, > 0
    function : autograd Function, optional
        What computes it, called as :class:`BatchNormFunction`'s ``apply``
        (the default); ``bnbook.fast`` passes its fused kernels here.

    Returns
    -------
    Tensor, same shape as ``input``.

    Raises
    ------
    ValueError
        For input of fewer than 2 dimensions or of a non-floating dtype, for
        ``eps <= 0``, or for a batch with one value per channel in training.
        Nothing is updated when it raises.
    """
    if input.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, *), got {input.dim()}D input")
    _check_floating(input, "batch_norm")
    eps = check_eps(eps)
    function = BatchNormFunction if function is None else function
    c = input.shape[1]
    if training:
        if c and input.numel() // c == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )
        return function.apply(
            input, weight, bias, None, None, eps, running_mean, running_var, float(momentum)
        )[0]
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var must be given when training is False")
    return function.apply(input, weight, bias, running_mean, running_var, eps)[0]


class _BatchNorm(_torch_bn._BatchNorm):
    """torch's ``_BatchNorm`` with checked arguments and bnbook's ``forward``.

    The state (parameters, buffers, ``reset_parameters``, ``extra_repr`` and
    state-dict versioning) is torch's own, so checkpoints, ``.to()`` and every
    tool that inspects batch-norm layers treat this layer as torch's.
    """

    _ranks: tuple[int, ...] = ()

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
        super().__init__(
            check_num_features(num_features),
            check_eps(eps),
            check_momentum(momentum),
            affine,
            track_running_stats,
            device,
            dtype,
            bias=bias,
        )

    def _check_input_dim(self, input: Tensor) -> None:
        check_spatial_rank(input.dim(), self._ranks, type(self).__name__)

    def _function_for(self, input: Tensor) -> Any:
        """The autograd Function that computes this call (``bnbook.fast`` picks its fused one)."""
        return BatchNormFunction

    def forward(self, input: Tensor) -> Tensor:
        # Every check comes before any state changes, so a refused call changes nothing.
        self._check_input_dim(input)
        _check_floating(input, type(self).__name__)
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
            # As torch does, the counter moves before the statistics are computed, so that a
            # recomputation under activation checkpointing repeats both, in the same order.
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
            function=self._function_for(input),
        )


class BatchNorm1d(_BatchNorm, _torch_bn.BatchNorm1d):
    r"""Batch norm over a (N, C) or (N, C, L) input; drop-in for ``torch.nn.BatchNorm1d``.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics are per channel over N (and L). Training uses the batch's biased
    variance; ``running_var`` stores the unbiased one. ``momentum`` weights the
    new batch statistic (not optimizer momentum); ``None`` means a cumulative
    average. A subclass of ``torch.nn.BatchNorm1d`` that overrides ``forward``
    alone. See chapters 2 to 5 and 7.

    Examples
    --------
    >>> bn = BatchNorm1d(4)
    >>> y = bn(torch.randn(8, 4))
    >>> isinstance(bn, torch.nn.BatchNorm1d)
    True
    """

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm, _torch_bn.BatchNorm2d):
    r"""Batch norm over a (N, C, H, W) input; drop-in for ``torch.nn.BatchNorm2d``.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics are per channel over (N, H, W); see :class:`BatchNorm1d`.
    """

    _ranks = (4,)


class BatchNorm3d(_BatchNorm, _torch_bn.BatchNorm3d):
    r"""Batch norm over a (N, C, D, H, W) input; drop-in for ``torch.nn.BatchNorm3d``.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    Statistics are per channel over (N, D, H, W); see :class:`BatchNorm1d`.
    """

    _ranks = (5,)


def _register_fusers() -> None:
    """Let ``torch.ao.quantization.fuse_modules`` fuse bnbook's layers as it fuses torch's.

    torch looks fusion patterns up by exact module type, so each pattern that
    names ``torch.nn.BatchNormNd`` is registered once more with bnbook's class,
    mapped to the same fuser. Nothing of torch's own is changed.
    """
    ours = {
        _torch_bn.BatchNorm1d: BatchNorm1d,
        _torch_bn.BatchNorm2d: BatchNorm2d,
        _torch_bn.BatchNorm3d: BatchNorm3d,
    }
    table = _fusers._DEFAULT_OP_LIST_TO_FUSER_METHOD
    for pattern, fuser in list(table.items()):
        if any(t in ours for t in pattern):
            table.setdefault(tuple(ours.get(t, t) for t in pattern), fuser)


_register_fusers()
