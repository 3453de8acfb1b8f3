"""Chapter 1, internal covariate shift: watch a layer's input distribution move during training.

Two experiments and their figures:

* :func:`matched_pair` builds a network without and with batch norm that
  start from the same weights; :func:`record_training` trains one with
  :func:`bnbook.models.train_classifier` and records, on a fixed held-out
  batch, what one unit of the last hidden layer feeds into its sigmoid
  (:func:`last_hidden_input`), plus the test accuracy. :func:`plot_percentiles`
  and :func:`plot_accuracy` draw a miniature of Figure 1 of Ioffe & Szegedy
  (2015), and :func:`make_histogram_draw` the chapter's explorer.
* The initialization control: :func:`three_networks` adds to the matched
  pair a plain network re-initialized with :func:`xavier_init_`;
  :func:`train_accuracy` trains any of them, :func:`steps_to_reach` reads
  off when a curve first reaches 90 %, and :func:`plot_accuracy_seeds`
  draws the curves of several seeds.
* :func:`layer_shift_experiment` nudges only the first layer of a deep
  network and measures, with :func:`distribution_shift`, how far the
  distribution of every deeper layer's pre-activations moves, in absolute
  units and relative to each layer's spread; :func:`plot_layer_shift` draws
  both against depth.

Batch norm itself comes from :mod:`bnbook.nn` (through :func:`bnbook.models.mlp`);
nothing here normalizes anything.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from bnbook import nn as bnn
from bnbook.models import accuracy, mlp, train_classifier
from bnbook.plots import COLORS, MARKERS, PALETTE, band

__all__ = [
    "PERCENTILES",
    "STYLES",
    "LayerShift",
    "TrainingRecord",
    "distribution_shift",
    "hidden_pre_activations",
    "last_hidden_input",
    "layer_shift_experiment",
    "make_histogram_draw",
    "matched_pair",
    "median_drift",
    "nudge_first_layer",
    "plot_accuracy",
    "plot_accuracy_seeds",
    "plot_layer_shift",
    "plot_percentiles",
    "record_training",
    "stack_shifts",
    "steps_to_reach",
    "three_networks",
    "train_accuracy",
    "xavier_init_",
]

#: The percentiles drawn in Figure 1(b, c) of Ioffe & Szegedy (2015).
PERCENTILES: tuple[int, int, int] = (15, 50, 85)

_ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (nn.Sigmoid, nn.Tanh, nn.ReLU)


# --- helpers -------------------------------------------------------------------------------
@contextmanager
def _buffers_untouched(model: nn.Module) -> Iterator[None]:
    """Run a block in which forward passes may not change ``model``'s buffers.

    A batch-norm layer in training mode updates its running statistics on
    every forward pass; measuring must not count as training, so the buffers
    are copied before the block and restored after it.
    """
    saved = [b.detach().clone() for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, old in zip(model.buffers(), saved, strict=True):
                buf.copy_(old)


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run a block with one intra-op thread when ``device`` is the CPU.

    The matrices of the chapter's networks (at most 449 x 100) are far too
    small to gain from splitting across threads; on a busy machine the extra
    threads mostly spin, making training many times slower. The previous
    thread count is restored afterwards.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _activation_positions(model: nn.Sequential) -> list[int]:
    """Indices of the nonlinearities in ``model``, in order."""
    positions = [i for i, m in enumerate(model) if isinstance(m, _ACTIVATION_TYPES)]
    if not positions:
        raise ValueError("the model has no sigmoid, tanh or ReLU layer")
    return positions


def _color(name: str) -> str:
    """The book's colour for a run: vermillion without batch norm, blue with it."""
    return COLORS["no_bn"] if "without" in name.lower() else COLORS["bn"]


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy().copy()


