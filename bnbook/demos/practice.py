"""Chapter 7, batch normalization in practice with PyTorch: what the figures show.

The training loop itself is the library's :func:`bnbook.training.fit`; this module
only reads trained models and draws:

* :func:`bn_state` collects gamma, beta and the running statistics of every
  batch-norm layer, and :func:`plot_bn_state` draws them per channel;
* :func:`gamma_drift` measures how far each layer's gamma moved from its initial 1,
  and :func:`plot_gamma_drift` draws that distance over training for several
  learning rates;
* :func:`plot_learning_curves` draws training histories;
* :func:`scale_track` reads the scale of a trained CNN's output side: the last
  batch-norm layer's gamma, the output weights, the logits and the training loss;
* :func:`adam_step_factors` gives the bounds on one Adam step, in units of the
  learning rate, and :func:`watch_largest_step` measures the largest step taken;
* :class:`SeedStackCNN` holds one copy of the chapter's CNN per seed as one
  network, and :func:`fit_stack` trains such a stack (or a
  :class:`bnbook.batched.BatchedMLP`) with Adam, every copy on the batches that
  :func:`bnbook.training.fit` would give it: the seeds of a study then cost
  about as much as one run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bnbook import nn as bnn
from bnbook.nn import batch_norm_layers
from bnbook.plots import COLORS, MARKERS, PALETTE, band

__all__ = [
    "BN_QUANTITIES",
    "SeedStackCNN",
    "fit_stack",
    "stack_accuracy",
    "stack_gamma_drift",
    "adam_step_factors",
    "watch_largest_step",
    "bn_state",
    "gamma_drift",
    "scale_track",
    "plot_bn_state",
    "plot_gamma_drift",
    "plot_learning_curves",
]

#: The four per-channel quantities of a batch-norm layer: state-dict name, symbol, initial value.
BN_QUANTITIES = [
    ("weight", r"$\gamma$ (weight)", 1.0),
    ("bias", r"$\beta$ (bias)", 0.0),
    ("running_mean", r"$\hat\mu$ (running_mean)", 0.0),
    ("running_var", r"$\hat\sigma^2$ (running_var)", 1.0),
]


def bn_state(model: nn.Module) -> list[dict[str, np.ndarray]]:
    """For each batch-norm layer of ``model``, its per-channel quantities as NumPy arrays.

    Keys are those of :data:`BN_QUANTITIES` (``weight``, ``bias``, ``running_mean``,
    ``running_var``); values have shape (C,), copied to the CPU.
    """
    return [
        {name: getattr(layer, name).detach().cpu().double().numpy() for name, _, _ in BN_QUANTITIES}
        for layer in batch_norm_layers(model)
    ]


def gamma_drift(model: nn.Module) -> np.ndarray:
    """Mean of ``|gamma - 1|`` over the channels of each batch-norm layer, shape (layers,)."""
    return np.array([np.abs(state["weight"] - 1.0).mean() for state in bn_state(model)])


@torch.no_grad()
def scale_track(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Four numbers that follow the scale of the output side of ``model``, in eval mode.

    Returns ``[mean gamma of the last batch-norm layer, norm of the last Linear's weight,
    standard deviation of the logits on x, mean cross-entropy on (x, y)]``. In a
    network where the last batch-norm layer reaches the output ``Linear`` only through
    ReLU and max-pooling, its ``gamma`` and ``beta`` trade scale freely with that
    layer's weights, so the first three grow together when the logits grow. The
    model's mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y).item()
    finally:
        model.train(was_training)
    gamma = batch_norm_layers(model)[-1].weight.mean().item()
    out = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return np.array([gamma, out.weight.norm().item(), logits.std().item(), loss])


def plot_bn_state(axes: Sequence[Axes], model: nn.Module, layer_names: Sequence[str]) -> None:
    """Per-channel gamma, beta, running mean and running variance, one panel each.

    Each batch-norm layer of ``model`` is one series (colour and marker); a dashed
    line marks the value every channel started from.
    """
    states = bn_state(model)
    if len(layer_names) != len(states):
        raise ValueError(f"need {len(states)} layer names, got {len(layer_names)}")
    for ax, (name, label, initial) in zip(axes, BN_QUANTITIES, strict=True):
        for k, (state, layer_name) in enumerate(zip(states, layer_names, strict=True)):
            values = state[name]
            ax.plot(
                np.arange(len(values)),
                values,
                ls="none",
                marker=MARKERS[k],
                ms=5,
                color=PALETTE[k],
                alpha=0.85,
                label=f"{layer_name} ({len(values)} channels)",
            )
        ax.axhline(initial, ls="--", lw=1.2, color=COLORS["truth"], label="initial value (1 or 0)")
        ax.set_title(label)
        ax.set_xlabel("channel index")
        ax.set_ylabel("value")


def plot_gamma_drift(ax: Axes, steps_per_epoch: int, drift: Mapping[float, np.ndarray]) -> None:
    """Mean ``|gamma - 1|`` after each epoch, one band (min-max over seeds) per learning rate.

    ``drift[lr]`` has shape (seeds, epochs); the learning rates may run for different numbers of epochs.
    """
    for k, (lr, runs) in enumerate(sorted(drift.items())):
        runs = np.asarray(runs)
        steps = np.arange(1, runs.shape[1] + 1) * steps_per_epoch
        band(ax, steps, runs, PALETTE[k], f"learning rate {lr:g}", marker=MARKERS[k])
    ax.set_xlabel("training steps")
    ax.set_ylabel(r"mean $|\gamma - 1|$ over channels")


def plot_learning_curves(
    axes: Sequence[Axes],
    step_losses: Mapping[str, np.ndarray],
    val_accs: Mapping[str, np.ndarray],
    steps_per_epoch: int,
) -> None:
    """Training loss per step (left) and test accuracy after each epoch (right), one line per model."""
    loss_ax, acc_ax = axes
    for k, (name, losses) in enumerate(step_losses.items()):
        loss_ax.plot(np.arange(1, len(losses) + 1), losses, color=PALETTE[k], lw=1.2, label=name)
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("training step")
    loss_ax.set_ylabel("cross-entropy of the batch")
    loss_ax.legend()
    for k, (name, accs) in enumerate(val_accs.items()):
        steps = np.arange(1, len(accs) + 1) * steps_per_epoch
        acc_ax.plot(steps, accs, color=PALETTE[k], marker=MARKERS[k], label=name)
    acc_ax.set_xlabel("training step (end of each epoch)")
    acc_ax.set_ylabel("test accuracy (eval mode)")
    acc_ax.legend()


def adam_step_factors(beta1: float = 0.9, beta2: float = 0.999) -> tuple[float, float]:
    r"""Bounds on one Adam step :math:`|\Delta\theta|`, in units of the learning rate, for long runs.

    Returns ``(sparse, worst)``:

    - ``sparse`` :math:`= (1-\beta_1)/\sqrt{1-\beta_2}`, Kingma and Ba's bound (2015, Section 2.1)
      for a gradient that was 0 at every earlier step and is not 0 now; it applies when
      :math:`1-\beta_1 > \sqrt{1-\beta_2}` (otherwise the step stays below 1);
    - ``worst`` :math:`= \text{sparse} / \sqrt{1-\beta_1^2/\beta_2}`, the supremum over all gradient
      sequences (Cauchy-Schwarz on the two moving averages, reached by a gradient that grows by a
      factor :math:`\beta_2/\beta_1` per step).

    Both ignore Adam's bias correction, which makes early steps smaller, and its tiny :math:`\delta`.
    """
    if not (0 <= beta1 < 1 and 0 < beta2 < 1 and beta1**2 < beta2):
        raise ValueError(f"need 0 <= beta1 < 1, 0 < beta2 < 1 and beta1**2 < beta2, got {beta1}, {beta2}")
    sparse = (1 - beta1) / math.sqrt(1 - beta2)
    return sparse, sparse / math.sqrt(1 - beta1**2 / beta2)


def watch_largest_step(optimizer: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> dict[str, float]:
    """Record the largest ``|change| / lr`` of any entry of ``params`` over the optimizer's future steps.

    Returns a dict whose ``"largest"`` entry is updated after every ``optimizer.step()``
    (via the optimizer's step hooks; ``lr`` is read from the parameter's group).
    """
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = list(params)
    seen = {"largest": 0.0}
    saved: list[torch.Tensor] = []

    def before(_opt, _args, _kwargs):
        saved[:] = [p.detach().clone() for p in params]

    def after(_opt, _args, _kwargs):
        for p, old in zip(params, saved, strict=True):
            step = (p.detach() - old).abs().max().item() / lr_of[id(p)]
            seen["largest"] = max(seen["largest"], step)

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
    return seen


# --- several seeds as one network --------------------------------------------------------
class SeedStackCNN(nn.Module):
    """Copies of :func:`bnbook.models.small_cnn`, one per seed, side by side as one network (chapter 7).

    Copy ``k`` starts with the weights that ``torch.manual_seed(seeds[k]);
    small_cnn(batch_norm, norm_layer)`` draws. Grouped convolutions keep the copies
    apart (copy ``k``'s images are input channel ``k``); each batch-norm layer is one
    ``norm_layer`` over the channels of every copy, which normalizes each channel on its
    own, as the copy's own layer would; the output layer is a batched matrix product.
    Nothing couples the copies: trained on the sum of their losses, each gets the
    gradient of its own loss, and an elementwise optimizer such as Adam takes each
    copy's own step. :meth:`member` gives copy ``k`` back as a plain ``small_cnn``.

    Parameters
    ----------
    seeds : sequence of int
        One copy per seed.
    batch_norm : bool
    norm_layer : module class
        ``bnbook.nn.BatchNorm2d`` (default) or ``torch.nn.BatchNorm2d``.
    channels : (int, int)
    num_classes : int
    channels_last : bool
        Compute in PyTorch's channels-last memory format, where max-pooling and
        ``torch.nn.BatchNorm2d`` run several times faster on a CPU. The numbers are the
        same up to float32 round-off.

    Examples
    --------
    >>> stack = SeedStackCNN([0, 1, 2])
    >>> stack(torch.zeros(3, 5, 1, 8, 8)).shape  # (copies, batch, classes)
    torch.Size([3, 5, 10])
    """

    def __init__(
        self,
        seeds: Sequence[int],
        batch_norm: bool = True,
        norm_layer: type[nn.Module] = bnn.BatchNorm2d,
        channels: tuple[int, int] = (16, 32),
        num_classes: int = 10,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        from bnbook.models import small_cnn

        self.seeds = [int(seed) for seed in seeds]
        if not self.seeds:
            raise ValueError("seeds must name at least one copy")
        self.channels_last = bool(channels_last)
        self.batch_norm, self.norm_layer = bool(batch_norm), norm_layer
        self.channels, self.num_classes = (int(channels[0]), int(channels[1])), int(num_classes)
        copies = []
        for seed in self.seeds:
            torch.manual_seed(seed)
            copies.append(small_cnn(batch_norm, norm_layer, self.channels, self.num_classes))
        s, (c1, c2) = len(self.seeds), self.channels
        self.convs = nn.ModuleList(
            [
                nn.Conv2d(s, s * c1, 3, padding=1, groups=s, bias=not batch_norm),
                nn.Conv2d(s * c1, s * c2, 3, padding=1, groups=s, bias=not batch_norm),
            ]
        )
        self.norms = nn.ModuleList([norm_layer(s * c1), norm_layer(s * c2)] if batch_norm else [])
        with torch.no_grad():
            for j, conv in enumerate(self.convs):
                theirs = [[m for m in net if isinstance(m, nn.Conv2d)][j] for net in copies]
                conv.weight.copy_(torch.cat([c.weight for c in theirs]))
                if conv.bias is not None:
                    conv.bias.copy_(torch.cat([c.bias for c in theirs]))
        self.weight = nn.Parameter(
            torch.stack([net[-1].weight.detach().T for net in copies])
        )  # (S, F, classes)
        self.bias = nn.Parameter(torch.stack([net[-1].bias.detach() for net in copies]))  # (S, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (S, B, classes) for inputs (S, B, 1, H, W), one batch per copy, or (B, 1, H, W) shared."""
        s = len(self.seeds)
        if x.dim() == 4:
            x = x.unsqueeze(0).expand(s, *x.shape)
        if x.dim() != 5 or x.shape[0] != s or x.shape[2] != 1:
            raise ValueError(f"x must have shape ({s}, B, 1, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
        h = x.squeeze(2).transpose(0, 1)  # (B, S, H, W): copy k's images are channel k
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        for j, conv in enumerate(self.convs):
            h = conv(h)
            if self.batch_norm:
                h = self.norms[j](h)
            h = F.max_pool2d(F.relu(h), 2)
        h = h.reshape(h.shape[0], s, -1).transpose(0, 1)  # (S, B, c2 * h * w), small_cnn's Flatten order
        return torch.baddbmm(self.bias.unsqueeze(1), h, self.weight)

    def member(self, k: int) -> nn.Sequential:
        """Copy ``k`` as a stand-alone :func:`bnbook.models.small_cnn`, with its state and mode (a copy)."""
        from bnbook.models import small_cnn

        if not 0 <= k < len(self.seeds):
            raise ValueError(f"member index must be in [0, {len(self.seeds)}), got {k}")
        net = small_cnn(self.batch_norm, self.norm_layer, self.channels, self.num_classes)
        net = net.to(device=self.weight.device, dtype=self.weight.dtype)
        convs = [m for m in net if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for conv, stacked in zip(convs, self.convs, strict=True):
                part = slice(k * conv.out_channels, (k + 1) * conv.out_channels)
                conv.weight.copy_(stacked.weight[part])
                if conv.bias is not None:
                    conv.bias.copy_(stacked.bias[part])
            for norm, stacked in zip(batch_norm_layers(net), self.norms, strict=True):
                part = slice(k * norm.num_features, (k + 1) * norm.num_features)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(norm, name).copy_(getattr(stacked, name)[part])
                norm.num_batches_tracked.copy_(stacked.num_batches_tracked)
            net[-1].weight.copy_(self.weight[k].T)
            net[-1].bias.copy_(self.bias[k])
        return net.train(self.training)


def stack_gamma_drift(model: SeedStackCNN) -> np.ndarray:
    """Mean ``|gamma - 1|`` over the channels of each batch-norm layer, per copy: shape (copies, layers).

    Copy ``k``'s row is :func:`gamma_drift` of ``model.member(k)``.
    """
    s = len(model.seeds)
    rows = [(norm.weight.detach().cpu().double().view(s, -1) - 1.0).abs().mean(dim=1) for norm in model.norms]
    return torch.stack(rows, dim=1).numpy()


@torch.no_grad()
def stack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Eval-mode accuracy of every copy of a stack on the shared data ``(x, y)``, shape (copies,).

    ``model`` is a :class:`SeedStackCNN` or a :class:`bnbook.batched.BatchedMLP`; its mode is restored.
    """
    was_training = model.training
    model.eval()
    try:
        right = model(x).argmax(dim=-1) == y
    finally:
        model.train(was_training)
    return right.double().mean(dim=1).cpu().numpy()


def fit_stack(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    on_epoch_end: Callable[[int, nn.Module], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Train every copy of a stack for ``epochs`` epochs, as :func:`bnbook.training.fit` trains one network.

    ``model`` is a :class:`SeedStackCNN` or a :class:`bnbook.batched.BatchedMLP`:
    it maps inputs (S, B, ...) to logits (S, B, classes), and its ``seeds`` list
    one seed per copy. Each epoch, copy ``k`` draws its shuffled batches from a
    ``DataLoader`` whose generator is seeded with ``seeds[k]`` (the last, incomplete
    batch dropped), so it sees the batches ``fit(..., seed=seeds[k])`` would give it.
    A step minimizes the sum of the copies' mean cross-entropies with ``optimizer``:
    for an elementwise optimizer such as Adam or SGD that is each copy's own step.
    After each epoch the copies are evaluated on ``(x_val, y_val)`` in eval mode and
    ``on_epoch_end(epoch, model)`` is called (epochs numbered from 1).

    Returns
    -------
    dict
        ``step_loss`` of shape (S, steps), each copy's training loss at every step,
        and ``val_acc`` of shape (S, epochs) (empty without validation data).
    """
    if epochs < 1 or batch_size < 2:
        raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {epochs} and {batch_size}")
    if (x_val is None) != (y_val is None):
        raise ValueError("pass both x_val and y_val, or neither")
    seeds = [int(seed) for seed in model.seeds]
    s, n = len(seeds), x_train.shape[0]
    orders = [
        DataLoader(
            TensorDataset(torch.arange(n)),
            batch_size=batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(seed),
        )
        for seed in seeds
    ]
    step_loss: list[torch.Tensor] = []
    val_acc = []
    for epoch in range(1, epochs + 1):
        model.train()
        for batches in zip(*orders, strict=True):
            idx = torch.stack([b[0] for b in batches]).to(x_train.device)  # (S, B)
            logits = model(x_train[idx])
            per_copy = F.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(), reduction="none")
            per_copy = per_copy.view(s, -1).mean(dim=1)
            optimizer.zero_grad()
            per_copy.sum().backward()
            optimizer.step()
            step_loss.append(per_copy.detach())
        if x_val is not None:
            val_acc.append(stack_accuracy(model, x_val, y_val))
        if on_epoch_end is not None:
            on_epoch_end(epoch, model)
    return {
        "step_loss": torch.stack(step_loss, dim=1).double().cpu().numpy(),
        "val_acc": np.stack(val_acc, axis=1) if val_acc else np.zeros((s, 0)),
    }
