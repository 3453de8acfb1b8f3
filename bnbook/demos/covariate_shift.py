"""Chapter 1, internal covariate shift: watch a layer's input distribution move during training.

Two experiments and their figures:

* :func:`matched_pair` builds a network without and with batch norm that
  start from the same weights; :func:`record_training` trains one with
  :func:`bnbook.models.train_classifier` and records, on a fixed held-out
  batch, what one unit of the last hidden layer feeds into its sigmoid
  (:func:`last_hidden_input`), plus the test accuracy. :func:`plot_percentiles`
  and :func:`plot_accuracy` draw a miniature of Figure 1 of Ioffe & Szegedy
  (2015), and :func:`make_histogram_draw` the chapter's explorer.
* The initialization control: :func:`control_networks` adds to the matched
  pair a plain network re-initialized with :func:`xavier_init_` and one
  rescaled by the data-dependent :func:`bnbook.models.lsuv_init`;
  :func:`train_controls` trains all four for several seeds and learning
  rates at once, as members of :class:`bnbook.batched.BatchedMLP`
  (:func:`batched_controls`); :func:`compare_controls` reads off the steps
  to 90 % and the final accuracy, paired with batch norm, and
  :func:`plot_controls` draws the curves.
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
from functools import partial
from types import MappingProxyType
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from bnbook import nn as bnn
from bnbook import parallel
from bnbook.batched import ACTIVATIONS, BatchedHistory, BatchedMLP, evaluate_batched, train_batched
from bnbook.models import accuracy, lsuv_init, mlp, train_classifier
from bnbook.plots import COLORS, SERIES, band, histogram, series
from bnbook.stats import Paired, paired

__all__ = [
    "CONTROLS",
    "PERCENTILES",
    "ControlRow",
    "InitControl",
    "LayerShift",
    "TrainingRecord",
    "batched_controls",
    "batched_hidden_input",
    "compare_controls",
    "control_networks",
    "distribution_shift",
    "hidden_pre_activations",
    "last_hidden_input",
    "layer_shift_experiment",
    "lsuv_batch",
    "make_histogram_describe",
    "make_histogram_draw",
    "matched_pair",
    "median_drift",
    "nudge_first_layer",
    "plot_accuracy",
    "plot_controls",
    "plot_layer_shift",
    "plot_percentiles",
    "record_training",
    "stack_shifts",
    "steps_to_reach",
    "train_controls",
    "train_controls_many",
    "train_lsuv_vs_bn",
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
    with parallel.one_thread():
        yield


def _activation_positions(model: nn.Sequential) -> list[int]:
    """Indices of the nonlinearities in ``model``, in order."""
    positions = [i for i, m in enumerate(model) if isinstance(m, _ACTIVATION_TYPES)]
    if not positions:
        raise ValueError("the model has no sigmoid, tanh or ReLU layer")
    return positions


def _key(name: str) -> str:
    """The series of a run, from its series name (``"bn"``) or its label (``"BN"``)."""
    if name in SERIES:
        return name
    for key, look in SERIES.items():
        if look["label"] == name:
            return key
    raise ValueError(f"{name!r} is neither a series of bnbook.plots.SERIES nor one of their labels")


def _label(name: str) -> str:
    """The label of a series in this chapter's figures (only Xavier's initialization is used here)."""
    key = _key(name)
    return "no BN, Xavier init" if key == "xavier" else series(key)["label"]


def _color(name: str) -> str:
    """The book's colour for a run, named by its series or its label."""
    return series(_key(name))["color"]


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
            label = f"step {step}"
            histogram(ax, edges, shares=share, y_max=y_max, color=color, fill=True, alpha=0.75, label=label)
            ax.axvline(median, color=COLORS["truth"], lw=1.0, ls="--", label=f"median {median:.2f}")
            ax.set_xlim(edges[0], edges[-1])
            ax.set_title(name)
            ax.set_xlabel("input to the sigmoid")
            ax.legend(loc="upper left", fontsize=9)
        np.atleast_1d(axes)[0].set_ylabel("share of held-out images")

    return draw


