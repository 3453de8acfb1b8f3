"""Experiments and figures for chapter 6, where batch normalization goes.

The chapter compares two placements of batch norm in the same small network on
the digits: *before* the nonlinearity (``Linear -> BN -> tanh``, the original
proposal) and *after* it (``Linear -> tanh -> BN``). It trains both over several
seeds and learning rates, measures what each placement feeds the nonlinearity,
and checks what happens to a bias placed right before a batch-norm layer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from bnbook import nn as bnn
from bnbook.models import lsuv_init
from bnbook.plots import COLORS, band, histogram, series

__all__ = [
    "PLACEMENTS",
    "SATURATION_Z",
    "PlacementRun",
    "PlacementStack",
    "activation_inputs",
    "BiasPair",
    "bias_gradient",
    "excess_kurtosis",
    "run_name",
    "train_bias_pair",
    "train_bias_pairs",
    "count_parameters",
    "placement_mlp",
    "plot_curves",
    "plot_histograms",
    "saturated_fraction",
    "summarize",
    "train_placements",
]

#: The placements compared in the chapter ("none" is the control without batch norm).
PLACEMENTS = ("before", "after", "none")

#: A tanh unit counts as saturated when its slope ``1 - tanh(z)**2`` is below 0.1,
#: that is when ``|z| > atanh(sqrt(0.9))``, about 1.818.
SATURATION_Z = math.atanh(math.sqrt(0.9))

#: The nonlinearities a placement network can use.
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}

#: The book-wide look of each run (see :func:`run_name`): colour, marker, line style and label.
STYLE = {
    "before": series("bn", label="BN before tanh"),
    "after": series("bn_after", label="BN after tanh"),
    "none": series("no_bn", label="no BN"),
    "none+lsuv": series("lsuv", label="no BN, data-dependent init"),
}

#: Order of the runs in tables.
RUN_NAMES = tuple(STYLE)


def placement_mlp(
    sizes: Sequence[int],
    placement: str = "before",
    bias: bool | None = None,
    norm_layer: type[nn.Module] = bnn.BatchNorm1d,
    activation: str = "tanh",
) -> nn.Sequential:
    """A tanh (or ReLU) network ``sizes[0] -> ... -> sizes[-1]`` with batch norm placed as asked.

    Each hidden block is

    - ``"before"``: ``Linear -> BN -> Tanh`` (Ioffe and Szegedy's placement);
    - ``"after"``: ``Linear -> Tanh -> BN``;
    - ``"none"``: ``Linear -> Tanh``.

    The last layer is a plain ``Linear`` with a bias (the logits).

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first; at least two entries.
    placement : {"before", "after", "none"}
    bias : bool or None
        Whether the hidden ``Linear`` layers have a bias. ``None`` picks the usual
        choice: no bias when batch norm follows the ``Linear`` directly
        (``"before"``), a bias otherwise.
    norm_layer : module class
        ``bnbook.nn.BatchNorm1d`` by default; ``torch.nn.BatchNorm1d`` works too.
    activation : {"tanh", "relu"}
        The nonlinearity of every hidden block.

    Returns
    -------
    torch.nn.Sequential
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if len(sizes) < 2 or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"sizes must list at least two positive widths, got {list(sizes)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
    if bias is None:
        bias = placement != "before"
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers.append(nn.Linear(fan_in, fan_out, bias=bias))
        if placement == "before":
            layers += [norm_layer(fan_out), act()]
        elif placement == "after":
            layers += [act(), norm_layer(fan_out)]
        else:
            layers.append(act())
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (buffers such as running statistics are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@torch.no_grad()
def activation_inputs(model: nn.Module, x: torch.Tensor, batch_stats: bool = True) -> list[np.ndarray]:
    """The inputs of every ``Tanh`` (or ``ReLU``) in ``model`` on ``x``, one float64 array per layer.

    With ``batch_stats=True`` the batch-norm layers normalize with the statistics
    of ``x`` itself, as in training mode (``x`` is one big batch); a copy of the
    model runs, so its running statistics are not touched. With ``False`` the
    model runs in eval mode, with its running statistics. The model's mode is
    left as it was. Arrays have shape ``(n, width)`` and live on the CPU.
    """
    net = copy.deepcopy(model) if batch_stats else model
    captured: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, inp, _out: captured.append(inp[0].detach()))
        for m in net.modules()
        if isinstance(m, (nn.Tanh, nn.ReLU))
    ]
    was_training = net.training
    net.train(batch_stats)
    try:
        net(x)
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training)
    return [z.to("cpu", torch.float64).numpy() for z in captured]


