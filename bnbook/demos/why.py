"""Experiments and figures of chapter 12, why batch normalization helps (``chapters/12_why_it_works``).

Four miniatures of later research on batch norm, all on the 8x8 digits:

* "noisy" batch norm after Santurkar et al. (2018): :class:`NoisyShift` injects a random per-unit
  scale and shift after every batch-norm layer, redrawn at every step from distributions whose own
  parameters change from step to step, and :func:`train_run` trains it next to plain batch norm and
  plain networks while measuring how much the input of the last hidden nonlinearity moves;
* the loss landscape along the training trajectory (:func:`probe_along_gradient`, their Section 3.1);
* scale invariance and the effective step size of a weight matrix followed by batch norm, with weight
  decay on every parameter or on the scale-invariant weights alone (:func:`scale_invariant_weights`);
* the activation variance of a deep residual network at initialization (:func:`residual_variances`),
  with and without batch norm and with the last ``gamma`` of each branch set to zero.

Comparisons over seeds are paired (the same seed gives the same initial weights and batches), and
:func:`bnbook.stats.paired` turns them into a mean difference with its standard error and a 95%
interval; :func:`verdict` reads the interval the way the book does.

The batch-norm layers are the book's own, :class:`bnbook.nn.BatchNorm1d`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bnbook.nn import BatchNorm1d
from bnbook.plots import MARKERS, PALETTE, band, series
from bnbook.stats import Paired, paired, verdict

__all__ = [
    "KINDS",
    "LABELS",
    "NoisyShift",
    "Paired",
    "paired",
    "Probe",
    "Run",
    "build_mlp",
    "distribution_moves",
    "plot_landscape",
    "plot_noisy_training",
    "plot_residual",
    "plot_weight_norms",
    "probe_along_gradient",
    "residual_net",
    "residual_variances",
    "scale_invariant_weights",
    "train_run",
    "verdict",
]

#: The four networks of the noisy-BN comparison.
KINDS = ("no_bn", "no_bn_kaiming", "bn", "noisy_bn")

#: How the figures name them.
LABELS = {
    "no_bn": "no BN, default init",
    "no_bn_kaiming": "no BN, Kaiming init",
    "bn": "BN",
    "noisy_bn": "noisy BN",
    "bn_zero_gamma": "BN, last γ = 0",
}

#: The book-wide look of each network (:func:`bnbook.plots.series`), with this chapter's labels.
_SERIES = {
    "no_bn": "no_bn",
    "no_bn_kaiming": "xavier",
    "bn": "bn",
    "noisy_bn": "noisy_bn",
}


def _look(kind: str) -> dict[str, str]:
    """Colour, marker, line style and label of a network kind, for :func:`bnbook.plots.band`."""
    if kind == "bn_zero_gamma":  # a variant of BN: BN's colour, its own marker and line style
        return series("bn", marker="v", linestyle="--", label=LABELS[kind])
    return series(_SERIES[kind], label=LABELS[kind])


class NoisyShift(nn.Module):
    """A random per-unit scale and shift whose distribution changes at every step ("noisy BN").

    At step ``t`` (one call of :meth:`resample`) the layer first draws the parameters of this
    step's distributions, one pair per layer,

    .. math::

        c_t \\sim U(-M, M), \\qquad d_t \\sim U(1, S),

    and then, for every unit ``j``, a shift and a scale

    .. math::

        m_{t,j} \\sim \\mathcal{N}(c_t, \\tau^2), \\qquad s_{t,j} \\sim U(1, d_t).

    In training mode the output is ``s_t * x + m_t`` (per unit, the same for every example of the
    batch), so the unit's distribution gets a non-zero mean and a non-unit spread that change from
    step to step. In eval mode the layer applies the expected values, ``E[s] = (3 + S) / 4`` and
    ``E[m] = 0``, so that test-time inputs have the scale that training saw on average.

    Parameters
    ----------
    num_features : int
        Number of units ``C``; inputs have shape ``(N, C)``.
    mean_range : float
        ``M``, the range of the per-step mean of the shifts.
    scale_max : float
        ``S >= 1``, the upper end of the range of the per-step largest scale.
    shift_std : float
        ``tau``, the spread of the shifts around this step's mean.
    generator : torch.Generator
        Where the draws come from (on the device of the inputs).
    """

    def __init__(
        self,
        num_features: int,
        mean_range: float,
        scale_max: float,
        shift_std: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        if num_features < 1 or mean_range < 0 or scale_max < 1 or shift_std < 0:
            raise ValueError(
                f"need num_features >= 1, mean_range >= 0, scale_max >= 1 and shift_std >= 0, got "
                f"{num_features}, {mean_range}, {scale_max}, {shift_std}"
            )
        self.num_features = num_features
        self.mean_range, self.scale_max, self.shift_std = (
            float(mean_range),
            float(scale_max),
            float(shift_std),
        )
        self.generator = generator
        device = generator.device
        self.register_buffer("shift", torch.zeros(num_features, device=device))
        self.register_buffer("scale", torch.ones(num_features, device=device))
        self.register_buffer("step_params", torch.tensor([0.0, 1.0], device=device))  # c_t, d_t

    def resample(self) -> None:
        """Draw this step's ``c_t``, ``d_t`` and the per-unit shifts and scales."""
        g, dev = self.generator, self.shift.device
        u = torch.rand(2, generator=g, device=dev)
        c = (2.0 * u[0] - 1.0) * self.mean_range
        d = 1.0 + (self.scale_max - 1.0) * u[1]
        self.step_params.copy_(torch.stack([c, d]))
        self.shift.copy_(c + self.shift_std * torch.randn(self.num_features, generator=g, device=dev))
        self.scale.copy_(1.0 + (d - 1.0) * torch.rand(self.num_features, generator=g, device=dev))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return x * self.scale + self.shift
        return x * ((3.0 + self.scale_max) / 4.0)

    def extra_repr(self) -> str:
        return f"{self.num_features}, M={self.mean_range}, S={self.scale_max}, tau={self.shift_std}"


