"""The training loop the chapters share, its evaluation, and checkpoints (chapter 7).

:func:`fit` is the loop that ``chapters/07_pytorch_in_practice`` writes out by hand:
shuffled mini-batches from a ``DataLoader``, ``model.train()`` for every epoch,
``optimizer.zero_grad() -> forward -> loss.backward() -> optimizer.step()``, and an
evaluation in eval mode after every epoch. :func:`evaluate` switches the model to eval
mode and back. :func:`save_checkpoint` and :func:`load_checkpoint` store and restore a
model's ``state_dict`` (parameters *and* buffers, so the running statistics of batch
norm travel with it), the optimizer's state and a few plain values.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["FitHistory", "evaluate", "fit", "load_checkpoint", "save_checkpoint"]


class FitHistory(NamedTuple):
    """What :func:`fit` recorded.

    Attributes
    ----------
    step_loss, step_acc : ndarray, shape (epochs * steps_per_epoch,)
        Cross-entropy and accuracy of each training batch, measured in training mode
        during the forward pass that the step's gradient came from.
    epoch_loss, epoch_acc : ndarray, shape (epochs,)
        The means of ``step_loss`` and ``step_acc`` over each epoch.
    val_loss, val_acc : ndarray, shape (epochs,)
        :func:`evaluate` on ``(x_val, y_val)`` after each epoch, in eval mode; empty
        when no validation data were given.
    """

    step_loss: np.ndarray
    step_acc: np.ndarray
    epoch_loss: np.ndarray
    epoch_acc: np.ndarray
    val_loss: np.ndarray
    val_acc: np.ndarray


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_xy(x: Any, y: Any, what: str) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError(
            f"x_{what} and y_{what} must be torch tensors, got {type(x).__name__}, {type(y).__name__}"
        )
    if y.ndim != 1 or x.ndim < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x_{what} must have shape (N, ...) and y_{what} shape (N,), "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if y.dtype != torch.long:
        raise ValueError(f"y_{what} must hold class indices (torch.long), got {y.dtype}")


def _on_device(model: nn.Module, device: torch.device) -> bool:
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type != device.type or (device.index is not None and t.device.index != device.index):
            return False
    return True


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in eval mode (chapter 7).

    Every module is put in eval mode, so batch norm normalizes with its running
    statistics and changes nothing; afterwards each module gets back the mode it
    had (a model in training mode stays in training mode). In eval mode every
    example is treated on its own, so the result does not depend on
    ``batch_size`` beyond round-off.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning logits of shape (N, classes).
    x : Tensor, shape (N, *)
    y : Tensor of int64, shape (N,)
        On the model's device.
    batch_size : int, optional
        Evaluate in chunks of this size; the whole set at once when None.

    Returns
    -------
    (float, float)
        The mean cross-entropy over the N examples and the share classified correctly.
    """
    _check_xy(x, y, "eval")
    n = x.shape[0]
    size = n if batch_size is None else _positive_int("batch_size", batch_size)
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        for start in range(0, n, size):
            logits = model(x[start : start + size])
            target = y[start : start + size]
            loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
            correct += (logits.argmax(dim=1) == target).sum()
    finally:
        for module, mode in modes.items():
            module.training = mode
    return loss_sum.item() / n, correct.item() / n


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    device: torch.device | str,
    seed: int,
    progress: bool = True,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    on_epoch_end: Callable[[int, nn.Module], None] | None = None,
) -> FitHistory:
    """Train a classifier with cross-entropy for ``epochs`` passes over the data (chapter 7).

    Each epoch puts the model in training mode and draws shuffled mini-batches of
    ``batch_size`` examples from a ``DataLoader`` whose generator is seeded with
    ``seed``; the last, incomplete batch is dropped, because batch norm's statistics
    on a handful of examples are noise (and a single example is an error). Each step
    runs ``optimizer.zero_grad()``, the forward pass, ``loss.backward()`` and
    ``optimizer.step()``. After each epoch the model is evaluated on
    ``(x_val, y_val)`` with :func:`evaluate`, in eval mode. The model is left in
    training mode.

    This is the loop that ``chapters/07_pytorch_in_practice`` writes out by hand;
    with the same seeds both give the same losses, step for step.

    Parameters
    ----------
    model : torch.nn.Module
        Already on ``device``: move it before creating the optimizer, which holds
        references to its parameters.
    x_train : Tensor, shape (N, *)
    y_train : Tensor of int64, shape (N,)
        Moved to ``device``.
    optimizer : torch.optim.Optimizer
        Over ``model``'s parameters.
    epochs : int
        Passes over the training data, at least 1.
    batch_size : int
        Examples per step, at least 2 and at most N.
    device : torch.device or str
        Where to compute, usually ``bnbook.get_device()``.
    seed : int
        Seeds the order of the mini-batches (not the initial weights: seed those
        before building the model).
    progress : bool
        Show a text progress bar (tqdm) over the epochs, written to ``sys.stdout``
        so that it renders in notebooks, in their stored outputs and in terminals alike.
    x_val, y_val : Tensor, optional
        Validation data, evaluated after every epoch in one batch.
    on_epoch_end : callable, optional
        ``on_epoch_end(epoch, model)`` is called after each epoch (numbered from 1),
        after the validation, for example to record the model's batch-norm parameters.

    Returns
    -------
    FitHistory
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    epochs = _positive_int("epochs", epochs)
    batch_size = _positive_int("batch_size", batch_size)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must name a torch device, got {device!r}") from err
    _check_xy(x_train, y_train, "train")
    n = x_train.shape[0]
    if not 2 <= batch_size <= n:
        raise ValueError(f"batch_size must lie between 2 and the {n} training examples, got {batch_size}")
    if on_epoch_end is not None and not callable(on_epoch_end):
        raise ValueError(f"on_epoch_end must be callable, got {type(on_epoch_end).__name__}")
    if (x_val is None) != (y_val is None):
        raise ValueError("pass both x_val and y_val, or neither")
    if x_val is not None:
        _check_xy(x_val, y_val, "val")
    if not _on_device(model, device):
        raise ValueError(f"the model is not on {device}: call model.to(device) before creating the optimizer")
    owned = {id(p) for p in model.parameters()}
    if not any(id(p) in owned for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("the optimizer holds none of the model's parameters")

    x_train, y_train = x_train.to(device), y_train.to(device)
    if x_val is not None:
        x_val, y_val = x_val.to(device), y_val.to(device)
    loader = DataLoader(
        TensorDataset(x_train, y_train),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(int(seed)),
    )
    epoch_range = range(epochs)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(epoch_range, desc="epochs", file=sys.stdout, ncols=90, unit="epoch")
        epoch_range = bar

    step_loss: list[torch.Tensor] = []
    step_acc: list[torch.Tensor] = []
    val_loss: list[float] = []
    val_acc: list[float] = []
    for epoch in epoch_range:
        model.train()
        for xb, yb in loader:
            optimizer.zero_grad()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            loss.backward()
            optimizer.step()
            step_loss.append(loss.detach())
            step_acc.append((logits.argmax(dim=1) == yb).float().mean())
        if x_val is not None:
            vl, va = evaluate(model, x_val, y_val)
            val_loss.append(vl)
            val_acc.append(va)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
        if bar is not None:
            last = torch.stack(step_loss[-len(loader) :]).mean().item()
            post = {"loss": f"{last:.3f}"}
            if val_acc:
                post["val_acc"] = f"{val_acc[-1]:.3f}"
            bar.set_postfix(post)
    if bar is not None:
        bar.close()
    model.train()

    losses = torch.stack(step_loss).cpu().numpy()
    accs = torch.stack(step_acc).cpu().numpy()
    per_epoch = len(loader)
    return FitHistory(
        step_loss=losses,
        step_acc=accs,
        epoch_loss=losses.reshape(epochs, per_epoch).mean(axis=1),
        epoch_acc=accs.reshape(epochs, per_epoch).mean(axis=1),
        val_loss=np.asarray(val_loss),
        val_acc=np.asarray(val_acc),
    )


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **extra: Any
) -> None:
    """Save ``model.state_dict()``, the optimizer's state and ``extra`` plain values to ``path`` (chapter 7).

    The model's state dict holds its parameters and its buffers: for batch norm,
    ``running_mean``, ``running_var`` and ``num_batches_tracked`` as well as
    ``weight`` (gamma) and ``bias`` (beta). The optimizer's state (Adam's moment
    estimates, for instance) is needed to resume training exactly.

    Parameters
    ----------
    path : str or os.PathLike
        File to write; its folder must exist.
    model : torch.nn.Module
    optimizer : torch.optim.Optimizer, optional
    **extra
        Plain values to store alongside (numbers, strings, lists, dicts of them),
        such as the epoch; :func:`load_checkpoint` returns them.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    folder = os.path.dirname(os.fspath(path)) or "."
    if not os.path.isdir(folder):
        raise ValueError(f"the folder of the checkpoint path does not exist: {folder!r}")
    payload = {
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "extra": dict(extra),
    }
    torch.save(payload, path)


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model`` (and ``optimizer``) (chapter 7).

    Tensors are mapped onto the device of the model's parameters, and the file is
    read with ``torch.load(..., weights_only=True)``, which restores tensors and
    plain values but never runs code stored in the file. Every key of the
    model's state dict must match (``strict=True``).

    Parameters
    ----------
    path : str or os.PathLike
    model : torch.nn.Module
        Built with the same architecture; changed in place.
    optimizer : torch.optim.Optimizer, optional
        Over ``model``'s parameters; its state is restored when given. The
        checkpoint must then hold an optimizer state.

    Returns
    -------
    dict
        The ``extra`` values that were saved.
    """
    if not os.path.isfile(path):
        raise ValueError(f"no checkpoint file at {os.fspath(path)!r}")
    tensors = [*model.parameters(), *model.buffers()]
    location = tensors[0].device if tensors else torch.device("cpu")
    payload = torch.load(path, map_location=location, weights_only=True)
    if not isinstance(payload, dict) or not {"model", "optimizer", "extra"} <= payload.keys():
        raise ValueError(f"{os.fspath(path)!r} was not written by save_checkpoint")
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        if payload["optimizer"] is None:
            raise ValueError("the checkpoint holds no optimizer state")
        optimizer.load_state_dict(payload["optimizer"])
    return payload["extra"]
