"""Chapter 4, training versus inference: running statistics, batch dependence, recalibration.

The batch-norm arithmetic itself comes from :mod:`bnbook.scratch` (NumPy) and
from the PyTorch layers; this module only drives them:

* :func:`sample_batches`, :func:`running_trajectory` and
  :func:`plot_running_stats` follow the running mean and variance of one
  feature drawn from a known population;
* :func:`explorer_draws` and :func:`make_momentum_draw` feed the chapter's
  momentum / batch-size explorer;
* :func:`batched_accuracy` measures a classifier on batches in a given order
  (to expose a forgotten ``model.eval()``);
* :func:`full_batch_statistics` and :func:`running_stats_gap` compare the
  running statistics with the population statistics of the final network
  (recalibration itself is the library tool :func:`bnbook.nn.recalibrate_bn`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from bnbook.nn import batch_norm_layers
from bnbook.plots import COLORS
from bnbook.scratch import BatchNorm

__all__ = [
    "Trajectory",
    "batched_accuracy",
    "explorer_draws",
    "full_batch_statistics",
    "make_momentum_draw",
    "plot_batch_dependence",
    "plot_running_stats",
    "running_stats_gap",
    "running_trajectory",
    "sample_batches",
]

# --- one feature, a known population -----------------------------------------------------
def sample_batches(
    n_steps: int, batch_size: int, mean: float, var: float, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``n_steps`` mini-batches of one normally distributed feature.

    Parameters
    ----------
    n_steps : int
        Number of batches (training steps).
    batch_size : int
        Values per batch, at least 2 (batch statistics need two values).
    mean, var : float
        Population mean and variance of the feature.
    rng : numpy.random.Generator
        Source of the draws.

    Returns
    -------
    ndarray, shape (n_steps, batch_size)
        Row ``t`` is the batch seen at step ``t + 1``.
    """
    if n_steps < 1 or batch_size < 2 or var <= 0:
        raise ValueError(
            f"need n_steps >= 1, batch_size >= 2 and var > 0, got {n_steps}, {batch_size}, {var}"
        )
    return rng.normal(mean, np.sqrt(var), size=(n_steps, batch_size))


class Trajectory(NamedTuple):
    """Per-step statistics of one feature, as :func:`running_trajectory` records them.

    Attributes
    ----------
    batch_mean, batch_var : ndarray, shape (n_steps,)
        Each batch's mean and its *unbiased* variance (the value that enters
        the running variance).
    running_mean, running_var : ndarray, shape (n_steps,)
        The layer's running estimates after each step.
    """

    batch_mean: np.ndarray
    batch_var: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray


def running_trajectory(batches: np.ndarray, momentum: float | None = 0.1) -> Trajectory:
    """Feed batches through a :class:`bnbook.scratch.BatchNorm` and record its running statistics.

    Parameters
    ----------
    batches : ndarray, shape (n_steps, batch_size)
        One feature; see :func:`sample_batches`.
    momentum : float or None
        PyTorch's convention (weight of the new batch); None for a cumulative average.

    Returns
    -------
    Trajectory
    """
    batches = np.asarray(batches, dtype=np.float64)
    if batches.ndim != 2 or batches.shape[1] < 2:
        raise ValueError(f"batches must have shape (n_steps, batch_size >= 2), got {batches.shape}")
    bn = BatchNorm(1, momentum=momentum)
    running_mean, running_var = [], []
    for batch in batches:
        bn(batch[:, None])
        running_mean.append(bn.running_mean[0])
        running_var.append(bn.running_var[0])
    return Trajectory(
        batches.mean(axis=1), batches.var(axis=1, ddof=1), np.array(running_mean), np.array(running_var)
    )


