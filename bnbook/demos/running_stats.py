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
  (recalibration itself is the library tool :func:`bnbook.nn.recalibrate_bn`);
* :func:`debias_running_stats` removes the initial values' share from the
  running statistics, :func:`replay_running_stats` recomputes them with the
  final weights over the training batches, and :func:`recalibration_study`
  with :func:`plot_recalibration_study` separates the two causes of a stale
  running average (initial-value bias and weight drift) over several seeds.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from bnbook.models import accuracy
from bnbook.nn import batch_norm_layers
from bnbook.plots import COLORS, MARKERS
from bnbook.scratch import BatchNorm

__all__ = [
    "Trajectory",
    "RECALIBRATION_METHODS",
    "batched_accuracy",
    "debias_running_stats",
    "explorer_draws",
    "full_batch_statistics",
    "make_momentum_describe",
    "make_momentum_draw",
    "momentum_frame",
    "plot_batch_dependence",
    "plot_recalibration_study",
    "plot_running_stats",
    "recalibration_study",
    "replay_running_stats",
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
) -> list:
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

    Returns
    -------
    list
        The handles of the three series (dots, line, dashed line), for a legend of your own.
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
    return handles


# --- the explorer ------------------------------------------------------------------------
#: Where the explorer's two panels sit (left, bottom, width, height, as figure fractions): the
#: places constrained layout gives them on a figure of 8 x 3.2 inches.
_MOMENTUM_AXES = ((0.0713, 0.253, 0.4254, 0.5992), (0.5694, 0.253, 0.4254, 0.5992))


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
        frame = momentum_frame(draws[batch_size], momentum, true_mean, true_var, top_var)
        traj = frame["trajectory"]
        # Fixed places instead of a layout engine (the places constrained layout finds for
        # these axes, whose limits do not change): saving then renders the frame once, not twice.
        with rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
            fig.set_layout_engine(None)
        axes = [fig.add_axes(_MOMENTUM_AXES[0]), fig.add_axes(_MOMENTUM_AXES[1])]
        handles = plot_running_stats(axes, traj, true_mean, true_var, legend=False)
        for ax in axes:  # the title where the automatic place is; given outright, it saves a layout pass
            ax.set_title(ax.get_title(), y=1.0)
        fig.legend(
            handles,
            ["batch statistic (variance: unbiased)", "running average", "population value"],
            loc="lower center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=3,
            fontsize=9,
        )
        axes[0].set_ylim(lo_mean - pad, hi_mean + pad)
        axes[1].set_ylim(0.0, top_var)
        if frame["n_above"]:
            axes[1].text(
                0.98,
                0.96,
                f"{frame['n_above']} batch values above the chart",
                transform=axes[1].transAxes,
                ha="right",
                va="top",
                fontsize=8,
            )
        fig.suptitle(
            f"momentum {momentum:g}, batch size {batch_size}: after {len(traj.running_mean)} steps the "
            f"running mean is off by {frame['err_mean']:.2f}, the variance by {frame['err_var']:.2f}",
            fontsize=10,
            y=0.987,
        )

    return draw


def momentum_frame(
    batches: np.ndarray, momentum: float, true_mean: float, true_var: float, top_var: float | None = None
) -> dict:
    """What one frame of the momentum explorer shows, as numbers.

    Parameters
    ----------
    batches : ndarray, shape (n_steps, batch_size)
        The frame's batches (one entry of :func:`explorer_draws`).
    momentum : float
    true_mean, true_var : float
        Population values.
    top_var : float, optional
        The top of the variance axis (default four times ``true_var``).

    Returns
    -------
    dict
        ``trajectory`` (:class:`Trajectory`), ``err_mean`` and ``err_var`` (distance of
        the final running mean and variance from the population values), and
        ``n_above`` (batch variances above ``top_var``).
    """
    traj = running_trajectory(batches, momentum)
    top = 4.0 * true_var if top_var is None else top_var
    return {
        "trajectory": traj,
        "err_mean": float(abs(traj.running_mean[-1] - true_mean)),
        "err_var": float(abs(traj.running_var[-1] - true_var)),
        "n_above": int((traj.batch_var > top).sum()),
    }


def make_momentum_describe(
    draws: Mapping[int, np.ndarray], true_mean: float, true_var: float
) -> Callable[..., str]:
    """The momentum explorer's ``describe(momentum, batch_size)``: the frame's numbers, in one sentence.

    They come from :func:`momentum_frame`, as the frame's title does.
    """

    def describe(momentum: float, batch_size: int) -> str:
        f = momentum_frame(draws[batch_size], momentum, true_mean, true_var)
        traj = f["trajectory"]
        above = f"; {f['n_above']} batch variances lie above the chart" if f["n_above"] else ""
        return (
            f"After {len(traj.running_mean)} steps the running mean is {traj.running_mean[-1]:.2f} "
            f"(population {true_mean:g}) and the running variance {traj.running_var[-1]:.2f} "
            f"(population {true_var:g}); the batch means scatter with a standard deviation of "
            f"{traj.batch_mean.std():.2f}{above}."
        )

    return describe


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
        z = inputs[0].detach()
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


