"""Chapter 13, small batches: Batch Renorm, ghost batch norm, and the remedies compared.

The layers live in the library (:class:`bnbook.nn.BatchRenorm1d`,
:class:`bnbook.nn.GhostBatchNorm`, :func:`bnbook.nn.renorm_limits`), and so do the
grouped networks and their training loop (:mod:`bnbook.grouped`, shared with
chapter 9). This module holds the chapter's experiments and figures:

* :func:`scaled_schedule` shrinks the paper's warm-up schedule of ``r_max`` and
  ``d_max`` to a run of a given length, and :func:`plot_schedule` draws it;
* :func:`ghost_noise` measures how far one sample's normalized value moves when
  its ghost-batch mates change, for several ghost sizes;
* :func:`sweep` trains every method at every batch size (or batch composition)
  at a small grid of learning rates, and :class:`Sweep` picks each method's
  best rate on the validation set and reports its test accuracy;
* :func:`statistics_check` evaluates batch-norm networks with better
  statistics than their running ones;
* :func:`finetune_on_shift` pretrains batch-norm networks and fine-tunes them on
  shifted inputs, with frozen statistics or in training mode;
* :func:`plot_comparison` draws test error against batch size.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bnbook import nn as bnn
from bnbook import parallel
from bnbook.grouped import GroupedMLP, class_sorted_order, grouped_accuracy, shuffled_order, train_grouped
from bnbook.plots import COLORS, PALETTE, series

__all__ = [
    "METHODS",
    "FINETUNE",
    "FINETUNE_LABELS",
    "FineTune",
    "Sweep",
    "finetune_on_shift",
    "ghost_noise",
    "look",
    "plot_comparison",
    "plot_ghost_noise",
    "plot_schedule",
    "scaled_schedule",
    "sorted_orders",
    "statistics_check",
    "sweep",
]

#: The normalizations trained from scratch, in display order ("none": the control without normalization).
METHODS = ("BatchNorm", "BatchRenorm", "GroupNorm", "LayerNorm", "none")
#: The ways of fine-tuning a pretrained batch-norm network (grouped-network names): frozen statistics,
#: training mode, and frozen statistics re-estimated on the new inputs first.
FINETUNE = ("FrozenBatchNorm", "BatchNorm", "FrozenBatchNorm")
#: Labels of the fine-tuning runs, in the order of :data:`FINETUNE`.
FINETUNE_LABELS = ("frozen BN", "BN in train mode", "recalibrated, then frozen")
_SERIES = {
    "BatchNorm": ("bn", "batch norm"),
    "BatchRenorm": ("renorm", "batch renorm"),
    "GroupNorm": ("gn", "group norm"),
    "LayerNorm": ("ln", "layer norm"),
    "none": ("no_bn", "no normalization"),
    "FrozenBatchNorm": ("frozen", "frozen BN statistics"),
}


def look(name: str) -> dict:
    """``ax.plot`` keywords for a method or fine-tuning label, in the look of :func:`bnbook.plots.series`."""
    if name == "BN in train mode":
        return series("bn", linestyle="--", label=name)
    if name == "frozen BN":
        return series("frozen", label=name)
    if name == "recalibrated, then frozen":
        return series("frozen", linestyle="-", marker="o", label=name)
    key, label = _SERIES[name]
    return series(key, label=label)


# --- the warm-up schedule ----------------------------------------------------------------------
def scaled_schedule(total_steps: int, r_max_end: float = 3.0, d_max_end: float = 5.0) -> Callable:
    """The paper's schedule (5k steps of BN, d_max full at 25k, r_max full at 40k) scaled to a run.

    Step 40k of the paper maps to half of ``total_steps``, so the warm-up takes
    1/16 of the run, ``d_max`` is fully relaxed at 5/16 and ``r_max`` at 1/2.
    Returns ``limits(step) -> (r_max, d_max)``.
    """
    if total_steps < 16:
        raise ValueError(f"total_steps must be at least 16, got {total_steps}")
    warmup, d_at, r_at = total_steps // 16, 5 * total_steps // 16, total_steps // 2

    def limits(step: int) -> tuple[float, float]:
        return bnn.renorm_limits(step, warmup, r_max_end, r_at, d_max_end, d_at)

    return limits


def plot_schedule(ax, total_steps: int) -> None:
    """``r_max`` and ``d_max`` of :func:`scaled_schedule` against the step."""
    limits = scaled_schedule(total_steps)
    steps = np.arange(total_steps + 1)
    r, d = np.array([limits(int(s)) for s in steps]).T
    ax.plot(steps, r, color=PALETTE[0], label=r"$r_{max}$ (scale limit)")
    ax.plot(steps, d, color=PALETTE[1], linestyle="--", label=r"$d_{max}$ (shift limit, in $\sigma$)")
    ax.axvspan(0, total_steps // 16, color="0.85", zorder=0, label="warm-up: plain batch norm")
    ax.set_xlabel("training step")
    ax.set_ylabel("limit (dimensionless)")
    ax.set_xlim(0, total_steps)
    ax.legend(fontsize=9)


# --- ghost batch norm's noise ------------------------------------------------------------------
def ghost_noise(
    ghost_sizes: Sequence[int], batch: int, n_batches: int, rng: np.random.Generator
) -> np.ndarray:
    """RMS distance between a sample's ghost-normalized value and its value under the population statistics.

    Draws ``n_batches`` batches of ``batch`` standard-normal values (one feature), normalizes each
    with :class:`bnbook.nn.GhostBatchNorm` around a batch norm without affine map, and compares
    with the exact standardization ``x`` (population mean 0, variance 1). Returns one RMS value
    per ghost size. Runs in float64.
    """
    x = torch.from_numpy(rng.standard_normal((n_batches, batch, 1)))
    out = np.zeros(len(ghost_sizes))
    for i, g in enumerate(ghost_sizes):
        layer = bnn.GhostBatchNorm(nn.BatchNorm1d(1, affine=False, eps=1e-12, dtype=torch.float64), g).train()
        with torch.no_grad():
            y = torch.stack([layer(xb) for xb in x])
        out[i] = float(((y - x) ** 2).mean().sqrt())
    return out


def plot_ghost_noise(ax, ghost_sizes: Sequence[int], noise: np.ndarray) -> None:
    """The measured noise against ghost size on log-log axes, with a 1/sqrt(g) guide line."""
    g = np.asarray(ghost_sizes, dtype=float)
    ax.plot(g, noise, **series("ghost", label="measured (ghost batch norm)"))
    ax.plot(
        g,
        noise[-1] * np.sqrt(g[-1] / g),
        linestyle="--",
        color=COLORS["truth"],
        label=r"$\propto 1/\sqrt{g}$",
    )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(g, [str(int(v)) for v in g])
    ax.set_xlabel("ghost size g (samples per statistic)")
    ax.set_ylabel("RMS error of normalized value (in σ)")
    ax.legend(fontsize=9)


# --- the comparison: every method at a grid of learning rates ------------------------------------
class Sweep(NamedTuple):
    """Accuracies of :func:`sweep`, one entry per (setting, method, learning rate, seed).

    Attributes
    ----------
    settings : tuple
        The batch sizes (or names of batch compositions), in order.
    methods : tuple of str
    lrs : ndarray, shape (L,)
        The learning rates per 32 samples tried (the rate at batch B is ``lr * B / 32``).
    steps : tuple of int
        SGD steps of each setting.
    val, test : ndarray, shape (settings, methods, L, seeds)
        Validation and test accuracy, batch norm evaluated with its running statistics.
    """

    settings: tuple
    methods: tuple
    lrs: np.ndarray
    steps: tuple
    val: np.ndarray
    test: np.ndarray

    def best_lr(self) -> np.ndarray:
        """Index of each (setting, method)'s best learning rate by mean validation accuracy."""
        return self.val.mean(axis=3).argmax(axis=2)

    def best_test(self) -> np.ndarray:
        """Test accuracy at each (setting, method)'s best learning rate; shape (settings, methods, seeds)."""
        idx = self.best_lr()[:, :, None, None]
        return np.take_along_axis(self.test, np.broadcast_to(idx, (*idx.shape[:3], self.test.shape[3])), 2)[
            :, :, 0
        ]