def make_histogram_describe(
    records: Mapping[str, TrainingRecord], checkpoints: Sequence[int]
) -> Callable[..., str]:
    """The explorer's ``describe(step)``: what the frame of :func:`make_histogram_draw` shows, in words.

    For each run, from the same recorded inputs the frame draws: the median
    of the watched unit's input at that step and the range of its 15th to
    85th percentile, for a reader who cannot see the histograms.
    """
    for _, rec in records.items():
        missing = set(checkpoints) - set(rec.steps.tolist())
        if missing:
            raise ValueError(f"steps {sorted(missing)} were not recorded")

    def num(v: float) -> str:
        return f"{round(float(v), 2) + 0.0:.2f}"  # + 0.0: no "-0.00"

    def describe(step: int) -> str:
        parts = []
        for name, rec in records.items():
            z = rec.unit_inputs[int(np.flatnonzero(rec.steps == step)[0])]
            lo, mid, hi = np.percentile(z, PERCENTILES)
            parts.append(f"median {num(mid)} (15th to 85th percentile {num(lo)} to {num(hi)}) for {name}")
        return f"At step {step} the unit's input has " + ", and ".join(parts) + "."

    return describe


# --- the initialization control ----------------------------------------------------------
#: The four networks of the initialization control, by their book-wide series names
#: (:data:`bnbook.plots.SERIES`): no batch norm with PyTorch's default initialization, with
#: Xavier initialization, with the data-dependent initialization, and batch norm.
CONTROLS: tuple[str, ...] = ("no_bn", "xavier", "lsuv", "bn")


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


def lsuv_batch(x_train: torch.Tensor, seed: int, size: int = 256) -> torch.Tensor:
    """The training images the data-dependent initialization of ``seed`` is fitted on.

    ``size`` images drawn without replacement with a generator seeded with
    ``seed``, returned on the CPU.
    """
    if not 2 <= size <= len(x_train):
        raise ValueError(f"size must be between 2 and {len(x_train)}, got {size}")
    idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))[:size]
    return x_train.cpu()[idx]


def control_networks(
    sizes: Sequence[int],
    seed: int,
    activation: str = "sigmoid",
    x_lsuv: torch.Tensor | None = None,
    norm_layer: type[nn.Module] = bnn.BatchNorm1d,
) -> dict[str, nn.Sequential]:
    """The networks of the initialization control, all built from ``seed``, keyed by :data:`CONTROLS`.

    ``"no_bn"`` and ``"bn"`` are :func:`matched_pair` (PyTorch's default
    initialization; batch norm from ``norm_layer``). ``"xavier"`` is a copy of
    the plain network re-drawn by :func:`xavier_init_` with the gain of the
    activation (:func:`torch.nn.init.calculate_gain`: 1 for the sigmoid, 5/3
    for tanh). ``"lsuv"``, present when ``x_lsuv`` is given, is a copy of the
    plain network rescaled by :func:`bnbook.models.lsuv_init` on the batch
    ``x_lsuv``, so that every hidden pre-activation has mean 0 and std 1 there.
    All networks are on the CPU.
    """
    plain, with_bn = matched_pair(sizes, activation, seed=seed, norm_layer=norm_layer)
    gain = nn.init.calculate_gain(activation)
    nets = {"no_bn": plain, "xavier": xavier_init_(copy.deepcopy(plain), gain=gain, seed=seed)}
    if x_lsuv is not None:
        nets["lsuv"] = lsuv_init(copy.deepcopy(plain), x_lsuv.cpu())
    nets["bn"] = with_bn
    return nets


