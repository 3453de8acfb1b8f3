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

The plain training call on ``(N, C)`` input, a small network's usual case,
takes a short path with fewer tensor operations (:class:`_TrainRowsFunction`).
On a small batch the Python around those operations costs more than they do,
so where bnbook's C++ kernels are built (``make dev`` builds them; see
:mod:`bnbook.fast`) the layers run a copy of that Function written in C++:
the same ATen operations in the same order, so the same numbers bit for bit,
as one autograd node. The layers never build anything themselves; without the
kernels they run the Python Function. ``make bench`` times both against
torch's layer.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.ao.quantization import fuser_method_mappings as _fusers
from torch.autograd import forward_ad as _forward_ad
from torch.nn.modules import batchnorm as _torch_bn

from bnbook._checks import BadInputError, UnsupportedDtypeError, check_spatial_rank

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
    if not input.is_floating_point():
        raise UnsupportedDtypeError(f"{who} expects a floating-point input, got dtype {input.dtype}")


_HALF = (torch.float16, torch.bfloat16)
_OPERANDS = ("weight", "bias", "running_mean", "running_var")
_is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor


def _check_operands(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
) -> None:
    """torch's checks on the per-channel operands, raised before anything changes.

    Each must have C entries and the input's dtype (float32 also goes with a
    half-precision input, as in torch's mixed-precision rule), and running
    statistics must not require grad (they are updated in place, outside autograd).
    """
    c = input.shape[1]
    dt = input.dtype
    if (  # the usual call, every operand as it should be, checked at the cost of a few attribute reads
        (weight is None or (weight.dtype is dt and weight.numel() == c))
        and (bias is None or (bias.dtype is dt and bias.numel() == c))
        and (running_mean is None or (running_mean.dtype is dt and running_mean.numel() == c
                                      and not running_mean.requires_grad))
        and (running_var is None or (running_var.dtype is dt and running_var.numel() == c
                                     and not running_var.requires_grad))
    ):
        return
    for name, t in zip(_OPERANDS, (weight, bias, running_mean, running_var), strict=True):
        if t is None:
            continue
        if t.numel() != c:
            raise BadInputError(
                f"{name} should contain {c} elements not {t.numel()} (input size {tuple(input.shape)})"
            )
        if t.dtype != input.dtype and not (input.dtype in _HALF and t.dtype == torch.float32):
            raise BadInputError(
                f"mixed dtypes: input is {input.dtype} but {name} is {t.dtype}; convert one of them "
                f"(a float32 {name} is accepted only with a float16 or bfloat16 input)"
            )
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.requires_grad:
            raise BadInputError(
                f"{name} requires grad, but running statistics are updated in place outside autograd; "
                f"pass a buffer (or {name}.detach())"
            )


def _check_eps_at_forward(eps: float, training: bool) -> None:
    """torch's rule, checked when the layer runs: eps > 0 with batch statistics, >= 0 otherwise."""
    if training and not eps > 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if not eps >= 0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    if eps == math.inf:
        raise ValueError("batch_norm eps must be finite, but got inf")


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
        cd = x.dtype if x.dtype not in _HALF else torch.float32
        w = None if weight is None else _as(weight, cd)
        b = None if bias is None else _as(bias, cd)
        if mean is None:
            m = _per_channel_count(x)
            xw = _as(x, cd)
            if nd == 2:  # (N, C): one reduction over the rows; no reshape needed
                inv_m = _const(1.0 / max(m, 1), xw)
                mean = xw.sum(0).mul_(inv_m)
                xc = xw - mean
                var = torch.linalg.vecdot(xc, xc, dim=0).mul_(inv_m)
            else:
                mean = _channel_sum(xw) / max(m, 1)
                xc = xw - _bcast(mean, nd)
                var = _channel_sumsq(xc) / max(m, 1)
            if m > 1:
                with torch.no_grad():
                    if running_mean is not None:
                        running_mean.lerp_(_as(mean, running_mean.dtype), momentum)
                    if running_var is not None:
                        running_var.lerp_(_as(var * _const(m / (m - 1), var), running_var.dtype), momentum)
            scale = torch.rsqrt(var + _const(eps, var))
            if w is not None:
                scale = scale.mul_(w)
            # The centred values become the output in place: one allocation the size of x.
            if nd > 2:
                scale, b = _bcast(scale, nd), (None if b is None else _bcast(b, nd))
            # Under vmap the centred values are a batched tensor, which cannot be an out= argument (and
            # a compiler, which cannot trace that question, fuses the operations anyway).
            in_place = not (torch.compiler.is_compiling() or _is_wrapped(xc))
            y = xc.mul_(scale) if b is None else _affine(xc, scale, b, out=xc if in_place else None)
            return _as(y, x.dtype), mean, var
        y = _eval_affine(x, w, b, mean, var, eps, cd)
        # Copies: the caller's buffers must not come back as outputs of this Function.
        return y, mean.to(cd, copy=True), var.to(cd, copy=True)

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
        if _forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active():
            ctx.save_for_forward(x, weight, mean, var)  # for jvp; only forward-mode AD needs it
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
        dx = _as(dx, x.dtype) if need_x else None
        dw = _as(dw, weight.dtype) if weight is not None and need_w else None
        db = _as(db, x.dtype if weight is None else weight.dtype) if ctx.has_bias and need_b else None
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


