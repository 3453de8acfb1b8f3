"""Chapter 9, limitations: batch-size noise, the normalization family, shifts, sample dependence, cost.

The arithmetic of layer, group and instance norm lives in :mod:`bnbook.scratch`
(NumPy) and in ``torch.nn``; the grouped networks and their training loop live in
:mod:`bnbook.grouped` (shared with chapter 13). This module holds the chapter's
experiments and figures:

* :func:`batch_stat_spread` and :func:`plot_stat_spread` measure the noise of
  batch statistics against batch size;
* :func:`norm_grid` trains many small CNNs or MLPs (every normalization, several
  seeds) side by side, for a miniature of Wu and He's batch-size table, and
  :func:`plot_norm_grid` draws it;
* :func:`draw_norm_axes` draws which cells of an (N, C, H, W) tensor share
  one mean and variance under each normalization;
* :func:`accumulation_check` compares gradient accumulation with a real large batch;
* :func:`shift_accuracies` and :func:`settling` evaluate batch-norm networks with
  stale, re-estimated or batch statistics;
* :func:`gradient_bias` measures how far the mean of minibatch gradients lies from
  the full-batch gradient, with and without batch norm, and :func:`gradient_gap` splits
  that distance into a bias and the scatter from one random partition to the next;
* :func:`composition_grid` trains on batches that hold few classes, and
  :func:`single_class_check` compares single-class-trained networks with a predictor
  that ignores its input;
* :func:`mlp_control` compares batch norm with a plain MLP started by
  :func:`bnbook.grouped.lsuv_grouped` (a data-dependent initialization), both at learning
  rates picked on validation data;
* :func:`interleaved_times` times several callables round-robin;
* :class:`BatchSizeFrames` draws and describes the frames of the chapter's explorer.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter
from torch import nn

from bnbook import nn as bnn
from bnbook.grouped import (
    GroupedCNN,
    GroupedMLP,
    class_sorted_order,
    grouped_accuracy,
    lsuv_grouped,
    shuffled_order,
    train_grouped,
)
from bnbook.models import mlp
from bnbook.plots import COLORS, series

__all__ = [
    "NORMS",
    "BatchSizeFrames",
    "StatSpread",
    "accumulation_check",
    "batch_stat_spread",
    "composition_grid",
    "draw_norm_axes",
    "gradient_bias",
    "gradient_gap",
    "interleaved_times",
    "look",
    "make_mlp",
    "mlp_control",
    "norm_grid",
    "plot_norm_grid",
    "plot_stat_spread",
    "settling",
    "shift_accuracies",
    "single_class_check",
]

#: The normalizations of the CNN comparison, in display order (``PositionBatchNorm``: the control
#: that gives batch norm one statistic per channel *and position*, so that m is the batch size).
NORMS = ("BatchNorm", "PositionBatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm")
_LOOKS = {
    "BatchNorm": series("bn", label="batch norm"),
    "PositionBatchNorm": series("bn", linestyle="--", marker="o", label="BN, one statistic per position"),
    "LayerNorm": series("ln", label="layer norm"),
    "GroupNorm": series("gn", label="group norm"),
    "InstanceNorm": series("gn", color="#666666", marker="P", linestyle=":", label="instance norm"),
    "none": series("no_bn", label="no normalization"),
}


def look(name: str) -> dict:
    """``ax.plot`` keywords for a normalization, in the book-wide look of :func:`bnbook.plots.series`."""
    return dict(_LOOKS[name])


# --- noise of batch statistics -------------------------------------------------------------
class StatSpread(NamedTuple):
    """Measured and predicted standard deviations of batch statistics, one entry per batch size."""

    batch_sizes: np.ndarray
    sd_mean: np.ndarray
    sd_var: np.ndarray
    theory_mean: np.ndarray
    theory_var: np.ndarray


def batch_stat_spread(
    batch_sizes: Sequence[int], n_batches: int, sigma: float, rng: np.random.Generator, mean: float = 0.0
) -> StatSpread:
    r"""Spread of the batch mean and of the unbiased batch variance over many batches of normal data.

    The predictions are :math:`\sigma/\sqrt{m}` for the mean and
    :math:`\sigma^2\sqrt{2/(m-1)}` for the unbiased variance (exact for normal data).
    """
    sizes = np.asarray(batch_sizes)
    sd_mean, sd_var = [], []
    for m in sizes:
        x = rng.normal(mean, sigma, size=(n_batches, int(m)))
        sd_mean.append(x.mean(axis=1).std())
        sd_var.append(x.var(axis=1, ddof=1).std())
    return StatSpread(
        sizes,
        np.array(sd_mean),
        np.array(sd_var),
        sigma / np.sqrt(sizes),
        sigma**2 * np.sqrt(2.0 / (sizes - 1)),
    )


def plot_stat_spread(ax, spread: StatSpread) -> None:
    """Log-log plot of measured spreads (markers) against the predictions (lines)."""
    m = spread.batch_sizes
    ax.plot(
        m, spread.theory_mean, color=COLORS["features"][0], lw=1.5, label=r"theory, mean: $\sigma/\sqrt{m}$"
    )
    ax.plot(
        m, spread.sd_mean, "o", color=COLORS["features"][0], ms=6, mfc="none", label="measured, batch mean"
    )
    ax.plot(
        m,
        spread.theory_var,
        color=COLORS["features"][1],
        lw=1.5,
        ls="--",
        label=r"theory, variance: $\sigma^2\sqrt{2/(m-1)}$",
    )
    ax.plot(
        m, spread.sd_var, "s", color=COLORS["features"][1], ms=6, mfc="none", label="measured, batch variance"
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(m, [str(int(v)) for v in m])
    ax.set_yticks([0.1, 0.2, 0.5, 1, 2, 5], ["0.1", "0.2", "0.5", "1", "2", "5"])
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("batch size m")
    ax.set_ylabel("standard deviation over batches")
    ax.legend(fontsize=8.5)


# --- the normalization family as reduction axes ---------------------------------------------
def draw_norm_axes(fig: Figure, n: int = 4, c: int = 6, hw: int = 4, groups: int = 3) -> None:
    """Four cubes (N, C, H*W), in the style of Wu and He's figure: one set of cells that share a mean
    and a variance is shaded in each."""
    sets = {
        "Batch Norm": lambda i, j, k: j == 0,
        "Layer Norm": lambda i, j, k: i == 0,
        "Instance Norm": lambda i, j, k: (i == 0) & (j == 0),
        "Group Norm": lambda i, j, k: (i == 0) & (j < c // groups),
    }
    i, j, k = np.indices((n, c, hw))
    for idx, (title, rule) in enumerate(sets.items()):
        ax = fig.add_subplot(1, 4, idx + 1, projection="3d")
        colors = np.full((n, c, hw), "#f2f2f2", dtype=object)
        colors[rule(i, j, k)] = COLORS["bn"]
        # x = N (sample 0 at the front), y = C (channel 0 on the left), z = H*W
        ax.voxels(
            np.ones((n, c, hw), dtype=bool),
            facecolors=colors,
            edgecolor="#555555",
            linewidth=0.4,
            shade=False,
        )
        ax.set_box_aspect((n, c, hw), zoom=1.25)
        ax.view_init(elev=20, azim=-125)
        ax.set_axis_off()
        # axis names, placed along the edges of the cube that face the reader
        ax.text(n / 2, -0.9, -0.6, "N", fontsize=12, ha="center", va="center")
        ax.text(-0.4, c / 2, -0.9, "C", fontsize=12, ha="center", va="center")
        ax.text2D(
            0.0, 0.5, "H, W", transform=ax.transAxes, fontsize=12, rotation=90, ha="center", va="center"
        )
        ax.set_title(title, fontsize=12, pad=-4)


# --- the batch-size grid -----------------------------------------------------------------------------
def norm_grid(
    data: Sequence[torch.Tensor],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    samples: int,
    lr_per_32: float,
    norms: Sequence[str] = NORMS,
    arch: str = "cnn",
    momentum: float = 0.1,
) -> np.ndarray:
    """Test accuracy of every (batch size, normalization, seed), shape (len(batch_sizes), len(norms), seeds).

    ``data`` is ``(x_train, y_train, x_test, y_test)``. Every run sees the same number of training
    images, ``samples`` (so smaller batches take more steps), with the learning rate scaled linearly
    with the batch size, ``lr_per_32 * B / 32``, as in Wu and He (2018), and the same running-statistics
    ``momentum`` at every batch size. Plain SGD. The images of a seed come in the same order for every
    normalization. Batch norm is evaluated in eval mode, with its running statistics.
    """
    x_tr, y_tr, x_te, y_te = data
    grouped = {"cnn": GroupedCNN, "mlp": GroupedMLP}[arch]
    out = np.zeros((len(batch_sizes), len(norms), len(seeds)))
    for b, bs in enumerate(batch_sizes):
        net = grouped(norms, seeds, momentum=momentum).to(x_tr.device)
        order = shuffled_order(len(x_tr), samples // bs, bs, [1000 + s for s in seeds])
        train_grouped(net, x_tr, y_tr, order, lr_per_32 * bs / 32)
        out[b] = grouped_accuracy(net, x_te, y_te)
    return out


def plot_norm_grid(ax, batch_sizes: Sequence[int], acc: np.ndarray, norms: Sequence[str] = NORMS) -> None:
    """Test error (%) against batch size per normalization: mean over seeds with a min-max band."""
    x = np.asarray(batch_sizes)
    for k, name in enumerate(norms):
        err = 100 * (1 - acc[:, k, :])  # (batch sizes, seeds)
        kw = look(name)
        ax.plot(x, err.mean(1), **kw)
        ax.fill_between(x, err.min(1), err.max(1), color=kw["color"], alpha=0.12, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=9)


# --- gradient accumulation -------------------------------------------------------------------------
class Accumulation(NamedTuple):
    """What :func:`accumulation_check` measured, for each normalization of ``norms``.

    Attributes
    ----------
    norms : tuple of str
    acc : dict of str -> ndarray, shape (len(norms), seeds)
        Test accuracy of the three runs: ``"large batch"``, ``"accumulated"``, ``"small batch"``.
    gap : ndarray, shape (len(norms),)
        Largest difference between any weight of the accumulated run and of the large-batch run.
    """

    norms: tuple
    acc: dict
    gap: np.ndarray


def accumulation_check(
    data: Sequence[torch.Tensor],
    seeds: Sequence[int],
    micro: int,
    accumulate: int,
    samples: int,
    lr_per_32: float,
    norms: Sequence[str] = ("BatchNorm", "GroupNorm", "none"),
) -> Accumulation:
    """Gradient accumulation against a real large batch, on the same images in the same order.

    Three MLP runs per normalization and seed, all on ``samples`` training images: batches of
    ``micro * accumulate`` (learning rate ``lr_per_32 * micro * accumulate / 32``); the same batches cut
    into ``accumulate`` micro-batches of ``micro`` whose mean gradient makes one step (same rate); and
    plain batches of ``micro`` (rate scaled to ``micro``). Without batch statistics the first two are
    the same computation; with batch norm they are not. Runs in float64.
    """
    x_tr, y_tr, x_te, y_te = data
    big = micro * accumulate
    steps = samples // big
    order = shuffled_order(len(x_tr), steps, big, [1000 + s for s in seeds])
    micro_order = order.reshape(steps, accumulate, micro, len(seeds)).reshape(steps * accumulate, micro, -1)
    runs = {
        "large batch": (order, 1, lr_per_32 * big / 32),
        "accumulated": (micro_order, accumulate, lr_per_32 * big / 32),
        "small batch": (micro_order, 1, lr_per_32 * micro / 32),
    }
    acc, nets = {}, {}
    x_tr, x_te = x_tr.double(), x_te.double()  # float64: rounding must not be mistaken for a difference
    for name, (o, k, lr) in runs.items():
        net = GroupedMLP(norms, seeds).to(device=x_tr.device, dtype=torch.float64)
        train_grouped(net, x_tr, y_tr, o, lr, accumulate=k)
        acc[name], nets[name] = grouped_accuracy(net, x_te, y_te), net
    s = len(seeds)
    gap = np.zeros(len(norms))
    for a, b in zip(nets["large batch"].parameters(), nets["accumulated"].parameters(), strict=True):
        if a.dim() and a.shape[0] == nets["large batch"].n_nets:  # weights: one slice per network
            d = (a - b).abs().reshape(len(norms), s, -1).amax(dim=(1, 2))
            gap = np.maximum(gap, d.detach().cpu().numpy())
    return Accumulation(tuple(norms), acc, gap)


# --- running statistics: shifted inputs, and statistics that have not settled -------------------------
def shift_accuracies(
    net: GroupedMLP,
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    shift: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Test accuracy of trained batch-norm networks on clean and shifted inputs, four ways.

    ``clean``: running statistics, unshifted test set (the control). ``running``: running
    statistics, shifted test set. ``recalibrated``: running statistics recomputed
    (:func:`bnbook.nn.recalibrate_bn`) on the *shifted training inputs*, no labels used.
    ``batch stats``: batch statistics of shuffled test batches of ``batch_size``. One value per network.
    """
    shifted = shift(x_test)
    fixed = bnn.recalibrate_bn(copy.deepcopy(net), shift(x_train), batch_size=batch_size)
    return {
        "clean": grouped_accuracy(net, x_test, y_test).reshape(-1),
        "running": grouped_accuracy(net, shifted, y_test).reshape(-1),
        "recalibrated": grouped_accuracy(fixed, shifted, y_test).reshape(-1),
        "batch stats": grouped_accuracy(net, shifted, y_test, batch_size=batch_size, seed=seed).reshape(-1),
    }