def batched_controls(
    sizes: Sequence[int],
    seeds: Sequence[int],
    x_train: torch.Tensor,
    activation: str = "sigmoid",
    lsuv_size: int = 256,
    device: torch.device | str | None = None,
) -> tuple[BatchedMLP, BatchedMLP]:
    """The four networks of :func:`control_networks` for every seed, as two batched models.

    Returns
    -------
    plain : BatchedMLP with ``3 K`` members
        Members ``0..K-1`` start like ``control_networks(sizes, seeds[k])["no_bn"]``,
        members ``K..2K-1`` like ``"xavier"`` and ``2K..3K-1`` like ``"lsuv"``
        (fitted on ``lsuv_batch(x_train, seeds[k], lsuv_size)``).
    bn : BatchedMLP with ``K`` members
        Member ``k`` starts like ``"bn"``: the weights of the plain member ``k``,
        without hidden biases.

    A seed may appear more than once (for example once per learning rate).
    """
    seeds = [int(s) for s in seeds]
    k = len(seeds)
    plain = BatchedMLP(sizes, seeds * 3, activation, init=["default"] * k + ["xavier"] * k + ["default"] * k)
    lsuv = BatchedMLP(sizes, seeds, activation)
    lsuv_init(lsuv, torch.stack([lsuv_batch(x_train, s, lsuv_size) for s in seeds]))
    bn = BatchedMLP(sizes, seeds, activation, batch_norm=True)
    with torch.no_grad():
        for w, w_lsuv in zip(plain.weights, lsuv.weights, strict=True):
            w[2 * k :].copy_(w_lsuv)
        for b, b_lsuv in zip(plain.biases, lsuv.biases, strict=True):
            b[2 * k :].copy_(b_lsuv)
        for w, w_plain in zip(bn.weights, plain.weights, strict=True):
            w.copy_(w_plain[:k])
        bn.biases[0].copy_(plain.biases[-1][:k])  # the output layer, the only one with a bias
    return plain.to(device), bn.to(device)


class InitControl(NamedTuple):
    """Held-out accuracy of the four networks over training at one learning rate (:func:`train_controls`).

    Attributes
    ----------
    steps : ndarray of int, shape (R,)
        Checkpoints (0 is before the first update; the last is the budget).
    lr : float
    seeds : tuple of int
    accuracy : dict of str to ndarray, shape (S, R)
        Per network of :data:`CONTROLS`: accuracy on the held-out set
        (evaluation mode) at each checkpoint, one row per seed. NaN where a
        reading was skipped (:func:`train_lsuv_vs_bn` with ``until``).
    diverged : dict of str to ndarray of bool, shape (S,)
    records : dict of str to list of TrainingRecord
        Per network, for the first seeds when :func:`train_controls` was asked
        to watch a unit: what :func:`record_training` records, measured on the
        batched members while they trained. Empty otherwise.
    """

    steps: np.ndarray
    lr: float
    seeds: tuple[int, ...]
    accuracy: dict[str, np.ndarray]
    diverged: dict[str, np.ndarray]
    records: Mapping[str, list[TrainingRecord]] = MappingProxyType({})

    @property
    def budget(self) -> int:
        """Number of training steps."""
        return int(self.steps[-1])


@torch.no_grad()
def batched_hidden_input(model: BatchedMLP, x: torch.Tensor, members: Sequence[int]) -> torch.Tensor:
    """:func:`last_hidden_input` for members of a :class:`bnbook.batched.BatchedMLP`: (len(members), N, H).

    What the last hidden layer of each chosen member feeds into its
    nonlinearity for every example of the shared batch ``x`` (N, D); batch
    norm normalizes with the statistics of ``x`` itself, as in a training
    step, and the running statistics are not touched.
    """
    idx = torch.as_tensor(list(members), device=x.device)
    act = ACTIVATIONS[model.activation]
    h = x.unsqueeze(0).expand(len(idx), -1, -1)
    b = 0
    for i in range(len(model.weights) - 1):
        w = model.weights[i].index_select(0, idx)
        if model.batch_norm:
            z = torch.bmm(h, w)
            mean = z.mean(dim=1, keepdim=True)
            centred = z - mean
            var = (centred * centred).mean(dim=1, keepdim=True)
            gamma = model.gammas[i].index_select(0, idx).unsqueeze(1)
            beta = model.betas[i].index_select(0, idx).unsqueeze(1)
            z = torch.addcmul(beta, centred * torch.rsqrt(var + model.eps), gamma)
        else:
            z = torch.baddbmm(model.biases[b].index_select(0, idx).unsqueeze(1), h, w)
            b += 1
        h = act(z)
    return z


