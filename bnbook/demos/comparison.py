"""Chapter 8, training with and without batch normalization: the sweeps and their figures.

Every experiment here trains many small networks at once with
:class:`bnbook.batched.BatchedMLP`: one member per (setting, seed) pair.

* :func:`digits_splits` cuts the digits into training, validation and test tensors;
* :func:`run` trains one batched model over a list of settings times seeds and
  returns a :class:`Sweep` whose arrays have a leading (setting, seed) shape;
* :func:`steps_to_reach`, :func:`largest_trainable` and :func:`best_by_validation`
  turn curves into the numbers the chapter quotes;
* the ``plot_*`` functions draw the chapter's figures; :func:`make_explorer_draw`
  draws one frame of the learning-rate x depth explorer from precomputed curves;
* :func:`time_batched_vs_loop` times the batched trainer against a loop of
  separate ``torch.nn.Sequential`` models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bnbook.batched import BatchedMLP, evaluate_batched, train_batched
from bnbook.data import load_digits
from bnbook.plots import COLORS, MARKERS, band

__all__ = [
    "CONFIGS",
    "Data",
    "Sweep",
    "best_by_validation",
    "digits_splits",
    "largest_trainable",
    "make_explorer_draw",
    "plot_curves",
    "plot_sweep",
    "run",
    "smooth",
    "steps_to_reach",
    "time_batched_vs_loop",
]

#: The three networks every comparison shows: (batch_norm, init) and how they are drawn.
CONFIGS = {
    "no_bn": dict(
        batch_norm=False,
        init="default",
        label="no BN, default init",
        color=COLORS["no_bn"],
        marker=MARKERS[1],
        ls="-",
    ),
    "no_bn_good": dict(
        batch_norm=False,
        init="xavier",
        label="no BN, Xavier init",
        color="#CC79A7",
        marker=MARKERS[2],
        ls="--",
    ),
    "bn": dict(
        batch_norm=True,
        init="default",
        label="BN, default init",
        color=COLORS["bn"],
        marker=MARKERS[0],
        ls="-",
    ),
}


class Data(NamedTuple):
    """Digits as tensors on one device: training, validation (for choices) and test (for reports)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits_splits(seed: int, n_val: int, device: torch.device) -> Data:
    """The digits of :func:`bnbook.data.load_digits`, with the last ``n_val`` training images held out."""
    split = load_digits(seed=seed)
    t = [torch.from_numpy(a).to(device) for a in split]
    return Data(t[0][:-n_val], t[1][:-n_val], t[0][-n_val:], t[1][-n_val:], t[2], t[3])


class Sweep(NamedTuple):
    """Results of :func:`run`; ``S`` settings times ``R`` seeds.

    Attributes
    ----------
    settings : list of dict
        Per setting: ``lr``, ``init``, ``init_scale``.
    loss : ndarray (S, R, steps)
        Training loss per step (NaN after divergence).
    eval_steps : ndarray (n_evals,)
    test_acc : ndarray (S, R, n_evals)
        Test accuracy along training (chance after divergence).
    val_acc : ndarray (S, R)
        Final validation accuracy.
    diverged : ndarray of bool (S, R)
    """

    settings: list
    loss: np.ndarray
    eval_steps: np.ndarray
    test_acc: np.ndarray
    val_acc: np.ndarray
    diverged: np.ndarray


def run(
    data: Data,
    settings: Sequence[Mapping],
    seeds: Sequence[int],
    *,
    batch_norm: bool,
    depth: int,
    width: int,
    steps: int,
    batch_size: int,
    eval_every: int,
    activation: str = "sigmoid",
) -> Sweep:
    """Train ``len(settings) * len(seeds)`` networks as one :class:`BatchedMLP`.

    Each setting is a mapping with ``lr`` and optionally ``init`` (default
    ``"default"``) and ``init_scale`` (default 1). Seed ``r`` sets both the
    initial weights and the data order of its member, so the same seed gives
    the same batches in every setting.
    """
    settings = [{"init": "default", "init_scale": 1.0, **s} for s in settings]
    members = [(s, r) for s in settings for r in seeds]
    device = data.x_train.device
    sizes = [data.x_train.shape[1]] + [width] * depth + [10]
    model = BatchedMLP(
        sizes,
        seeds=[r for _, r in members],
        activation=activation,
        batch_norm=batch_norm,
        init=[s["init"] for s, _ in members],
        init_scale=[s["init_scale"] for s, _ in members],
        device=device,
    )
    hist = train_batched(
        model,
        data.x_train,
        data.y_train,
        lrs=[s["lr"] for s, _ in members],
        steps=steps,
        batch_size=batch_size,
        eval_every=eval_every,
        x_eval=data.x_test,
        y_eval=data.y_test,
    )
    _, val_acc = evaluate_batched(model, data.x_val, data.y_val)
    shape = (len(settings), len(seeds))
    diverged = hist.diverged
    val_acc = np.where(diverged, 0.1, val_acc)
    return Sweep(
        settings,
        hist.loss.reshape(*shape, -1),
        hist.eval_steps,
        hist.eval_acc.reshape(*shape, -1),
        val_acc.reshape(shape),
        diverged.reshape(shape),
    )