def settling(
    net: GroupedMLP,
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    n_batches: Sequence[int],
    batch_size: int = 32,
) -> np.ndarray:
    """Eval-mode test accuracy after re-estimating the statistics from the first ``n`` training batches.

    For each ``n`` of ``n_batches``, a copy's running statistics are recomputed as the plain average
    over ``n`` batches of ``batch_size`` training images (:func:`bnbook.nn.recalibrate_bn`).
    Returns shape (len(n_batches), networks).
    """
    out = []
    for n in n_batches:
        fixed = bnn.recalibrate_bn(copy.deepcopy(net), x_train[: n * batch_size], batch_size=batch_size)
        out.append(grouped_accuracy(fixed, x_test, y_test).reshape(-1))
    return np.array(out)


# --- samples that depend on each other -----------------------------------------------------------------
def _mean_gradients(
    batch_norm: bool, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, partitions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-batch gradient and, per random partition into batches, the mean of the batch gradients.

    An MLP ``64 -> 32 -> 10`` (ReLU; with ``bnbook.nn.BatchNorm1d`` if ``batch_norm``), initial weights
    from ``torch.manual_seed(seed)``, in float64 and training mode. Partition ``p`` shuffles the data
    with ``seed + 1000 * p`` and cuts it into ``len(x) // batch_size`` batches (the last incomplete one
    dropped); the full-batch gradient is taken on the images the first partition covers, all of them
    in one batch. The mean of the batch gradients is the gradient of the mean of the batch losses, so
    all batches of a partition go through the network at once, each normalized with its own statistics
    (:func:`bnbook.nn.batch_norm` over the batches side by side).
    Returns ``(full, means)`` with shapes ``(P,)`` and ``(partitions, P)``, ``P`` the parameter count.
    """
    torch.manual_seed(seed)
    net = mlp([x.shape[1], 32, 10], activation="relu", batch_norm=batch_norm).double().train()
    params = list(net.parameters())
    xd = x.double()
    n = (len(x) // batch_size) * batch_size

    def mean_grad(xs: torch.Tensor, ys: torch.Tensor, size: int) -> torch.Tensor:
        h = xs.reshape(-1, size, xs.shape[1])  # (batches, size, D)
        nb = h.shape[0]
        for layer in net:
            if isinstance(layer, nn.Linear):
                h = F.linear(h, layer.weight, layer.bias)
            elif isinstance(layer, bnn.BatchNorm1d):  # each batch with its own mean and variance
                c = h.shape[2]
                flat = h.transpose(0, 1).reshape(size, nb * c)
                flat = bnn.batch_norm(
                    flat, None, None, layer.weight.repeat(nb), layer.bias.repeat(nb), True, 0.0, layer.eps
                )
                h = flat.reshape(size, nb, c).transpose(0, 1)
            else:
                h = layer(h)
        loss = F.cross_entropy(h.reshape(-1, h.shape[2]), ys, reduction="none").view(nb, size).mean(1).mean()
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    means = []
    for p in range(partitions):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1000 * p))[:n]
        xs, ys = xd[perm], y[perm]
        if p == 0:
            full = mean_grad(xs, ys, n)  # the set the first partition covers, as gradient_bias measures it
        means.append(mean_grad(xs, ys, batch_size))
    return full, torch.stack(means)


def gradient_bias(
    batch_norm: bool, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0
) -> float:
    """Relative distance between the mean of the minibatch gradients over a pass and the full-batch gradient.

    One random partition of the data into ``len(x) // batch_size`` batches (see :func:`gradient_gap`
    for several). Without batch norm the mean of the batch gradients *is* the full-batch gradient,
    up to rounding; with it, the distance mixes a bias with the scatter between partitions.
    """
    full, means = _mean_gradients(batch_norm, x, y, batch_size, seed, 1)
    return float((means[0] - full).norm() / full.norm())


class GradientGap(NamedTuple):
    """:func:`gradient_gap`'s distances, each relative to the norm of the full-batch gradient.

    Attributes
    ----------
    single : float
        Distance of one partition's mean gradient from the full-batch gradient, averaged over partitions.
    average : float
        Distance of the mean over all partitions.
    bias : float
        The distance of the *expected* minibatch gradient from the full-batch gradient, estimated by
        removing the sampling error of the average: ``sqrt(max(0, average**2 - spread**2 / partitions))``.
    spread : float
        Root-mean-square distance of one partition's mean from the mean over all partitions
        (sample version, divided by ``partitions - 1``).
    """

    single: float
    average: float
    bias: float
    spread: float


def gradient_gap(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, partitions: int, seed: int = 0, batch_norm: bool = True
) -> GradientGap:
    """Split the gap between minibatch and full-batch gradients into a bias and partition scatter.

    Averaging over random partitions estimates :math:`E_B[\\nabla L(B)]`, the gradient of the expected
    batch loss, which is what SGD follows in expectation. Its distance from the full-batch gradient is
    the bias; the scatter between partitions is noise that more passes average away.
    """
    if partitions < 2:
        raise ValueError(f"need at least 2 partitions, got {partitions}")
    full, means = _mean_gradients(batch_norm, x, y, batch_size, seed, partitions)
    scale = full.norm()
    avg = means.mean(0)
    single = float(((means - full).norm(dim=1) / scale).mean())
    average = float((avg - full).norm() / scale)
    spread2 = float(((means - avg).norm(dim=1) ** 2).sum() / (partitions - 1) / scale**2)
    bias = float(np.sqrt(max(0.0, average**2 - spread2 / partitions)))
    return GradientGap(single, average, bias, float(np.sqrt(spread2)))


def composition_grid(
    data: Sequence[torch.Tensor],
    classes_per_batch: Sequence[int | None],
    seeds: Sequence[int],
    steps: int,
    batch_size: int,
    lr: float,
    norms: Sequence[str] = ("BatchNorm", "LayerNorm", "none"),
) -> np.ndarray:
    """Test accuracy of MLPs trained on batches of few classes, shape (len(classes_per_batch), norms, seeds).

    ``None`` in ``classes_per_batch`` means shuffled batches (the control); ``k`` means batches that
    each hold ``k`` classes (:func:`bnbook.grouped.class_sorted_order`). Every composition and seed
    is one copy of one grouped network, so all of them train together: copy ``i * S + c`` starts from
    ``seeds[c]`` and sees the batches of composition ``i``.
    """
    x_tr, y_tr, x_te, y_te = data
    order_seeds = [2000 + s for s in seeds]
    orders = []
    for k in classes_per_batch:
        if k is None:
            orders.append(shuffled_order(len(x_tr), steps, batch_size, order_seeds))
        else:
            orders.append(class_sorted_order(y_tr, steps, batch_size, order_seeds, classes_per_batch=k))
    net = GroupedMLP(norms, [s for _ in classes_per_batch for s in seeds]).to(x_tr.device)
    train_grouped(net, x_tr, y_tr, torch.cat(orders, 2), lr)
    acc = grouped_accuracy(net, x_te, y_te).reshape(len(norms), len(classes_per_batch), len(seeds))
    return acc.transpose(1, 0, 2).copy()


class SingleClass(NamedTuple):
    """:func:`single_class_check`'s measurements, one entry per seed.

    Attributes
    ----------
    acc : ndarray
        Test accuracy in eval mode (running statistics).
    blind : ndarray
        Accuracy of a predictor that ignores the input but predicts each class as often as the network
        does: :math:`\\sum_c h_c f_c`, with :math:`h_c` the network's share of predictions of class
        :math:`c` and :math:`f_c` the class's share of the test set.
    top_share : ndarray
        Share of the test images given the network's most frequent prediction.
    """

    acc: np.ndarray
    blind: np.ndarray
    top_share: np.ndarray


@torch.no_grad()
def _predictions(net: GroupedMLP, x: torch.Tensor) -> torch.Tensor:
    was = net.training
    net.eval()
    pred = net(x).argmax(-1)  # (N, n_nets)
    net.train(was)
    return pred


def single_class_check(
    data: Sequence[torch.Tensor], seeds: Sequence[int], steps: int, batch_size: int, lr: float
) -> SingleClass:
    """Batch-norm MLPs trained on single-class batches, against an input-blind predictor.

    The runs of :func:`composition_grid` with one class per batch (same data orders for the same
    seeds), for batch norm only; see :class:`SingleClass`.
    """
    x_tr, y_tr, x_te, y_te = data
    order = class_sorted_order(y_tr, steps, batch_size, [2000 + s for s in seeds], classes_per_batch=1)
    net = GroupedMLP(["BatchNorm"], seeds).to(x_tr.device)
    train_grouped(net, x_tr, y_tr, order, lr)
    pred = _predictions(net, x_te).cpu()
    y = y_te.cpu()
    k = int(max(int(y.max()), int(pred.max())) + 1)
    freq = torch.bincount(y, minlength=k).double() / len(y)
    acc, blind, top = [], [], []
    for c in range(pred.shape[1]):
        share = torch.bincount(pred[:, c], minlength=k).double() / len(y)
        acc.append(float((pred[:, c] == y).double().mean()))
        blind.append(float((share * freq).sum()))
        top.append(float(share.max()))
    return SingleClass(np.array(acc), np.array(blind), np.array(top))


# --- the plain MLP with a data-dependent initialization ------------------------------------------------
def mlp_control(
    data: Sequence[torch.Tensor],
    runs: Sequence[tuple[int, int]],
    seeds: Sequence[int],
    lrs: Sequence[float],
    momentum: float = 0.1,
    init_batch: int = 512,
):
    """Batch norm against the plain MLP started by :func:`bnbook.grouped.lsuv_grouped`, both at tuned rates.

    ``data`` is ``(x_train, y_train, x_val, y_val, x_test, y_test)``; ``runs`` lists
    ``(batch size, steps)``. Every run trains batch norm (default initialization) and the plain
    network (LSUV-style initialization on the first ``init_batch`` training images) at every rate of
    ``lrs`` per 32 samples, scaled with the batch, from the same initial weights and on the same
    batches. Runs of one batch size share their networks: the shorter budgets are evaluated on the
    way, since their batches are the first ones of the longest run. Returns a
    :class:`bnbook.demos.small_batches.Sweep` (methods ``"BatchNorm"``, ``"none"``) whose settings
    are the ``runs``: pick each method's rate with ``best_lr`` on validation.
    """
    from bnbook.demos.small_batches import Sweep  # the sweep's result type, shared with chapter 13

    x_tr, y_tr, x_val, y_val, x_te, y_te = data
    methods = ("BatchNorm", "none")
    copies = [s for _ in lrs for s in seeds]
    val = np.zeros((len(runs), 2, len(lrs), len(seeds)))
    test = np.zeros_like(val)
    by_batch: dict[int, dict[int, list[int]]] = {}  # batch size -> {steps: [indices into runs]}
    for i, (bs, steps) in enumerate(runs):
        by_batch.setdefault(bs, {}).setdefault(steps, []).append(i)
    for bs, budgets in by_batch.items():
        net = GroupedMLP(methods, copies, momentum=momentum).to(x_tr.device)
        lsuv_grouped(net, x_tr[:init_batch])
        order = shuffled_order(len(x_tr), max(budgets), bs, [1000 + s for s in copies])
        lr = torch.tensor([lr * bs / 32 for lr in lrs for _ in seeds]).repeat(2).to(x_tr.device)

        def evaluate(done: int, net: GroupedMLP = net, budgets: dict = budgets) -> None:
            for i in budgets.get(done, ()):
                val[i] = grouped_accuracy(net, x_val, y_val).reshape(2, len(lrs), len(seeds))
                test[i] = grouped_accuracy(net, x_te, y_te).reshape(2, len(lrs), len(seeds))

        train_grouped(net, x_tr, y_tr, order, lr, on_step=evaluate)
    return Sweep(tuple(runs), methods, np.asarray(lrs, float), tuple(s for _, s in runs), val, test)


def make_mlp(kind: str, seed: int, sizes: Sequence[int] = (64, 64, 64, 10)) -> nn.Module:
    """An MLP for timing: ReLU, with torch's ``BatchNorm1d`` (the fused kernel one deploys) or without."""
    torch.manual_seed(seed)
    if kind == "BatchNorm":
        return mlp(list(sizes), activation="relu", batch_norm=True, norm_layer=nn.BatchNorm1d)
    if kind == "none":
        return mlp(list(sizes), activation="relu", batch_norm=False)
    raise ValueError(f"kind must be 'BatchNorm' or 'none', got {kind!r}")