def _lr_vector(n_methods: int, lrs: Sequence[float], n_seeds: int, batch_size: int) -> torch.Tensor:
    """Network k * (L * S) + l * S + s trains at ``lrs[l] * batch_size / 32``."""
    per_copy = torch.tensor([lr * batch_size / 32 for lr in lrs for _ in range(n_seeds)])
    return per_copy.repeat(n_methods)


def _evaluate(net: GroupedMLP, x: torch.Tensor, y: torch.Tensor, n_lrs: int) -> np.ndarray:
    """Eval-mode accuracy reshaped to (methods, L, seeds)."""
    acc = grouped_accuracy(net, x, y)
    return acc.reshape(acc.shape[0], n_lrs, -1)


def sweep(
    data: Sequence[torch.Tensor],
    settings: Sequence,
    steps: Sequence[int],
    seeds: Sequence[int],
    lrs: Sequence[float],
    methods: Sequence[str] = METHODS,
    momentum_per_32: float = 0.1,
    orders: Callable[[int, int, list[int]], torch.Tensor] | None = None,
    keep: Sequence = (),
    together: bool = False,
) -> tuple[Sweep, dict]:
    """Train every method at every setting and learning rate from scratch, side by side.

    Parameters
    ----------
    data : (x_train, y_train, x_val, y_val, x_test, y_test)
    settings : sequence
        Batch sizes; with ``orders``, names of batch compositions (the batch size is then ``orders``'s).
    steps : sequence of int
        SGD steps at each setting (``samples // batch`` for equal samples, or equal steps).
    seeds : sequence of int
        Initial weights and data order (the same for every method and learning rate: paired runs).
    lrs : sequence of float
        Learning rates per 32 samples; each scales linearly with the batch size.
    methods : names from :data:`bnbook.grouped.NORMS`
    momentum_per_32 : float
        Running-statistics momentum at a batch of 32; it scales with the batch size, so the running
        averages span about the same number of images at every batch size.
    orders : callable, optional
        ``orders(setting_index, steps, copy_seeds) -> (steps, batch, copies)``; default
        :func:`bnbook.grouped.shuffled_order` with batch size ``settings[i]``.
    keep : sequence
        Settings whose trained networks are returned (not with ``together``).
    together : bool
        Train every setting in one grouped network, each a block of copies (the settings must
        share their batch size and steps): the same runs, in fewer and larger steps.

    Returns
    -------
    (Sweep, {setting: GroupedMLP})
    """
    x_tr, y_tr, x_val, y_val, x_te, y_te = data
    copies = [s for _ in lrs for s in seeds]
    order_seeds = [1000 + s for s in copies]
    val = np.zeros((len(settings), len(methods), len(lrs), len(seeds)))
    test = np.zeros_like(val)
    kept = {}

    def order_of(i: int) -> torch.Tensor:
        if orders is None:
            return shuffled_order(len(x_tr), steps[i], int(settings[i]), order_seeds)
        return orders(i, steps[i], order_seeds)

    if len(steps) != len(settings):
        raise ValueError(f"need one step count per setting, got {len(steps)} for {len(settings)}")
    common = dict(methods=methods, momentum_per_32=momentum_per_32, x=x_tr, y=y_tr)
    if together:  # every setting is a block of copies of one grouped network
        if len(set(steps)) != 1:
            raise ValueError(f"settings trained together need the same steps, got {list(steps)}")
        n = len(settings)
        order = torch.cat([order_of(i) for i in range(n)], 2)
        net = _train_net(copies=copies * n, order=order, lrs=list(lrs) * n, n_seeds=len(seeds), **common)
        shape = (len(methods), len(settings), len(lrs), len(seeds))
        val[:] = grouped_accuracy(net, x_val, y_val).reshape(shape).transpose(1, 0, 2, 3)
        test[:] = grouped_accuracy(net, x_te, y_te).reshape(shape).transpose(1, 0, 2, 3)
    else:
        # The settings train side by side in worker processes (one thread each). A lone batch size is
        # split in two halves of its seeds instead: every copy has its own initial weights (from its
        # seed) and its own batches, and the copies never interact. Only an even batch size is split:
        # at an odd one a copy's result depends, in its last bits, on its position in the grouped
        # network (tests/test_small_batches.py checks both).
        calls, slots = [], []
        for i, setting in enumerate(settings):
            order = order_of(i)
            lone = len(settings) == 1 and setting not in keep and len(seeds) > 1
            halves = 2 if lone and orders is None and int(setting) % 2 == 0 else 1
            for cols in np.array_split(np.arange(len(seeds)), halves):
                cols = cols.tolist()
                part = [lr_i * len(seeds) + j for lr_i in range(len(lrs)) for j in cols]
                calls.append(
                    partial(
                        _train_and_evaluate, copies=[copies[c] for c in part], order=order[:, :, part],
                        lrs=lrs, n_seeds=len(cols), data=data, keep=setting in keep, **common,
                    )
                )
                slots.append((i, cols))
        for (i, cols), (v, t, net) in zip(slots, parallel.run(calls), strict=True):
            val[i][:, :, cols], test[i][:, :, cols] = v, t
            if net is not None:
                kept[settings[i]] = net
    return Sweep(tuple(settings), tuple(methods), np.asarray(lrs, float), tuple(steps), val, test), kept