def saturated_fraction(z: np.ndarray | Sequence[np.ndarray], threshold: float = SATURATION_Z) -> float:
    """Share of the values in ``z`` (an array or a list of arrays) with ``|z| > threshold``.

    With the default threshold these are the tanh inputs where the slope
    ``1 - tanh(z)**2`` is below 0.1.
    """
    if threshold <= 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    flat = np.concatenate([np.ravel(a) for a in z]) if isinstance(z, (list, tuple)) else np.ravel(z)
    if flat.size == 0:
        raise ValueError("z holds no values")
    return float(np.mean(np.abs(flat) > threshold))


def bias_gradient(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor, train_mode: bool) -> float:
    """Largest ``|gradient|`` of the first ``Linear`` layer's bias on the batch ``(x, y)``.

    The cross-entropy loss is evaluated with the whole model in training mode
    (batch statistics) or in eval mode (running statistics); gradients are
    cleared before and after, and the mode is restored.
    """
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    if first.bias is None:
        raise ValueError("the first Linear layer of the model has no bias")
    was_training = model.training
    model.train(train_mode)
    model.zero_grad(set_to_none=True)
    try:
        nn.functional.cross_entropy(model(x), y).backward()
        grad = first.bias.grad.abs().max().item()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return grad


def excess_kurtosis(z: np.ndarray) -> np.ndarray:
    r"""Excess kurtosis of every column (unit) of ``z``, shape ``(n, width) -> (width,)``.

    .. math::

        \kappa_j = \frac{m_{4,j}}{m_{2,j}^2} - 3, \qquad m_{p,j} = \tfrac1n \sum_i (z_{ij} - \bar z_j)^p

    It is 0 for a normal distribution, -1.2 for a uniform one and positive for
    heavy tails. Batch norm fixes a unit's mean and variance; this number is
    about the shape, which batch norm does not fix.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"z must have shape (n >= 2, width), got {z.shape}")
    c = z - z.mean(axis=0)
    m2 = (c**2).mean(axis=0)
    if np.any(m2 == 0):
        raise ValueError("a column of z is constant; its kurtosis is undefined")
    return (c**4).mean(axis=0) / m2**2 - 3.0


def run_name(placement: str, init: str = "default") -> str:
    """The name of a run in tables and figures: the placement, plus ``+lsuv`` for the data-dependent init."""
    return placement if init == "default" else f"{placement}+{init}"


class PlacementRun(NamedTuple):
    """One training run: the curves, the final numbers and the tanh inputs at both ends."""

    placement: str
    lr: float
    seed: int
    steps: np.ndarray  # steps at which the curves were recorded
    train_loss: np.ndarray  # full training set, eval mode
    test_acc: np.ndarray  # test set, eval mode
    z_init: list[np.ndarray]  # tanh inputs on the test set before training
    z_final: list[np.ndarray]  # and after
    init: str = "default"  # "default" (PyTorch's) or "lsuv" (bnbook.models.lsuv_init)
    model: nn.Module | None = None  # the trained network, in eval mode
    activation: str = "tanh"
    weight_norms: tuple = ()  # (at init, trained): norms of the hidden weight matrices

    @property
    def name(self) -> str:
        return run_name(self.placement, self.init)


class PlacementStack(nn.Module):
    """``K`` networks from :func:`placement_mlp`, all with one placement, run as one computation.

    Member ``k`` is ``nets[k]``: its ``Linear`` weights are stacked into tensors of
    shape ``(K, fan_in, fan_out)``, and the batch-norm layers of all members
    become one layer with ``K * C`` channels. That layer normalizes every
    channel over the batch dimension only, so channel block ``k`` sees member
    ``k``'s examples alone: each member computes exactly what its own network
    computes, and the stack is only faster (one call per layer for all members).
    :meth:`unstack` gives the members back as ordinary networks.

    Inputs have shape ``(K, B, D)`` (member ``k`` reads ``x[k]``) or ``(B, D)``
    (every member reads the same batch); outputs ``(K, B, classes)``.
    """

    def __init__(self, nets: Sequence[nn.Sequential], norm_layer: type[nn.Module] = bnn.BatchNorm1d):
        super().__init__()
        if not nets:
            raise ValueError("need at least one network")
        kinds = {tuple(type(m).__name__ for m in net) for net in nets}
        if len(kinds) != 1:
            raise ValueError("all networks must have the same layers")
        first = nets[0]
        self.k = len(nets)
        self.norm_layer = norm_layer
        lin_at = [i for i, m in enumerate(first) if isinstance(m, nn.Linear)]
        acts = [m for m in first if isinstance(m, (nn.Tanh, nn.ReLU))]
        self.activation = "relu" if acts and isinstance(acts[0], nn.ReLU) else "tanh"
        self._act = torch.relu if self.activation == "relu" else torch.tanh
        after_first = first[lin_at[0] + 1]
        if isinstance(after_first, (nn.Tanh, nn.ReLU)):
            self.placement = "none" if len(first) == 2 * len(lin_at) - 1 else "after"
        else:
            self.placement = "before"
        self.sizes = [first[lin_at[0]].in_features] + [first[i].out_features for i in lin_at]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([net[i].weight.detach().T for net in nets]).clone()) for i in lin_at
        )
        self.biases = nn.ParameterDict(
            {
                str(j): nn.Parameter(torch.stack([net[i].bias.detach() for net in nets]).clone())
                for j, i in enumerate(lin_at)
                if first[i].bias is not None
            }
        )
        self.norms = nn.ModuleList()
        if self.placement != "none":
            ref = first[lin_at[0]].weight
            for j, i in enumerate(lin_at[:-1]):
                pos = i + 1 if self.placement == "before" else i + 2
                width = self.sizes[j + 1]
                norm = norm_layer(self.k * width).to(device=ref.device, dtype=ref.dtype)
                with torch.no_grad():
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(norm, name).copy_(torch.cat([getattr(net[pos], name) for net in nets]))
                self.norms.append(norm)

    def _norm(self, j: int, z: torch.Tensor) -> torch.Tensor:
        k, b, c = z.shape
        norm = self.norms[j]
        eval_map = not (norm.training or torch.is_grad_enabled()) and norm.running_var is not None
        if eval_map and norm.affine and type(norm) is bnn.BatchNorm1d:
            # In eval mode batch norm is the per-channel map z * scale + shift: done in the stack's own
            # (K, B, C) layout it needs no transposed copies, with the same arithmetic as the layer's.
            scale = torch.rsqrt(norm.running_var + norm.eps) * norm.weight
            shift = torch.addcmul(norm.bias, norm.running_mean, scale, value=-1)
            return torch.addcmul(shift.view(k, 1, c), z, scale.view(k, 1, c))
        out = norm(z.transpose(0, 1).reshape(b, k * c))
        return out.reshape(b, k, c).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if x.dim() == 3 else x.expand(self.k, *x.shape)
        last = len(self.weights) - 1
        for j, w in enumerate(self.weights):
            z = h @ w
            if str(j) in self.biases:
                z = z + self.biases[str(j)][:, None, :]
            if j == last:
                return z
            if self.placement == "before":
                h = self._act(self._norm(j, z))
            elif self.placement == "after":
                h = self._norm(j, self._act(z))
            else:
                h = self._act(z)
        raise AssertionError("unreachable")

    def unstack(self) -> list[nn.Sequential]:
        """The members as ordinary :func:`placement_mlp` networks (copies, in the stack's mode)."""
        ref = self.weights[0]
        nets = []
        for k in range(self.k):
            net = placement_mlp(
                self.sizes,
                self.placement,
                bias="0" in self.biases,
                norm_layer=self.norm_layer,
                activation=self.activation,
            )
            net = net.to(device=ref.device, dtype=ref.dtype)
            lins = [m for m in net if isinstance(m, nn.Linear)]
            norms = [m for m in net if not isinstance(m, (nn.Linear, nn.Tanh, nn.ReLU))]
            with torch.no_grad():
                for j, lin in enumerate(lins):
                    lin.weight.copy_(self.weights[j][k].T)
                    if lin.bias is not None:
                        lin.bias.copy_(self.biases[str(j)][k])
                for j, norm in enumerate(norms):
                    c = norm.num_features
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(norm, name).copy_(getattr(self.norms[j], name)[k * c : (k + 1) * c])
                    norm.num_batches_tracked.copy_(self.norms[j].num_batches_tracked)
            nets.append(net.train(self.training))
        return nets


def train_stack(
    stack: PlacementStack,
    x: torch.Tensor,
    y: torch.Tensor,
    lrs: Sequence[float],
    seeds: Sequence[int],
    steps: int,
    batch_size: int = 64,
    record=None,
    record_every: int = 1,
    fixed_norm: bool = False,
) -> list:
    """Plain SGD for every member of ``stack``, as :func:`bnbook.models.train_classifier` does it per network.

    Member ``k`` draws its mini-batches with ``torch.randint`` from a generator
    seeded with ``seeds[k]`` and steps with learning rate ``lrs[k]``. The summed
    loss gives every member the gradient of its own mean loss.
    ``record(step, stack)`` is called before the first step and after every
    ``record_every`` steps; its return values are returned.

    With ``fixed_norm=True`` every hidden weight matrix of every member is
    rescaled after each step to the norm it had at the start. In a network with
    batch norm right after each hidden ``Linear`` (``"before"``) this changes
    nothing the network computes in training mode, but it stops the weight norm
    from growing, and with it the shrinking of the step relative to the weights.
    """
    k = stack.k
    if len(lrs) != k or len(seeds) != k:
        raise ValueError(
            f"need one learning rate and one seed per member ({k}), got {len(lrs)} and {len(seeds)}"
        )
    if steps < 0 or batch_size < 2 or min(lrs) <= 0:
        raise ValueError(f"need steps >= 0, batch_size >= 2 and lr > 0, got {steps}, {batch_size}, {lrs}")
    ref = stack.weights[0]
    lr = torch.tensor([float(v) for v in lrs], device=ref.device, dtype=ref.dtype)
    params = [p for p in stack.parameters() if p.requires_grad]
    # the learning rate of each entry: members along dim 0, or in blocks of C channels for batch norm
    scale = [
        lr.view(k, *[1] * (p.dim() - 1)) if p.shape[0] == k else lr.repeat_interleave(p.shape[0] // k)
        for p in params
    ]
    hidden = list(stack.weights)[:-1]
    norms0 = [w.detach().norm(dim=(1, 2), keepdim=True).clone() for w in hidden]
    gens = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    n = x.shape[0]
    records = []
    stack.train()
    if record is not None:
        records.append(record(0, stack))
    chunk = 256  # each member's batch indices for up to `chunk` steps, drawn at once: the same draws
    for start in range(0, steps, chunk):
        m = min(chunk, steps - start)
        idx_all = torch.stack([torch.randint(0, n, (m, batch_size), generator=g) for g in gens], dim=1)
        idx_all = idx_all.to(x.device)  # (m, K, B)
        for j in range(m):
            step = start + j + 1
            idx = idx_all[j].reshape(-1)  # index_select: the same rows as x[idx], gathered faster
            logits = stack(x.index_select(0, idx).view(k, batch_size, -1))
            target = y.index_select(0, idx)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), target, reduction="sum") / batch_size
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():  # p -= lr * grad, for all parameters at once
                torch._foreach_sub_(params, torch._foreach_mul([p.grad for p in params], scale))
                if fixed_norm:
                    for w, n0 in zip(hidden, norms0, strict=True):
                        w.mul_(n0 / w.norm(dim=(1, 2), keepdim=True))
            if record is not None and step % record_every == 0:
                records.append(record(step, stack))
    return records