def plot_running_stats(
    axes: Sequence[Axes],
    traj: Trajectory,
    true_mean: float,
    true_var: float,
    *,
    momentum: float | None = None,
    legend: bool = True,
) -> None:
    """Draw batch statistics (gray dots), running averages (line) and the truth (dashed).

    Parameters
    ----------
    axes : pair of matplotlib Axes
        Left for the mean, right for the variance.
    traj : Trajectory
    true_mean, true_var : float
        Population values, drawn as dashed horizontal lines.
    momentum : float, optional
        Only used in the legend label of the running average.
    legend : bool
        Whether to add one legend for both panels below them (outside the axes,
        which needs a figure with constrained layout).
    """
    steps = np.arange(1, len(traj.batch_mean) + 1)
    panels = (
        (axes[0], traj.batch_mean, traj.running_mean, true_mean, "mean"),
        (axes[1], traj.batch_var, traj.running_var, true_var, "variance"),
    )
    handles: list = []
    for ax, batch, running, truth, name in panels:
        dots = ax.scatter(steps, batch, s=9, color=COLORS["batch"], alpha=0.8, zorder=1)
        (line,) = ax.plot(steps, running, color=COLORS["ema"], lw=2.0, zorder=3)
        ref = ax.axhline(truth, color=COLORS["truth"], ls="--", lw=1.3, zorder=2)
        handles = handles or [dots, line, ref]
        ax.set_xlabel("training step")
        ax.set_ylabel(name)
        ax.set_title(f"Running {name}")
    if legend:
        ema = "running average" if momentum is None else f"running average (momentum {momentum:g})"
        axes[0].figure.legend(
            handles,
            ["batch statistic (variance: unbiased)", ema, "population value"],
            loc="outside lower center",
            ncol=3,
            fontsize=9,
        )


# --- the explorer ------------------------------------------------------------------------
def explorer_draws(
    batch_sizes: Sequence[int], n_steps: int, mean: float, var: float, seed: int
) -> dict[int, np.ndarray]:
    """Precompute one sequence of batches per batch size for the momentum explorer.

    Parameters
    ----------
    batch_sizes : sequence of int
    n_steps : int
    mean, var : float
        Population mean and variance.
    seed : int
        Each batch size gets its own generator, seeded from ``seed`` and the size,
        so adding a size does not change the others.

    Returns
    -------
    dict of int to ndarray of shape (n_steps, batch_size)
    """
    return {
        int(b): sample_batches(n_steps, int(b), mean, var, np.random.default_rng([seed, int(b)]))
        for b in batch_sizes
    }


def make_momentum_draw(
    draws: Mapping[int, np.ndarray], true_mean: float, true_var: float
) -> Callable[..., None]:
    """The explorer's ``draw(fig, momentum, batch_size)`` over precomputed batches.

    Parameters
    ----------
    draws : mapping of int to ndarray
        From :func:`explorer_draws`.
    true_mean, true_var : float
        Population values.

    Returns
    -------
    callable
        ``draw(fig, momentum, batch_size)`` draws the two panels of
        :func:`plot_running_stats` on an empty figure, with y-limits that stay
        fixed across frames (the variance axis stops at four times the true
        variance, with a note counting the batch values above it), and a title
        giving the error of the final running mean and variance.
    """
    lo_mean = min(min(d.mean(axis=1).min() for d in draws.values()), 0.0)
    hi_mean = max(d.mean(axis=1).max() for d in draws.values())
    pad = 0.05 * (hi_mean - lo_mean)
    top_var = 4.0 * true_var  # tiny batches give a few huge variances; they would flatten the rest

    def draw(fig: Figure, momentum: float, batch_size: int) -> None:
        traj = running_trajectory(draws[batch_size], momentum)
        axes = fig.subplots(1, 2)
        plot_running_stats(axes, traj, true_mean, true_var)
        axes[0].set_ylim(lo_mean - pad, hi_mean + pad)
        axes[1].set_ylim(0.0, top_var)
        n_above = int((traj.batch_var > top_var).sum())
        if n_above:
            axes[1].text(
                0.98,
                0.96,
                f"{n_above} batch values above the chart",
                transform=axes[1].transAxes,
                ha="right",
                va="top",
                fontsize=8,
            )
        err_mean = abs(traj.running_mean[-1] - true_mean)
        err_var = abs(traj.running_var[-1] - true_var)
        fig.suptitle(
            f"momentum {momentum:g}, batch size {batch_size}: after {len(traj.running_mean)} steps the "
            f"running mean is off by {err_mean:.2f}, the variance by {err_var:.2f}",
            fontsize=10,
        )

    return draw


