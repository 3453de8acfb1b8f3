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
  learning rate, and :func:`watch_largest_step` measures the largest step taken.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from torch import nn

from bnbook.nn import batch_norm_layers
from bnbook.plots import COLORS, MARKERS, PALETTE, band

__all__ = [
    "BN_QUANTITIES",
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