@torch.no_grad()
def _evaluate_stack(stack: PlacementStack, x_train, y_train, x_test, y_test) -> np.ndarray:
    """Per member: the loss on the training set and the accuracy on the test set, in eval mode."""
    was = stack.training
    stack.eval()
    out = stack(x_train)
    loss = nn.functional.cross_entropy(out.transpose(1, 2), y_train.expand(stack.k, -1), reduction="none")
    acc = (stack(x_test).argmax(dim=2) == y_test).double().mean(dim=1)
    stack.train(was)
    return np.stack([loss.mean(dim=1).cpu().double().numpy(), acc.cpu().numpy()])


def train_placements(
    placements: Sequence[str],
    lrs: Sequence[float],
    seeds: Sequence[int],
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    sizes: Sequence[int] = (64, 64, 64, 10),
    steps: int = 300,
    batch_size: int = 64,
    record_every: int = 20,
    init: str = "default",
    activation: str = "tanh",
    fixed_norm: bool = False,
) -> list[PlacementRun]:
    """Train one network per placement, learning rate and seed with plain SGD.

    The seed sets both the initial weights (``torch.manual_seed``) and the order
    of the mini-batches, so that for a given seed every placement and learning
    rate sees the same batches. With ``init="lsuv"`` every network is then
    rescaled by :func:`bnbook.models.lsuv_init` on the whole training set. All
    networks of one placement train together in a :class:`PlacementStack`;
    each computes what it would compute alone. Curves are measured in eval mode
    on the full training set (loss) and the test set (accuracy). The models take
    the dtype and device of ``data`` and use ``bnbook.nn.BatchNorm1d``.
    ``activation`` picks tanh or ReLU units; ``fixed_norm`` is passed on to
    :func:`train_stack` (hidden weight norms held at their initial values).
    Runs record the norms of the hidden weight matrices at the start and the end.
    """
    if init not in ("default", "lsuv"):
        raise ValueError(f"init must be 'default' or 'lsuv', got {init!r}")
    x_train, y_train, x_test, y_test = data
    runs = []
    for placement in placements:
        grid = [(lr, seed) for lr in lrs for seed in seeds]
        nets = []
        for _, seed in grid:
            torch.manual_seed(seed)
            net = placement_mlp(sizes, placement, activation=activation)
            net = net.to(device=x_train.device, dtype=x_train.dtype)
            if init == "lsuv":
                lsuv_init(net, x_train)
            nets.append(net)
        z_init = [activation_inputs(net, x_test) for net in nets]
        w_init = [_hidden_norms(net) for net in nets]
        stack = PlacementStack(nets)

        def record(_step, st):
            return _evaluate_stack(st, x_train, y_train, x_test, y_test)

        hist = np.stack(
            train_stack(
                stack,
                x_train,
                y_train,
                [lr for lr, _ in grid],
                [s for _, s in grid],
                steps,
                batch_size,
                record=record,
                record_every=record_every,
                fixed_norm=fixed_norm,
            )
        )  # (records, 2, members)
        stack.eval()
        members = stack.unstack()
        for m, (lr, seed) in enumerate(grid):
            net = members[m]
            runs.append(
                PlacementRun(
                    placement,
                    lr,
                    seed,
                    np.arange(hist.shape[0]) * record_every,
                    hist[:, 0, m],
                    hist[:, 1, m],
                    z_init[m],
                    activation_inputs(net, x_test),
                    init,
                    net,
                    activation,
                    (w_init[m], _hidden_norms(net)),
                )
            )
    return runs