def _train_net(
    methods: Sequence[str], copies: list[int], order: torch.Tensor, lrs: Sequence[float], n_seeds: int,
    momentum_per_32: float, x: torch.Tensor, y: torch.Tensor,
) -> GroupedMLP:
    """One grouped network of :func:`sweep`: ``copies`` (seeds, learning rate outer) per method, trained."""
    bs, n_steps = order.shape[1], order.shape[0]
    torch.manual_seed(0)
    net = GroupedMLP(methods, copies, momentum=momentum_per_32 * bs / 32).to(x.device)
    lr = _lr_vector(len(methods), lrs, n_seeds, bs).to(x.device)
    limits = scaled_schedule(n_steps) if "BatchRenorm" in methods else None
    return train_grouped(net, x, y, order, lr, limits=limits)


def _train_and_evaluate(
    data: Sequence[torch.Tensor], keep: bool, lrs: Sequence[float], **kw
) -> tuple[np.ndarray, np.ndarray, GroupedMLP | None]:
    """:func:`_train_net`, then validation and test accuracy (methods, L, seeds); the net if ``keep``."""
    net = _train_net(lrs=lrs, **kw)
    _, _, x_val, y_val, x_te, y_te = data
    return _evaluate(net, x_val, y_val, len(lrs)), _evaluate(net, x_te, y_te, len(lrs)), net if keep else None