def train_controls(
    sizes: Sequence[int],
    seeds: Sequence[int],
    lr: float,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_held: torch.Tensor,
    y_held: torch.Tensor,
    *,
    steps: int,
    eval_every: int = 10,
    batch_size: int = 60,
    lsuv_size: int = 256,
    activation: str = "sigmoid",
    watch_unit: int | None = None,
    watch_seeds: int = 0,
    watch_every: int = 25,
) -> InitControl:
    """Train the four networks for every seed with plain SGD at learning rate ``lr``, all at once.

    Every seed gets the four networks of :func:`batched_controls`, trained
    with :func:`bnbook.batched.train_batched` for ``steps`` steps on
    mini-batches drawn with that seed (the same mini-batches for all four,
    and the same as :func:`record_training` with that seed), and evaluated on
    ``(x_held, y_held)`` every ``eval_every`` steps. The plain networks and
    batch norm train side by side in worker processes with one thread each
    (:func:`bnbook.parallel.run`), so the result does not depend on the
    number of threads or cores.

    With ``watch_unit`` set, the networks of the first ``watch_seeds`` seeds
    are also watched while they train, as :func:`record_training` watches a
    network: every ``watch_every`` steps, the input of unit ``watch_unit`` of
    the last hidden layer to its nonlinearity on ``x_held``
    (:func:`batched_hidden_input`), the median input of every unit of that
    layer, and the held-out accuracy. They come back as
    :class:`TrainingRecord` in the result's ``records``, one per watched seed
    and network, so a study of the drift needs no second training run.
    """
    job = dict(
        steps=steps, eval_every=eval_every, batch_size=batch_size, lsuv_size=lsuv_size, activation=activation,
        watch_unit=watch_unit, watch_seeds=watch_seeds, watch_every=watch_every,
    )
    return train_controls_many(sizes, seeds, x_train, y_train, x_held, y_held, {lr: job})[lr]


def train_controls_many(
    sizes: Sequence[int],
    seeds: Sequence[int],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_held: torch.Tensor,
    y_held: torch.Tensor,
    jobs: Mapping[float, Mapping],
) -> dict[float, InitControl]:
    """:func:`train_controls` at several learning rates, ``{lr: its keyword arguments}``, all side by side.

    Every learning rate's plain networks and batch norm are two calls of
    :func:`bnbook.parallel.run`, all submitted at once, so the workers stay
    busy; each result is what :func:`train_controls` returns for that rate.
    """
    seeds = tuple(int(s) for s in seeds)
    n = len(seeds)
    calls, plan = [], {}
    for lr, job in jobs.items():
        job = {"eval_every": 10, "batch_size": 60, "lsuv_size": 256, "activation": "sigmoid",
               "watch_unit": None, "watch_seeds": 0, "watch_every": 25, **job}
        watched = list(range(min(job["watch_seeds"], n))) if job["watch_unit"] is not None else []
        plain, bn = batched_controls(
            sizes, seeds, x_train, job["activation"], job["lsuv_size"], device=x_train.device
        )
        evals = {"x_eval": x_held, "y_eval": y_held, "steps": job["steps"], "batch_size": job["batch_size"]}
        evals["eval_every"] = job["eval_every"]
        plain_rows = [j * n + s for j in range(3) for s in watched]
        watch = dict(x_held=x_held, y_held=y_held, unit=job["watch_unit"], every=job["watch_every"])
        calls.append(partial(_train_watched, plain, x_train, y_train, lr, evals, members=plain_rows, **watch))
        calls.append(partial(_train_watched, bn, x_train, y_train, lr, evals, members=watched, **watch))
        plan[lr] = (len(watched), job["watch_every"])
    done = iter(parallel.run(calls))  # the plain networks and batch norm of every rate, side by side
    out = {}
    for lr, (w, watch_every) in plan.items():
        h_plain, h_bn = next(done), next(done)
        accuracy = {name: h_plain.eval_acc[j * n : (j + 1) * n] for j, name in enumerate(CONTROLS[:3])}
        diverged = {name: h_plain.diverged[j * n : (j + 1) * n] for j, name in enumerate(CONTROLS[:3])}
        accuracy["bn"], diverged["bn"] = h_bn.eval_acc, h_bn.diverged
        records: dict[str, list[TrainingRecord]] = {}
        for hist, names in ((h_plain, CONTROLS[:3]), (h_bn, CONTROLS[3:])) if w else ():
            values, medians, accs = (np.stack([r[part] for r in hist.records]) for part in range(3))
            at = np.arange(len(hist.records)) * watch_every
            for j, name in enumerate(names):
                rows = [(j * w + s, j * n + s) for s in range(w)]  # (row among the watched, member)
                records[name] = [
                    TrainingRecord(at, values[:, r], medians[:, r], accs[:, r], hist.loss[m]) for r, m in rows
                ]
        out[lr] = InitControl(h_plain.eval_steps, float(lr), seeds, accuracy, diverged, records)
    return out