# --- a classifier on batches of a chosen composition -------------------------------------
@torch.no_grad()
def batched_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, order: torch.Tensor | None = None
) -> float:
    """Accuracy of ``model`` when the examples arrive in batches, in the given order.

    The model is called in whatever mode it is in. In training mode a
    batch-norm layer normalizes every batch with that batch's statistics, so
    the result depends on ``order``, and the call *updates the running
    statistics*: pass a copy (``copy.deepcopy(model)``) if they matter.

    Parameters
    ----------
    model : torch.nn.Module
    x, y : Tensor
        Inputs (N, ...) and integer labels (N,), on the model's device.
    batch_size : int
        Consecutive chunks of this size; a last chunk of one example is
        merged into the one before (training-mode batch norm needs two).
    order : Tensor of int, optional
        A permutation of ``range(N)``; default the given order.

    Returns
    -------
    float
        Share of correct predictions.
    """
    if batch_size < 2:
        raise ValueError(f"batch_size must be at least 2, got {batch_size}")
    idx = torch.arange(x.shape[0], device=x.device) if order is None else order.to(x.device)
    chunks = list(torch.split(idx, batch_size))
    if len(chunks) > 1 and chunks[-1].numel() == 1:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    correct = sum(int((model(x[c]).argmax(dim=1) == y[c]).sum()) for c in chunks)
    return correct / x.shape[0]


# --- running statistics versus the population --------------------------------------------
def full_batch_statistics(model: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Population statistics of every batch-norm input of the final network, from one pass over ``x``.

    A copy of the model runs in training mode on all of ``x`` as a single
    batch, so every batch-norm layer normalizes with the statistics of the
    whole set, and the input of each layer is recorded. The model itself is
    left untouched.

    Parameters
    ----------
    model : torch.nn.Module
    x : Tensor
        Usually the whole training set, on the model's device.

    Returns
    -------
    list of (mean, var)
        One pair of (C,) tensors per layer of :func:`batch_norm_layers`, in
        order; ``var`` is unbiased, as ``running_var`` is.
    """
    clone = copy.deepcopy(model)
    layers = batch_norm_layers(clone)
    stats: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        z = inputs[0]
        dims = [0, *range(2, z.dim())]
        var, mean = torch.var_mean(z, dim=dims, correction=1)
        stats.append((mean, var))

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        clone.train()
        clone(x)
    finally:
        for h in handles:
            h.remove()
    return stats


def running_stats_gap(
    model: nn.Module, population: Sequence[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[float, float]:
    """How far the running statistics are from given population statistics, averaged over all features.

    Parameters
    ----------
    model : torch.nn.Module
    population : sequence of (mean, var)
        From :func:`full_batch_statistics`, one pair per batch-norm layer.

    Returns
    -------
    mean_gap : float
        Average of ``|running_mean - mean| / sqrt(var)``: the error of the
        running mean in population standard deviations.
    var_gap : float
        Average of ``|running_var / var - 1|``: the relative error of the
        running variance.
    """
    layers = batch_norm_layers(model)
    if len(layers) != len(population):
        raise ValueError(f"model has {len(layers)} batch-norm layers, population lists {len(population)}")
    mean_err, var_err = [], []
    for layer, (mean, var) in zip(layers, population, strict=True):
        mean_err.append(((layer.running_mean - mean).abs() / var.sqrt()).cpu())
        var_err.append((layer.running_var / var - 1.0).abs().cpu())
    return float(torch.cat(mean_err).mean()), float(torch.cat(var_err).mean())


def plot_batch_dependence(
    axes: Sequence[Axes],
    image: np.ndarray,
    probs: Sequence[np.ndarray],
    titles: Sequence[str],
    true_class: int,
) -> None:
    """One input image and the class probabilities a model gave it in different batches.

    Parameters
    ----------
    axes : sequence of matplotlib Axes
        ``1 + len(probs)`` axes: the image, then one bar chart per batch.
    image : ndarray, shape (8, 8)
        The digit, pixel values in [0, 1].
    probs : sequence of ndarray, shape (10,)
        Softmax outputs for the same image, one per batch it was part of.
    titles : sequence of str
        One title per bar chart.
    true_class : int
        The image's label; its bar is drawn in the batch-norm colour, the others in gray.
    """
    if len(axes) != 1 + len(probs) or len(titles) != len(probs):
        raise ValueError("need one axis for the image and one axis and title per probability vector")
    axes[0].imshow(image, cmap="gray_r", vmin=0.0, vmax=1.0)
    axes[0].set_title(f"test image (label {true_class})")
    axes[0].set_xticks([])
    axes[0].set_yticks([])
    axes[0].grid(False)
    for ax, p, title in zip(axes[1:], probs, titles, strict=True):
        colors = [COLORS["bn"] if k == true_class else COLORS["batch"] for k in range(len(p))]
        ax.bar(np.arange(len(p)), p, color=colors)
        ax.set_xticks(np.arange(len(p)))
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("class")
        ax.set_ylabel("probability")
        ax.set_title(title)