def build_mlp(
    kind: str,
    sizes: Sequence[int],
    seed: int,
    device: torch.device,
    noise: tuple[float, float, float] = (1.0, 3.0, 0.5),
) -> nn.Sequential:
    """A ReLU network ``sizes[0] -> ... -> sizes[-1]`` of one of the :data:`KINDS`.

    Hidden blocks are ``Linear -> [BatchNorm1d -> [NoisyShift]] -> ReLU``. ``"no_bn"`` keeps
    ``torch.nn.Linear``'s default initialization; ``"no_bn_kaiming"`` redraws the hidden weights
    with Kaiming (He) normal initialization and zeroes the biases. ``noise`` is ``(M, S, tau)`` of
    :class:`NoisyShift`, whose draws come from a generator seeded with ``seed + 1000``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    torch.manual_seed(seed)
    gen = torch.Generator(device=device).manual_seed(seed + 1000)
    bn = kind in ("bn", "noisy_bn")
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        lin = nn.Linear(fan_in, fan_out, bias=not bn)
        if kind == "no_bn_kaiming":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            nn.init.zeros_(lin.bias)
        layers.append(lin)
        if bn:
            layers.append(BatchNorm1d(fan_out))
        if kind == "noisy_bn":
            layers.append(NoisyShift(fan_out, *noise, generator=gen))
        layers.append(nn.ReLU())
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers).to(device)


class Probe(NamedTuple):
    """What :func:`probe_along_gradient` measured at one point of training, for each step size."""

    loss0: float  # L(w), where the probe starts
    loss: np.ndarray  # L(w - eta g) for each eta
    grad_change: np.ndarray  # || grad L(w - eta g) - g ||
    beta: float  # max over eta of grad_change / (eta ||g||)
    grad_norm: float  # ||g||


def _flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def probe_along_gradient(
    params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], step_sizes: Sequence[float]
) -> Probe:
    """Move along the negative gradient by each step size and measure loss and gradient there.

    The measurements of Santurkar et al. (2018, Section 3.1): with ``g`` the gradient at the current
    parameters ``w``, for each step size ``eta`` it records the loss ``L(w - eta g)``, the change
    of the gradient ``||grad L(w - eta g) - g||`` ("gradient predictiveness") and, over all step
    sizes, the largest ratio of that change to the distance moved, ``||grad L(w - eta g) - g|| /
    (eta ||g||)`` (the "effective beta-smoothness"). The parameters are put back afterwards.

    ``loss_fn()`` must compute the loss from the current values of ``params`` (same data every
    call); buffers it changes (such as running statistics) are the caller's business.
    """
    if len(step_sizes) == 0 or any(eta <= 0 for eta in step_sizes):
        raise ValueError(f"step_sizes must be positive numbers, got {list(step_sizes)}")
    for p in params:
        p.grad = None
    start = loss_fn()
    start.backward()
    loss0 = float(start.detach())
    g = _flat_grad(params).detach().clone()
    saved = [p.detach().clone() for p in params]
    gnorm = torch.linalg.vector_norm(g)
    losses, changes = [], []
    for eta in step_sizes:
        with torch.no_grad():
            offset = 0
            for p, w in zip(params, saved, strict=True):
                n = p.numel()
                p.copy_(w - eta * g[offset : offset + n].view_as(p))
                offset += n
        for p in params:
            p.grad = None
        loss = loss_fn()
        loss.backward()
        losses.append(loss.detach())
        changes.append(torch.linalg.vector_norm(_flat_grad(params) - g))
    with torch.no_grad():
        for p, w in zip(params, saved, strict=True):
            p.copy_(w)
            p.grad = None
    loss_arr = torch.stack(losses).double().cpu().numpy()
    change_arr = torch.stack(changes).double().cpu().numpy()
    etas = np.asarray(step_sizes, dtype=float)
    gn = float(gnorm)
    beta = float(np.max(change_arr / (etas * gn))) if gn > 0 else 0.0
    return Probe(loss0, loss_arr, change_arr, beta, gn)


def distribution_moves(means: np.ndarray, stds: np.ndarray) -> tuple[float, float]:
    """How far a layer's input distribution moves from one step to the next, on average.

    ``means`` and ``stds`` have shape ``(steps, units)``: each unit's mean and standard deviation
    over the batch at each step. Returns the mean over steps and units of
    ``|mean_t - mean_{t-1}| / std_{t-1}`` (the mean's move, in standard deviations) and of
    ``|log(std_t / std_{t-1})|`` (the spread's relative move).
    """
    means, stds = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    if means.shape != stds.shape or means.ndim != 2 or means.shape[0] < 2:
        raise ValueError(f"need two (steps >= 2, units) arrays of one shape, got {means.shape}, {stds.shape}")
    if np.any(stds <= 0):
        raise ValueError("standard deviations must be positive")
    mean_move = np.abs(np.diff(means, axis=0)) / stds[:-1]
    std_move = np.abs(np.diff(np.log(stds), axis=0))
    return float(mean_move.mean()), float(std_move.mean())


_DECAY_ON = ("all", "scale_invariant")


def scale_invariant_weights(model: nn.Sequential) -> list[torch.Tensor]:
    """The weights of the Linear layers that feed a batch-norm layer directly (no bias).

    Scaling such a weight matrix by any ``a > 0`` leaves the network's output unchanged (up to
    ``eps``), so weight decay on them changes only their norm, hence the effective learning rate.
    """
    modules = list(model)
    return [
        m.weight
        for m, nxt in zip(modules[:-1], modules[1:], strict=True)
        if isinstance(m, nn.Linear) and m.bias is None and isinstance(nxt, nn.BatchNorm1d)
    ]


class Run(NamedTuple):
    """One training run of :func:`train_run`."""

    loss: np.ndarray  # training loss at each step
    eval_steps: np.ndarray  # steps at which the test accuracy was measured
    test_acc: np.ndarray
    moves: tuple[float, float]  # distribution_moves of the last hidden nonlinearity's input
    probe_steps: np.ndarray
    probes: list[Probe]
    weight_norm: np.ndarray  # ||W_1|| after each step (first hidden Linear)
    eff_step: np.ndarray  # ||W_1(t) - W_1(t-1)|| / ||W_1(t-1)|| at each step


def train_run(
    kind: str,
    seed: int,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    sizes: Sequence[int],
    steps: int,
    lr: float,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    decay_on: str = "all",
    eval_every: int = 25,
    probe_every: int = 0,
    step_sizes: Sequence[float] = (),
    noise: tuple[float, float, float] = (1.0, 3.0, 0.5),
) -> Run:
    """Train one network of :func:`build_mlp` with plain SGD (and optional weight decay) on cross-entropy.

    Weight decay shrinks parameters by ``1 - lr * weight_decay`` before each step: every parameter
    (``decay_on="all"``) or only the scale-invariant weights of :func:`scale_invariant_weights`
    (``decay_on="scale_invariant"``), which leaves ``gamma``, ``beta`` and the output layer alone.
    ``data`` is ``(x_train, y_train, x_test, y_test)`` on the device. Mini-batches are drawn with a
    generator seeded with ``seed``. A forward pre-hook on the last hidden ReLU records the mean and
    standard deviation of each of its input units over every training batch (for
    :func:`distribution_moves`). Every ``probe_every`` steps (0: never) the landscape is probed
    along the gradient with :func:`probe_along_gradient` on the current batch, with
    ``lr * step_sizes`` as the step sizes; the running statistics are restored afterwards.
    """
    if decay_on not in _DECAY_ON:
        raise ValueError(f"decay_on must be one of {_DECAY_ON}, got {decay_on!r}")
    x_tr, y_tr, x_te, y_te = data
    device = x_tr.device
    model = build_mlp(kind, sizes, seed, device, noise)
    noisy = [m for m in model if isinstance(m, NoisyShift)]
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_on == "all":
        decayed = params
    else:
        decayed = scale_invariant_weights(model)
        if weight_decay and not decayed:
            raise ValueError(f"a {kind!r} network has no scale-invariant weights to decay")
    first = model[0].weight
    gen = torch.Generator(device="cpu").manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    relus = [m for m in model if isinstance(m, nn.ReLU)]
    stats: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if not module.training:  # the test-set evaluations are not training batches
            return
        z = args[0].detach()
        stats.append(torch.stack([z.mean(0), z.std(0, correction=0)]))

    handle = relus[-1].register_forward_pre_hook(hook)
    losses, accs, eval_steps, probes, probe_steps, norms, eff = [], [], [], [], [], [], []

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            accs.append((model(x_te).argmax(1) == y_te).float().mean())
        model.train()

    model.train()
    evaluate()
    eval_steps.append(0)
    n = x_tr.shape[0]
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch_size,), generator=gen).to(device)
        xb, yb = x_tr[idx], y_tr[idx]
        for m in noisy:
            m.resample()
        if probe_every and (step - 1) % probe_every == 0:
            handle.remove()
            buffers = [b.detach().clone() for b in model.buffers()]
            probes.append(
                probe_along_gradient(
                    params, lambda xb=xb, yb=yb: loss_fn(model(xb), yb), [lr * c for c in step_sizes]
                )
            )
            with torch.no_grad():
                for b, saved in zip(model.buffers(), buffers, strict=True):
                    b.copy_(saved)
            probe_steps.append(step - 1)
            handle = relus[-1].register_forward_pre_hook(hook)
        w_before = first.detach().clone()
        loss = loss_fn(model(xb), yb)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            if weight_decay:
                for p in decayed:
                    p.mul_(1.0 - lr * weight_decay)
            for p in params:
                p.sub_(p.grad, alpha=lr)
            norms.append(torch.linalg.vector_norm(first))
            eff.append(torch.linalg.vector_norm(first - w_before) / torch.linalg.vector_norm(w_before))
        losses.append(loss.detach())
        if step % eval_every == 0:
            evaluate()
            eval_steps.append(step)
    handle.remove()
    st = torch.stack(stats).double().cpu().numpy()  # (steps, 2, units)
    return Run(
        loss=torch.stack(losses).double().cpu().numpy(),
        eval_steps=np.asarray(eval_steps),
        test_acc=torch.stack(accs).double().cpu().numpy(),
        moves=distribution_moves(st[:, 0], st[:, 1]),
        probe_steps=np.asarray(probe_steps),
        probes=probes,
        weight_norm=torch.stack(norms).double().cpu().numpy(),
        eff_step=torch.stack(eff).double().cpu().numpy(),
    )


# ---------------------------------------------------------------------------------------------------------
# Residual networks at initialization


class _Block(nn.Module):
    """``x + F(x)`` with ``F = Linear -> [BN] -> ReLU -> Linear -> [BN]``."""

    def __init__(self, width: int, variant: str) -> None:
        super().__init__()
        bn = variant in ("bn", "bn_zero_gamma")
        self.branch = nn.Sequential(
            nn.Linear(width, width, bias=not bn),
            BatchNorm1d(width) if bn else nn.Identity(),
            nn.ReLU(),
            nn.Linear(width, width, bias=not bn),
            BatchNorm1d(width) if bn else nn.Identity(),
        )
        if variant == "no_bn":
            nn.init.kaiming_normal_(self.branch[0].weight, nonlinearity="relu")
            nn.init.kaiming_normal_(self.branch[3].weight, nonlinearity="linear")
            nn.init.zeros_(self.branch[0].bias)
            nn.init.zeros_(self.branch[3].bias)
        if variant == "bn_zero_gamma":
            nn.init.zeros_(self.branch[4].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


_RES_VARIANTS = ("no_bn", "no_bn_default", "bn", "bn_zero_gamma")


def residual_net(width: int, depth: int, variant: str, seed: int) -> nn.Sequential:
    """``depth`` residual blocks of width ``width`` (no stem, no head), on the CPU.

    ``variant``: ``"no_bn"`` (Kaiming-normal weights: gain sqrt(2) before the ReLU and 1 after, so
    that each branch's output has about the variance of its input), ``"no_bn_default"``
    (``torch.nn.Linear``'s default, smaller weights), ``"bn"`` (a batch-norm layer after each
    Linear) and ``"bn_zero_gamma"`` (as ``"bn"``, with the last ``gamma`` of each branch set to
    zero, Goyal et al. 2017).
    """
    if variant not in _RES_VARIANTS:
        raise ValueError(f"variant must be one of {_RES_VARIANTS}, got {variant!r}")
    if width < 1 or depth < 1:
        raise ValueError(f"width and depth must be positive, got {width}, {depth}")
    torch.manual_seed(seed)
    return nn.Sequential(*[_Block(width, variant) for _ in range(depth)])


@torch.no_grad()
def residual_variances(x: torch.Tensor, depth: int, variant: str, seed: int) -> np.ndarray:
    """Mean per-unit variance of the signal entering the first block and after each block.

    The network of :func:`residual_net` (width ``x.shape[1]``) runs in training mode on the batch
    ``x``, so batch norm uses the statistics of ``x`` itself. Returns ``depth + 1`` numbers.
    """
    net = residual_net(x.shape[1], depth, variant, seed).to(x.device).train()
    out = [x.var(0, correction=0).mean()]
    h = x
    for block in net:
        h = block(h)
        out.append(h.var(0, correction=0).mean())
    return torch.stack(out).double().cpu().numpy()


# ---------------------------------------------------------------------------------------------------------
# Figures


def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    """Trailing means over windows of ``k`` steps, one per window (no overlap)."""
    n = (y.shape[-1] // k) * k
    return y[..., :n].reshape(*y.shape[:-1], -1, k).mean(-1)


def plot_noisy_training(axes, runs: dict[str, list[Run]], window: int = 20) -> None:
    """Training loss (means over ``window`` steps) and test accuracy against the step, per kind."""
    for kind, rs in runs.items():
        loss = _smooth(np.stack([r.loss for r in rs]), window)
        x = (np.arange(loss.shape[1]) + 1) * window
        band(axes[0], x, loss, **_look(kind))
        acc = np.stack([r.test_acc for r in rs])
        band(axes[1], rs[0].eval_steps, acc, **_look(kind))
    axes[0].set(xlabel="training step", ylabel=f"training loss (mean of {window} steps)", yscale="log")
    axes[1].set(xlabel="training step", ylabel="test accuracy", ylim=(0, 1))
    axes[1].legend(loc="lower right", fontsize=9.5)


def plot_landscape(axes, runs: dict[str, list[Run]], legend_ax=None) -> None:
    """Santurkar et al.'s Figure 4 in miniature: loss range, gradient change and effective beta.

    Panels (a) and (b) shade, at each probed step, the range over the step sizes (each end
    averaged over seeds); panel (c) is the mean over seeds with a min-max band. The legend goes
    into ``legend_ax`` (whose axes are switched off) if given, else below the figure.
    """
    for kind, rs in runs.items():
        steps = rs[0].probe_steps
        loss = np.stack([[p.loss for p in r.probes] for r in rs])  # (seeds, probes, etas)
        change = np.stack([[p.grad_change for p in r.probes] for r in rs])
        beta = np.stack([[p.beta for p in r.probes] for r in rs])
        look = _look(kind)
        c, mk, ls = look["color"], look["marker"], look["linestyle"]
        for ax, vals in ((axes[0], loss), (axes[1], change)):
            lo, hi = vals.min(-1).mean(0), vals.max(-1).mean(0)
            ax.fill_between(steps, lo, hi, color=c, alpha=0.35, linewidth=0, label=look["label"])
            ax.plot(steps, lo, color=c, lw=0.8, marker=mk, ms=3, linestyle=ls)
            ax.plot(steps, hi, color=c, lw=0.8, marker=mk, ms=3, linestyle=ls)
        band(axes[2], steps, beta, **look)
    axes[0].set(
        xlabel="training step", ylabel="loss along the gradient", yscale="log", title="(a) loss range"
    )
    axes[1].set(
        xlabel="training step",
        ylabel="‖gradient change‖ (l2)",
        yscale="log",
        title="(b) gradient predictiveness",
    )
    axes[2].set(
        xlabel="training step",
        ylabel="effective β-smoothness",
        yscale="log",
        title="(c) effective β-smoothness",
    )
    handles, labels = axes[0].get_legend_handles_labels()
    if legend_ax is not None:
        legend_ax.axis("off")
        legend_ax.legend(
            handles, labels, loc="center", title="(a), (b): range over step sizes\n(c): band over seeds"
        )
    else:
        axes[0].figure.legend(handles, labels, loc="outside lower center", ncol=len(labels))


def plot_weight_norms(
    axes, runs: dict[str, list[Run]], labels: dict[str, str], looks: dict[str, dict] | None = None
) -> None:
    """``||W_1||`` and the effective step ``||dW_1|| / ||W_1||`` against the step, per setting.

    ``looks`` maps a setting to keyword arguments for the lines (``color``, ``marker``,
    ``linestyle``); by default the settings take :data:`bnbook.plots.PALETTE` in order.
    """
    for i, (name, rs) in enumerate(runs.items()):
        look = {"color": PALETTE[i % len(PALETTE)], "marker": MARKERS[i % len(MARKERS)]}
        look.update((looks or {}).get(name, {}))
        norms = np.stack([r.weight_norm for r in rs])
        x = np.arange(1, norms.shape[1] + 1)
        band(axes[0], x, norms, label=labels[name], **look)
        eff = _smooth(np.stack([r.eff_step for r in rs]), 20)
        band(axes[1], (np.arange(eff.shape[1]) + 1) * 20, eff, label=labels[name], **look)
    axes[0].set(xlabel="training step", ylabel="‖W₁‖ (Frobenius)")
    axes[1].set(xlabel="training step", ylabel="‖ΔW₁‖ / ‖W₁‖ (mean of 20 steps)", yscale="log")
    axes[0].legend(fontsize=9)


def plot_residual(ax, variances: dict[str, np.ndarray]) -> None:
    """Per-block variance (seeds x (depth + 1)) of each variant, log scale, with ``v_0 + k`` to compare."""
    # the residual variants in the look of the matching networks of the noisy-BN comparison
    looks = {
        "no_bn": _look("no_bn_kaiming"),
        "no_bn_default": _look("no_bn"),
        "bn": _look("bn"),
        "bn_zero_gamma": _look("bn_zero_gamma"),
    }
    for variant, runs in variances.items():
        k = np.arange(runs.shape[1])
        band(ax, k, runs, **looks[variant])
    k = np.arange(next(iter(variances.values())).shape[1])
    v0 = float(np.mean([v[:, 0].mean() for v in variances.values()]))
    ax.plot(k, v0 + k, color="0.15", ls="--", lw=1.2, zorder=5, label="$v_0 + k$")
    ax.set(xlabel="block k (0 = input)", ylabel="mean per-unit variance", yscale="log", xticks=k[::5])
    ax.legend(fontsize=9.5, ncol=2)