# --- two causes of stale running statistics ----------------------------------------------
@torch.no_grad()
def debias_running_stats(model: nn.Module) -> nn.Module:
    r"""Remove the initial values' share from every running mean and variance, in place.

    After :math:`t` updates with momentum :math:`\alpha`, PyTorch's running
    mean is :math:`(1-\alpha)^t \cdot 0 + \sum_k w_k \mu_k` with weights
    :math:`w_k` that sum to :math:`1 - (1-\alpha)^t`, and the running variance
    carries :math:`(1-\alpha)^t \cdot 1` of its initial value 1. Dividing by
    the weights' sum (as Adam corrects its moment estimates) gives

    .. math::

        \tilde\mu = \frac{\hat\mu}{1 - (1-\alpha)^t}, \qquad
        \tilde\sigma^2 = \frac{\hat\sigma^2 - (1-\alpha)^t}{1 - (1-\alpha)^t}

    which weights only the batches actually seen. Layers with
    ``momentum=None`` (a cumulative average, no initial-value share) are left
    alone. See ``chapters/04_training_vs_inference``.

    Parameters
    ----------
    model : torch.nn.Module
        With batch-norm layers whose running statistics started at 0 and 1
        (a fresh layer or ``reset_running_stats``); changed in place.

    Returns
    -------
    torch.nn.Module
        ``model`` itself.
    """
    for layer in batch_norm_layers(model):
        t = int(layer.num_batches_tracked)
        if layer.momentum is None or t == 0:
            continue
        w0 = (1.0 - layer.momentum) ** t  # weight still carried by the initial values
        layer.running_mean.div_(1.0 - w0)
        layer.running_var.sub_(w0).div_(1.0 - w0)
    return model


@torch.no_grad()
def replay_running_stats(
    model: nn.Module, x: torch.Tensor, steps: int, batch_size: int, seed: int, momentum: float | None
) -> nn.Module:
    """A copy of ``model`` whose running statistics come from the training batches, seen by the final weights.

    The batch indices are drawn exactly as :func:`bnbook.models.train_classifier`
    draws them with the same ``seed``, so the copy sees the same batches in the
    same order, with the same momentum, as the model did during training. The
    only difference is that every batch now passes through the *final*
    weights: the control that removes weight drift and keeps everything else.

    Parameters
    ----------
    model : torch.nn.Module
        The trained model; left untouched.
    x : Tensor, shape (N, *)
        The training inputs, on the model's device.
    steps, batch_size, seed : int
        As given to :func:`bnbook.models.train_classifier`.
    momentum : float or None
        The layers' momentum during the replay.

    Returns
    -------
    torch.nn.Module
        The copy, in eval mode.
    """
    clone = copy.deepcopy(model)
    layers = batch_norm_layers(clone)
    clone.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = momentum
        layer.train()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch_size,), generator=gen).to(x.device)
        clone(x[idx])
    return clone.eval()


#: The four versions of the running statistics that :func:`recalibration_study` compares.
RECALIBRATION_METHODS: tuple[str, ...] = (
    "stored",
    "bias-corrected",
    "bias-corrected, no drift",
    "recalibrated",
)


@torch.no_grad()
def _with_ema(
    model: nn.Module, log: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]], momentum: float
) -> nn.Module:
    """A copy of ``model`` whose running statistics are the moving average of the logged batch statistics."""
    clone = copy.deepcopy(model)
    for layer, steps in zip(batch_norm_layers(clone), log, strict=True):
        layer.reset_running_stats()
        layer.momentum = momentum
        for mean, var in steps:  # the layer's own update rule, step by step
            layer.running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
            layer.running_var.mul_(1.0 - momentum).add_(var, alpha=momentum)
        layer.num_batches_tracked.fill_(len(steps))
    return clone


