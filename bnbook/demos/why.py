"""Experiments and figures of chapter 12, why batch normalization helps (``chapters/12_why_it_works``).

Four miniatures of later research on batch norm, all on the 8x8 digits:

* "noisy" batch norm after Santurkar et al. (2018): :class:`NoisyShift` injects a random per-unit
  scale and shift after every batch-norm layer, redrawn at every step from distributions whose own
  parameters change from step to step, and :func:`train_run` trains it next to plain batch norm and
  plain networks (default, Kaiming and data-dependent LSUV initialization) while measuring how much the
  input of the last hidden nonlinearity moves; :func:`train_runs` runs the same training, with every
  measurement, for several seeds at once, as one batched model, and :func:`train_seeds` does so with
  the losses and accuracies only, for long budgets;
* the loss landscape along the training trajectory (:func:`probe_along_gradient`, their Section 3.1);
* scale invariance and the effective step size of a weight matrix followed by batch norm, with weight
  decay on every parameter or on the scale-invariant weights alone (:func:`scale_invariant_weights`),
  and Hoffer et al.'s control, no decay with a learning rate matched to the weight norm (``match_norms``);
* the activation variance of a deep residual network at initialization (:func:`residual_variances`),
  with and without batch norm and with the last ``gamma`` of each branch set to zero.

Comparisons over seeds are paired (the same seed gives the same initial weights and batches), and
:func:`bnbook.stats.paired` turns them into a mean difference with its standard error and a 95%
interval; :func:`verdict` reads the interval the way the book does.

The batch-norm layers are the book's own, :class:`bnbook.nn.BatchNorm1d` (in the batched models, its
kernel :func:`bnbook.nn.batch_norm`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from bnbook.models import lsuv_init
from bnbook.nn import BatchNorm1d, batch_norm
from bnbook.plots import MARKERS, PALETTE, band, series
from bnbook.stats import Paired, RankPaired, paired, paired_ranks, verdict

__all__ = [
    "KINDS",
    "LSUV_IMAGES",
    "LABELS",
    "NoisyShift",
    "Paired",
    "paired",
    "paired_ranks",
    "Probe",
    "RankPaired",
    "Run",
    "SeedRuns",
    "build_mlp",
    "train_runs",
    "train_runs_matched",
    "train_seeds",
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

#: The five networks of the noisy-BN comparison.
KINDS = ("no_bn", "no_bn_kaiming", "lsuv", "bn", "noisy_bn")

#: Images that the data-dependent initialization (``"lsuv"``) looks at.
LSUV_IMAGES = 256

#: How the figures name them.
LABELS = {
    "no_bn": "no BN, default init",
    "no_bn_kaiming": "no BN, Kaiming init",
    "lsuv": "no BN, LSUV init",
    "bn": "BN",
    "noisy_bn": "noisy BN",
    "bn_zero_gamma": "BN, last γ = 0",
}

#: The book-wide look of each network (:func:`bnbook.plots.series`), with this chapter's labels.
_SERIES = {
    "no_bn": "no_bn",
    "no_bn_kaiming": "xavier",
    "lsuv": "lsuv",
    "bn": "bn",
    "noisy_bn": "noisy_bn",
}


def _mean_std(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of ``z`` over ``dim`` and its standard deviation (dividing by the count), in two passes.

    On this CPU ``Tensor.std`` over a short dimension is several times slower than these operations.
    """
    mean = z.mean(dim, keepdim=True)
    centred = z - mean
    return mean.squeeze(dim), (centred * centred).mean(dim).sqrt()


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
        self._step_low = torch.tensor([-self.mean_range, 1.0], device=device)
        self._step_width = torch.tensor([2.0 * self.mean_range, self.scale_max - 1.0], device=device)

    def resample(self) -> None:
        """Draw this step's ``c_t``, ``d_t`` and the per-unit shifts and scales."""
        # few, in-place operations: this runs at every step of every noisy network
        g, n = self.generator, self.num_features
        u = torch.rand(2, generator=g, device=self.shift.device)
        # c_t = -M + 2M u_0, d_t = 1 + (S - 1) u_1
        torch.addcmul(self._step_low, u, self._step_width, out=self.step_params)
        c, d_minus_1 = self.step_params[0], self.step_params[1] - 1.0
        torch.randn(n, generator=g, out=self.shift).mul_(self.shift_std).add_(c)
        torch.rand(n, generator=g, out=self.scale).mul_(d_minus_1).add_(1.0)

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
    init_x: torch.Tensor | None = None,
) -> nn.Sequential:
    """A ReLU network ``sizes[0] -> ... -> sizes[-1]`` of one of the :data:`KINDS`.

    Hidden blocks are ``Linear -> [BatchNorm1d -> [NoisyShift]] -> ReLU``. ``"no_bn"`` keeps
    ``torch.nn.Linear``'s default initialization; ``"no_bn_kaiming"`` redraws the hidden weights
    with Kaiming (He) normal initialization and zeroes the biases; ``"lsuv"`` starts from the
    Kaiming network of the same seed and rescales it with :func:`bnbook.models.lsuv_init` on the
    images ``init_x`` (required for this kind), so that every hidden pre-activation has mean 0 and
    standard deviation 1 there, the scale batch norm gives at the start. ``noise`` is ``(M, S, tau)``
    of :class:`NoisyShift`, whose draws come from a generator seeded with ``seed + 1000``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "lsuv":
        if init_x is None:
            raise ValueError("the 'lsuv' network needs init_x, the images it is initialized on")
        model = build_mlp("no_bn_kaiming", sizes, seed, device, noise)
        with torch.no_grad():
            lsuv_init(model, init_x.to(device))
        return model
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
    params: list[torch.Tensor],
    loss_fn: Callable[[], torch.Tensor],
    step_sizes: Sequence[float],
    per_unit: bool = False,
) -> Probe:
    """Move along the negative gradient by each step size and measure loss and gradient there.

    The measurements of Santurkar et al. (2018, Section 3.1): with ``g`` the gradient at the current
    parameters ``w``, for each step size ``eta`` it records the loss ``L(w - eta g)``, the change
    of the gradient ``||grad L(w - eta g) - g||`` ("gradient predictiveness") and, over all step
    sizes, the largest ratio of that change to the distance moved, ``||grad L(w - eta g) - g|| /
    (eta ||g||)`` (the "effective beta-smoothness"). The parameters are put back afterwards.

    With ``per_unit=True`` the step sizes are distances instead: the probe moves to
    ``w - eta g / ||g||``, so that networks with gradients of different sizes are probed at the
    same distances, and ``beta`` is the largest ``||grad L(w - eta g/||g||) - g|| / eta``.

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
    gn = float(gnorm)
    scale = 1.0 / gn if per_unit and gn > 0 else 1.0
    losses, changes = [], []
    for eta in (e * scale for e in step_sizes):
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
    etas = np.asarray(step_sizes, dtype=float) * scale
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
    train_acc: np.ndarray  # accuracy on the whole training set, at eval_steps (eval mode)
    signal0: float  # mean over units of the std of the last hidden ReLU's input, first batch
    si_norms: (
        np.ndarray
    )  # (steps + 1, layers): norm of each scale-invariant weight, start and after each step
    probes_eq: list[Probe]  # the equal-distance probes (probe_distances), at probe_steps


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
    probe_distances: Sequence[float] = (),
    match_norms: np.ndarray | None = None,
    match_shrink: float = 1.0,
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
    ``lr * step_sizes`` as the step sizes, and, if ``probe_distances`` is given, once more at those
    distances (``per_unit=True``); the running statistics are restored afterwards. The ``"lsuv"``
    network is initialized on :data:`LSUV_IMAGES` training images drawn with a generator seeded with
    ``seed + 2000`` (so the mini-batches are those of the other kinds).

    ``match_norms`` (shape ``(steps + 1, layers)``, the ``si_norms`` of another run) gives the
    scale-invariant weights a learning rate of their own at every step, ``lr * (||W|| /
    match_norms[t - 1])**2 / match_shrink``, so that their effective learning rate ``lr_W /
    ||W||^2`` follows that run's, without any weight decay here (the control of Hoffer et al.,
    2018). With ``match_shrink = 1 - lr * weight_decay`` of a run that decayed only those weights,
    this is the same trajectory of directions, hence the same function, up to ``eps`` and rounding.
    """
    if decay_on not in _DECAY_ON:
        raise ValueError(f"decay_on must be one of {_DECAY_ON}, got {decay_on!r}")
    x_tr, y_tr, x_te, y_te = data
    device = x_tr.device
    model = build_mlp(kind, sizes, seed, device, noise, _init_images(kind, seed, x_tr))
    noisy = [m for m in model if isinstance(m, NoisyShift)]
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_on == "all":
        decayed = params
    else:
        decayed = scale_invariant_weights(model)
        if weight_decay and not decayed:
            raise ValueError(f"a {kind!r} network has no scale-invariant weights to decay")
    first = model[0].weight
    si = scale_invariant_weights(model)
    if match_norms is not None:
        match_norms = np.asarray(match_norms, dtype=float)
        if not si or match_norms.shape != (steps + 1, len(si)):
            raise ValueError(
                f"match_norms must have shape ({steps + 1}, {len(si)}) for this network, "
                f"got {match_norms.shape}"
            )
    gen = torch.Generator(device="cpu").manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    relus = [m for m in model if isinstance(m, nn.ReLU)]
    stats: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        if not module.training:  # the test-set evaluations are not training batches
            return
        z = args[0].detach()
        stats.append(torch.stack(_mean_std(z, 0)))

    handle = relus[-1].register_forward_pre_hook(hook)
    losses, accs, eval_steps, probes, probe_steps, norms, eff = [], [], [], [], [], [], []
    train_accs, probes_eq = [], []
    with torch.no_grad():
        si_norms = [torch.stack([torch.linalg.vector_norm(w) for w in si])] if si else []

    def evaluate() -> None:
        model.eval()
        with torch.no_grad():
            accs.append((model(x_te).argmax(1) == y_te).float().mean())
            train_accs.append((model(x_tr).argmax(1) == y_tr).float().mean())
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
            if probe_distances:
                probes_eq.append(
                    probe_along_gradient(
                        params, lambda xb=xb, yb=yb: loss_fn(model(xb), yb), probe_distances, per_unit=True
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
            if match_norms is None:
                for p in params:
                    p.sub_(p.grad, alpha=lr)
            else:
                own = {id(w): i for i, w in enumerate(si)}
                for p in params:
                    if id(p) in own:
                        i = own[id(p)]
                        rate = lr * (float(torch.linalg.vector_norm(p)) / match_norms[step - 1, i]) ** 2
                        p.sub_(p.grad, alpha=rate / match_shrink)
                    else:
                        p.sub_(p.grad, alpha=lr)
            norms.append(torch.linalg.vector_norm(first))
            if si:
                si_norms.append(torch.stack([torch.linalg.vector_norm(w) for w in si]))
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
        train_acc=torch.stack(train_accs).double().cpu().numpy(),
        signal0=float(st[0, 1].mean()),
        si_norms=torch.stack(si_norms).double().cpu().numpy() if si else np.zeros((steps + 1, 0)),
        probes_eq=probes_eq,
    )


def _init_images(kind: str, seed: int, x: torch.Tensor) -> torch.Tensor | None:
    """The training images the ``"lsuv"`` network is initialized on (``None`` for other kinds)."""
    if kind != "lsuv":
        return None
    g = torch.Generator(device="cpu").manual_seed(seed + 2000)
    idx = torch.randperm(x.shape[0], generator=g)[: min(LSUV_IMAGES, x.shape[0])]
    return x[idx.to(x.device)]


class SeedRuns(NamedTuple):
    """What :func:`train_seeds` measured, one row per seed."""

    eval_steps: np.ndarray  # the steps at which the networks were evaluated
    test_acc: np.ndarray  # (seeds, evals)
    train_acc: np.ndarray  # (seeds, evals), on the whole training set, eval mode
    loss: np.ndarray  # (seeds, steps): the training loss of each step

    def blew_up(self, threshold: float = 10.0, before: int | None = None) -> np.ndarray:
        """Per seed, whether the training loss went above ``threshold`` (or was not finite) at some step.

        The loss of a 10-class network starts near ln 10 = 2.3, so the default is more than four times
        the start. ``before`` looks only at the first ``before`` steps.
        """
        loss = self.loss[:, :before]
        return ~(loss <= threshold).all(axis=1)


class _Stack:
    """Networks of :func:`build_mlp`, one per (kind, seed), stacked along a leading dimension.

    Each member is built exactly as :func:`train_run` builds it. The stack holds every layer's
    weights as one tensor, ``(k, fan_in, fan_out)`` for a linear layer, so that a layer is one
    batched matrix product for all members, and batch norm acts on each member's own batch; the
    noise layers draw from each member's own generator, in :func:`train_run`'s order. Batch norm
    is the book's kernel, :func:`bnbook.nn.batch_norm`, on every member's units side by side.
    """

    def __init__(
        self,
        members: Sequence[tuple[str, int]],
        sizes: Sequence[int],
        device: torch.device,
        noise: tuple[float, float, float],
        x_train: torch.Tensor,
    ) -> None:
        seqs, noises = [], []  # per member: its layers without the noise, and the noise after each
        for kd, s in members:
            seq, after = [], {}
            for m in build_mlp(kd, sizes, s, device, noise, _init_images(kd, s, x_train)):
                if isinstance(m, NoisyShift):
                    after[len(seq) - 1] = m
                else:
                    seq.append(m)
            seqs.append(seq)
            noises.append(after)
        shapes = {tuple((type(m), getattr(m, "bias", 0) is None) for m in seq) for seq in seqs}
        if len(shapes) != 1:
            kinds = sorted({kd for kd, _ in members})
            raise ValueError(f"kinds {kinds} do not share one architecture; train them separately")
        self.k = k = len(members)

        def stack(ts: Sequence[torch.Tensor], transpose: bool = False) -> torch.Tensor:
            t = torch.stack([x.detach().T if transpose else x.detach() for x in ts]).clone()
            return t.requires_grad_(True)

        self.plan: list[tuple] = []  # ("linear", W, b) / ("bn", gamma, beta, mean, var, eps, momentum) / ...
        self.params: list[torch.Tensor] = []
        self.buffers: list[torch.Tensor] = []
        self.si: list[torch.Tensor] = []  # linear weights fed straight into batch norm (no bias)
        self.noisy: list[list[NoisyShift | None]] = []  # per noise position, the member's layer or None
        layers = list(zip(*seqs, strict=True))  # one tuple of k modules per position
        for pos, mods in enumerate(layers):
            m0 = mods[0]
            if isinstance(m0, nn.Linear):
                w = stack([m.weight for m in mods], transpose=True)  # (k, in, out)
                b = stack([m.bias[None] for m in mods]) if m0.bias is not None else None
                self.plan.append(("linear", w, b))
                self.params += [w] + ([b] if b is not None else [])
                nxt = layers[pos + 1][0] if pos + 1 < len(layers) else None
                if b is None and isinstance(nxt, nn.BatchNorm1d):
                    self.si.append(w)
            elif isinstance(m0, nn.BatchNorm1d):
                g = stack([m.weight[None] for m in mods])
                bt = stack([m.bias[None] for m in mods])
                rm = torch.stack([m.running_mean for m in mods]).clone()
                rv = torch.stack([m.running_var for m in mods]).clone()
                self.plan.append(("bn", g, bt, rm, rv, m0.eps, m0.momentum))
                self.params += [g, bt]
                self.buffers += [rm, rv]
            elif isinstance(m0, nn.ReLU):
                self.plan.append(("relu",))
            else:  # pragma: no cover - build_mlp makes nothing else
                raise TypeError(type(m0))
            here = [after.get(pos) for after in noises]
            if any(m is not None for m in here):
                width = mods[0].num_features
                at_eval = torch.tensor(
                    [1.0 if m is None else (3.0 + m.scale_max) / 4.0 for m in here], device=device
                )[:, None, None]
                self.plan.append(("noise", len(self.noisy), at_eval))
                self.noisy.append(here)
        self.first = self.plan[0][1]  # the first linear layer's weights (k, in, out)
        self._last_relu = max(i for i, item in enumerate(self.plan) if item[0] == "relu")
        # the per-step draws of every noisy member (one row per noise position and member)
        rows = [(p, i) for p, here in enumerate(self.noisy) for i, m in enumerate(here) if m is not None]
        self._noise_rows = rows
        if rows:
            widths = {self.noisy[p][i].num_features for p, i in rows}
            if len(widths) != 1:  # pragma: no cover - build_mlp gives every hidden layer one width
                raise ValueError("noise layers of different widths")
            (width,) = widths
            # scale and shift of every (noise position, member): 1 and 0 for the members without noise
            self._scale = torch.ones(len(self.noisy), k, 1, width, device=device)
            self._shift = torch.zeros(len(self.noisy), k, 1, width, device=device)
            self._rows = torch.tensor([p * k + i for p, i in rows], device=device)
            self._u = torch.empty(len(rows), 2, device=device)
            self._n = torch.empty(len(rows), width, device=device)
            self._r = torch.empty(len(rows), width, device=device)
            mods = [self.noisy[p][i] for p, i in rows]
            self._low = torch.stack([m._step_low for m in mods])
            self._width = torch.stack([m._step_width for m in mods])
            self._tau = torch.tensor([[m.shift_std] for m in mods], device=device)

    def resample(self) -> None:
        """This step's noise for every noisy member: :meth:`NoisyShift.resample`'s draws and arithmetic."""
        if not self._noise_rows:
            return
        for (p, i), u, n, r in zip(self._noise_rows, self._u, self._n, self._r, strict=True):
            m = self.noisy[p][i]
            # each member's generator, layer after layer, as train_run draws them
            torch.rand(2, generator=m.generator, out=u)
            torch.randn(m.num_features, generator=m.generator, out=n)
            torch.rand(m.num_features, generator=m.generator, out=r)
        step = torch.addcmul(self._low, self._u, self._width)  # c_t, d_t
        width = self._n.shape[1]
        self._shift.view(-1, width)[self._rows] = (self._n * self._tau).add_(step[:, :1])
        self._scale.view(-1, width)[self._rows] = (self._r * (step[:, 1:] - 1.0)).add_(1.0)

    def forward(self, h: torch.Tensor, train: bool, stats: list | None = None) -> torch.Tensor:
        """Logits (k, B, classes) of ``h`` (k, B, D); ``stats`` collects the last ReLU's input moments."""
        for j, item in enumerate(self.plan):
            if item[0] == "linear":
                _, w, b = item
                h = torch.bmm(h, w) if b is None else torch.baddbmm(b, h, w)
            elif item[0] == "bn":  # the book's kernel, every member's units side by side: (B, k * units)
                _, g, bt, rm, rv, eps, mom = item
                k, b, c = h.shape
                flat = h.transpose(0, 1).reshape(b, k * c)
                flat = batch_norm(flat, rm.view(-1), rv.view(-1), g.view(-1), bt.view(-1), train, mom, eps)
                h = flat.view(b, k, c).transpose(0, 1)
            elif item[0] == "noise":
                _, p, at_eval = item
                h = torch.addcmul(self._shift[p], h, self._scale[p]) if train else h * at_eval
            else:
                if stats is not None and j == self._last_relu:
                    z = h.detach()
                    stats.append(torch.stack(_mean_std(z, 1), 1))  # (k, 2, units)
                h = torch.relu(h)
        return h

    def losses(self, xb: torch.Tensor, yb: torch.Tensor, stats: list | None = None) -> torch.Tensor:
        """Each member's mean cross-entropy on its batch ``xb`` (k, B, D), in training mode: shape (k,)."""
        out = self.forward(xb, train=True, stats=stats)
        k, b = yb.shape
        per = nn.functional.cross_entropy(out.reshape(k * b, -1), yb.reshape(-1), reduction="none")
        return per.view(k, b).mean(1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Eval-mode accuracy of every member on ``(x, y)``: shape (k,)."""
        out = self.forward(x.unsqueeze(0).expand(self.k, -1, -1), train=False)
        return (out.argmax(2) == y).float().mean(1)

    def probe(
        self, xb: torch.Tensor, yb: torch.Tensor, step_sizes: Sequence[float], per_unit: bool
    ) -> list[Probe]:
        """:func:`probe_along_gradient` for every member at once, on its own batch; buffers restored."""
        saved_buffers = [b.clone() for b in self.buffers]
        params = self.params
        k = self.k
        for p in params:
            p.grad = None
        start = self.losses(xb, yb)
        start.sum().backward()
        loss0 = start.detach()
        g = [p.grad.detach().clone() for p in params]
        saved = [p.detach().clone() for p in params]
        gnorm = torch.linalg.vector_norm(torch.cat([t.reshape(k, -1) for t in g], 1), dim=1)
        scale = (
            torch.where(gnorm > 0, 1.0 / gnorm, torch.ones_like(gnorm))
            if per_unit
            else torch.ones_like(gnorm)
        )
        losses, changes = [], []
        for eta in step_sizes:
            e = eta * scale
            with torch.no_grad():
                for p, w, gp in zip(params, saved, g, strict=True):
                    p.copy_(w - e.view(-1, *([1] * (p.dim() - 1))) * gp)
            for p in params:
                p.grad = None
            loss = self.losses(xb, yb)
            loss.sum().backward()
            losses.append(loss.detach())
            diff = torch.cat([(p.grad - gp).reshape(k, -1) for p, gp in zip(params, g, strict=True)], 1)
            changes.append(torch.linalg.vector_norm(diff, dim=1))
        with torch.no_grad():
            for p, w in zip(params, saved, strict=True):
                p.copy_(w)
                p.grad = None
            for b, s in zip(self.buffers, saved_buffers, strict=True):
                b.copy_(s)
        loss_arr = torch.stack(losses, 1).double().cpu().numpy()  # (k, etas)
        change_arr = torch.stack(changes, 1).double().cpu().numpy()
        gn = gnorm.double().cpu().numpy()
        sc = scale.double().cpu().numpy()
        etas = np.asarray(step_sizes, dtype=float)
        out = []
        for i in range(k):
            beta = float(np.max(change_arr[i] / (etas * sc[i] * gn[i]))) if gn[i] > 0 else 0.0
            out.append(Probe(float(loss0[i]), loss_arr[i], change_arr[i], beta, float(gn[i])))
        return out


def _train_stacked(
    stack: _Stack,
    seeds: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    steps: int,
    lr: float,
    batch_size: int,
    eval_at: set[int],
    weight_decay: float = 0.0,
    decay_on: str = "all",
    probe_every: int = 0,
    step_sizes: Sequence[float] = (),
    probe_distances: Sequence[float] = (),
    match_norms: np.ndarray | None = None,
    match_shrink: float = 1.0,
    track: bool = False,
) -> dict:
    """Train every member of ``stack`` with :func:`train_run`'s loop; the measurements as arrays.

    Member ``i`` draws its mini-batches from a generator seeded with ``seeds[i]`` (the draws of
    every step at once, which ``torch.randint`` gives identically). The loss is the sum of the
    members' mean losses, so each gets exactly its own gradient.
    """
    x_tr, y_tr, x_te, y_te = data
    k, device = stack.k, x_tr.device
    params = stack.params
    decayed = params if decay_on == "all" else stack.si
    if weight_decay and not decayed:
        raise ValueError("these networks have no scale-invariant weights to decay")
    if match_norms is not None:
        match_norms = np.asarray(match_norms, dtype=float)
        if match_norms.shape != (k, steps + 1, len(stack.si)) or not stack.si:
            raise ValueError(
                f"match_norms must have shape ({k}, {steps + 1}, {len(stack.si)}) for these networks, "
                f"got {match_norms.shape}"
            )
        match_t = torch.tensor(match_norms, dtype=params[0].dtype, device=device)
        own = {id(w): i for i, w in enumerate(stack.si)}
    n = x_tr.shape[0]
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    idx_all = torch.stack([torch.randint(0, n, (steps, batch_size), generator=g) for g in gens], 1).to(device)
    out: dict = {
        "eval_steps": [],
        "test": [],
        "train": [],
        "loss": [],
        "stats": [],
        "probes": [],
        "probes_eq": [],
        "probe_steps": [],
        "norms": [],
        "eff": [],
        "si_norms": [],
    }

    def norms_of(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.linalg.vector_norm(t.reshape(k, -1), dim=1) for t in ts], 1)

    def evaluate(step: int) -> None:
        out["test"].append(stack.accuracy(x_te, y_te))
        out["train"].append(stack.accuracy(x_tr, y_tr))
        out["eval_steps"].append(step)

    if track and stack.si:
        with torch.no_grad():
            out["si_norms"].append(norms_of(stack.si))
    if 0 in eval_at:
        evaluate(0)
    for step in range(1, steps + 1):
        ib = idx_all[step - 1]  # (k, B)
        xb, yb = x_tr[ib], y_tr[ib]
        stack.resample()
        if probe_every and (step - 1) % probe_every == 0:
            lr_steps = [lr * c for c in step_sizes]
            out["probes"].append(stack.probe(xb, yb, lr_steps, per_unit=False))
            if probe_distances:
                out["probes_eq"].append(stack.probe(xb, yb, probe_distances, per_unit=True))
            out["probe_steps"].append(step - 1)
        if track:
            w_before = stack.first.detach().clone()
        loss = stack.losses(xb, yb, stats=out["stats"] if track else None)
        for p in params:
            p.grad = None
        loss.sum().backward()
        with torch.no_grad():
            if weight_decay:
                torch._foreach_mul_(decayed, 1.0 - lr * weight_decay)
            if match_norms is None:
                torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)
            else:
                for p in params:
                    if id(p) in own:
                        i = own[id(p)]
                        now = torch.linalg.vector_norm(p.reshape(k, -1), dim=1)
                        rate = lr * (now / match_t[:, step - 1, i]) ** 2 / match_shrink
                        p.sub_(p.grad * rate.view(-1, 1, 1))
                    else:
                        p.sub_(p.grad, alpha=lr)
            if track:
                out["norms"].append(torch.linalg.vector_norm(stack.first.reshape(k, -1), dim=1))
                if stack.si:
                    out["si_norms"].append(norms_of(stack.si))
                before = torch.linalg.vector_norm(w_before.reshape(k, -1), dim=1)
                out["eff"].append(
                    torch.linalg.vector_norm((stack.first - w_before).reshape(k, -1), dim=1) / before
                )
        out["loss"].append(loss.detach())
        if step in eval_at:
            evaluate(step)
    return out


def _arr(ts: list[torch.Tensor], k: int) -> np.ndarray:
    """A list of per-step (k, ...) tensors as one array, members first: (k, steps, ...)."""
    if not ts:
        return np.zeros((k, 0))
    return torch.stack(ts, 1).double().cpu().numpy()


def _split(
    kind: str | Sequence[str], seeds: Sequence[int], steps: int
) -> tuple[list[str], list[tuple[str, int]]]:
    kinds = [kind] if isinstance(kind, str) else list(kind)
    if not seeds or not kinds or steps < 1:
        raise ValueError(
            f"need at least one kind, one seed and one step, got {kinds}, {list(seeds)}, {steps}"
        )
    bad = [kd for kd in kinds if kd not in KINDS]
    if bad:
        raise ValueError(f"kind must be one of {KINDS}, got {bad}")
    return kinds, [(kd, int(s)) for kd in kinds for s in seeds]


def train_seeds(
    kind: str | Sequence[str],
    seeds: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    sizes: Sequence[int],
    steps: int,
    lr: float,
    batch_size: int = 64,
    eval_at: Sequence[int] = (),
    noise: tuple[float, float, float] = (1.0, 3.0, 0.5),
) -> SeedRuns | dict[str, SeedRuns]:
    """The runs of :func:`train_run` (no weight decay, no probes) for several seeds at once.

    Each seed's network is built by :func:`build_mlp` exactly as :func:`train_run` builds it, and
    it sees the same mini-batches and the same noise; the seeds are then stacked along a leading
    dimension, so that a layer is one batched matrix product (``torch.bmm``) for all of them and
    batch norm acts on each seed's own batch, as in :class:`bnbook.batched.BatchedMLP`. The loss is
    the sum of the seeds' mean losses, so every seed gets exactly its own gradient: up to
    floating-point rounding, seed ``k`` follows :func:`train_run`'s trajectory
    (``tests/test_why.py`` checks this). Use it for long budgets, where one run per seed is slow;
    :func:`train_runs` records everything :func:`train_run` records.

    ``kind`` may also be a sequence of kinds that differ only in initialization or noise (such as
    ``("bn", "noisy_bn")`` or ``("no_bn_kaiming", "lsuv")``): they are stacked together, members
    without noise get a scale of 1 and a shift of 0 (exactly the identity), and the result is a
    dict ``{kind: SeedRuns}``.
    """
    kinds, members = _split(kind, seeds, steps)
    if any(not 0 <= s <= steps for s in eval_at):
        raise ValueError(f"eval_at must lie in [0, {steps}], got {list(eval_at)}")
    x_tr = data[0]
    stack = _Stack(members, sizes, x_tr.device, noise, x_tr)
    res = _train_stacked(stack, [s for _, s in members], data, steps, lr, batch_size, set(eval_at))
    k = stack.k
    runs = SeedRuns(
        np.asarray(res["eval_steps"]), _arr(res["test"], k), _arr(res["train"], k), _arr(res["loss"], k)
    )
    if isinstance(kind, str):
        return runs
    n_seeds = len(seeds)
    return {
        kd: SeedRuns(runs.eval_steps, *(a[i * n_seeds : (i + 1) * n_seeds] for a in runs[1:]))
        for i, kd in enumerate(kinds)
    }


def train_runs(
    kind: str | Sequence[str],
    seeds: Sequence[int],
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
    probe_distances: Sequence[float] = (),
    match_norms: Sequence[np.ndarray] | None = None,
    match_shrink: float = 1.0,
) -> list[Run] | dict[str, list[Run]]:
    """:func:`train_run` for several seeds at once: one :class:`Run` per seed, with everything it records.

    The networks are stacked as in :func:`train_seeds` (every seed its own initial weights,
    mini-batches, noise and gradient), and the probes, the moments of the last hidden ReLU's input,
    the weight norms and the evaluations are those of :func:`train_run`, computed for all seeds
    together; up to floating-point rounding, entry ``i`` is ``train_run(kind, seeds[i], ...)``
    (``tests/test_why.py`` checks this). ``match_norms`` holds one array per seed (the ``si_norms``
    of that seed's run to follow). With a sequence of kinds, as in :func:`train_seeds`, the result is
    ``{kind: [Run per seed]}``.
    """
    if decay_on not in _DECAY_ON:
        raise ValueError(f"decay_on must be one of {_DECAY_ON}, got {decay_on!r}")
    kinds, members = _split(kind, seeds, steps)
    x_tr = data[0]
    stack = _Stack(members, sizes, x_tr.device, noise, x_tr)
    if match_norms is not None:
        match_norms = np.stack([np.asarray(m, dtype=float) for m in match_norms] * len(kinds))
    res = _train_stacked(
        stack,
        [s for _, s in members],
        data,
        steps,
        lr,
        batch_size,
        set(range(0, steps + 1, eval_every)),
        weight_decay,
        decay_on,
        probe_every,
        step_sizes,
        probe_distances,
        match_norms,
        match_shrink,
        track=True,
    )
    k = stack.k
    st = _arr(res["stats"], k)  # (k, steps, 2, units)
    loss, test, train = _arr(res["loss"], k), _arr(res["test"], k), _arr(res["train"], k)
    norms, eff = _arr(res["norms"], k), _arr(res["eff"], k)
    si = _arr(res["si_norms"], k) if stack.si else np.zeros((k, steps + 1, 0))
    runs = [
        Run(
            loss=loss[i],
            eval_steps=np.asarray(res["eval_steps"]),
            test_acc=test[i],
            moves=distribution_moves(st[i, :, 0], st[i, :, 1]),
            probe_steps=np.asarray(res["probe_steps"]),
            probes=[p[i] for p in res["probes"]],
            weight_norm=norms[i],
            eff_step=eff[i],
            train_acc=train[i],
            signal0=float(st[i, 0, 1].mean()),
            si_norms=si[i],
            probes_eq=[p[i] for p in res["probes_eq"]],
        )
        for i in range(k)
    ]
    if isinstance(kind, str):
        return runs
    n_seeds = len(seeds)
    return {kd: runs[i * n_seeds : (i + 1) * n_seeds] for i, kd in enumerate(kinds)}


def train_runs_matched(
    seeds: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    sizes: Sequence[int],
    steps: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
) -> tuple[list[Run], list[Run]]:
    """Decay on the scale-invariant weights, and then the run without decay that follows its norms.

    The first list is ``train_runs("bn", ..., weight_decay, decay_on="scale_invariant")``; the
    second trains the same seeds without weight decay, with the learning rate of every
    scale-invariant weight following that run's norms seed by seed (``match_norms``, with the
    shrink ``1 - lr * weight_decay`` of one decayed step), the control of Hoffer et al. One call
    runs both, so that :func:`bnbook.parallel.run` can put the pair in one worker beside other runs.
    """
    decayed = train_runs(
        "bn", seeds, data, sizes, steps, lr, batch_size, weight_decay=weight_decay, decay_on="scale_invariant"
    )
    matched = train_runs(
        "bn",
        seeds,
        data,
        sizes,
        steps,
        lr,
        batch_size,
        match_norms=[r.si_norms for r in decayed],
        match_shrink=1 - lr * weight_decay,
    )
    return decayed, matched


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
