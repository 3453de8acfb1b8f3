"""Experiments and figures for chapter 6, where batch normalization goes.

The chapter compares two placements of batch norm in the same small network on
the digits: *before* the nonlinearity (``Linear -> BN -> tanh``, the original
proposal) and *after* it (``Linear -> tanh -> BN``). It trains both over several
seeds and learning rates, measures what each placement feeds the nonlinearity,
and checks what happens to a bias placed right before a batch-norm layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from bnbook.models import train_classifier
from bnbook.plots import COLORS, MARKERS, band

__all__ = [
    "PLACEMENTS",
    "SATURATION_Z",
    "PlacementRun",
    "activation_inputs",
    "BiasPair",
    "bias_gradient",
    "train_bias_pair",
    "count_parameters",
    "placement_mlp",
    "plot_curves",
    "plot_histograms",
    "saturated_fraction",
    "summarize",
    "train_placements",
]

#: The placements compared in the chapter ("none" is the control without batch norm).
PLACEMENTS = ("before", "after", "none")

#: A tanh unit counts as saturated when its slope ``1 - tanh(z)**2`` is below 0.1,
#: that is when ``|z| > atanh(sqrt(0.9))``, about 1.818.
SATURATION_Z = math.atanh(math.sqrt(0.9))

#: Colours and markers of the two placements in every figure of the chapter.
STYLE = {
    "before": {"color": COLORS["bn"], "marker": MARKERS[0], "ls": "-"},
    "after": {"color": COLORS["features"][2], "marker": MARKERS[1], "ls": "--"},
    "none": {"color": COLORS["no_bn"], "marker": MARKERS[2], "ls": ":"},
}

LABELS = {"before": "BN before tanh", "after": "BN after tanh", "none": "no BN"}


def placement_mlp(
    sizes: Sequence[int],
    placement: str = "before",
    bias: bool | None = None,
    norm_layer: type[nn.Module] = nn.BatchNorm1d,
) -> nn.Sequential:
    """A tanh network ``sizes[0] -> ... -> sizes[-1]`` with batch norm placed as asked.

    Each hidden block is

    - ``"before"``: ``Linear -> BN -> Tanh`` (Ioffe and Szegedy's placement);
    - ``"after"``: ``Linear -> Tanh -> BN``;
    - ``"none"``: ``Linear -> Tanh``.

    The last layer is a plain ``Linear`` with a bias (the logits).

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first; at least two entries.
    placement : {"before", "after", "none"}
    bias : bool or None
        Whether the hidden ``Linear`` layers have a bias. ``None`` picks the usual
        choice: no bias when batch norm follows the ``Linear`` directly
        (``"before"``), a bias otherwise.
    norm_layer : module class
        ``torch.nn.BatchNorm1d`` by default; ``bnbook.nn.BatchNorm1d`` works too.

    Returns
    -------
    torch.nn.Sequential
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {list(sizes)}")
    if bias is None:
        bias = placement != "before"
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        if placement == "before":
            layers += [norm_layer(fan_out), nn.Tanh()]
        elif placement == "after":
            layers += [nn.Tanh(), norm_layer(fan_out)]
        else:
            layers.append(nn.Tanh())
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as running statistics are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def activation_inputs(model: nn.Module, x: torch.Tensor, batch_stats: bool = True) -> list[np.ndarray]:
    """The inputs of every ``Tanh`` in ``model`` on ``x``, one float64 array per layer.

    With ``batch_stats=True`` the batch-norm layers normalize with the statistics
    of ``x`` itself, as in training mode (``x`` is one big batch); a copy of the
    model runs, so its running statistics are not touched. With ``False`` the
    model runs in eval mode, with its running statistics. The model's mode is
    left as it was. Arrays have shape ``(n, width)`` and live on the CPU.
    """
    net = copy.deepcopy(model) if batch_stats else model
    captured: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
        for m in net.modules()
        if isinstance(m, nn.Tanh)
    ]
    was_training = net.training
    net.train(batch_stats)
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return [z.to("cpu", torch.float64).numpy() for z in captured]


