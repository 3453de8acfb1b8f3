"""Small PyTorch networks and a training loop for the chapters' experiments.

:func:`mlp` builds the fully connected networks of chapters 4 and 5, :func:`small_cnn` the
convolutional network of chapter 7. The epoch-based training loop with an optimizer lives
in :mod:`bnbook.training`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bnbook import nn as bnn

__all__ = ["History", "accuracy", "lsuv_init", "mlp", "small_cnn", "train_classifier"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(
    sizes: list[int],
    activation: str = "sigmoid",
    batch_norm: bool = False,
    norm_layer: type[nn.Module] = bnn.BatchNorm1d,
) -> nn.Sequential:
    """A fully connected network ``sizes[0] -> ... -> sizes[-1]``.

    Each hidden block is ``Linear -> [BatchNorm] -> activation``, with batch
    norm before the nonlinearity as in Ioffe & Szegedy (2015). When batch norm
    follows a Linear layer, the Linear's bias is dropped: the norm's shift
    ``beta`` does its job. The last layer is a plain Linear (logits).

    Parameters
    ----------
    sizes : list of int, at least two entries
    activation : {"sigmoid", "relu", "tanh"}
    batch_norm : bool
    norm_layer : module class
        ``bnbook.nn.BatchNorm1d`` by default; ``torch.nn.BatchNorm1d`` works too.
    """
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {sizes}")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers.append(nn.Linear(fan_in, fan_out, bias=not batch_norm))
        if batch_norm:
            layers.append(norm_layer(fan_out))
        layers.append(_ACTIVATIONS[activation]())
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def small_cnn(
    batch_norm: bool = True,
    norm_layer: type[nn.Module] = bnn.BatchNorm2d,
    channels: tuple[int, int] = (16, 32),
    num_classes: int = 10,
) -> nn.Sequential:
    """A LeNet-sized convolutional network for 1x8x8 images such as the digits (chapter 7).

    Two blocks ``Conv2d(3x3, padding 1) -> [BatchNorm2d] -> ReLU -> MaxPool2d(2)``
    take the image from 8x8 to 4x4 to 2x2 pixels; a Linear layer maps the
    ``channels[1] * 2 * 2`` features to the class logits. A convolution followed by
    batch norm has no bias: the norm subtracts each channel's mean, which would
    remove any constant added per channel, and its shift ``beta`` takes over the
    bias's job. See ``chapters/07_pytorch_in_practice``.

    Parameters
    ----------
    batch_norm : bool
        Put a batch-norm layer after each convolution.
    norm_layer : module class
        The book's own ``bnbook.nn.BatchNorm2d`` by default; ``torch.nn.BatchNorm2d``
        (or any drop-in) works too.
    channels : (int, int)
        Output channels of the two convolutions.
    num_classes : int
        Number of logits, at least 2.

    Returns
    -------
    torch.nn.Sequential
        Input shape (N, 1, 8, 8), output shape (N, num_classes).

    Examples
    --------
    >>> net = small_cnn()
    >>> net(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 10])
    """
    if (
        not isinstance(channels, (tuple, list))
        or len(channels) != 2
        or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in channels)
    ):
        raise ValueError(f"channels must be two positive integers, got {channels!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    layers: list[nn.Module] = []
    for c_in, c_out in zip((1, channels[0]), channels, strict=True):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(norm_layer(c_out))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
    layers += [nn.Flatten(), nn.Linear(channels[1] * 2 * 2, num_classes)]
    return nn.Sequential(*layers)


_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _unit_stats(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-unit mean and standard deviation of a pre-activation: over every dim but dim 1 (or the last)."""
    z = z.double()
    if z.dim() == 2:
        dims: tuple[int, ...] = (0,)
    else:
        dims = (0, *range(2, z.dim()))
    return z.mean(dims), z.std(dims, unbiased=False)