# --- the networks --------------------------------------------------------------------------
def matched_pair(
    sizes: Sequence[int],
    activation: str = "sigmoid",
    seed: int = 0,
    norm_layer: type[nn.Module] = bnn.BatchNorm1d,
) -> tuple[nn.Sequential, nn.Sequential]:
    """A network without and one with batch norm that start from the same weights.

    Both come from :func:`bnbook.models.mlp`. The network with batch norm has
    no biases in its hidden Linear layers (the norm's shift replaces them),
    so building it draws fewer random numbers; its weight matrices, and the
    output layer's bias, are therefore copied from the plain network.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first, e.g. ``[64, 100, 100, 100, 10]``.
    activation : {"sigmoid", "tanh", "relu"}
    seed : int
        Seeds torch before the plain network is built.
    norm_layer : module class
        The batch-norm layer, :class:`bnbook.nn.BatchNorm1d` by default.

    Returns
    -------
    plain, with_bn : torch.nn.Sequential
    """
    torch.manual_seed(seed)
    plain = mlp(list(sizes), activation, batch_norm=False)
    with_bn = mlp(list(sizes), activation, batch_norm=True, norm_layer=norm_layer)
    src = [m for m in plain if isinstance(m, nn.Linear)]
    dst = [m for m in with_bn if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for a, b in zip(src, dst, strict=True):
            b.weight.copy_(a.weight)
        dst[-1].bias.copy_(src[-1].bias)
    return plain, with_bn


# --- measuring -----------------------------------------------------------------------------
def last_hidden_input(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """What the last hidden layer feeds into its nonlinearity, for every example of ``x``.

    Without batch norm this is the Linear layer's output; with batch norm it
    is the batch-norm layer's output. The pass runs in training mode, so a
    batch-norm layer normalizes with the statistics of ``x`` itself, exactly
    as it does during a training step; its running statistics are left as
    they were.

    Parameters
    ----------
    model : torch.nn.Sequential
        A network from :func:`bnbook.models.mlp`.
    x : Tensor, shape (N, D)
        A fixed batch; N should be large enough for stable batch statistics.

    Returns
    -------
    Tensor, shape (N, H)
        One column per unit of the last hidden layer.
    """
    last = _activation_positions(model)[-1]
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), _buffers_untouched(model):
            return model[:last](x)
    finally:
        model.train(was_training)


def hidden_pre_activations(model: nn.Sequential, x: torch.Tensor) -> list[np.ndarray]:
    """The input of every hidden nonlinearity, in training mode, as NumPy arrays.

    Parameters
    ----------
    model : torch.nn.Sequential
        A network from :func:`bnbook.models.mlp`.
    x : Tensor, shape (N, D)

    Returns
    -------
    list of ndarray, each of shape (N, width)
        Entry ``l`` is what hidden layer ``l + 1`` feeds into its nonlinearity
        (the batch-norm output when the network has batch norm).
    """
    positions = set(_activation_positions(model))
    outputs: list[np.ndarray] = []
    was_training = model.training
    model.train()
    try:
        with torch.no_grad(), _buffers_untouched(model):
            h = x
            for i, module in enumerate(model):
                if i in positions:
                    outputs.append(_to_numpy(h))
                h = module(h)
    finally:
        model.train(was_training)
    return outputs


# --- experiment 1: one unit over training ----------------------------------------------------
class TrainingRecord(NamedTuple):
    """What :func:`record_training` kept at each checkpoint.

    Attributes
    ----------
    steps : ndarray of int, shape (R,)
        Training step of each checkpoint (0 is before the first update).
    unit_inputs : ndarray, shape (R, N)
        The watched unit's input to its sigmoid, for each of the N held-out examples.
    layer_medians : ndarray, shape (R, H)
        The median input of every unit of the last hidden layer (to check
        that the watched unit is typical).
    test_accuracy : ndarray, shape (R,)
        Share of the test set classified correctly (evaluation mode).
    loss : ndarray, shape (steps,)
        Training loss of every step's mini-batch.
    """

    steps: np.ndarray
    unit_inputs: np.ndarray
    layer_medians: np.ndarray
    test_accuracy: np.ndarray
    loss: np.ndarray

    def percentiles(self, q: Sequence[float] = PERCENTILES) -> np.ndarray:
        """Percentiles of the watched unit's input at each checkpoint, shape (R, len(q))."""
        return np.percentile(self.unit_inputs, list(q), axis=1).T


def record_training(
    model: nn.Sequential,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_held: torch.Tensor,
    y_held: torch.Tensor,
    *,
    steps: int,
    lr: float,
    unit: int = 0,
    batch_size: int = 60,
    record_every: int = 20,
    seed: int = 0,
) -> TrainingRecord:
    """Train ``model`` with plain SGD and watch one last-hidden-layer unit on a fixed batch.

    Training is :func:`bnbook.models.train_classifier`; at step 0 and every
    ``record_every`` steps the input of unit ``unit`` of the last hidden
    layer to its nonlinearity is measured on ``x_held`` with
    :func:`last_hidden_input`, and the accuracy on ``(x_held, y_held)`` with
    :func:`bnbook.models.accuracy`. Everything recorded is copied to the CPU.
    On the CPU the run uses a single thread (see ``_one_cpu_thread``): for
    networks this small that is faster than several.

    Parameters
    ----------
    model : torch.nn.Sequential
        Trained in place; data and model must be on the same device.
    x_train, y_train : Tensor
        Training images (N, 64) and labels (N,).
    x_held, y_held : Tensor
        The fixed held-out batch, never trained on.
    steps : int
        Number of SGD steps.
    lr : float
        Learning rate.
    unit : int
        Which unit of the last hidden layer to watch.
    batch_size, record_every, seed : int
        Mini-batch size, checkpoint spacing, and the seed of the mini-batch draws.

    Returns
    -------
    TrainingRecord
    """

    def record(step: int, net: nn.Module) -> tuple[int, np.ndarray, np.ndarray, float]:
        z = last_hidden_input(net, x_held)
        medians = _to_numpy(z.median(dim=0).values)
        return step, _to_numpy(z[:, unit]), medians, accuracy(net, x_held, y_held)

    with _one_cpu_thread(x_train.device):
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
    step_ids, values, medians, accs = zip(*hist.records, strict=True)
    return TrainingRecord(
        np.asarray(step_ids), np.stack(values), np.stack(medians), np.asarray(accs), hist.loss
    )


def median_drift(medians: np.ndarray) -> np.ndarray:
    """How far a median wandered from where it started: ``max_t |m_t - m_0|``.

    Parameters
    ----------
    medians : ndarray, shape (R,) or (R, H)
        Medians at R checkpoints (for H units).

    Returns
    -------
    ndarray, shape () or (H,)
    """
    medians = np.asarray(medians, dtype=np.float64)
    return np.abs(medians - medians[0]).max(axis=0)


def plot_percentiles(records: Mapping[str, TrainingRecord], title: str) -> Figure:
    """Miniature of Figure 1(b, c): percentiles of one unit's input over training.

    Parameters
    ----------
    records : mapping of str to TrainingRecord
        Two entries, the run without batch norm and the run with it, drawn left and right
        on a shared y axis.
    title : str
        The figure title (state the finding).

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, axes = plt.subplots(1, len(records), figsize=(8, 3.4), sharey=True)
    for ax, (name, rec) in zip(np.atleast_1d(axes), records.items(), strict=True):
        color = _color(name)
        lo, mid, hi = rec.percentiles().T
        ax.fill_between(rec.steps, lo, hi, color=color, alpha=0.25, lw=0, label="15th to 85th percentile")
        ax.plot(rec.steps, lo, color=color, lw=1.0)
        ax.plot(rec.steps, hi, color=color, lw=1.0)
        ax.plot(rec.steps, mid, color=color, lw=2.2, label="median")
        ax.set_title(name)
        ax.set_xlabel("training step")
    axes = np.atleast_1d(axes)
    axes[-1].legend(loc="lower right", fontsize=9.5)
    axes[0].set_ylabel("input to the sigmoid")
    fig.suptitle(title)
    return fig


def plot_accuracy(records: Mapping[str, TrainingRecord], title: str) -> Figure:
    """Miniature of Figure 1(a): test accuracy over training, one line per network.

    Parameters
    ----------
    records : mapping of str to TrainingRecord
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, rec in records.items():
        color = _color(name)
        ax.plot(rec.steps, rec.test_accuracy, color=color, lw=2.0, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title(title)
    return fig


def make_histogram_draw(
    records: Mapping[str, TrainingRecord], checkpoints: Sequence[int], bins: int = 40, y_max: float = 0.45
) -> Callable[..., None]:
    """The explorer's ``draw(fig, step)``: histograms of the unit's input at one checkpoint.

    All histograms are computed here, once, on common bins; ``draw`` only
    plots them, side by side on axes that stay fixed as the step changes.
    The step-0 histogram is drawn as a gray outline for reference. A bar
    taller than ``y_max`` (a distribution squeezed into one or two bins) is
    cut at the top of the axes and labelled with its height.

    Parameters
    ----------
    records : mapping of str to TrainingRecord
        The two runs (left to right).
    checkpoints : sequence of int
        Steps offered by the slider; each must be among the recorded steps.
    bins : int
        Number of bins over the range of all recorded values.
    y_max : float
        Top of the y axis (share of images per bin).

    Returns
    -------
    callable
        ``draw(fig, step)`` for :class:`bnbook.widgets.Explorer`.
    """
    recs = list(records.items())
    for _, rec in recs:
        missing = set(checkpoints) - set(rec.steps.tolist())
        if missing:
            raise ValueError(f"steps {sorted(missing)} were not recorded")
    values = np.concatenate([rec.unit_inputs.ravel() for _, rec in recs])
    edges = np.linspace(np.floor(values.min()), np.ceil(values.max()), bins + 1)
    hists: dict[tuple[str, int], tuple[np.ndarray, float]] = {}
    for name, rec in recs:
        index = {int(s): i for i, s in enumerate(rec.steps)}
        for step in {0, *checkpoints}:
            z = rec.unit_inputs[index[int(step)]]
            share = np.histogram(z, bins=edges)[0] / z.size
            hists[name, int(step)] = (share, float(np.median(z)))

    def draw(fig: Figure, step: int) -> None:
        axes = fig.subplots(1, len(recs), sharey=True)
        for ax, (name, _) in zip(np.atleast_1d(axes), recs, strict=True):
            color = _color(name)
            start, _ = hists[name, 0]
            share, median = hists[name, int(step)]
            if step != 0:
                ax.stairs(start, edges, color=COLORS["batch"], lw=1.2, label="step 0")
            ax.stairs(share, edges, color=color, fill=True, alpha=0.75, label=f"step {step}")
            ax.axvline(median, color=COLORS["truth"], lw=1.0, ls="--", label=f"median {median:.2f}")
            centres = (edges[:-1] + edges[1:]) / 2
            for c, h in zip(centres, share, strict=True):
                if h > y_max:
                    ax.annotate(
                        f"{h:.0%}",
                        (c, y_max),
                        xytext=(5, -12),
                        textcoords="offset points",
                        fontsize=8,
                        color=COLORS["truth"],
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
                    )
            ax.set_xlim(edges[0], edges[-1])
            ax.set_ylim(0, y_max)
            ax.set_title(name)
            ax.set_xlabel("input to the sigmoid")
            ax.legend(loc="upper left", fontsize=9)
        np.atleast_1d(axes)[0].set_ylabel("share of held-out images")

    return draw


# --- the initialization control ----------------------------------------------------------
def xavier_init_(model: nn.Module, gain: float = 1.0, seed: int = 0) -> nn.Module:
    """Re-draw every Linear weight with Xavier (Glorot) normal initialization, in place.

    Each weight matrix gets :func:`torch.nn.init.xavier_normal_`, entries
    drawn from :math:`\\mathcal{N}(0, g^2\\, 2 / (n_{in} + n_{out}))`, from a
    generator seeded with ``seed``; every Linear bias is set to zero. Batch-norm
    parameters are left alone.

    Parameters
    ----------
    model : torch.nn.Module
    gain : float
        The factor :math:`g`: 1 for sigmoid networks, 5/3 for tanh
        (:func:`torch.nn.init.calculate_gain`).
    seed : int

    Returns
    -------
    torch.nn.Module
        ``model`` itself.
    """
    if gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                w = torch.empty(m.weight.shape, dtype=m.weight.dtype)
                nn.init.xavier_normal_(w, gain=gain, generator=gen)
                m.weight.copy_(w)  # drawn on the CPU, so every device gets the same numbers
                if m.bias is not None:
                    m.bias.zero_()
    return model


def three_networks(
    sizes: Sequence[int],
    seed: int,
    activation: str = "sigmoid",
    norm_layer: type[nn.Module] = bnn.BatchNorm1d,
) -> dict[str, nn.Sequential]:
    """The networks of the initialization control, all built from ``seed``.

    ``"without BN, default init"`` and ``"with BN"`` are :func:`matched_pair` (PyTorch's
    default initialization, ``norm_layer`` as the batch-norm layer);
    ``"without BN, Xavier init"`` is a copy of the plain network
    re-initialized with :func:`xavier_init_` (gain 1 for the sigmoid, 5/3
    for tanh).
    """
    plain, with_bn = matched_pair(sizes, activation, seed=seed, norm_layer=norm_layer)
    gain = 5.0 / 3.0 if activation == "tanh" else 1.0
    xavier = xavier_init_(copy.deepcopy(plain), gain=gain, seed=seed)
    return {"without BN, default init": plain, "without BN, Xavier init": xavier, "with BN": with_bn}


def train_accuracy(
    model: nn.Sequential,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_held: torch.Tensor,
    y_held: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_size: int = 60,
    record_every: int = 25,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Train like :func:`record_training`, but keep only the held-out accuracy.

    Returns
    -------
    steps, accuracy : ndarray, shape (R,)
        Checkpoint steps (0 first) and the accuracy on ``(x_held, y_held)`` there.
    """
    with _one_cpu_thread(x_train.device):
        hist = train_classifier(
            model,
            x_train,
            y_train,
            steps=steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            record=lambda step, net: (step, accuracy(net, x_held, y_held)),
            record_every=record_every,
        )
    step_ids, accs = zip(*hist.records, strict=True)
    return np.asarray(step_ids), np.asarray(accs)


def steps_to_reach(steps: np.ndarray, accuracy_curves: np.ndarray, level: float = 0.9) -> np.ndarray:
    """First checkpoint step at which each accuracy curve reaches ``level``; NaN if it never does.

    Parameters
    ----------
    steps : ndarray, shape (R,)
    accuracy_curves : ndarray, shape (R,) or (S, R)
        One curve, or one per seed.
    level : float

    Returns
    -------
    ndarray, shape () or (S,)
    """
    curves = np.atleast_2d(np.asarray(accuracy_curves, dtype=np.float64))
    out = np.full(curves.shape[0], np.nan)
    for i, curve in enumerate(curves):
        hit = np.flatnonzero(curve >= level)
        if hit.size:
            out[i] = steps[hit[0]]
    return out if np.ndim(accuracy_curves) == 2 else out[0]


#: How each network is drawn: colour, marker and line style (colour-blind safe, distinct in grey).
STYLES: dict[str, dict[str, str]] = {
    "without BN, default init": {"color": COLORS["no_bn"], "marker": MARKERS[0], "linestyle": "-"},
    "without BN, Xavier init": {"color": PALETTE[3], "marker": MARKERS[2], "linestyle": "--"},
    "with BN": {"color": COLORS["bn"], "marker": MARKERS[1], "linestyle": "-."},
}


def plot_accuracy_seeds(
    steps: np.ndarray, curves: Mapping[str, np.ndarray], title: str, level: float = 0.9
) -> Figure:
    """Held-out accuracy over training, mean and min-max band over seeds, one line per network.

    Parameters
    ----------
    steps : ndarray, shape (R,)
    curves : mapping of str to ndarray of shape (S, R)
        Keys from :data:`STYLES`.
    title : str
    level : float
        Drawn as a dotted reference line.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, runs in curves.items():
        st = STYLES[name]
        band(
            ax,
            steps,
            runs,
            st["color"],
            f"{name} ({len(runs)} seeds)",
            marker=st["marker"],
            ls=st["linestyle"],
        )
    ax.axhline(level, color=COLORS["truth"], lw=0.8, ls=":")
    ax.text(
        steps[-1], level - 0.02, f"{level:.0%}", ha="right", va="top", fontsize=8.5, color=COLORS["truth"]
    )
    ax.set_xlabel("training step")
    ax.set_ylabel("held-out accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=8.5)
    ax.set_title(title)
    return fig


# --- experiment 2: a nudge to the first layer, felt deeper down --------------------------------
class LayerShift(NamedTuple):
    """How far each hidden layer's pre-activation distribution moved, averaged over its units.

    Absolute measures are in the units of the pre-activations; relative ones
    are divided, unit by unit, by that unit's spread before the change.

    Attributes
    ----------
    spread : ndarray, shape (D,)
        ``std_before`` per unit, averaged: how wide the layer's inputs are.
    mean_shift_abs : ndarray, shape (D,)
        ``|mean_after - mean_before|`` per unit, averaged.
    distance_abs : ndarray, shape (D,)
        Wasserstein-1 distance between a unit's values before and after, averaged.
    mean_shift : ndarray, shape (D,)
        ``|mean_after - mean_before| / std_before`` per unit, averaged.
    std_change : ndarray, shape (D,)
        ``|std_after - std_before| / std_before`` per unit, averaged.
    distance : ndarray, shape (D,)
        Wasserstein-1 distance divided by ``std_before``, averaged over units.
    """

    spread: np.ndarray
    mean_shift_abs: np.ndarray
    distance_abs: np.ndarray
    mean_shift: np.ndarray
    std_change: np.ndarray
    distance: np.ndarray


def distribution_shift(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> LayerShift:
    """Compare each layer's pre-activations before and after a change, unit by unit.

    For one unit with values :math:`a_1..a_N` before and :math:`b_1..b_N`
    after, the Wasserstein-1 distance of the two empirical distributions is
    the mean absolute difference of the sorted values,
    :math:`\\frac1N\\sum_i |a_{(i)} - b_{(i)}|`: how far, on average, the
    distribution's mass had to move. Each measure comes in absolute units and
    in units of the unit's spread before the change.

    Parameters
    ----------
    before, after : sequence of ndarray, each of shape (N, width)
        Per layer, from :func:`hidden_pre_activations` on the same batch.

    Returns
    -------
    LayerShift
    """
    rows = []
    for a, b in zip(before, after, strict=True):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        spread = a.std(axis=0)
        shift = np.abs(b.mean(axis=0) - a.mean(axis=0))
        w1 = np.abs(np.sort(b, axis=0) - np.sort(a, axis=0)).mean(axis=0)
        rows.append(
            (
                spread.mean(),
                shift.mean(),
                w1.mean(),
                np.mean(shift / spread),
                np.mean(np.abs(b.std(axis=0) - spread) / spread),
                np.mean(w1 / spread),
            )
        )
    return LayerShift(*(np.array(col) for col in zip(*rows, strict=True)))


def nudge_first_layer(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, rel_size: float) -> None:
    """Move only the first layer's weights a little way downhill, in place.

    The gradient of the cross-entropy on ``(x, y)`` is computed for the whole
    network, but only the first Linear layer's weight matrix :math:`W` moves:
    :math:`W \\leftarrow W - r\\,\\lVert W\\rVert\\, g / \\lVert g\\rVert`,
    a gradient-descent step whose length is the fraction ``r`` of the
    weights' own size. Batch-norm running statistics are left unchanged.

    Parameters
    ----------
    model : torch.nn.Sequential
    x, y : Tensor
        The mini-batch that gives the gradient.
    rel_size : float
        Step length relative to the weights' Frobenius norm, e.g. 0.05.
    """
    first = next(m for m in model if isinstance(m, nn.Linear))
    was_training = model.training
    model.train()
    try:
        with _buffers_untouched(model):
            model.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            g = first.weight.grad
            first.weight.sub_(g * (rel_size * first.weight.norm() / g.norm()))
        model.zero_grad()
    finally:
        model.train(was_training)


def layer_shift_experiment(
    model: nn.Sequential,
    x_measure: torch.Tensor,
    x_step: torch.Tensor,
    y_step: torch.Tensor,
    rel_size: float = 0.05,
) -> LayerShift:
    """Nudge the first layer of ``model`` and measure the shift of every hidden layer.

    Records :func:`hidden_pre_activations` on ``x_measure``, applies
    :func:`nudge_first_layer` with ``(x_step, y_step)``, records again, and
    compares with :func:`distribution_shift`. ``model`` is changed in place.

    Parameters
    ----------
    model : torch.nn.Sequential
    x_measure : Tensor, shape (N, D)
        Fixed batch on which the distributions are measured.
    x_step, y_step : Tensor
        Mini-batch that gives the gradient of the nudge.
    rel_size : float
        See :func:`nudge_first_layer`.

    Returns
    -------
    LayerShift
        One entry per hidden layer, the first layer first.
    """
    before = hidden_pre_activations(model, x_measure)
    nudge_first_layer(model, x_step, y_step, rel_size)
    after = hidden_pre_activations(model, x_measure)
    return distribution_shift(before, after)


def stack_shifts(runs: Sequence[LayerShift]) -> LayerShift:
    """Stack the :class:`LayerShift` of several seeds: every field gets shape (seeds, D)."""
    return LayerShift(*(np.stack(field) for field in zip(*runs, strict=True)))


def plot_layer_shift(shifts: Mapping[str, LayerShift], title: str) -> Figure:
    """Per layer: the spread of the pre-activations, and the absolute and relative shift after a nudge.

    All three panels have a log y axis, so that a quantity that shrinks layer
    after layer stays visible. Each line is the mean over seeds, with a
    min-max band. The network with batch norm is left out of the spread panel
    (its spread is 1 by construction).

    Parameters
    ----------
    shifts : mapping of str to LayerShift
        Keys from :data:`STYLES`; each field of shape (seeds, D), from :func:`stack_shifts`.
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, grid = plt.subplots(2, 2, figsize=(8, 6.2))
    axes = [grid[0, 0], grid[0, 1], grid[1, 0]]
    panels = [
        ("spread", "std of the pre-activations", "spread before the nudge\n(with BN: 1 by construction)"),
        ("distance_abs", "Wasserstein-1 distance", "absolute shift\n(in pre-activation units)"),
        ("distance", "distance / std before the nudge", "relative shift\n(in units of the spread)"),
    ]
    handles = []
    for ax, (field, ylabel, panel_title) in zip(axes, panels, strict=True):
        for name, s in shifts.items():
            if field == "spread" and name == "with BN":
                continue
            st = STYLES[name]
            runs = getattr(s, field)
            layers = np.arange(1, runs.shape[1] + 1)
            line = band(ax, layers, runs, st["color"], name, marker=st["marker"], ls=st["linestyle"])
            if field == "distance":
                handles.append(line)
        ax.set_yscale("log")
        ax.set_xticks(layers)
        ax.set_xlabel("hidden layer (1 = the nudged one)")
        ax.set_ylabel(ylabel)
        ax.set_title(panel_title)
    legend_ax = grid[1, 1]
    legend_ax.axis("off")
    legend_ax.legend(
        handles=handles,
        loc="center",
        fontsize=10,
        title="mean and min-max band\nover seeds",
        title_fontsize=10,
    )
    fig.suptitle(title)
    return fig
