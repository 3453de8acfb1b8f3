r"""Batch norm across processes: statistics of the global batch, on a real ``torch.distributed`` group.

In data-parallel training each process sees a shard of the batch. Plain batch
norm then normalizes with per-shard statistics; :class:`SyncBatchNorm`
normalizes with those of the whole batch, exchanging per-channel sums:

* forward: one all-reduce of the per-channel sums and the count (C + 1
  numbers), giving the global mean; then one of the sums of squared
  deviations from that mean (C numbers), giving the global biased variance.
  Two passes, as in the single-process layers, so the variance is exact even
  when the mean is large; shards of different sizes (even empty) are fine;
* backward: one all-reduce of :math:`\sum g` and :math:`\sum g\,(x-\mu)` (2C numbers).

Parameter gradients stay per process (each process's share of the global
sums); data-parallel training sums or averages them as it does for every
other parameter. It works with the gloo backend on CPUs, where
``torch.nn.SyncBatchNorm`` refuses CPU tensors, and with NCCL on GPUs.
See ``chapters/14_across_processes``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm

from bnbook.nn._batchnorm import _BatchNorm, _bcast, _check_floating, _runs
from bnbook.nn._renorm import GhostBatchNorm

__all__ = ["SyncBatchNorm"]


def _group_size(group: Any) -> int:
    """World size of ``group``, or 1 outside an initialized process group."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _sum64(t: Tensor) -> Tensor:
    """Per-channel sum of an (N, C, *) tensor, accumulated in float64."""
    return _runs(t).sum(-1, dtype=torch.float64).sum(0)


class SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm with the statistics of the batch across every process of ``group``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        eps: float,
        momentum: float,
        group: Any,
    ) -> Tensor:
        nd = x.dim()
        c = x.shape[1]
        cd = torch.promote_types(x.dtype, torch.float32)
        xw = x.to(cd)
        local_n = x.numel() // c if c else 0
        packed = torch.cat([_sum64(xw), torch.tensor([float(local_n)], dtype=torch.float64, device=x.device)])
        dist.all_reduce(packed, group=group)
        n = int(packed[-1].item())
        if n <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel across processes when training, got {n}"
            )
        mean = (packed[:c] / n).to(cd)
        xc = xw - _bcast(mean, nd)
        sq = torch.linalg.vector_norm(_runs(xc), dim=-1, dtype=torch.float64).square().sum(0)
        dist.all_reduce(sq, group=group)
        var = (sq / n).to(cd)
        with torch.no_grad():
            if running_mean is not None:
                running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            if running_var is not None:
                running_var.lerp_((var * (n / (n - 1))).to(running_var.dtype), momentum)
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(cd)
        if bias is None:
            y = xc.mul_(_bcast(scale, nd))
        else:
            y = torch.addcmul(_bcast(bias.to(cd), nd), xc, _bcast(scale, nd), out=xc)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.n, ctx.group, ctx.has_bias = n, group, bias is not None
        return y.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor):
        x, weight, mean, invstd = ctx.saved_tensors
        nd, c = x.dim(), x.shape[1]
        cd = mean.dtype
        g = dy.to(cd)
        xc = x.to(cd) - _bcast(mean, nd)
        sums = torch.cat([_sum64(g), _sum64(g * xc)])
        local = sums.clone()
        if ctx.needs_input_grad[0]:
            dist.all_reduce(sums, group=ctx.group)
        sum_g, sum_gxc = sums[:c].to(cd), sums[c:].to(cd)
        dx = None
        if ctx.needs_input_grad[0]:
            k = invstd if weight is None else invstd * weight.to(cd)
            n = ctx.n
            dx = g - _bcast(sum_g / n, nd) - xc * _bcast(invstd * invstd * sum_gxc / n, nd)
            dx = (dx * _bcast(k, nd)).to(x.dtype)
        dw = (
            (local[c:].to(cd) * invstd).to(weight.dtype)
            if weight is not None and ctx.needs_input_grad[1]
            else None
        )
        db = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = local[:c].to(weight.dtype if weight is not None else x.dtype)
        return dx, dw, db, None, None, None, None, None


class SyncBatchNorm(_BatchNorm):
    r"""Batch norm over the global batch of every process in a group; drop-in for ``torch.nn.SyncBatchNorm``.

    .. math::

        y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} \gamma + \beta

    with the expectation and variance over the batches of all processes of
    ``process_group`` together (the default group when None). Same
    parameters, buffers and state-dict keys as the other batch-norm layers.
    In eval mode, outside an initialized process group, or in a group of one
    process, it is plain batch norm. Input (N, C, *) of any rank.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU())
    >>> model = SyncBatchNorm.convert_sync_batchnorm(model)
    >>> type(model[1]).__name__
    'SyncBatchNorm'
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        # The checks and the state are the other layers' own; only process_group is new.
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias)
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or _group_size(self.process_group) == 1:
            return super().forward(input)
        self._check_input_dim(input)
        _check_floating(input, type(self).__name__)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"SyncBatchNorm expects {self.num_features} channels on dim 1, got {input.shape[1]} "
                f"(input size {tuple(input.shape)})"
            )
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return SyncBatchNormFunction.apply(
            input,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.eps,
            factor,
            self.process_group,
        )

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every batch-norm layer of ``module`` (torch's or bnbook's) by a :class:`SyncBatchNorm`.

        As in torch, the new layer takes over the old one's parameters and
        buffers themselves, not copies: an optimizer built before the
        conversion still updates them, and tied weights stay tied. The
        training mode and ``qconfig`` carry over. Unlike torch, a layer that
        appears at several places of the model becomes one SyncBatchNorm at
        all of them, so it stays one layer. The batch norm inside a
        :class:`~bnbook.nn.GhostBatchNorm` stays local: ghost batches are
        per-process sub-batches by definition, and ranks with different
        local batch sizes would otherwise run different numbers of collectives.

        Returns the converted module (a new one when ``module`` itself is a
        batch norm; otherwise ``module``, changed in place).
        """
        return _convert(cls, module, process_group, {})


def _convert(
    cls: type[SyncBatchNorm], module: nn.Module, process_group: Any, done: dict[int, nn.Module]
) -> nn.Module:
    """:meth:`SyncBatchNorm.convert_sync_batchnorm`, remembering what it has converted."""
    if id(module) in done:
        return done[id(module)]

    out = module
    if isinstance(module, _TorchBatchNorm):
        out = cls(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
            process_group,
            bias=module.bias is not None,
        )
        if module.affine:
            out.weight = module.weight
            out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    done[id(module)] = out
    if not isinstance(module, GhostBatchNorm):
        for name, child in module.named_children():
            out.add_module(name, _convert(cls, child, process_group, done))
    return out
