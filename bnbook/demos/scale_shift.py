"""Figures, explorer and experiments for chapter 3, learnable scale and shift.

Everything here works on values that were already normalized (``x_hat``) by
:mod:`bnbook.scratch` or :mod:`bnbook.nn`; the only arithmetic of its own is the
final affine step ``gamma * x_hat + beta`` that the chapter is about.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from bnbook.plots import COLORS, MARKERS

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "affine_control",
    "ScaleShiftHistory",
    "gamma_beta_frame",
    "identity_gap",
    "make_gamma_beta_describe",
    "make_gamma_beta_draw",
    "plot_four_settings",
    "plot_scale_shift_history",
    "sigmoid",
    "sigmoid_regime",
    "tangent_radius",
    "train_scale_shift",
]

#: Sigmoid outputs below this or above one minus this count as saturated.
SATURATION = 0.05


def sigmoid(z: np.ndarray) -> np.ndarray:
    r"""The logistic sigmoid :math:`1 / (1 + e^{-z})`, computed without overflow.

    Parameters
    ----------
    z : ndarray
        Pre-activations, any shape.

    Returns
    -------
    ndarray
        Same shape as ``z``, values in (0, 1).
    """
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def sigmoid_regime(z: np.ndarray, rel_tol: float = 0.1, saturation: float = SATURATION) -> dict[str, float]:
    r"""How linear, and how saturated, a sigmoid is on the inputs ``z``.

    The tangent of the sigmoid at 0 is :math:`\ell(z) = 1/2 + z/4`. An input
    counts as *near-linear* when the sigmoid's distance from its midpoint is
    within ``rel_tol`` of the tangent's,
    :math:`|(\sigma(z) - 1/2) - z/4| \le \text{rel\_tol}\cdot|z/4|`, and as
    *saturated* when :math:`\sigma(z)` is within ``saturation`` of 0 or 1.

    Parameters
    ----------
    z : ndarray
        Pre-activations (flattened).
    rel_tol : float
        Relative tolerance for "near-linear".
    saturation : float
        Distance from 0 or 1 below which an output is saturated.

    Returns
    -------
    dict of str to float
        ``near_linear`` and ``saturated`` (shares of inputs in [0, 1]),
        ``r2`` (share of the variance of :math:`\sigma(z)` that the best straight
        line in :math:`z` explains), and ``out_lo``, ``out_hi`` (the 2.5th and
        97.5th percentiles of :math:`\sigma(z)`).
    """
    z = np.asarray(z, dtype=np.float64).ravel()
    s = sigmoid(z)
    near = np.abs((s - 0.5) - z / 4.0) <= rel_tol * np.abs(z / 4.0)
    sat = (s < saturation) | (s > 1.0 - saturation)
    r = np.corrcoef(z, s)[0, 1]
    lo, hi = np.percentile(s, [2.5, 97.5])
    return {
        "near_linear": float(near.mean()),
        "saturated": float(sat.mean()),
        "r2": float(r * r),
        "out_lo": float(lo),
        "out_hi": float(hi),
    }


def plot_four_settings(
    x_hat: np.ndarray,
    settings: Sequence[tuple[str, float, float]],
    bins: np.ndarray | None = None,
    colors: Sequence[str] | None = None,
    figsize: tuple[float, float] = (8.0, 3.5),
) -> Figure:
    r"""Overlaid histograms of :math:`\gamma\hat x + \beta` for several (γ, β) settings.

    Parameters
    ----------
    x_hat : ndarray, shape (m,)
        Normalized activations (mean 0, variance 1 over the batch).
    settings : sequence of (label, gamma, beta)
        One histogram per entry, drawn on a shared axis.
    bins : ndarray, optional
        Common bin edges (default: 120 bins covering every output).
    colors : sequence of str, optional
        One colour per setting (default: ``COLORS["features"]``).
    figsize : (float, float)

    Returns
    -------
    matplotlib.figure.Figure
        With one axes; the caller adds nothing and calls ``plt.show()``.
    """
    x_hat = np.asarray(x_hat, dtype=np.float64).ravel()
    outs = [(label, g, b, g * x_hat + b) for label, g, b in settings]
    if bins is None:
        lo = min(o.min() for *_, o in outs)
        hi = max(o.max() for *_, o in outs)
        bins = np.linspace(np.floor(lo), np.ceil(hi), 121)
    colors = list(colors or COLORS["features"])
    fig, ax = plt.subplots(figsize=figsize)
    styles = ["-", "--", "-.", ":"]
    for k, ((label, g, b, y), c) in enumerate(zip(outs, colors, strict=False)):
        text = f"{label}: γ={g:g}, β={b:g}  (mean {y.mean():.2f}, std {y.std():.2f})"
        ax.hist(y, bins=bins, density=True, histtype="stepfilled", color=c, alpha=0.18)
        ax.hist(y, bins=bins, density=True, histtype="step", color=c, lw=1.8, ls=styles[k % 4], label=text)
    ax.set_xlabel(r"output $y = \gamma\,\hat{x} + \beta$")
    ax.set_ylabel("density")
    ax.set_title("γ sets the spread and β the centre: one x̂ can take any mean and std")
    ax.legend(loc="upper right", fontsize=8.5)
    return fig


def _counts(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """Counts per bin of equally spaced ``bins`` (the fast path of ``np.histogram``, without a sort)."""
    return np.histogram(values, bins=len(bins) - 1, range=(bins[0], bins[-1]))[0]


def _stairs(ax: Axes, values: np.ndarray, bins: np.ndarray, color: str, label: str, alpha: float) -> None:
    """A filled histogram of ``values`` on ``ax``: the share of values per bin."""
    counts = _counts(values, bins)
    ax.stairs(counts / values.size, bins, fill=True, color=color, alpha=alpha, label=label, lw=0)


def gamma_beta_frame(
    x_hat: np.ndarray, gamma: float, beta: float, saturation: float = SATURATION
) -> dict[str, float]:
    r"""What one frame of the γ-β explorer shows, as numbers.

    Parameters
    ----------
    x_hat : ndarray, shape (m,)
        Normalized activations.
    gamma, beta : float
        The frame's scale and shift.
    saturation : float
        Distance from 0 or 1 below which a sigmoid output counts as saturated.

    Returns
    -------
    dict of str to float
        ``mean`` and ``std`` of :math:`y = \gamma\hat x + \beta` over the batch,
        ``saturated``, the share of :math:`\sigma(y)` within ``saturation`` of
        0 or 1, and ``saturated_ref``, that share for :math:`\sigma(\hat x)`.
    """
    x_hat = np.asarray(x_hat, dtype=np.float64).ravel()
    y = gamma * x_hat + beta

    def saturated(v: np.ndarray) -> float:
        s = sigmoid(v)
        return float(np.mean((s < saturation) | (s > 1.0 - saturation)))

    return {
        "mean": float(y.mean()),
        "std": float(y.std()),
        "saturated": saturated(y),
        "saturated_ref": saturated(x_hat),
    }


def make_gamma_beta_describe(x_hat: np.ndarray, saturation: float = SATURATION) -> Callable[..., str]:
    """The γ-β explorer's ``describe(gamma, beta)``: one sentence on what the frame shows.

    The numbers come from :func:`gamma_beta_frame`, as the frame's legend and
    title do, so a screen reader hears what the picture shows.
    """
    x_hat = np.asarray(x_hat, dtype=np.float64).ravel()

    def describe(gamma: float, beta: float) -> str:
        f = gamma_beta_frame(x_hat, gamma, beta, saturation)
        return (
            f"The output y has mean {round(f['mean'], 2) + 0.0:.2f} and standard deviation {f['std']:.2f} "
            f"(x̂: 0 and 1); after the sigmoid {100 * f['saturated']:.1f}% of the outputs are saturated, "
            f"against {100 * f['saturated_ref']:.1f}% for x̂."
        )

    return describe


def make_gamma_beta_draw(
    x_hat: np.ndarray,
    saturation: float = SATURATION,
) -> Callable[..., None]:
    r"""A draw function ``draw(fig, gamma, beta)`` for a :class:`bnbook.widgets.Explorer`.

    The left panel is the histogram of :math:`y = \gamma\hat x + \beta` over
    the standard normalized distribution (:math:`\gamma=1, \beta=0`) in
    faint grey. Its axes follow the frame: the x-range covers both
    distributions (4.5 standard deviations either side of each centre) and
    the y-range the taller of the two, so a narrow or a wide output is never
    squashed. The bins are always 0.1 wide, so bin heights stay comparable
    across frames. The right panel is the histogram of :math:`\sigma(y)`,
    the output after a sigmoid, in bins as wide as ``saturation``, so that
    the first and last bins are the saturated outputs; its title gives their
    share.

    Parameters
    ----------
    x_hat : ndarray, shape (m,)
        Normalized activations, computed once by the caller.
    saturation : float
        Distance from 0 or 1 below which a sigmoid output counts as saturated.

    Returns
    -------
    callable
        ``draw(fig, gamma, beta)``, drawing on an empty ``Figure``.
    """
    x_hat = np.asarray(x_hat, dtype=np.float64).ravel()
    bins_s = np.linspace(0.0, 1.0, int(round(1.0 / saturation)) + 1)
    ref_s = sigmoid(x_hat)
    width = 0.1  # bin width of the left panel

    def draw(fig: Figure, gamma: float, beta: float) -> None:
        y = gamma * x_hat + beta
        s = sigmoid(y)
        frame = gamma_beta_frame(x_hat, gamma, beta, saturation)
        lo = min(-4.5, beta - 4.5 * abs(gamma))
        hi = max(4.5, beta + 4.5 * abs(gamma))
        bins_y = np.arange(np.floor(lo / width) * width, hi + width, width)
        # Fixed margins instead of a layout engine: every frame has the same
        # layout, and saving renders once instead of twice.
        with mpl.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False}):
            fig.set_layout_engine(None)
        ax1, ax2 = fig.subplots(
            1,
            2,
            gridspec_kw={
                "width_ratios": [1.6, 1.0],
                "left": 0.09,
                "right": 0.975,
                "bottom": 0.155,
                "top": 0.9,
                "wspace": 0.2,
            },
        )
        _stairs(ax1, x_hat, bins_y, COLORS["batch"], "x̂ (γ=1, β=0)", alpha=0.35)
        _stairs(
            ax1, y, bins_y, COLORS["bn"], f"y: mean {frame['mean']:.2f}, std {frame['std']:.2f}", alpha=0.65
        )
        top = max(_counts(v, bins_y).max() for v in (x_hat, y)) / x_hat.size
        ax1.set_xlim(lo, hi)
        ax1.set_ylim(0.0, 1.3 * top)
        ax1.xaxis.set_major_locator(MaxNLocator(7, integer=True))
        ax1.yaxis.set_major_locator(MaxNLocator(4))
        ax1.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=None))
        ax1.set_xlabel("y = γ x̂ + β")  # plain text: mathtext would be parsed again for every frame
        ax1.set_ylabel("share per bin of width 0.1")
        # a title's place given outright (where the automatic one puts it) saves a layout pass
        ax1.set_title(f"γ = {gamma:g} sets the spread, β = {beta:g} the centre", y=1.0)
        ax1.legend(loc="upper left", fontsize=8)
        for edge in (0.0, 1.0 - saturation):
            ax2.axvspan(edge, edge + saturation, color=COLORS["truth"], alpha=0.08, lw=0)
        _stairs(ax2, ref_s, bins_s, COLORS["batch"], "σ(x̂)", alpha=0.35)
        _stairs(ax2, s, bins_s, COLORS["no_bn"], "σ(y)", alpha=0.65)
        top_s = max(_counts(v, bins_s).max() for v in (ref_s, s)) / x_hat.size
        ax2.set_xlim(0.0, 1.0)
        ax2.set_xticks([0.0, 0.5, 1.0])
        ax2.set_ylim(0.0, 1.3 * top_s)
        ax2.yaxis.set_major_locator(MaxNLocator(4))
        ax2.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax2.set_xlabel("sigmoid output σ(y)")
        ax2.set_title(f"after a sigmoid σ: {100 * frame['saturated']:.1f}% saturated", fontsize=10, y=1.0)
        ax2.legend(loc="upper center", fontsize=8)

    return draw


def tangent_radius(rel_tol: float = 0.1) -> float:
    r"""The largest :math:`|z|` at which the sigmoid stays within ``rel_tol`` of its tangent at 0.

    Solves :math:`(\sigma(z) - 1/2) / (z/4) = 1 - \text{rel\_tol}` by bisection;
    the ratio equals :math:`\tanh(z/2) / (z/2)`, which falls from 1 as
    :math:`|z|` grows.

    Parameters
    ----------
    rel_tol : float
        Relative tolerance, in (0, 1).

    Returns
    -------
    float
        The radius, accurate to about 1e-12.
    """
    if not 0.0 < rel_tol < 1.0:
        raise ValueError(f"rel_tol must lie in (0, 1), got {rel_tol}")
    lo, hi = 1e-9, 100.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.tanh(mid / 2) / (mid / 2) > 1.0 - rel_tol:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def identity_gap(
    batch_sizes: Sequence[int],
    n_batches: int = 500,
    mean: float = 0.0,
    std: float = 1.0,
    eps: float = 1e-5,
    seed: int = 0,
    fit: str = "batch",
) -> dict[int, np.ndarray]:
    r"""How far the "identity" setting of γ and β misses on batches it was not fitted on (training mode).

    For each batch size ``m``, γ and β are set so that the layer would give
    back its input if the batch statistics were the ones used for the fit,
    then ``n_batches`` fresh batches of that size and distribution are each
    normalized with their *own* statistics, as in training mode:

    * ``fit="batch"``: γ and β are fitted on one other batch of size ``m``
      (:math:`\gamma = \sqrt{\sigma^2_\mathcal{B} + \epsilon}`,
      :math:`\beta = \mu_\mathcal{B}`), a new one for every fresh batch, so the
      miss carries the sampling noise of two batches;
    * ``fit="population"``: γ and β come from the population
      (:math:`\gamma = \sqrt{\text{std}^2 + \epsilon}`, :math:`\beta = \text{mean}`),
      the best any fixed pair can do, so the miss is the fresh batch's own noise
      alone. For a normal feature its root-mean-square is about
      :math:`\sqrt{1.5/m}` population standard deviations: :math:`1/m` from the
      batch mean and :math:`1/(2m)` from the batch standard deviation.

    Parameters
    ----------
    batch_sizes : sequence of int
        Batch sizes ``m`` to try (at least 2).
    n_batches : int
        Fresh batches per size.
    mean, std : float
        The feature's population mean and standard deviation.
    eps : float
    seed : int
    fit : {"batch", "population"}
        Where γ and β come from.

    Returns
    -------
    dict of int to ndarray, shape (n_batches, 2)
        Per fresh batch: the largest and the root-mean-square :math:`|y_i - x_i|`
        over the batch, both in population standard deviations.
    """
    from bnbook.scratch import batch_norm_forward

    if fit not in ("batch", "population"):
        raise ValueError(f"fit must be 'batch' or 'population', got {fit!r}")
    rng = np.random.default_rng(seed)
    out = {}
    for m in batch_sizes:
        if m < 2:
            raise ValueError(f"batch sizes must be at least 2, got {m}")
        rows = []
        for _ in range(n_batches):
            fit_batch, fresh = rng.normal(mean, std, size=(2, m, 1))
            if fit == "batch":
                _, cache = batch_norm_forward(fit_batch, eps=eps)
                gamma, beta = np.sqrt(cache.var + eps), cache.mean
            else:
                gamma, beta = np.full(1, np.sqrt(std**2 + eps)), np.full(1, float(mean))
            y, _ = batch_norm_forward(fresh, gamma, beta, eps)
            err = np.abs(y - fresh) / std
            rows.append((err.max(), np.sqrt(np.mean(err**2))))
        out[int(m)] = np.array(rows)
    return out


class ScaleShiftHistory(NamedTuple):
    """What :func:`train_scale_shift` recorded.

    Attributes
    ----------
    gamma, beta : ndarray, shape (steps + 1, C)
        The layer's scale and shift before training and after every step.
    loss : ndarray, shape (steps,)
        The mini-batch loss of every step.
    """

    gamma: np.ndarray
    beta: np.ndarray
    loss: np.ndarray


def train_scale_shift(
    target_gamma: Sequence[float],
    target_beta: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    steps: int = 300,
    lr: float = 10.0,
    batch_size: int = 256,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> ScaleShiftHistory:
    r"""Fit a ``BatchNorm1d -> Sigmoid`` model whose targets need a given γ and β.

    The raw inputs are Gaussian with the given ``mean`` and ``std`` per
    feature. The target of feature :math:`c` is
    :math:`\sigma(\gamma^*_c z_c + \beta^*_c)`, where :math:`z_c` is the input
    standardized with its *population* statistics. A
    :class:`bnbook.nn.BatchNorm1d` (initialized to γ=1, β=0) followed by a
    sigmoid is trained on the mean squared error with plain SGD, so the only
    way to fit the targets is to move γ towards :math:`\gamma^*` and β
    towards :math:`\beta^*`.

    Parameters
    ----------
    target_gamma, target_beta : sequence of float, length C
        The scale and shift the task needs.
    mean, std : sequence of float, length C
        Population statistics of the raw inputs.
    steps : int
    lr : float
        SGD learning rate.
    batch_size : int
    seed : int
        Seeds the CPU generator that draws the mini-batches.
    device : str or torch.device, optional
        Where to compute (default: :func:`bnbook.get_device`).

    Returns
    -------
    ScaleShiftHistory
    """
    import torch

    from bnbook import get_device
    from bnbook.nn import BatchNorm1d

    dev = torch.device(device) if device is not None else get_device()
    tg, tb, mu, sd = (
        torch.tensor(list(v), dtype=torch.float32, device=dev) for v in (target_gamma, target_beta, mean, std)
    )
    c = tg.numel()
    if not (tb.numel() == mu.numel() == sd.numel() == c):
        raise ValueError("target_gamma, target_beta, mean and std must have the same length")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    bn = BatchNorm1d(c).to(dev)
    gammas, betas, losses = (
        [bn.weight.detach().cpu().numpy().copy()],
        [bn.bias.detach().cpu().numpy().copy()],
        [],
    )
    for _ in range(steps):
        x = mu + sd * torch.randn(batch_size, c, generator=gen).to(dev)
        target = torch.sigmoid(tg * (x - mu) / sd + tb)
        loss = torch.mean((torch.sigmoid(bn(x)) - target) ** 2)
        bn.zero_grad()
        loss.backward()
        with torch.no_grad():  # plain SGD, written out (torch.optim's first step is slow to import)
            for p in bn.parameters():
                p -= lr * p.grad
        losses.append(loss.item())
        gammas.append(bn.weight.detach().cpu().numpy().copy())
        betas.append(bn.bias.detach().cpu().numpy().copy())
    return ScaleShiftHistory(np.array(gammas), np.array(betas), np.array(losses))


def plot_scale_shift_history(
    history: ScaleShiftHistory,
    target_gamma: Sequence[float],
    target_beta: Sequence[float],
    figsize: tuple[float, float] = (8.0, 3.2),
) -> Figure:
    """γ and β of every feature against the training step, with their targets dashed.

    Parameters
    ----------
    history : ScaleShiftHistory
        From :func:`train_scale_shift`.
    target_gamma, target_beta : sequence of float
        The values the task needs, drawn as dashed lines.
    figsize : (float, float)

    Returns
    -------
    matplotlib.figure.Figure
    """
    steps = np.arange(history.gamma.shape[0])
    colors = COLORS["features"]
    fig, axes = plt.subplots(1, 2, figsize=figsize, sharex=True)
    for ax, values, targets, name in (
        (axes[0], history.gamma, target_gamma, "γ"),
        (axes[1], history.beta, target_beta, "β"),
    ):
        for c in range(values.shape[1]):
            ax.plot(
                steps,
                values[:, c],
                color=colors[c],
                lw=1.8,
                marker=MARKERS[c],
                markevery=max(1, len(steps) // 8),
                label=f"feature {c}: learned",
            )
            ax.axhline(targets[c], color=colors[c], ls="--", lw=1.0, label=f"feature {c}: needed")
        ax.set_xlabel("SGD step")
        ax.set_ylabel(f"{name} (scale)" if name == "γ" else f"{name} (shift)")
        ax.set_title(f"{name} moves only where the task needs it")
    axes[0].legend(loc="center right", fontsize=8)
    return fig


def affine_control(
    seeds: Sequence[int],
    lr: float = 2.0,
    steps: int = 1000,
    sizes: Sequence[int] = (64, 100, 100, 100, 10),
    data_seed: int = 3,
) -> dict[bool, np.ndarray]:
    """Train the digit classifier with and without γ and β, same seeds, and grade both.

    For every seed, two sigmoid MLPs with batch norm before each sigmoid start
    from the weights that ``torch.manual_seed(seed); bnbook.models.mlp(sizes,
    "sigmoid", batch_norm=True)`` draws: one with learnable γ, β, one without
    them (γ held at 1 and β at 0, which is what ``affine=False`` does, up to
    float32 round-off that training at a high learning rate amplifies seed by
    seed: every sigmoid input stays at mean 0, std 1 over the batch). Both take plain SGD
    steps on cross-entropy over the same mini-batches, drawn as
    :func:`bnbook.models.train_classifier` draws them with the seed.

    All ``2 * len(seeds)`` networks train side by side as one
    :class:`bnbook.batched.BatchedMLP`: one batched matrix product per layer
    instead of one small product per network, and nothing couples them (the
    summed loss gives each network the gradient of its own loss). The networks
    without γ and β get no step for γ and β, so these stay exactly 1 and 0.

    Returns
    -------
    dict
        ``affine -> ndarray of shape (len(seeds), 2)``: per seed the held-out
        accuracy (evaluation mode) and the mean training loss of the last 100 steps.
    """
    import torch
    import torch.nn.functional as F

    from bnbook.batched import BatchedMLP, evaluate_batched
    from bnbook.data import load_digits

    seeds = [int(s) for s in seeds]
    x_train, y_train, x_held, y_held = (torch.from_numpy(a) for a in load_digits(seed=data_seed))
    k, n, batch_size = len(seeds), x_train.shape[0], 60
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: one thread is faster, and the result does not depend on it
    try:
        # networks 0 .. k-1 learn gamma and beta; networks k .. 2k-1, the same seeds, do not
        model = BatchedMLP(list(sizes), seeds=seeds + seeds, activation="sigmoid", batch_norm=True)
        learns = torch.cat([torch.ones(k), torch.zeros(k)]).unsqueeze(1)  # (2k, 1)
        affine = {id(p) for p in [*model.gammas, *model.betas]}
        params = list(model.parameters())
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        losses = torch.empty(steps, 2 * k)
        for step in range(steps):
            idx = torch.stack([torch.randint(0, n, (batch_size,), generator=g) for g in gens])
            idx = torch.cat([idx, idx])  # both networks of a seed see the same batch
            logits = model(x_train[idx])  # (2k, batch, classes)
            per_net = F.cross_entropy(logits.flatten(0, 1), y_train[idx].flatten(), reduction="none")
            per_net = per_net.view(2 * k, batch_size).mean(dim=1)
            grads = torch.autograd.grad(per_net.sum(), params)
            with torch.no_grad():
                for p, grad in zip(params, grads, strict=True):
                    p.sub_(grad * learns if id(p) in affine else grad, alpha=lr)
                losses[step] = per_net
        _, acc = evaluate_batched(model, x_held, y_held)
    finally:
        torch.set_num_threads(before)
    tail = losses[-100:].mean(dim=0).double().numpy()
    return {True: np.stack([acc[:k], tail[:k]], axis=1), False: np.stack([acc[k:], tail[k:]], axis=1)}
