r"""Batch norm for small batches: Batch Renormalization (Ioffe, 2017) and ghost batch norm.

See ``chapters/13_small_batches`` and :mod:`bnbook.scratch._renorm` for the
NumPy kernels and the formulas.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm as _TorchBatchNorm
from torch.nn.modules.batchnorm import _NormBase

from bnbook._checks import check_eps, check_momentum, check_num_features, check_spatial_rank
from bnbook.nn._batchnorm import (
    BatchNormFunction,
    _autocast_on,
    _bcast,
    _check_floating,
    _reduce_dims,
    _tracing,
    apply_unbound,
    batch_norm,
)
from bnbook.scratch._renorm import check_renorm_limits, renorm_limits

__all__ = ["BatchRenorm1d", "BatchRenorm2d", "GhostBatchNorm", "renorm_limits"]


class _BatchRenorm(_NormBase):
    r"""Batch renorm: batch statistics, corrected towards the running ones by ``r`` and ``d``.

    .. math::

        \hat x = \frac{x - \mu_\mathcal{B}}{\sigma_\mathcal{B}}\, r + d, \qquad
        r = \mathrm{clip}_{[1/r_{max}, r_{max}]}\Big(\frac{\sigma_\mathcal{B}}{\sigma}\Big), \qquad
        d = \mathrm{clip}_{[-d_{max}, d_{max}]}\Big(\frac{\mu_\mathcal{B} - \mu}{\sigma}\Big)

    with ``r`` and ``d`` constants for the gradient. Eval mode normalizes with
    the running statistics, exactly like batch norm, and the state dict has
    batch norm's five keys. ``r_max`` and ``d_max`` are plain attributes that a
    schedule (:func:`renorm_limits`) may change between steps; with
    ``r_max = 1, d_max = 0`` training is batch norm's. Running statistics
    follow the paper: :math:`\mu` and :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}`
    move towards the batch's :math:`\mu_\mathcal{B}, \sigma_\mathcal{B}` by ``momentum``.

    It is deliberately not a subclass of torch's ``_BatchNorm``, so that
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does not silently turn
    it into plain batch norm.
    """

    _ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.01,
        affine: bool = True,
        r_max: float = 1.0,
        d_max: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        r_max, d_max = check_renorm_limits(r_max, d_max)
        super().__init__(
            check_num_features(num_features),
            check_eps(eps),
            check_momentum(momentum),
            affine,
            True,
            device,
            dtype,
        )
        self._r_max, self._d_max = r_max, d_max

    @property
    def r_max(self) -> float:
        """Largest correction of the scale, >= 1 (1: none)."""
        return self._r_max

    @r_max.setter
    def r_max(self, value: float) -> None:
        self._r_max = check_renorm_limits(value, 0.0)[0]

    @property
    def d_max(self) -> float:
        """Largest correction of the shift, in running standard deviations, >= 0 (0: none)."""
        return self._d_max

    @d_max.setter
    def d_max(self, value: float) -> None:
        self._d_max = check_renorm_limits(1.0, value)[1]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_max={self.r_max:g}, d_max={self.d_max:g}"

    def forward(self, input: Tensor) -> Tensor:
        if _autocast_on(input):  # as for batch norm: autocast leaves the layer alone
            with torch.autocast(input.device.type, enabled=False):
                return self.forward(input)
        check_spatial_rank(input.dim(), self._ranks, type(self).__name__)
        _check_floating(input, type(self).__name__)
        if input.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects {self.num_features} channels on dim 1, "
                f"got {input.shape[1]} (input size {tuple(input.shape)})"
            )
        if not self.training:
            return batch_norm(
                input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        m = input.numel() // input.shape[1]
        if m <= 1:
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {input.size()}"
            )
        nd = input.dim()
        if _tracing():  # torch.jit.trace records ATen operations only, not a Python Function
            x_bn, mean_b, var_b = _normalize_traceable(input, self.eps)
        else:  # every argument passed, so the call skips torch's per-call signature binding
            x_bn, mean_b, var_b = apply_unbound(
                BatchNormFunction, input, None, None, None, None, self.eps, None, None, 0.0
            )
        with torch.no_grad():
            rm = self.running_mean.to(mean_b.dtype)
            sigma = torch.sqrt(self.running_var.to(mean_b.dtype) + self.eps)
            std_b = torch.sqrt(var_b + self.eps)
            r = (std_b / sigma).clamp(1.0 / self.r_max, self.r_max)
            d = ((mean_b - rm) / sigma).clamp(-self.d_max, self.d_max)
            self.num_batches_tracked.add_(1)
            f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.copy_(rm + f * (mean_b - rm))
            self.running_var.copy_((sigma + f * (std_b - sigma)) ** 2 - self.eps)
        x_hat = x_bn * _bcast(r.to(x_bn.dtype), nd) + _bcast(d.to(x_bn.dtype), nd)
        if self.weight is not None:
            x_hat = x_hat * _bcast(self.weight, nd)
        if self.bias is not None:
            x_hat = x_hat + _bcast(self.bias, nd)
        return x_hat.to(input.dtype)


def _normalize_traceable(input: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(x_hat, mean, biased var)`` as :class:`BatchNormFunction` gives them, in ATen operations.

    Autograd differentiates them (the batch statistics included), so a traced
    layer keeps batch norm's gradient; half inputs are computed in float32.
    """
    cd = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    x = input.to(cd)
    dims = _reduce_dims(x.dim())
    mean = x.mean(dims)
    xc = x - _bcast(mean, x.dim())
    var = (xc * xc).mean(dims)
    return xc * _bcast(torch.rsqrt(var + eps), x.dim()), mean.detach(), var.detach()


class BatchRenorm1d(_BatchRenorm):
    """Batch renorm over a (N, C) or (N, C, L) input; see :class:`_BatchRenorm`.

    Examples
    --------
    >>> layer = BatchRenorm1d(4, r_max=3.0, d_max=5.0)
    >>> y = layer(torch.randn(8, 4))
    >>> layer.r_max = 2.0  # a schedule may change the limits between steps
    """

    _ranks = (2, 3)


class BatchRenorm2d(_BatchRenorm):
    """Batch renorm over a (N, C, H, W) input; see :class:`_BatchRenorm`."""

    _ranks = (4,)


class GhostBatchNorm(nn.Module):
    """Batch norm over virtual sub-batches ("ghost batches") of a large batch.

    In training the batch is cut into consecutive pieces of ``ghost_size``
    samples and ``norm`` normalizes each piece with its own statistics (and
    updates its running statistics once per piece); a last piece of a single
    sample joins the one before it. In eval mode ``norm`` runs on the whole
    batch. Hoffer, Hubara and Soudry (2017) use it to keep the noise of small
    batches while computing on large ones. With ``ghost_size`` at least the
    batch size it is ``norm`` itself. See ``chapters/13_small_batches``.

    Parameters
    ----------
    norm : batch-norm layer (torch's or bnbook's)
    ghost_size : int, >= 2
    """

    def __init__(self, norm: nn.Module, ghost_size: int) -> None:
        super().__init__()
        if not isinstance(norm, (_TorchBatchNorm, _BatchRenorm)):
            raise ValueError(f"GhostBatchNorm wraps a batch-norm layer, got {type(norm).__name__}")
        if isinstance(ghost_size, bool) or not isinstance(ghost_size, int) or ghost_size < 2:
            raise ValueError(f"ghost_size must be an integer >= 2, got {ghost_size!r}")
        self.norm = norm
        self.ghost_size = ghost_size

    def extra_repr(self) -> str:
        return f"ghost_size={self.ghost_size}"

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or input.shape[0] <= self.ghost_size:
            return self.norm(input)
        pieces = list(torch.split(input, self.ghost_size))
        if pieces[-1].shape[0] == 1:
            pieces[-2:] = [torch.cat(pieces[-2:])]
        return torch.cat([self.norm(piece) for piece in pieces])