def smooth(loss: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the last axis over consecutive windows: (centre steps, smoothed values)."""
    n = loss.shape[-1] // window
    means = loss[..., : n * window].reshape(*loss.shape[:-1], n, window).mean(-1)
    return (np.arange(n) + 0.5) * window, means


def steps_to_reach(acc: np.ndarray, eval_steps: np.ndarray, target: float) -> np.ndarray:
    """First evaluated step at which ``acc`` (..., n_evals) reaches ``target``; NaN if never."""
    hit = acc >= target
    first = np.where(hit.any(-1), eval_steps[hit.argmax(-1)], np.nan)
    return first.astype(float)


def largest_trainable(lrs: Sequence[float], final_acc: np.ndarray, threshold: float) -> float:
    """Largest learning rate whose mean final accuracy (over seeds, last axis) is >= ``threshold``.

    NaN when none trains.
    """
    ok = [lr for lr, acc in zip(lrs, final_acc, strict=True) if np.mean(acc) >= threshold]
    return max(ok) if ok else float("nan")


def best_by_validation(val_acc: np.ndarray) -> int:
    """Index of the setting (first axis) with the highest mean validation accuracy over seeds."""
    return int(np.argmax(np.mean(val_acc, axis=1)))


# --- figures ------------------------------------------------------------------------------------
def plot_curves(ax: Axes, x: np.ndarray, curves: Mapping[str, np.ndarray]) -> None:
    """One band per configuration of :data:`CONFIGS` (``curves[name]`` has shape (seeds, len(x)))."""
    for name, runs in curves.items():
        c = CONFIGS[name]
        band(ax, x, runs, c["color"], c["label"], marker=c["marker"], ls=c["ls"])


def plot_sweep(
    ax: Axes,
    x: Sequence[float],
    values: Mapping[str, np.ndarray],
    *,
    logx: bool = True,
    threshold: float | None = None,
) -> None:
    """Mean and min-max band over seeds (last axis of each ``values[name]``) against a swept setting."""
    for name, v in values.items():
        c = CONFIGS[name]
        band(
            ax,
            np.asarray(x, float),
            np.asarray(v, float).T,
            c["color"],
            c["label"],
            marker=c["marker"],
            ls=c["ls"],
        )
    if logx:
        ax.set_xscale("log")
    if threshold is not None:
        ax.axhline(threshold, color=COLORS["truth"], lw=1, ls=":", label=f"threshold {threshold:g}")


def make_explorer_draw(
    curves: Mapping[tuple[float, int], Mapping[str, np.ndarray]], window: int, y_max: float
) -> Callable[..., None]:
    """A ``draw(fig, lr, depth)`` for :class:`bnbook.widgets.Explorer` from precomputed loss curves.

    ``curves[lr, depth][name]`` holds training losses of shape (seeds, steps)
    for the configurations named in :data:`CONFIGS`.
    """

    def draw(fig: Figure, lr: float, depth: int) -> None:
        ax = fig.add_subplot()
        runs = curves[lr, depth]
        for name, loss in runs.items():
            x, sm = smooth(np.where(np.isfinite(loss), loss, np.nan), window)
            c = CONFIGS[name]
            band(ax, x, np.minimum(sm, y_max), c["color"], c["label"], marker=c["marker"], ls=c["ls"])
        ax.set_ylim(0, y_max)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"training loss (mean of {window} steps)")
        ax.set_title(f"learning rate {lr:g}, {depth} hidden layers (5 seeds, min-max band)")
        ax.legend(loc="upper right", fontsize=9)

    return draw


# --- timing -------------------------------------------------------------------------------------
def time_batched_vs_loop(
    data: Data, k: int, depth: int, width: int, steps: int, batch_size: int, lr: float
) -> tuple[float, float, float]:
    """Seconds to train ``k`` BN networks as one :class:`BatchedMLP` and one by one as ``nn.Sequential``.

    The loop uses the batched model's own members as starting points and the
    same batches, so it does the same arithmetic. Returns
    ``(batched seconds, loop seconds, max |final weight difference|)``.
    """
    sizes = [data.x_train.shape[1]] + [width] * depth + [10]
    seeds = list(range(k))
    model = BatchedMLP(sizes, seeds=seeds, batch_norm=True, device=data.x_train.device)
    nets = [model.member(i) for i in range(k)]
    t0 = time.perf_counter()
    train_batched(model, data.x_train, data.y_train, lr, steps, batch_size)
    t1 = time.perf_counter()
    n = data.x_train.shape[0]
    for i, net in enumerate(nets):
        gen = torch.Generator().manual_seed(seeds[i])
        idx_all = torch.randint(0, n, (steps, batch_size), generator=gen).to(data.x_train.device)
        params = list(net.parameters())
        for t in range(steps):
            idx = idx_all[t]
            loss = F.cross_entropy(net(data.x_train[idx]), data.y_train[idx])
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.sub_(p.grad, alpha=lr)
    t2 = time.perf_counter()
    diff = max((model.weights[0][i] - nets[i][0].weight.T).abs().max().item() for i in range(k))
    return t1 - t0, t2 - t1, diff
