"""A fused CPU path for batch norm: bnbook's own C++ kernels, compiled on first use.

``bnbook.nn``'s layers express batch norm as a handful of tensor operations,
each a full pass over memory with a fresh temporary. The kernels here fuse
them: a training forward pass reads the input once for the statistics
(accumulated in double, shifted for accuracy) and once more to write the
output; the backward pass reads ``dy`` and ``x`` once for the two sums and
once more to write ``dx``. That is the least traffic a streaming
implementation can have. See ``chapters/16_making_it_fast``.

The kernels build with ``torch.utils.cpp_extension`` where a C++ compiler is
present, into torch's extension cache, so the second run only loads them
(well under a second). Where they cannot be built, :func:`available` is False,
:func:`status` says why, and the layers here fall back to ``bnbook.nn``'s
eager path: same results, slower.

Layers: :class:`BatchNorm1d`, :class:`BatchNorm2d`, :class:`BatchNorm3d`,
drop-ins for ``torch.nn``'s (and subclasses of ``bnbook.nn``'s) for float32
and float64 CPU tensors, contiguous or channels-last; any other input (half
precision, a GPU, double backward) takes the eager path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from bnbook.nn import _batchnorm as _eager

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "FusedBatchNormFunction",
    "available",
    "load",
    "status",
]

_SOURCE = Path(__file__).with_name("_bn_kernels.cpp")
#: Set to 1 to skip building the kernels (the layers then use the eager path).
DISABLE_ENV = "BNBOOK_NO_EXTENSION"
_state: dict[str, Any] = {"module": None, "error": None, "tried": False}


def load(verbose: bool = False) -> Any:
    """Build (first time) or load (afterwards) the kernels; None when that is not possible here."""
    if _state["tried"]:
        return _state["module"]
    _state["tried"] = True
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        _state["error"] = f"{DISABLE_ENV} is set"
        return None
    try:
        from torch.utils import cpp_extension

        _state["module"] = cpp_extension.load(
            name="bnbook_bn_kernels",
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-fopenmp"],
            extra_ldflags=["-fopenmp"],
            verbose=verbose,
        )
    except Exception as err:  # no compiler, no ninja, a failed build: fall back, and say why
        _state["error"] = (
            f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        )
    return _state["module"]


def available() -> bool:
    """True when the fused kernels are built and loaded."""
    return load() is not None


def status() -> str:
    """One line: whether the fused path is in use, and if not, why."""
    if available():
        return "fused C++ kernels loaded"
    return f"fused kernels unavailable ({_state['error']}); using bnbook.nn's eager path"


def _fusable(x: Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.numel() == 0:
        return False
    if x.is_contiguous():
        return True
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return fmt is not None and x.is_contiguous(memory_format=fmt)


class FusedBatchNormFunction(torch.autograd.Function):
    """``(x, weight, bias, mean, var, eps, running_mean, running_var, momentum) -> y`` on the fused kernels.

    Same arguments and meaning as :class:`bnbook.nn.BatchNormFunction`; running
    buffers are updated in the forward pass. Returns ``y`` only. Single
    backward (``once_differentiable``): double backward takes the eager path.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps, running_mean, running_var, momentum):
        ext = load()
        batch_stats = mean is None
        if batch_stats:
            y, mean64, invstd64 = ext.forward_train(x, weight, bias, eps)
            m = x.numel() // x.shape[1]
            if m > 1:
                with torch.no_grad():
                    if running_mean is not None:
                        running_mean.lerp_(mean64.to(running_mean.dtype), momentum)
                    if running_var is not None:
                        var64 = invstd64.pow(-2) - eps
                        running_var.lerp_((var64 * (m / (m - 1))).to(running_var.dtype), momentum)
        else:
            mean64 = mean.to(torch.float64)
            invstd64 = torch.rsqrt(var.to(torch.float64) + eps)
            alpha = invstd64 if weight is None else invstd64 * weight.to(torch.float64)
            beta = torch.zeros_like(alpha) if bias is None else bias.to(torch.float64)
            y = ext.forward_affine(x, mean64, alpha, beta)
        ctx.save_for_backward(x, weight, mean64, invstd64)
        ctx.batch_stats, ctx.has_bias = batch_stats, bias is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, mean64, invstd64 = ctx.saved_tensors
        fmt = torch.channels_last if x.dim() == 4 and not x.is_contiguous() else None
        fmt = torch.channels_last_3d if x.dim() == 5 and not x.is_contiguous() else fmt
        dy = dy.contiguous(memory_format=fmt) if fmt is not None else dy.contiguous()
        dx, dgamma, dbeta = load().backward_train(dy, x, weight, mean64, invstd64, ctx.batch_stats)
        dw = dgamma.to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        db = (
            dbeta.to(x.dtype if weight is None else weight.dtype)
            if ctx.has_bias and ctx.needs_input_grad[2]
            else None
        )
        return (dx if ctx.needs_input_grad[0] else None), dw, db, None, None, None, None, None, None


class _Fused:
    """Presents :class:`FusedBatchNormFunction` with ``BatchNormFunction.apply``'s signature."""

    @staticmethod
    def apply(x, weight, bias, mean, var, eps, running_mean=None, running_var=None, momentum=0.0):
        y = FusedBatchNormFunction.apply(x, weight, bias, mean, var, eps, running_mean, running_var, momentum)
        return y, None, None


class _FusedMixin:
    """Computes ``bnbook.nn``'s forward with the fused kernels wherever they apply."""

    def _function_for(self, input: Tensor) -> Any:
        return _Fused if _fusable(input) and available() else super()._function_for(input)


class BatchNorm1d(_FusedMixin, _eager.BatchNorm1d):
    """``bnbook.nn.BatchNorm1d`` on the fused kernels; see :mod:`bnbook.fast`."""


class BatchNorm2d(_FusedMixin, _eager.BatchNorm2d):
    """``bnbook.nn.BatchNorm2d`` on the fused kernels; see :mod:`bnbook.fast`."""


class BatchNorm3d(_FusedMixin, _eager.BatchNorm3d):
    """``bnbook.nn.BatchNorm3d`` on the fused kernels; see :mod:`bnbook.fast`."""