def _logged_stack(nets: Sequence[nn.Module], seeds: Sequence[int]) -> nn.Module:
    """The chapter's networks as one :class:`bnbook.batched.BatchedMLP` whose batch norm keeps no memory.

    With momentum 1, the running statistics after a training-mode step are that step's
    batch mean and unbiased variance, so reading them after every step logs what a hook
    on each layer would log.
    """
    from bnbook.batched import BatchedMLP

    model = BatchedMLP([64, 64, 64, 10], seeds, activation="sigmoid", batch_norm=True, momentum=1.0)
    if nets:
        linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        norms = [batch_norm_layers(net) for net in nets]
        with torch.no_grad():
            for i, w in enumerate(model.weights):
                w.copy_(torch.stack([lin[i].weight.T for lin in linears]))
            model.biases[0].copy_(torch.stack([lin[-1].bias for lin in linears]))
            for i, (gamma, beta) in enumerate(zip(model.gammas, model.betas, strict=True)):
                gamma.copy_(torch.stack([layers[i].weight for layers in norms]))
                beta.copy_(torch.stack([layers[i].bias for layers in norms]))
    return model


def _run_logged(
    model: nn.Module,
    seeds: Sequence[int],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float = 0.0,
    keep: Sequence[int] = (),
) -> tuple[dict[int, list[nn.Module]], list[list[list[tuple[torch.Tensor, torch.Tensor]]]]]:
    """``steps`` training-mode steps of a :func:`_logged_stack`, each member on the batches of its seed.

    The batches are those :func:`bnbook.models.train_classifier` draws with each seed.
    With ``lr`` every step is also a plain SGD step on cross-entropy (training);
    without, the weights stay as they are (a replay).

    Returns
    -------
    kept : dict
        ``step -> [network of each seed]`` for every step in ``keep``, as
        ``torch.nn.Sequential`` with :class:`bnbook.nn.BatchNorm1d` layers (momentum 0.1).
    logs : list
        ``logs[s][layer]``: the (mean, unbiased variance) of every batch, in order.
    """
    model = model.to(x.device).train()
    params = list(model.parameters())
    gens = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    k, n = len(seeds), x.shape[0]
    logs: list[list[list[tuple[torch.Tensor, torch.Tensor]]]] = [[[] for _ in model.gammas] for _ in seeds]
    kept: dict[int, list[nn.Module]] = {}
    for step in range(1, steps + 1):
        idx = torch.stack([torch.randint(0, n, (batch_size,), generator=g) for g in gens]).to(x.device)
        if lr:
            logits = model(x[idx])
            per_net = F.cross_entropy(logits.flatten(0, 1), y[idx].flatten(), reduction="none")
            grads = torch.autograd.grad(per_net.view(k, batch_size).mean(dim=1).sum(), params)
            with torch.no_grad():
                for p, grad in zip(params, grads, strict=True):
                    p.sub_(lr * grad)
        else:
            with torch.no_grad():
                model(x[idx])
        for j, (mean, var) in enumerate(zip(model.running_means, model.running_vars, strict=True)):
            for s in range(k):
                logs[s][j].append((mean[s].clone(), var[s].clone()))
        if step in keep:
            kept[step] = [model.member(s) for s in range(k)]
            for net in kept[step]:
                for layer in batch_norm_layers(net):
                    layer.momentum = 0.1
    return kept, logs