def train_lsuv_vs_bn(
    sizes: Sequence[int],
    seeds: Sequence[int],
    lr: float,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_held: torch.Tensor,
    y_held: torch.Tensor,
    *,
    steps: int,
    eval_every: int = 5,
    batch_size: int = 60,
    lsuv_size: int = 256,
    activation: str = "sigmoid",
    until: float | None = None,
) -> InitControl:
    """Only the data-dependent network and batch norm of :func:`train_controls`, for a closer look.

    Member ``k`` of each starts exactly like the ``"lsuv"`` and ``"bn"``
    members of :func:`train_controls` for ``seeds[k]`` and draws the same
    mini-batches, so the two functions agree on these networks; leaving out
    the two slow networks makes many seeds and a fine reading cheap. The
    result's ``accuracy`` has the keys ``"lsuv"`` and ``"bn"``. The two train
    side by side, as in :func:`train_controls`.

    With ``until`` set, a member's accuracy is no longer read once it has
    reached that level (its later readings are NaN, except the last one at
    the end of the budget, which is always read): the steps to ``until``,
    the final accuracy and the best reading of a member that never gets
    there are what :func:`compare_controls` needs, and they come out the
    same at a fraction of the evaluations.
    """
    seeds = tuple(int(s) for s in seeds)
    plain = BatchedMLP(sizes, seeds, activation)
    bn = BatchedMLP(sizes, seeds, activation, batch_norm=True)
    with torch.no_grad():
        for w, w_plain in zip(bn.weights, plain.weights, strict=True):
            w.copy_(w_plain)
        bn.biases[0].copy_(plain.biases[-1])  # the output layer, the only one with a bias
    lsuv_init(plain, torch.stack([lsuv_batch(x_train, s, lsuv_size) for s in seeds]))
    plain, bn = plain.to(x_train.device), bn.to(x_train.device)
    if until is None:
        evals = {"x_eval": x_held, "y_eval": y_held, "steps": steps, "batch_size": batch_size}
        evals["eval_every"] = eval_every
        calls = [partial(train_batched, m, x_train, y_train, lr, **evals) for m in (plain, bn)]
        h_plain, h_bn = parallel.run(calls)
        accuracy = {"lsuv": h_plain.eval_acc, "bn": h_bn.eval_acc}
        diverged = {"lsuv": h_plain.diverged, "bn": h_bn.diverged}
        return InitControl(h_plain.eval_steps, float(lr), seeds, accuracy, diverged)
    if eval_every < 1 or steps % eval_every:
        raise ValueError(f"with until, eval_every must divide steps ({steps}), got {eval_every}")
    accuracy, diverged = {}, {}
    read = dict(x_held=x_held, y_held=y_held, until=until, steps=steps, batch_size=batch_size)
    read["every"] = eval_every
    runs = parallel.run([partial(_train_until, m, x_train, y_train, lr, **read) for m in (plain, bn)])
    for name, (hist, last_loss) in zip(("lsuv", "bn"), runs, strict=True):
        acc = np.stack(hist.records, axis=1)
        # as train_batched reports it: chance from the reading at which a member had diverged
        bad = np.isnan(hist.loss)
        first = np.where(bad.any(axis=1), bad.argmax(axis=1) + 1, steps + 1)
        acc[np.arange(0, steps + 1, eval_every)[None, :] >= first[:, None]] = 1.0 / sizes[-1]
        accuracy[name] = acc
        diverged[name] = hist.diverged | ~np.isfinite(last_loss)
    return InitControl(np.arange(0, steps + 1, eval_every), float(lr), seeds, accuracy, diverged)


