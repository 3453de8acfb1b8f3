"""Small PyTorch networks and a training loop for the chapters' experiments.

:func:`mlp` builds the fully connected networks of chapters 4 and 5, :func:`small_cnn` the
convolutional network of chapter 7. The epoch-based training loop with an optimizer lives
in :mod:`bnbook.training`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bnbook import nn as bnn

__all__ = ["History", "accuracy", "mlp", "small_cnn", "train_classifier"]

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
    norm_layer: type[nn.Module] = nn.BatchNorm2d,
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
        ``torch.nn.BatchNorm2d`` by default; ``bnbook.nn.BatchNorm2d`` is a drop-in.
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