def recalibration_study(
    data: Mapping[str, torch.Tensor],
    seeds: Sequence[int],
    momenta: Sequence[float] = (0.1, 0.01),
    steps: int | Sequence[int] = 150,
    lr: float = 0.5,
    batch_size: int = 32,
    recal_batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> dict:
    """Train the chapter's digit classifier per seed and grade four versions of its running statistics.

    For every seed a ``64-64-64-10`` sigmoid MLP with batch norm is trained
    once; the momentum never enters the gradient, so the weights are the same
    for every momentum. Every batch's statistics are logged during
    training, and each momentum's running statistics are rebuilt from them
    with PyTorch's update rule (exactly what a layer with that momentum would
    have stored). They are measured against the final network's population
    statistics in four versions (:data:`RECALIBRATION_METHODS`): as stored;
    with the initial values' share removed (:func:`debias_running_stats`);
    bias-corrected but collected by the *final* weights over the same batches
    (as :func:`replay_running_stats` does: the control without drift); and
    recalibrated (:func:`bnbook.nn.recalibrate_bn`).

    The seeds train side by side as one batched network (:func:`_run_logged`),
    each as :func:`bnbook.models.train_classifier` would train it, up to float32
    round-off; the replay runs the same way. Several budgets cost one training run per seed: with
    ``steps=(150, 600)`` each network trains for 600 steps, and the network and
    the batch statistics of its first 150 steps are those of a 150-step run (the
    same initial weights and the same batches, in the same order).

    Parameters
    ----------
    data : mapping
        Tensors ``x_train``, ``y_train``, ``x_test``, ``y_test`` on ``device``.
    seeds : sequence of int
        One training run per seed (initialization and batch order).
    momenta : sequence of float
        PyTorch momenta to compare.
    steps : int or sequence of int
        The training budget, or several budgets graded along one run.
    lr, batch_size : as in :func:`bnbook.models.train_classifier`
    recal_batch_size : int
        Batch size of the recalibration pass.
    device : torch.device or str

    Returns
    -------
    dict
        ``(momentum, method) -> ndarray of shape (len(seeds), 3)``: per seed the
        mean gap (in population standard deviations), the relative variance
        gap (:func:`running_stats_gap`) and the eval-mode test accuracy. With
        several budgets, one such dict per budget: ``{steps: {(momentum, method): ...}}``.
    """
    from bnbook.nn import recalibrate_bn

    budgets = [int(steps)] if isinstance(steps, (int, np.integer)) else sorted({int(b) for b in steps})
    if not budgets or budgets[0] < 1:
        raise ValueError(f"steps must be positive: one budget or several, got {steps!r}")
    x_train, y_train, x_test, y_test = (data[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    out: dict[int, dict[tuple[float, str], list]] = {
        b: {(a, meth): [] for a in momenta for meth in RECALIBRATION_METHODS} for b in budgets
    }

    # every seed at once: the networks after each budget, and every training batch's statistics
    kept, logs = _run_logged(
        _logged_stack([], seeds), seeds, x_train, y_train, budgets[-1], batch_size, lr=lr, keep=budgets
    )
    for budget in budgets:
        finals = [net.eval() for net in kept[budget]]
        # the control: the same batches, in the same order, through the final weights
        _, replay_logs = _run_logged(
            _logged_stack(finals, seeds), seeds, x_train, y_train, budget, batch_size
        )
        for s, final in enumerate(finals):
            seen = [layer_log[:budget] for layer_log in logs[s]]
            population = full_batch_statistics(final, x_train)
            recalibrated = recalibrate_bn(copy.deepcopy(final), x_train, batch_size=recal_batch_size)
            for a in momenta:
                stored = _with_ema(final, seen, a).eval()
                versions = {
                    "stored": stored,
                    "bias-corrected": debias_running_stats(copy.deepcopy(stored)),
                    "bias-corrected, no drift": debias_running_stats(
                        _with_ema(final, replay_logs[s], a)
                    ).eval(),
                    "recalibrated": recalibrated,
                }
                for meth, version in versions.items():
                    mean_gap, var_gap = running_stats_gap(version, population)
                    out[budget][a, meth].append((mean_gap, var_gap, accuracy(version, x_test, y_test)))
    results = {b: {key: np.array(rows) for key, rows in table.items()} for b, table in out.items()}
    return results[budgets[0]] if isinstance(steps, (int, np.integer)) else results


def plot_recalibration_study(
    axes: Sequence[Axes], results: Mapping[tuple[float, str], np.ndarray], momenta: Sequence[float]
) -> None:
    """Variance gap (log scale) and test accuracy for each version of the running statistics.

    One series per momentum, each with its own colour and marker; small
    markers are the single seeds, large ones connected by a line their mean.

    Parameters
    ----------
    axes : pair of matplotlib Axes
        Left for the relative variance gap, right for the test accuracy.
    results : mapping
        From :func:`recalibration_study`.
    momenta : sequence of float
        The momenta to draw, in legend order.
    """
    pos = np.arange(len(RECALIBRATION_METHODS))
    styles = [
        (COLORS["ema"], MARKERS[1], "-"),
        (COLORS["bn"], MARKERS[0], "--"),
        (COLORS["no_bn"], MARKERS[2], ":"),
    ]
    for k, a in enumerate(momenta):
        color, marker, ls = styles[k % len(styles)]
        offset = (k - (len(momenta) - 1) / 2) * 0.12
        for ax, col in ((axes[0], 1), (axes[1], 2)):
            runs = np.stack([results[a, meth][:, col] for meth in RECALIBRATION_METHODS], axis=1)
            for run in runs:
                ax.scatter(pos + offset, run, s=14, color=color, marker=marker, alpha=0.45, lw=0)
            ax.plot(
                pos + offset,
                runs.mean(axis=0),
                color=color,
                marker=marker,
                ms=8,
                ls=ls,
                lw=1.5,
                label=f"momentum {a:g}",
            )
    labels = ["stored", "initial value\nremoved", "initial value\nremoved,\nno drift", "recalibrated"]
    for ax in axes:
        ax.set_xticks(pos)
        ax.set_xticklabels(labels, fontsize=8.5)
        ax.set_xlabel("running statistics")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("variance gap |running / population - 1|")
    axes[0].set_title("Variance gap, mean over features")
    axes[1].set_ylabel("test accuracy (eval mode)")
    axes[1].set_title("Eval-mode test accuracy")
    axes[1].legend(loc="lower right", fontsize=9)