# --- timing ----------------------------------------------------------------------------------
def interleaved_times(
    fns: Mapping[str, Callable[[], object]], repeats: int, inner: int, warmup: int = 2
) -> dict:
    """Seconds per call of each function, measured round-robin: ``{name: array of repeats}``.

    Each round runs every function ``inner`` times in turn, so a busy machine slows them alike.
    """
    times = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            if r >= warmup:
                times[name].append((time.perf_counter() - t0) / inner)
    return {k: np.array(v) for k, v in times.items()}


# --- explorer --------------------------------------------------------------------------------
class BatchSizeFrames:
    """The frames of chapter 9's explorer, one per batch size: what each draws and what it shows.

    Left: the unbiased variances of ``n_batches`` batches of normal data with standard deviation
    ``sigma`` (drawn once from ``seed``). Right: the precomputed test errors against batch size, with
    the current batch size marked. :meth:`draw` draws a frame and :meth:`describe` says in one
    sentence what it shows, from the same numbers, for the frame's alt text.

    Parameters
    ----------
    batch_sizes : sequence of int
    acc_cnn : ndarray, shape (batch sizes, len(NORMS), seeds)
        The table of :func:`norm_grid` for the CNN with :data:`NORMS` (batch norm and group norm are drawn).
    acc_mlp : ndarray, shape (batch sizes, 2, seeds)
        The table for the MLP with batch norm and without (batch norm is drawn).
    sigma : float
    seed : int
    n_batches : int
    """

    def __init__(
        self,
        batch_sizes: Sequence[int],
        acc_cnn: np.ndarray,
        acc_mlp: np.ndarray,
        sigma: float,
        seed: int,
        n_batches: int = 2000,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.batch_sizes = list(batch_sizes)
        self.sigma = sigma
        draws = {m: rng.normal(0.0, sigma, size=(n_batches, m)) for m in self.batch_sizes}
        self.variances = {m: d.var(axis=1, ddof=1) for m, d in draws.items()}
        self.bins = np.linspace(0, 4 * sigma**2, 41)
        self.series = [
            ("CNN, batch norm", 100 * (1 - acc_cnn[:, NORMS.index("BatchNorm")]), COLORS["bn"], "s", "-"),
            (
                "CNN, group norm",
                100 * (1 - acc_cnn[:, NORMS.index("GroupNorm")]),
                _LOOKS["GroupNorm"]["color"],
                "X",
                "-",
            ),
            ("MLP, batch norm", 100 * (1 - acc_mlp[:, 0]), COLORS["bn"], "o", "--"),
        ]
        self.top = 1.1 * max(e.max() for _, e, *_ in self.series)
        self.dens_top = 1.1 * max(
            np.histogram(np.clip(v, 0, self.bins[-1]), bins=self.bins, density=True)[0].max()
            for v in self.variances.values()
        )

    def inside(self, batch_size: int) -> float:
        """Share of the batch variances within 50% of the population variance."""
        return float(np.mean(np.abs(self.variances[batch_size] - self.sigma**2) < 0.5 * self.sigma**2))

    def errors(self, batch_size: int) -> tuple[float, float, float]:
        """Mean test error (%) here: CNN with batch norm, with group norm; MLP with batch norm."""
        i = self.batch_sizes.index(batch_size)
        return tuple(float(e[i].mean()) for _, e, *_ in self.series)

    def describe(self, batch_size: int) -> str:
        """One sentence: what the frame at this batch size shows."""
        cnn_bn, cnn_gn, mlp_bn = self.errors(batch_size)
        return (
            f"At a batch of {batch_size}, {self.inside(batch_size):.0%} of the batch variances lie within "
            f"50% of the true variance, and the marked test errors are {cnn_bn:.1f}% for the CNN with "
            f"batch norm, {cnn_gn:.1f}% with group norm and {mlp_bn:.1f}% for the MLP with batch norm."
        )

    def draw(self, fig: Figure, batch_size: int) -> None:
        """The frame at ``batch_size``: the histogram of batch variances and the test errors."""
        sigma, bins, x = self.sigma, self.bins, np.asarray(self.batch_sizes)
        ax1, ax2 = fig.subplots(1, 2)
        ax1.hist(
            np.clip(self.variances[batch_size], 0, bins[-1]), bins=bins, color=COLORS["batch"], density=True
        )
        ax1.axvline(sigma**2, color=COLORS["truth"], ls="--", lw=1.5, label="population variance")
        ax1.set_title(
            f"m = {batch_size}: {self.inside(batch_size):.0%} of batch variances within 50% of the truth",
            fontsize=10,
        )
        ax1.set_xlabel(f"unbiased batch variance (clipped at {bins[-1]:g})")
        ax1.set_ylabel("density")
        ax1.set_ylim(0, self.dens_top)
        ax1.legend(fontsize=9, loc="upper right")
        for label, e, color, marker, ls in self.series:
            ax2.plot(x, e.mean(1), marker=marker, ls=ls, color=color, label=label)
            ax2.fill_between(x, e.min(1), e.max(1), color=color, alpha=0.12, linewidth=0)
        ax2.axvline(batch_size, color=COLORS["batch"], lw=6, alpha=0.35)
        ax2.set_xscale("log", base=2)
        ax2.set_xticks(x, [str(v) for v in x])
        ax2.set_ylim(0, self.top)
        ax2.set_xlabel("batch size")
        ax2.set_ylabel("test error (%)")
        cnn_bn, cnn_gn, mlp_bn = self.errors(batch_size)
        ax2.set_title(
            f"error at {batch_size}: CNN BN {cnn_bn:.1f}%, GN {cnn_gn:.1f}%; MLP BN {mlp_bn:.1f}%", fontsize=9
        )
        ax2.legend(fontsize=9, loc="upper right")