def _eval_affine(
    x: Tensor, w: Tensor | None, b: Tensor | None, mean: Tensor, var: Tensor, eps: float, cd: torch.dtype
) -> Tensor:
    """``y = x * scale + shift`` per channel: ``scale = w/sqrt(var + eps)``, ``shift = b - mean*scale``."""
    scale = torch.rsqrt(_as(var, cd) + eps)
    if w is not None:
        scale = scale * w
    mean = _as(mean, cd)
    shift = torch.mul(mean, scale).neg_() if b is None else torch.addcmul(b, mean, scale, value=-1)
    nd = x.dim()
    if nd > 2:
        shift, scale = _bcast(shift, nd), _bcast(scale, nd)
    return _as(_affine(_as(x, cd), scale, shift), x.dtype)


_CONSTANTS: dict[tuple[float, torch.dtype, torch.device], Tensor] = {}


def _const(value: float, like: Tensor) -> Tensor:
    """``value`` as a 0-dim tensor of ``like``'s dtype and device, made once and reused.

    A Python number in a tensor operation is wrapped into a tensor on every
    call; for the per-channel vectors of a small layer that wrapping costs as
    much as the arithmetic, so the few constants of a layer are kept.
    """
    key = (value, like.dtype, like.device)
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) > 4096:  # many batch sizes or eps values: start afresh
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = torch.tensor(value, dtype=like.dtype, device=like.device)
    return t


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``, without a call into torch when it already is."""
    return t if t.dtype is dtype else t.to(dtype)


def _backward_fast(ctx: Any, dy: Tensor, x: Tensor, weight: Tensor | None, mean: Tensor, var: Tensor):
    """The closed form with in-place updates: two temporaries the size of ``x``."""
    cd = mean.dtype
    nd = x.dim()
    dy = _as(dy, cd)
    invstd = torch.rsqrt(var + _const(ctx.eps, var))
    k = invstd if weight is None else invstd * _as(weight, cd)
    if nd == 2:  # (N, C): per-channel vectors broadcast as they are, and one reduction sums a channel
        xc = _as(x, cd) - mean
        dbeta = dy.sum(0)
        buf = dy * xc  # becomes dx below
        dgamma = buf.sum(0).mul_(invstd)
    else:
        xc = _as(x, cd) - _bcast(mean, nd)
        dbeta = _channel_sum(dy)
        buf = dy * xc
        dgamma = _channel_sum(buf).mul_(invstd)
    if not ctx.needs_input_grad[0]:
        return None, dgamma, dbeta
    if not ctx.batch_stats:
        return torch.mul(dy, k if nd == 2 else _bcast(k, nd), out=buf), dgamma, dbeta
    # dx = k * (dy - dbeta/m - x_hat * dgamma/m), with x_hat = xc * invstd
    a = k * _const(-1.0 / max(_per_channel_count(x), 1), k)
    c0, c1 = a * dbeta, (a * invstd).mul_(dgamma)
    if nd > 2:
        k, c0, c1 = _bcast(k, nd), _bcast(c0, nd), _bcast(c1, nd)
    dx = _affine(dy, k, c0, out=buf)
    return dx.addcmul_(xc, c1), dgamma, dbeta


def _affine(x: Tensor, scale: Tensor, shift: Tensor, out: Tensor | None = None) -> Tensor:
    """``x * scale + shift`` with per-channel ``scale`` and ``shift`` (already shaped to broadcast).

    On (N, C) input one ``addcmul`` does it. On (N, C, *) input ``addcmul``
    with a broadcast first operand takes a slow path on the CPU (several
    times slower than a multiply and an in-place add), so it is done as those two.
    """
    if x.dim() == 2:
        return torch.addcmul(shift, x, scale, out=out)
    return torch.mul(x, scale, out=out).add_(shift)


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


class _TrainRowsFunction(torch.autograd.Function):
    r"""The plain training call on ``(N, C)`` input, with as few tensor operations as the maths allows.

    ``apply(x, weight, bias, running_mean, running_var, eps, momentum) -> y``
    computes what :class:`BatchNormFunction` computes for this case (batch
    statistics, running buffers updated in place, affine output) and the same
    closed-form backward. It exists for speed alone: on a small batch every
    tensor operation costs about a microsecond whatever its size, so the
    per-channel algebra is arranged to need fewer of them (9 in the forward
    pass, 9 in the backward pass, against about 25 for the general path).

    Only :meth:`_BatchNorm.forward` calls it, and only for a float32 or
    float64 input with weight, bias and running buffers, outside every
    functorch transform, forward-mode AD and compiler; everything else takes
    :class:`BatchNormFunction`. Under ``create_graph=True`` the backward pass
    is the differentiable one that :class:`BatchNormFunction` uses.

    ``EagerRows`` in ``bnbook/fast/_bn_kernels.cpp`` is this Function written
    in C++ (see :func:`use_compiled_rows`): a change here must be made there too,
    and ``tests/test_nn_compiled.py`` fails until the two agree bit for bit.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor,
                running_var: Tensor, eps: float, momentum: float) -> Tensor:
        n = x.shape[0]
        mean = x.sum(0).mul_(_const(1.0 / n, x))
        xc = x - mean
        sumsq = torch.linalg.vecdot(xc, xc, dim=0)
        invstd = torch.add(_const(eps, x), sumsq, alpha=1.0 / n).rsqrt_()  # 1 / sqrt(var + eps)
        torch._foreach_lerp_((running_mean, running_var), (mean, sumsq * _const(1.0 / (n - 1), x)), momentum)
        k = invstd * weight
        ctx.save_for_backward(x, weight, mean, invstd, k)
        ctx.eps = eps
        return torch.addcmul(bias, xc, k, out=xc)

    @staticmethod
    def backward(ctx: Any, dy: Tensor):
        x, weight, mean, invstd, k = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: a backward pass that can be differentiated
            ctx.batch_stats = True
            dx, dw, db = _backward_differentiable(ctx, dy, x, weight, mean, None)
        else:
            xc = x - mean
            db = dy.sum(0)
            dot = torch.linalg.vecdot(dy, xc, dim=0)
            if need_x:
                # dx = k * (dy - dbeta / n - x_hat * dgamma / n), with x_hat = xc * invstd
                k_n = k * _const(-1.0 / x.shape[0], k)
                dw, c0, c1 = torch._foreach_mul((dot, db, dot), (invstd, k_n, (k_n * invstd).mul_(invstd)))
                dx = torch.addcmul(c0, dy, k).addcmul_(xc, c1)
            else:
                dw, dx = dot.mul_(invstd), None
        return (dx if need_x else None, dw if need_w else None, db if need_b else None,
                None, None, None, None)