def _hidden_norms(net: nn.Sequential) -> np.ndarray:
    """Frobenius norms of the hidden ``Linear`` weight matrices (all but the last)."""
    lins = [m for m in net if isinstance(m, nn.Linear)][:-1]
    return np.array([m.weight.detach().norm().item() for m in lins])


def summarize(runs: Sequence[PlacementRun]) -> dict[tuple[str, float], dict[str, float]]:
    """Per (run name, lr): mean, min and max over seeds of the final test accuracy and training loss,
    of the saturated share of tanh inputs before and after training, and of their median excess kurtosis.

    Run names are those of :func:`run_name` (``"before"``, ``"after"``, ``"none"``, ``"none+lsuv"``).
    """
    table: dict[tuple[str, float], dict[str, float]] = {}
    keys = sorted({(r.name, r.lr) for r in runs}, key=lambda k: (RUN_NAMES.index(k[0]), k[1]))
    for key in keys:
        group = [r for r in runs if (r.name, r.lr) == key]
        acc = np.array([r.test_acc[-1] for r in group])
        loss = np.array([r.train_loss[-1] for r in group])
        sat0 = np.array([saturated_fraction(r.z_init) for r in group])
        sat1 = np.array([saturated_fraction(r.z_final) for r in group])
        table[key] = {
            "acc_mean": float(acc.mean()),
            "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "acc_min": float(acc.min()),
            "acc_max": float(acc.max()),
            "loss_mean": float(loss.mean()),
            "loss_min": float(loss.min()),
            "loss_max": float(loss.max()),
            "sat_init": float(sat0.mean()),
            "sat_final": float(sat1.mean()),
            "sat_final_min": float(sat1.min()),
            "sat_final_max": float(sat1.max()),
        }
    return table


