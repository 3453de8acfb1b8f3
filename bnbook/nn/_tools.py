"""Tools that act on the batch-norm layers of any model (chapter 4).

They accept ``torch.nn``'s layers and bnbook's alike: both are instances of
``torch.nn.modules.batchnorm._BatchNorm``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnbook.nn._renorm import _BatchRenorm

__all__ = ["batch_norm_layers", "recalibrate_bn"]


def batch_norm_layers(model: nn.Module) -> list[nn.Module]:
    """The batch-norm layers of ``model`` that track running statistics, in module order.

    Any subclass of ``torch.nn.modules.batchnorm._BatchNorm`` counts: torch's
    ``BatchNorm1d/2d/3d`` and ``SyncBatchNorm``, and bnbook's layers; and
    bnbook's batch renormalization layers, which keep the same running statistics.
    """
    return [m for m in model.modules() if isinstance(m, (_BatchNorm, _BatchRenorm)) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Recompute the running statistics of every batch-norm layer for the model's final weights.

    Each layer's running statistics are reset and its momentum set to None
    (a cumulative average); then the data pass through the model in batches,
    with the batch-norm layers in training mode and every other module in
    eval mode (so that, for example, dropout is off). Afterwards each running
    statistic is the plain average of the batch statistics over the pass: the
    estimate of the population statistics that Ioffe and Szegedy's Algorithm 2
    prescribes. See ``chapters/04_training_vs_inference``. Batch
    renormalization layers are recalibrated the same way: during the pass
    they normalize with the batch statistics alone (no correction), and their
    running statistics become the average batch mean and unbiased variance.

    Momenta and every module's mode are restored afterwards. If the pass
    raises, the running statistics and counters are restored too, so the
    model is exactly as it was.

    Parameters
    ----------
    model : torch.nn.Module
        Containing batch-norm layers (torch's or bnbook's); changed in place.
    x : Tensor, shape (N, *)
        Inputs, usually the training set in random order (batches of a single
        class would give skewed statistics). Moved to the model's device.
    batch_size : int
        Size of the batches, at least 2. Only full batches are used, so that
        each carries the same weight in the average.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8))
    >>> _ = recalibrate_bn(net, torch.randn(256, 4), batch_size=64)
    >>> int(net[1].num_batches_tracked)
    4
    """
    layers = batch_norm_layers(model)
    if not layers:
        raise ValueError("the model has no batch-norm layer that tracks running statistics")
    if not isinstance(batch_size, int) or batch_size < 2 or x.shape[0] < batch_size:
        raise ValueError(
            f"need 2 <= batch_size <= len(x), got batch_size={batch_size!r}, len(x)={x.shape[0]}"
        )
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else x.device
    modes = {m: m.training for m in model.modules()}
    momenta = [layer.momentum for layer in layers]
    saved = [
        (layer.running_mean.clone(), layer.running_var.clone(), layer.num_batches_tracked.clone())
        for layer in layers
    ]
    renorms = [layer for layer in layers if isinstance(layer, _BatchRenorm)]
    limits = [(layer.r_max, layer.d_max) for layer in renorms]
    sums: dict[nn.Module, list] = {layer: [0, 0.0, 0.0] for layer in renorms}
    handles = [
        layer.register_forward_pre_hook(_accumulate(sums[layer]), with_kwargs=True) for layer in renorms
    ]
    ok = False
    try:
        model.eval()
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None
            layer.train()
        for layer in renorms:
            # Plain batch norm during the pass (no correction), and no running update of its own:
            # batch renorm averages standard deviations, the population estimate averages variances.
            layer.r_max, layer.d_max, layer.momentum = 1.0, 0.0, 0.0
        for start in range(0, x.shape[0] - batch_size + 1, batch_size):
            model(x[start : start + batch_size].to(device))
        for layer in renorms:
            count, mean_sum, var_sum = sums[layer]
            layer.running_mean.copy_(mean_sum / count)
            layer.running_var.copy_(var_sum / count)
        ok = True
    finally:
        for handle in handles:
            handle.remove()
        for layer, (r_max, d_max) in zip(renorms, limits, strict=True):
            layer.r_max, layer.d_max = r_max, d_max
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        if not ok:
            for layer, (mean, var, count) in zip(layers, saved, strict=True):
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
                layer.num_batches_tracked.copy_(count)
        for m, mode in modes.items():
            m.training = mode
    return model


def _accumulate(acc: list):
    """A forward pre-hook adding a batch's per-channel mean and unbiased variance to ``acc``."""

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        x = (args[0] if args else kwargs["input"]).detach()
        dims = [0, *range(2, x.dim())]
        acc[0] += 1
        acc[1] = acc[1] + x.mean(dims, dtype=torch.float64)
        acc[2] = acc[2] + x.to(torch.float64).var(dims, unbiased=True)

    return hook