def sorted_orders(
    y: torch.Tensor, batch_size: int, classes_per_batch: Sequence[int | None]
) -> Callable[[int, int, list[int]], torch.Tensor]:
    """``orders`` for :func:`sweep`: setting ``i`` has ``classes_per_batch[i]`` classes per batch.

    ``None`` means shuffled batches.
    """

    def orders(i: int, steps: int, seeds: list[int]) -> torch.Tensor:
        k = classes_per_batch[i]
        if k is None:
            return shuffled_order(len(y), steps, batch_size, seeds)
        return class_sorted_order(y, steps, batch_size, seeds, classes_per_batch=k)

    return orders


# --- batch norm at m = 2: better statistics at test time ------------------------------------------
def statistics_check(
    net: GroupedMLP,
    method: str,
    lr_index: int,
    n_seeds: int,
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
) -> dict[str, np.ndarray]:
    """Test accuracy of one method's batch-norm networks (at one learning rate) under four statistics.

    ``running``: the running statistics (deployment). ``training set``: statistics of the whole
    training set, one batch of all of it (:func:`bnbook.nn.recalibrate_bn`). ``test batches of 32`` and
    ``test batches of 2``: training mode on shuffled test batches, the second exactly the training
    regime. Returns one array of ``n_seeds`` accuracies per evaluation.
    """
    k = net.norms.index(method)
    part = slice(lr_index * n_seeds, (lr_index + 1) * n_seeds)
    whole = bnn.recalibrate_bn(copy.deepcopy(net), x_train, batch_size=len(x_train))
    return {
        "running": grouped_accuracy(net, x_test, y_test)[k, part],
        "training set": grouped_accuracy(whole, x_test, y_test)[k, part],
        "test batches of 32": grouped_accuracy(net, x_test, y_test, batch_size=32)[k, part],
        "test batches of 2": grouped_accuracy(net, x_test, y_test, batch_size=2)[k, part],
    }


# --- fine-tuning a pretrained network on shifted inputs --------------------------------------------
class FineTune(NamedTuple):
    """What :func:`finetune_on_shift` measured.

    Attributes
    ----------
    sweep : Sweep
        Fine-tuning runs, one method per entry of :data:`FINETUNE_LABELS`.
    pretrained : dict of str -> ndarray (seeds,)
        The pretrained networks before fine-tuning: test accuracy on clean inputs, on shifted
        inputs with their running statistics, and on shifted inputs after recalibrating the
        statistics on the shifted training inputs (no labels).
    """

    sweep: Sweep
    pretrained: dict


def _load(net: GroupedMLP, sources: Sequence[GroupedMLP]) -> None:
    """Block ``k`` of ``net`` starts from ``sources[k]``: copy ``c`` from that network's seed ``c % S``."""
    with torch.no_grad():
        for k, pre in enumerate(sources):
            s, width = pre.copies, net.width
            for c in range(net.copies):
                i, j = k * net.copies + c, c % s
                for w, w0 in zip(net.weights, pre.weights, strict=True):
                    w[i] = w0[j]
                net.bias[i] = pre.bias[j]
                dst, src = slice(c * width, (c + 1) * width), slice(j * width, (j + 1) * width)
                for layer, layer0 in zip(net.norm_layers, pre.norm_layers, strict=True):
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(layer[k], name)[dst] = getattr(layer0[0], name)[src]