def median_kurtosis(z: Sequence[np.ndarray]) -> float:
    """Median over all units of all layers of the excess kurtosis of the tanh inputs ``z``."""
    return float(np.median(np.concatenate([excess_kurtosis(a) for a in z])))


def plot_curves(runs: Sequence[PlacementRun], lrs: Sequence[float], names=("before", "after")) -> Figure:
    """Training loss (top row) and test accuracy (bottom row) per learning rate, mean and min-max band."""
    fig, axes = plt.subplots(2, len(lrs), figsize=(3.0 * len(lrs) + 1.0, 5.6), sharex=True, sharey="row")
    axes = np.asarray(axes).reshape(2, len(lrs))
    for j, lr in enumerate(lrs):
        for name in names:
            group = [r for r in runs if r.name == name and r.lr == lr]
            if not group:
                continue
            x = group[0].steps
            st = STYLE[name]
            for row, curves in ((0, [r.train_loss for r in group]), (1, [r.test_acc for r in group])):
                band(
                    axes[row, j], x, curves, st["color"], st["label"], marker=st["marker"], ls=st["linestyle"]
                )
        axes[0, j].set_title(f"learning rate {lr:g}")
        axes[0, j].set_yscale("log")
        axes[1, j].set_xlabel("training step")
        axes[1, j].set_ylim(0.8, 1.0)
    axes[0, 0].set_ylabel("training loss (full set)")
    axes[1, 0].set_ylabel("test accuracy")
    axes[1, 0].legend(loc="lower right", fontsize=9)
    return fig