@torch.no_grad()
def lsuv_init(
    model: nn.Module,
    x: torch.Tensor,
    target_std: float = 1.0,
    eps: float = 1e-8,
    include_output: bool = False,
) -> nn.Module:
    r"""Scale a network so that every hidden pre-activation has mean 0 and std 1 on ``x`` (chapters 1 and 8).

    A data-dependent initialization in the spirit of LSUV (Mishkin & Matas,
    2016) and of the data-dependent init of weight normalization (Salimans &
    Kingma, 2016). Layer by layer, from the input on, each hidden ``Linear``
    or ``Conv`` unit :math:`j` with pre-activation :math:`z_j = w_j^	op h + b_j`
    is rewritten as

    .. math::

        w_j \leftarrow rac{s\, w_j}{\sigma_j}, \qquad b_j \leftarrow rac{s\,(b_j - \mu_j)}{\sigma_j}

    where :math:`\mu_j, \sigma_j` are the mean and (biased) standard deviation of
    :math:`z_j` over the batch ``x`` (and over positions, for a convolution),
    measured after the layers below have been rescaled, and :math:`s` is
    ``target_std``. Afterwards the network computes, at this batch, the
    pre-activations that batch norm with :math:`\gamma = s, eta = 0` would
    give, but with fixed weights: nothing is normalized during training. This
    is the control that separates "batch norm starts at a good scale" from
    "batch norm keeps the scale good".

    Hidden layers are every ``Linear``/``Conv1d/2d/3d`` module except the last
    one in ``model.modules()`` order (the logits, left as they are unless
    ``include_output``: then they get the same treatment, as in Mishkin and
    Matas' LSUV, which makes the network's function at initialization
    independent of the scale of the weights it started from). A layer
    without a bias is only rescaled, so its mean is not moved. The weights are
    changed in place; the model's mode and buffers are left as they were.
    :class:`bnbook.batched.BatchedMLP` is handled member by member, each on its
    own slice of ``x`` when ``x`` has shape ``(K, B, D)``.

    Parameters
    ----------
    model : nn.Module
    x : Tensor
        A batch of training inputs, shape ``(B, ...)`` (``(K, B, D)`` or
        ``(B, D)`` for a BatchedMLP), with at least 2 samples.
    target_std : float, > 0
    eps : float, > 0
        A unit whose std is below ``eps`` (a dead unit) is left unscaled.
    include_output : bool
        Also standardize the last layer's outputs (the logits).

    Returns
    -------
    The same ``model``.

    Examples
    --------
    >>> net = mlp([64, 32, 10], "sigmoid")
    >>> _ = lsuv_init(net, torch.randn(128, 64))
    """
    from bnbook.batched import BatchedMLP  # the batched models import this module

    if not (target_std > 0 and math.isfinite(target_std)):
        raise ValueError(f"target_std must be positive and finite, got {target_std}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if x.dim() < 2 or x.shape[-2 if isinstance(model, BatchedMLP) and x.dim() == 3 else 0] < 2:
        raise ValueError(f"lsuv_init needs a batch of at least 2 samples, got shape {tuple(x.shape)}")
    was_training = model.training
    if isinstance(model, BatchedMLP):
        _lsuv_batched(model, x, target_std, eps, include_output)
        return model
    layers = [m for m in model.modules() if isinstance(m, _WEIGHTED)]
    if len(layers) < 2:
        raise ValueError("lsuv_init needs a model with at least one hidden Linear or Conv layer")
    buffers = {k: v.clone() for k, v in model.state_dict().items() if k in dict(model.named_buffers())}
    model.eval()  # no running statistics move, and dropout is off
    try:
        for layer in layers if include_output else layers[:-1]:
            seen: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(out))
            try:
                model(x)
            finally:
                handle.remove()
            mean, std = _unit_stats(seen[0])
            scale = torch.where(std > eps, target_std / std, torch.ones_like(std))
            w = layer.weight
            w.mul_(scale.to(w.dtype).view(-1, *([1] * (w.dim() - 1))))
            if layer.bias is not None:
                layer.bias.sub_(mean.to(w.dtype)).mul_(scale.to(w.dtype))
    finally:
        model.train(was_training)
        model.load_state_dict(buffers, strict=False)
    return model


def _lsuv_batched(model, x: torch.Tensor, target_std: float, eps: float, include_output: bool) -> None:
    """:func:`lsuv_init` for every member of a BatchedMLP at once."""
    if x.dim() == 2:
        x = x.unsqueeze(0).expand(model.k, -1, -1)
    if x.dim() != 3 or x.shape[0] != model.k or x.shape[2] != model.sizes[0]:
        raise ValueError(f"x must have shape ({model.k}, B, {model.sizes[0]}) or (B, {model.sizes[0]})")
    from bnbook.batched import ACTIVATIONS

    act = ACTIVATIONS[model.activation]
    h, b = x.to(model.weights[0].dtype), 0
    was_training = model.training
    model.eval()
    try:
        last = len(model.weights) - 1
        for i, w in enumerate(model.weights if include_output else model.weights[:-1]):
            bias = model.biases[b] if model._has_bias[i] else None
            z = torch.bmm(h, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, w)
            mean, std = z.double().mean(1), z.double().std(1, unbiased=False)  # (K, C)
            scale = torch.where(std > eps, target_std / std, torch.ones_like(std)).to(w.dtype)
            w.mul_(scale.unsqueeze(1))
            if bias is not None:
                bias.sub_(mean.to(w.dtype)).mul_(scale)
                b += 1
            if i == last:
                break
            z = torch.bmm(h, w) if bias is None else torch.baddbmm(bias.unsqueeze(1), h, w)
            h = act(model._norm(z, i) if model.batch_norm else z)
    finally:
        model.train(was_training)


class History(NamedTuple):
    """What :func:`train_classifier` recorded, one entry per step."""

    loss: np.ndarray
    records: list


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of correct predictions of ``model`` on ``(x, y)``; the mode is left as it was."""
    was_training = model.training
    model.eval()
    acc = (model(x).argmax(dim=1) == y).float().mean().item()
    model.train(was_training)
    return acc


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 60,
    seed: int = 0,
    record: Callable[[int, nn.Module], object] | None = None,
    record_every: int = 1,
) -> History:
    """Train with plain SGD on cross-entropy, drawing mini-batches with ``seed``.

    The update ``p -= lr * p.grad`` is written out rather than taken from
    ``torch.optim``, whose first step costs seconds of imports on a CPU.

    ``record(step, model)`` is called before the first step and after every
    ``record_every`` steps; its return values are collected in ``records``.
    """
    if steps < 0 or batch_size < 2 or lr <= 0:
        raise ValueError(f"need steps >= 0, batch_size >= 2 and lr > 0, got {steps}, {batch_size}, {lr}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = nn.CrossEntropyLoss()
    losses, records = [], []
    model.train()
    if record is not None:
        records.append(record(0, model))
    n = x.shape[0]
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch_size,), generator=gen).to(x.device)
        loss = loss_fn(model(x[idx]), y[idx])
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.sub_(p.grad, alpha=lr)
        losses.append(loss.item())
        if record is not None and step % record_every == 0:
            records.append(record(step, model))
    return History(np.asarray(losses), records)