_TRAIN_ROWS = super(torch.autograd.Function, _TrainRowsFunction).apply  # no per-call signature binding


def use_compiled_rows(compiled: Any) -> None:
    """Run the short path from C++ on CPU tensors: ``compiled`` is :class:`_TrainRowsFunction` written there.

    ``bnbook.fast``'s extension carries a copy of :class:`_TrainRowsFunction`,
    the same ATen operations in the same order (so the same numbers, bit for
    bit; ``tests/test_nn_compiled.py`` checks it), as one autograd node written
    in C++. On a small batch the Python around the operations costs more than
    the operations, and that copy does without it. ``bnbook.fast`` calls this
    when its extension loads; ``None`` goes back to the Python Function.
    """
    if compiled is None:
        TRAIN_ROWS_PATHS[BatchNormFunction] = _TRAIN_ROWS
        return

    def rows(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
             eps: float, momentum: float) -> Tensor:
        if x.is_cpu:
            return compiled(x, weight, bias, running_mean, running_var, eps, momentum)
        return _TRAIN_ROWS(x, weight, bias, running_mean, running_var, eps, momentum)

    TRAIN_ROWS_PATHS[BatchNormFunction] = rows


def _first_rows_call(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor, running_var: Tensor,
                     eps: float, momentum: float) -> Tensor:
    """The short path's first call: the compiled copy if the kernels are built already, else Python.

    Nothing is built here (a compiler may take a minute, or be missing): the
    layers only load what ``make dev`` or an earlier ``bnbook.fast.load()`` built.
    """
    TRAIN_ROWS_PATHS[BatchNormFunction] = _TRAIN_ROWS
    from bnbook import fast  # loading the extension calls use_compiled_rows

    fast.load_built()
    return TRAIN_ROWS_PATHS[BatchNormFunction](x, weight, bias, running_mean, running_var, eps, momentum)