def plot_histograms(runs: Sequence[PlacementRun], lr: float, names=("before", "after")) -> Figure:
    """Histograms of the tanh inputs (both hidden layers, test set, all seeds) at init and after training.

    Heights are the share of inputs per bin of width 0.2; values beyond ±6 are
    counted in the outermost bins.
    """
    fig, axes = plt.subplots(1, 2, figsize=(8.0, 3.4), sharey=True)
    bins = np.linspace(-6, 6, 61)
    for ax, when in zip(axes, ("z_init", "z_final"), strict=True):
        for name in names:
            group = [r for r in runs if r.name == name and r.lr == lr]
            z = np.concatenate([np.ravel(a) for r in group for a in getattr(r, when)])
            st = STYLE[name]
            histogram(
                ax,
                bins,
                values=z,
                lw=1.8,
                color=st["color"],
                linestyle=st["linestyle"],
                label=f"{st['label']} ({saturated_fraction(z):.1%} saturated)",
            )
        for s in (-SATURATION_Z, SATURATION_Z):
            ax.axvline(s, color=COLORS["truth"], lw=0.8, ls=(0, (2, 2)))
        ax.set_xlabel("input of tanh, z")
        ax.set_title("at initialization" if when == "z_init" else f"after training (lr {lr:g})")
        ax.legend(fontsize=8.5, loc="upper left")
    axes[0].set_ylabel("share of inputs per bin")
    return fig