def finetune_on_shift(
    data: Sequence[torch.Tensor],
    shift: Callable[[torch.Tensor], torch.Tensor],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    lrs: Sequence[float],
    samples: int,
    pretrain_samples: int,
    pretrain_lr: float,
    momentum_per_32: float = 0.1,
) -> FineTune:
    """Pretrain batch-norm MLPs on clean inputs, then fine-tune them on shifted inputs at small batches.

    Pretraining: one network per seed at a batch of 32, ``pretrain_samples`` clean training images,
    learning rate ``pretrain_lr``, momentum ``momentum_per_32``. Fine-tuning: ``samples`` shifted
    training images at each batch size, every learning rate of ``lrs`` (scaled by B/32), once with
    the batch-norm layers frozen (eval mode: running statistics from pretraining, gamma and beta
    still learn), once in training mode, and once frozen after re-estimating the running statistics
    on the shifted training inputs (:func:`bnbook.nn.recalibrate_bn`, no labels). Validation and test
    use shifted inputs.
    """
    x_tr, y_tr, x_val, y_val, x_te, y_te = data
    pre = GroupedMLP(["BatchNorm"], seeds, momentum=momentum_per_32).to(x_tr.device)
    steps = pretrain_samples // 32
    train_grouped(
        pre, x_tr, y_tr, shuffled_order(len(x_tr), steps, 32, [5000 + s for s in seeds]), pretrain_lr
    )
    recal = bnn.recalibrate_bn(copy.deepcopy(pre), shift(x_tr), batch_size=64)
    pretrained = {
        "clean": grouped_accuracy(pre, x_te, y_te)[0],
        "shifted, running statistics": grouped_accuracy(pre, shift(x_te), y_te)[0],
        "shifted, recalibrated": grouped_accuracy(recal, shift(x_te), y_te)[0],
    }
    shifted = (shift(x_tr), y_tr, shift(x_val), y_val, shift(x_te), y_te)
    copies = [s for _ in lrs for s in seeds]
    val = np.zeros((len(batch_sizes), len(FINETUNE), len(lrs), len(seeds)))
    test = np.zeros_like(val)
    all_steps, calls = [], []
    for bs in batch_sizes:  # built here, trained side by side in worker processes (one thread each)
        n_steps = samples // bs
        all_steps.append(n_steps)
        net = GroupedMLP(FINETUNE, copies, momentum=momentum_per_32 * bs / 32).to(x_tr.device)
        _load(net, [pre, pre, recal])
        order = shuffled_order(len(x_tr), n_steps, bs, [2000 + s for s in copies])
        lr = _lr_vector(len(FINETUNE), lrs, len(seeds), bs).to(x_tr.device)
        calls.append(partial(_finetune, net, shifted, order, lr, len(lrs)))
    for i, (v, t) in enumerate(parallel.run(calls)):
        val[i], test[i] = v, t
    return FineTune(
        Sweep(tuple(batch_sizes), FINETUNE, np.asarray(lrs, float), tuple(all_steps), val, test), pretrained
    )


def _finetune(
    net: GroupedMLP, data: Sequence[torch.Tensor], order: torch.Tensor, lr: torch.Tensor, n_lrs: int
) -> tuple[np.ndarray, np.ndarray]:
    """One batch size of :func:`finetune_on_shift`: train ``net``, then its validation and test accuracy."""
    x_tr, y_tr, x_val, y_val, x_te, y_te = data
    train_grouped(net, x_tr, y_tr, order, lr)
    return _evaluate(net, x_val, y_val, n_lrs), _evaluate(net, x_te, y_te, n_lrs)


def plot_comparison(ax, batch_sizes: Sequence[int], acc: np.ndarray, names: Sequence[str]) -> None:
    """Test error (%) against batch size, one line per method: mean over seeds with a min-max band.

    ``acc`` has shape (batch sizes, methods, seeds), as :meth:`Sweep.best_test` returns it.
    """
    x = np.asarray(batch_sizes)
    for k, name in enumerate(names):
        err = 100 * (1 - acc[:, k, :])
        kw = look(name)
        ax.plot(x, err.mean(1), **kw)
        ax.fill_between(x, err.min(1), err.max(1), color=kw["color"], alpha=0.12, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=9)