#: The short path of each computing Function for the plain training call on (N, C) input, called as
#: ``path(x, weight, bias, running_mean, running_var, eps, momentum) -> y``; ``bnbook.fast`` adds its own.
TRAIN_ROWS_PATHS: dict[Any, Any] = {BatchNormFunction: _first_rows_call}
_FULL_DTYPES = (torch.float32, torch.float64)


def _autocast_on(input: Tensor) -> bool:
    """Whether autocast is on for the input's device; torch's layer then runs batch norm as it is."""
    if not torch._C._is_any_autocast_enabled():
        return False
    kind = input.device.type
    return torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)


def _tracing() -> bool:
    """Whether ``torch.jit.trace`` is recording: it records ATen operations, not Python Functions."""
    return torch._C._get_tracing_state() is not None


def _rows_fast_path(input: Tensor, weight: Tensor | None, bias: Tensor | None,
                    running_mean: Tensor | None, running_var: Tensor | None) -> bool:
    """Whether a training call on ``(N, C)`` input may take :class:`_TrainRowsFunction`."""
    return (
        weight is not None
        and bias is not None
        and running_mean is not None
        and running_var is not None
        and input.dtype in _FULL_DTYPES
        and input.shape[0] > 1
        and torch.is_grad_enabled()
        and (input.requires_grad or weight.requires_grad or bias.requires_grad)
        and _forward_ad._current_level < 0
        and not torch._C._are_functorch_transforms_active()
        and not torch.compiler.is_compiling()
        and type(input) is Tensor
        and not _is_wrapped(input)
    )


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
        For input of fewer than 2 dimensions, for ``eps <= 0`` in training (or
        ``< 0`` in eval), or for a batch with one value per channel in training,
        as torch does.
    BadInputError
        (a ``ValueError`` and a ``RuntimeError``, like torch's) for a
        per-channel operand with the wrong number of entries or another dtype
        than the input, or running statistics that require grad.
    UnsupportedDtypeError
        (a ``ValueError`` and a ``NotImplementedError``) for integer input.

    Nothing is updated when it raises.
    """
    if _autocast_on(input):
        with torch.autocast(input.device.type, enabled=False):  # as torch: autocast leaves batch norm alone
            return batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
                              function=function)
    if input.dim() < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, *), got {input.dim()}D input")
    _check_floating(input, "batch_norm")
    eps = float(eps)
    _check_eps_at_forward(eps, training)
    _check_operands(input, weight, bias, running_mean, running_var)
    c = input.shape[1]
    if training:
        if c and input.numel() // c == 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )
    elif running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var must be given when training is False")
    if _tracing():  # one aten::batch_norm, which traces, checks and saves as torch's layer does
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    return _dispatch(input, running_mean, running_var, weight, bias, training, momentum, eps, function)


def _dispatch(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    function: Any,
) -> Tensor:
    """Run checked arguments through ``function`` (default :class:`BatchNormFunction`)."""
    if (function is None or function is BatchNormFunction) and _no_autograd(input, weight, bias):
        # Nothing to differentiate: run the Function's arithmetic without building a graph node.
        if training:
            return BatchNormFunction.forward(
                input, weight, bias, None, None, eps, running_mean, running_var, float(momentum)
            )[0]
        cd = input.dtype if input.dtype not in _HALF else torch.float32
        w = None if weight is None else _as(weight, cd)
        b = None if bias is None else _as(bias, cd)
        return _eval_affine(input, w, b, running_mean, running_var, eps, cd)
    function = BatchNormFunction if function is None else function
    if training:
        return apply_unbound(
            function, input, weight, bias, None, None, eps, running_mean, running_var, float(momentum)
        )[0]
    return apply_unbound(function, input, weight, bias, running_mean, running_var, eps, None, None, 0.0)[0]


def apply_unbound(function: Any, *args: Any) -> Any:
    """``function.apply(*args)``, without torch's per-call signature binding where nothing needs it.

    For a Function with ``setup_context``, torch binds every call's arguments
    to ``forward``'s signature (with ``inspect``: tens of microseconds) so that
    defaults reach ``setup_context``. When every argument is passed, outside
    functorch transforms and compilers, there is nothing to bind, and the call
    goes straight to autograd's C++ entry point: the same graph, the same
    outputs. Anything else (a transform, ``torch.compile``, a Function that is
    not a ``torch.autograd.Function``) takes ``function.apply`` as usual.
    """
    if (
        not (isinstance(function, type) and issubclass(function, torch.autograd.Function))
        or torch.compiler.is_compiling()
        or torch._C._are_functorch_transforms_active()
        or any(isinstance(a, Tensor) and _is_wrapped(a) for a in args[:3])
    ):
        return function.apply(*args)
    return super(torch.autograd.Function, function).apply(*args)


def _no_autograd(*tensors: Tensor | None) -> bool:
    """True when no autograd mode could record this call: no grad needed, no forward AD, no transform."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return False
    if torch.compiler.is_compiling():  # a compiler traces this call: let it see the Function
        return False
    return (
        _forward_ad._current_level < 0
        and not torch._C._are_functorch_transforms_active()
        and not _is_wrapped(tensors[0])
    )


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
            _torch_like_count(num_features),
            _torch_like_real(eps, "eps"),
            None if momentum is None else _torch_like_real(momentum, "momentum"),
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
        if _autocast_on(input):
            # As with torch's layer, autocast leaves batch norm alone: it computes in the input's dtype.
            with torch.autocast(input.device.type, enabled=False):
                return self.forward(input)
        # Every check comes before any state changes, so a refused call changes nothing.
        if input.dim() not in self._ranks:
            self._check_input_dim(input)
        if not input.is_floating_point():
            _check_floating(input, type(self).__name__)
        c = input.shape[1]
        if c != self.num_features:
            raise BadInputError(
                f"{type(self).__name__} expects {self.num_features} channels on dim 1, "
                f"got {c} (input size {tuple(input.shape)})"
            )
        training = self.training
        params, buffers = self._parameters, self._buffers
        try:
            weight, bias = params["weight"], params["bias"]
        except KeyError:  # a parametrized weight or bias (torch.nn.utils.parametrize) is computed on access
            weight, bias = self.weight, self.bias
        running_mean, running_var = buffers["running_mean"], buffers["running_var"]
        tracked = buffers["num_batches_tracked"]
        use_batch_stats = training or running_mean is None
        eps = self.eps
        if not (eps > 0 if use_batch_stats else eps >= 0) or eps == math.inf:
            _check_eps_at_forward(eps, use_batch_stats)
        if use_batch_stats and input.numel() == c:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )
        _check_operands(input, weight, bias, running_mean, running_var)
        momentum = self.momentum
        factor = 0.0 if momentum is None else momentum
        if training and self.track_running_stats and tracked is not None:
            # As torch does, the counter moves before the statistics are computed, so that a
            # recomputation under activation checkpointing repeats both, in the same order.
            tracked.add_(1)
            if momentum is None:
                factor = 1.0 / float(tracked)
        if training and not self.track_running_stats:  # like torch: no buffers when training untracked
            running_mean = running_var = None
        if _tracing():  # one aten::batch_norm, which traces, checks and saves as torch's layer does
            return F.batch_norm(input, running_mean, running_var, weight, bias, use_batch_stats, factor, eps)
        function = self._function_for(input)
        if (
            use_batch_stats
            and input.dim() == 2
            and function in TRAIN_ROWS_PATHS
            and _rows_fast_path(input, weight, bias, running_mean, running_var)
        ):
            short_path = TRAIN_ROWS_PATHS[function]
            return short_path(input, weight, bias, running_mean, running_var, eps, float(factor))
        return _dispatch(
            input, running_mean, running_var, weight, bias, use_batch_stats, factor, eps, function
        )


def _torch_like_count(num_features: object) -> int:
    """``num_features`` as torch takes it: a non-negative integer (0 is allowed, as in torch)."""
    if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral) or num_features < 0:
        raise ValueError(f"num_features must be a non-negative integer, got {num_features!r}")
    return int(num_features)


def _torch_like_real(value: object, name: str) -> float:
    """A real number, as torch accepts it; only non-numbers and NaN or infinity are refused.

    torch takes any ``eps`` when the layer is built and refuses ``eps <= 0`` when
    it runs; bnbook does the same. It also takes any ``momentum``: values outside
    [0, 1] extrapolate the running average, which is legal, if rarely wise.
    A NaN or infinite value would turn every running statistic into NaN, so it
    is refused here, where torch would accept it silently.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


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