class BiasPair(NamedTuple):
    """The same network trained with and without a bias before its batch-norm layers."""

    acc_without: float  # final test accuracy, eval mode
    acc_with: float
    logit_diff_batch: float  # largest |difference| of the test logits, batch statistics of the test set
    logit_diff_eval: float  # the same in eval mode (running statistics)
    max_bias_change: float  # largest |change| of a bias before batch norm during training
    model_without: nn.Sequential  # the two trained networks, in eval mode
    model_with: nn.Sequential


def train_bias_pairs(
    seeds: Sequence[int],
    lr: float,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    sizes: Sequence[int] = (64, 64, 64, 10),
    steps: int = 300,
    batch_size: int = 64,
) -> list[BiasPair]:
    """Train ``Linear -> BN -> tanh`` networks with and without the Linear biases, one pair per seed.

    Both networks of a pair start from the same weights (drawn with ``seed``; the
    biases of the second network keep PyTorch's random initial values, drawn
    with ``seed + 1``) and see the same mini-batches.
    """
    x_train, y_train, x_test, y_test = data
    without, with_bias, biases0 = [], [], []
    for seed in seeds:
        torch.manual_seed(seed)
        net0 = placement_mlp(sizes, "before", bias=False).to(device=x_train.device, dtype=x_train.dtype)
        torch.manual_seed(seed + 1)
        net1 = placement_mlp(sizes, "before", bias=True).to(device=x_train.device, dtype=x_train.dtype)
        net1.load_state_dict(net0.state_dict(), strict=False)  # same weights; biases stay random
        biases0.append([m.bias.detach().clone() for m in net1[:-1] if isinstance(m, nn.Linear)])
        without.append(net0)
        with_bias.append(net1)
    trained = []
    for nets in (without, with_bias):
        stack = PlacementStack(nets)
        train_stack(stack, x_train, y_train, [lr] * len(seeds), list(seeds), steps, batch_size)
        trained.append(stack.unstack())
    pairs = []
    for net0, net1, b0 in zip(*trained, biases0, strict=True):
        b1 = [m.bias.detach() for m in net1[:-1] if isinstance(m, nn.Linear)]
        change = max((x1 - x0).abs().max().item() for x0, x1 in zip(b0, b1, strict=True))
        with torch.no_grad():
            batch0, batch1 = copy.deepcopy(net0)(x_test), copy.deepcopy(net1)(x_test)  # train mode
            net0.eval()
            net1.eval()
            out0, out1 = net0(x_test), net1(x_test)
        acc0 = (out0.argmax(dim=1) == y_test).double().mean().item()
        acc1 = (out1.argmax(dim=1) == y_test).double().mean().item()
        pairs.append(
            BiasPair(
                acc0,
                acc1,
                (batch0 - batch1).abs().max().item(),
                (out0 - out1).abs().max().item(),
                change,
                net0,
                net1,
            )
        )
    return pairs


def train_bias_pair(
    seed: int,
    lr: float,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    sizes: Sequence[int] = (64, 64, 64, 10),
    steps: int = 300,
    batch_size: int = 64,
) -> BiasPair:
    """One pair of :func:`train_bias_pairs`."""
    return train_bias_pairs([seed], lr, data, sizes, steps, batch_size)[0]
