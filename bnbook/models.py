"""Small PyTorch networks and a training loop for the chapters' experiments."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bnbook import nn as bnn

__all__ = ["History", "accuracy", "mlp", "train_classifier"]

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