def saturated_fraction(z: np.ndarray | Sequence[np.ndarray], threshold: float = SATURATION_Z) -> float:
    """Share of the values in ``z`` (an array or a list of arrays) with ``|z| > threshold``.

    With the default threshold these are the tanh inputs where the slope
    ``1 - tanh(z)**2`` is below 0.1.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    flat = np.concatenate([np.ravel(a) for a in z]) if isinstance(z, (list, tuple)) else np.ravel(z)
    if flat.size == 0:
        raise ValueError("z holds no values")
    return float(np.mean(np.abs(flat) > threshold))


def bias_gradient(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, train_mode: bool) -> float:
    """Largest ``|gradient|`` of the first ``Linear`` layer's bias on the batch ``(x, y)``.

    The cross-entropy loss is evaluated with the whole model in training mode
    (batch statistics) or in eval mode (running statistics); gradients are
    cleared before and after, and the mode is restored.
    """
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    if first.bias is None:
        raise ValueError("the first Linear layer of the model has no bias")
    was_training = model.training
    model.train(train_mode)
    model.zero_grad(set_to_none=True)
    try:
        nn.functional.cross_entropy(model(x), y).backward()
        grad = first.bias.grad.abs().max().item()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return grad


class PlacementRun(NamedTuple):
    """One training run: the curves, the final numbers and the tanh inputs at both ends."""

    placement: str
    lr: float
    seed: int
    steps: np.ndarray  # steps at which the curves were recorded
    train_loss: np.ndarray  # full training set, eval mode
    test_acc: np.ndarray  # test set, eval mode
    z_init: list[np.ndarray]  # tanh inputs on the test set before training
    z_final: list[np.ndarray]  # and after


def _evaluate(model: nn.Module, x_train, y_train, x_test, y_test) -> tuple[float, float]:
    with torch.no_grad():
        loss = nn.functional.cross_entropy(model(x_train), y_train).item()
        acc = (model(x_test).argmax(dim=1) == y_test).double().mean().item()
    return loss, acc


def train_placements(
    placements: Sequence[str],
    lrs: Sequence[float],
    seeds: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    sizes: Sequence[int] = (64, 64, 64, 10),
    steps: int = 300,
    batch_size: int = 64,
    record_every: int = 20,
) -> list[PlacementRun]:
    """Train one network per placement, learning rate and seed with plain SGD.

    The seed sets both the initial weights (``torch.manual_seed``) and the order
    of the mini-batches, so that for a given seed every placement and learning
    rate sees the same batches. Curves are measured in eval mode on the full
    training set (loss) and the test set (accuracy). The model takes the dtype
    and device of ``data``.
    """
    x_train, y_train, x_test, y_test = data
    runs = []
    for placement in placements:
        for lr in lrs:
            for seed in seeds:
                torch.manual_seed(seed)
                model = placement_mlp(sizes, placement).to(device=x_train.device, dtype=x_train.dtype)
                z_init = activation_inputs(model, x_test)

                def record(_step, net):
                    net.eval()
                    out = _evaluate(net, x_train, y_train, x_test, y_test)
                    net.train()
                    return out

                hist = train_classifier(
                    model,
                    x_train,
                    y_train,
                    steps=steps,
                    lr=lr,
                    batch_size=batch_size,
                    seed=seed,
                    record=record,
                    record_every=record_every,
                )
                loss, acc = np.asarray(hist.records).T
                runs.append(
                    PlacementRun(
                        placement,
                        lr,
                        seed,
                        np.arange(len(loss)) * record_every,
                        loss,
                        acc,
                        z_init,
                        activation_inputs(model, x_test),
                    )
                )
    return runs


def summarize(runs: Sequence[PlacementRun]) -> dict[tuple[str, float], dict[str, float]]:
    """Per (placement, lr): mean, min and max over seeds of the final test accuracy
    and of the saturated share of tanh inputs, before and after training."""
    table: dict[tuple[str, float], dict[str, float]] = {}
    keys = sorted({(r.placement, r.lr) for r in runs}, key=lambda k: (PLACEMENTS.index(k[0]), k[1]))
    for key in keys:
        group = [r for r in runs if (r.placement, r.lr) == key]
        acc = np.array([r.test_acc[-1] for r in group])
        sat0 = np.array([saturated_fraction(r.z_init) for r in group])
        sat1 = np.array([saturated_fraction(r.z_final) for r in group])
        table[key] = {
            "acc_mean": float(acc.mean()),
            "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "acc_min": float(acc.min()),
            "acc_max": float(acc.max()),
            "sat_init": float(sat0.mean()),
            "sat_final": float(sat1.mean()),
            "sat_final_min": float(sat1.min()),
            "sat_final_max": float(sat1.max()),
        }
    return table


def plot_curves(runs: Sequence[PlacementRun], lrs: Sequence[float], placements=("before", "after")) -> Figure:
    """Training loss (top row) and test accuracy (bottom row) per learning rate, mean and min-max band."""
    fig, axes = plt.subplots(2, len(lrs), figsize=(3.0 * len(lrs) + 1.0, 5.6), sharex=True, sharey="row")
    axes = np.asarray(axes).reshape(2, len(lrs))
    for j, lr in enumerate(lrs):
        for placement in placements:
            group = [r for r in runs if r.placement == placement and r.lr == lr]
            if not group:
                continue
            x = group[0].steps
            style = STYLE[placement]
            band(
                axes[0, j],
                x,
                [r.train_loss for r in group],
                style["color"],
                LABELS[placement],
                marker=style["marker"],
                ls=style["ls"],
            )
            band(
                axes[1, j],
                x,
                [r.test_acc for r in group],
                style["color"],
                LABELS[placement],
                marker=style["marker"],
                ls=style["ls"],
            )
        axes[0, j].set_title(f"learning rate {lr:g}")
        axes[0, j].set_yscale("log")
        axes[1, j].set_xlabel("training step")
        axes[1, j].set_ylim(0.8, 1.0)
    axes[0, 0].set_ylabel("training loss (full set)")
    axes[1, 0].set_ylabel("test accuracy")
    axes[1, 0].legend(loc="lower right", fontsize=9)
    return fig


def plot_histograms(runs: Sequence[PlacementRun], lr: float, placements=("before", "after")) -> Figure:
    """Histograms of the tanh inputs (both hidden layers, test set, all seeds) at init and after training."""
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.4), sharey=True)
    bins = np.linspace(-6, 6, 61)
    for ax, when in zip(axes, ("z_init", "z_final"), strict=True):
        for placement in placements:
            group = [r for r in runs if r.placement == placement and r.lr == lr]
            z = np.concatenate([np.ravel(a) for r in group for a in getattr(r, when)])
            style = STYLE[placement]
            share = saturated_fraction(z)
            ax.hist(
                np.clip(z, bins[0], bins[-1]),
                bins=bins,
                density=True,
                histtype="step",
                lw=1.8,
                color=style["color"],
                ls=style["ls"],
                label=f"{LABELS[placement]} ({share:.1%} saturated)",
            )
        for s in (-SATURATION_Z, SATURATION_Z):
            ax.axvline(s, color=COLORS["truth"], lw=0.8, ls=(0, (2, 2)))
        ax.set_xlabel("input of tanh, z")
        ax.set_title("at initialization" if when == "z_init" else f"after training (lr {lr:g})")
        ax.legend(fontsize=8.5, loc="upper left")
    axes[0].set_ylabel("density")
    return fig


class BiasPair(NamedTuple):
    """The same network trained with and without a bias before its batch-norm layers."""

    acc_without: float  # final test accuracy, eval mode
    acc_with: float
    logit_diff_batch: float  # largest |difference| of the test logits, batch statistics of the test set
    logit_diff_eval: float  # the same in eval mode (running statistics)
    max_bias_change: float  # largest |change| of a bias before batch norm during training
    model_without: nn.Sequential  # the two trained networks, in eval mode
    model_with: nn.Sequential


def train_bias_pair(
    seed: int,
    lr: float,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    sizes: Sequence[int] = (64, 64, 64, 10),
    steps: int = 300,
    batch_size: int = 64,
) -> BiasPair:
    """Train ``Linear -> BN -> tanh`` networks with and without the Linear biases.

    Both start from the same weights (drawn with ``seed``; the biases of the
    second network keep PyTorch's random initial values, drawn with ``seed + 1``)
    and see the same mini-batches.
    """
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    without = placement_mlp(sizes, "before", bias=False).to(device=x_train.device, dtype=x_train.dtype)
    torch.manual_seed(seed + 1)
    with_bias = placement_mlp(sizes, "before", bias=True).to(device=x_train.device, dtype=x_train.dtype)
    with_bias.load_state_dict(without.state_dict(), strict=False)  # same weights; biases stay random
    biases0 = [m.bias.detach().clone() for m in with_bias[:-1] if isinstance(m, nn.Linear)]
    for net in (without, with_bias):
        train_classifier(net, x_train, y_train, steps=steps, lr=lr, batch_size=batch_size, seed=seed)
    biases1 = [m.bias.detach() for m in with_bias[:-1] if isinstance(m, nn.Linear)]
    change = max((b1 - b0).abs().max().item() for b0, b1 in zip(biases0, biases1, strict=True))
    with torch.no_grad():
        batch0, batch1 = copy.deepcopy(without)(x_test), copy.deepcopy(with_bias)(x_test)  # train mode
        without.eval()
        with_bias.eval()
        out0, out1 = without(x_test), with_bias(x_test)
    acc0 = (out0.argmax(dim=1) == y_test).double().mean().item()
    acc1 = (out1.argmax(dim=1) == y_test).double().mean().item()
    return BiasPair(
        acc0,
        acc1,
        (batch0 - batch1).abs().max().item(),
        (out0 - out1).abs().max().item(),
        change,
        without,
        with_bias,
    )