def _watch(
    step: int, model: BatchedMLP, x_held: torch.Tensor, y_held: torch.Tensor, members: list[int], unit: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`train_controls`'s record hook: a unit's inputs, every unit's median input, accuracy."""
    z = batched_hidden_input(model, x_held, members)
    _, acc = evaluate_batched(model, x_held, y_held, members=members)
    return _to_numpy(z[:, :, unit]), _to_numpy(z.median(dim=1).values), acc


def _train_watched(
    model: BatchedMLP, x_train: torch.Tensor, y_train: torch.Tensor, lr: float, evals: dict,
    members: list[int], x_held: torch.Tensor, y_held: torch.Tensor, unit: int | None, every: int,
) -> BatchedHistory:
    """:func:`bnbook.batched.train_batched`, watching ``members`` (if any) every ``every`` steps."""
    if not members:
        return train_batched(model, x_train, y_train, lr, **evals)
    hook = partial(_watch, x_held=x_held, y_held=y_held, members=members, unit=unit)
    return train_batched(model, x_train, y_train, lr, **evals, record=hook, record_every=every)


def _train_until(
    model: BatchedMLP, x_train: torch.Tensor, y_train: torch.Tensor, lr: float, x_held: torch.Tensor,
    y_held: torch.Tensor, until: float, steps: int, batch_size: int, every: int,
) -> tuple[BatchedHistory, np.ndarray]:
    """:func:`train_lsuv_vs_bn`'s reading with ``until``: the history and the held-out loss at the end."""
    reader = _Reader(x_held, y_held, until, steps, model.k)
    hist = train_batched(model, x_train, y_train, lr, steps, batch_size, record=reader, record_every=every)
    return hist, reader.last_loss


class _Reader:
    """A ``record`` hook for :func:`bnbook.batched.train_batched`: held-out accuracy of the members
    that have not yet reached ``until`` (all of them at the last step), NaN for the others."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, until: float, steps: int, k: int) -> None:
        self.x, self.y, self.until, self.steps = x, y, until, steps
        self.open = np.ones(k, dtype=bool)
        self.last_loss = np.zeros(k)

    def __call__(self, step: int, model: BatchedMLP) -> np.ndarray:
        read = np.ones_like(self.open) if step == self.steps else self.open
        row = np.full(len(self.open), np.nan)
        members = np.flatnonzero(read).tolist()
        if members:
            loss, row[members] = evaluate_batched(model, self.x, self.y, members=members)
            if step == self.steps:
                self.last_loss = loss
        self.open &= ~(row >= self.until)
        return row


def steps_to_reach(steps: np.ndarray, accuracy_curves: np.ndarray, level: float = 0.9) -> np.ndarray:
    """First checkpoint step at which each accuracy curve reaches ``level``; NaN if it never does.

    Parameters
    ----------
    steps : ndarray, shape (R,)
    accuracy_curves : ndarray, shape (..., R)
        One curve, or several along the leading axes.
    level : float

    Returns
    -------
    ndarray, shape (...)
    """
    curves = np.asarray(accuracy_curves, dtype=np.float64)
    hit = curves >= level
    first = np.asarray(steps, dtype=np.float64)[hit.argmax(axis=-1)]
    return np.where(hit.any(axis=-1), first, np.nan)


class ControlRow(NamedTuple):
    """One network at one learning rate, against batch norm (see :func:`compare_controls`).

    ``reach`` holds the step at which each seed first reached the target (NaN:
    not within the budget). ``reach_diff`` is the paired difference
    (:func:`bnbook.stats.paired`: mean, standard error, exact Student-t 95 %
    interval; this network minus batch norm) in steps to the target,
    counting a seed that never reached it as reaching it at the budget; then
    the mean is only a lower bound and ``reach_censored`` is True.
    ``final_diff`` is the same for the accuracy at the end of the budget.
    """

    reach: np.ndarray
    n_reached: int
    reach_diff: Paired
    reach_censored: bool
    final: np.ndarray
    final_diff: Paired


def compare_controls(ctrl: InitControl, level: float = 0.9) -> dict[str, ControlRow]:
    """Steps to ``level`` and final accuracy of every network, paired with batch norm seed by seed."""
    bn_reach = steps_to_reach(ctrl.steps, ctrl.accuracy["bn"], level)
    bn_final = ctrl.accuracy["bn"][:, -1]
    rows = {}
    for name in ctrl.accuracy:
        acc = ctrl.accuracy[name]
        reach = steps_to_reach(ctrl.steps, acc, level)
        censored = bool(np.isnan(reach).any() or np.isnan(bn_reach).any())
        at_budget = np.nan_to_num(reach, nan=ctrl.budget), np.nan_to_num(bn_reach, nan=ctrl.budget)
        rows[name] = ControlRow(
            reach,
            int(np.isfinite(reach).sum()),
            paired(*at_budget),
            censored,
            acc[:, -1],
            paired(acc[:, -1], bn_final),
        )
    return rows


def plot_controls(ctrls: Sequence[InitControl], title: str, level: float = 0.9) -> Figure:
    """Held-out accuracy over training of the four networks, one panel per learning rate.

    Each line is the mean over seeds with a min-max band, in the book-wide
    look of its series (:func:`bnbook.plots.series`). The step axis is
    logarithmic, so that the first hundred steps, where the fast networks
    rise, and the last thousand, where the slow ones do, are both visible;
    the markers sit at evenly spaced points of that axis.
    """
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, len(ctrls), figsize=(4.1 * len(ctrls), 3.9), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, ctrl in zip(axes, ctrls, strict=True):
        steps = ctrl.steps[ctrl.steps > 0]
        marks = np.unique(
            np.searchsorted(steps, np.geomspace(steps[0], steps[-1], 7)).clip(0, len(steps) - 1)
        )
        for name in CONTROLS:
            st = series(name)
            runs = ctrl.accuracy[name][:, ctrl.steps > 0]
            band(ax, steps, runs, st["color"], _label(name), ls=st["linestyle"])
            ax.plot(steps[marks], runs.mean(axis=0)[marks], ls="none", marker=st["marker"], color=st["color"])
        ax.axhline(level, color=COLORS["truth"], lw=0.8, ls=":")
        ax.text(steps[0], level + 0.015, f"{level:.0%}", fontsize=8.5, color=COLORS["truth"])
        ax.set_xscale("log")
        ax.set_xlabel("training step (log scale)")
        ax.set_title(f"learning rate {ctrl.lr:g}: {len(ctrl.seeds)} seeds, {ctrl.budget} steps")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("held-out accuracy")
    handles = [
        Line2D([], [], color=st["color"], ls=st["linestyle"], marker=st["marker"], label=_label(name))
        for name, st in zip(CONTROLS, map(series, CONTROLS), strict=True)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=9, title="mean and min-max band")
    fig.suptitle(title)
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
    shape_distance : ndarray, shape (D,)
        Wasserstein-1 distance between the unit's values before and after,
        each standardized by its own mean and std: the change of *shape* alone,
        with any move of the mean or the scale taken out.
    """

    spread: np.ndarray
    mean_shift_abs: np.ndarray
    distance_abs: np.ndarray
    mean_shift: np.ndarray
    std_change: np.ndarray
    distance: np.ndarray
    shape_distance: np.ndarray


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
        a_std = (a - a.mean(axis=0)) / spread
        b_std = (b - b.mean(axis=0)) / b.std(axis=0)
        w1_shape = np.abs(np.sort(b_std, axis=0) - np.sort(a_std, axis=0)).mean(axis=0)
        rows.append(
            (
                spread.mean(),
                shift.mean(),
                w1.mean(),
                np.mean(shift / spread),
                np.mean(np.abs(b.std(axis=0) - spread) / spread),
                np.mean(w1 / spread),
                w1_shape.mean(),
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
    On the CPU the forward and backward passes run on one thread (see
    ``_one_cpu_thread``): the matrices are small, and idle threads would only spin.

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
    with _one_cpu_thread(x_measure.device):  # small products: one thread, and no threads spinning idle
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
        Keys from :data:`CONTROLS` (or their labels); each field of shape (seeds, D), from
        :func:`stack_shifts`.
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
            if field == "spread" and _key(name) == "bn":
                continue
            st = series(_key(name))
            runs = getattr(s, field)
            layers = np.arange(1, runs.shape[1] + 1)
            line = band(ax, layers, runs, st["color"], _label(name), marker=st["marker"], ls=st["linestyle"])
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
