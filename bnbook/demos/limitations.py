"""Chapter 9, limitations: batch-size noise, the normalization family, shifts, sample dependence, cost.

The arithmetic of layer, group and instance norm lives in :mod:`bnbook.scratch`
(NumPy) and in ``torch.nn``; this module only drives experiments and figures:

* :func:`batch_stat_spread` and :func:`plot_stat_spread` measure the noise of
  batch statistics against batch size;
* :class:`PackedCNN`, :func:`norm_grid_accuracy` and :func:`plot_norm_grid`
  train many small CNNs (every normalization, several seeds) side by side as
  one grouped network, for a miniature of Wu and He's batch-size table;
* :func:`draw_norm_axes` draws which cells of an (N, C, H, W) tensor share
  one mean and variance under each normalization;
* :func:`train_mlp_runs`, :func:`shift_accuracies` and :func:`sorted_batches`
  drive the shift and batch-composition experiments;
* :func:`interleaved_times` times several callables round-robin;
* :func:`make_batch_size_draw` feeds the chapter's explorer.
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

from bnbook.models import accuracy, mlp
from bnbook.nn import recalibrate_bn
from bnbook.plots import COLORS, MARKERS, PALETTE

__all__ = [
    "NORMS",
    "NORM_COLORS",
    "PackedCNN",
    "PackedMLP",
    "StatSpread",
    "batch_stat_spread",
    "draw_norm_axes",
    "interleaved_times",
    "make_batch_size_draw",
    "norm_grid_accuracy",
    "plot_norm_grid",
    "plot_stat_spread",
    "shift_accuracies",
    "shuffled_batches",
    "unpack_cnn",
    "make_mlp",
    "sorted_batches",
    "train_mlp",
]

#: The four normalizations compared in the chapter, in display order.
NORMS = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm")
#: One colour and marker per normalization (batch norm keeps the book's batch-norm blue).
NORM_COLORS = {
    "BatchNorm": COLORS["bn"],
    "LayerNorm": PALETTE[2],
    "GroupNorm": PALETTE[1],
    "InstanceNorm": PALETTE[3],
}
NORM_COLORS["none"] = COLORS["no_bn"]
NORM_MARKERS = {name: MARKERS[i] for i, name in enumerate((*NORMS, "none"))}


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


# --- many small CNNs side by side ------------------------------------------------------------
def _norm(kind: str, copies: int, channels: int, groups: int, one_d: bool = False) -> nn.Module:
    """One normalization for ``copies`` networks whose channels sit side by side."""
    total = copies * channels
    if kind == "BatchNorm":
        return nn.BatchNorm1d(total) if one_d else nn.BatchNorm2d(total)  # per channel: the copies never mix
    if kind == "LayerNorm":
        return nn.GroupNorm(copies, total)  # one group per network: its (C, H, W)
    if kind == "GroupNorm":
        return nn.GroupNorm(copies * groups, total)
    if kind == "InstanceNorm":
        return nn.GroupNorm(total, total)  # one channel per group
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalization {kind!r}; expected one of {NORMS}")


class PackedCNN(nn.Module):
    """``len(norms) * seeds`` independent small CNNs for 1x8x8 images, computed as one grouped network.

    Each network is ``conv 3x3 (1 -> c1) -> norm -> ReLU -> conv 3x3 stride 2 (c1 -> c2) -> norm
    -> ReLU -> linear (c2*4*4 -> 10)``. Network ``k * seeds + s`` uses normalization ``norms[k]``
    and the initial weights of seed ``s`` (the same for every normalization). Grouped
    convolutions keep the networks apart, so training them together with the sum of their losses
    gives each exactly the gradients it would get alone; it only saves Python overhead. Layer norm
    is ``GroupNorm(1, C)`` and instance norm ``GroupNorm(C, C)``, as in Wu and He (2018): all four
    have a per-channel scale and shift.
    """

    def __init__(
        self, norms: Sequence[str], seeds: Sequence[int], c1: int = 8, c2: int = 16, groups: int = 4
    ):
        super().__init__()
        self.norms, self.seeds, self.c1, self.c2 = tuple(norms), tuple(seeds), c1, c2
        k, s = len(self.norms), len(self.seeds)
        g = k * s
        self.n_nets = g
        self.conv1 = nn.Conv2d(g, g * c1, 3, padding=1, groups=g, bias=False)
        self.conv2 = nn.Conv2d(g * c1, g * c2, 3, stride=2, padding=1, groups=g, bias=False)
        self.norm1 = nn.ModuleList(_norm(kind, s, c1, groups) for kind in self.norms)
        self.norm2 = nn.ModuleList(_norm(kind, s, c2, groups) for kind in self.norms)
        self.weight = nn.Parameter(torch.empty(g, c2 * 16, 10))
        self.bias = nn.Parameter(torch.empty(g, 10))
        with torch.no_grad():
            for j, seed in enumerate(self.seeds):  # the same initial weights for every normalization
                gen = torch.Generator().manual_seed(int(seed))
                w1 = _kaiming(gen, (c1, 1, 3, 3), 9)
                w2 = _kaiming(gen, (c2, c1, 3, 3), 9 * c1)
                wl = _kaiming(gen, (c2 * 16, 10), c2 * 16)
                bl = _kaiming(gen, (10,), c2 * 16)
                for kk in range(k):
                    net = kk * s + j
                    self.conv1.weight[net * c1 : (net + 1) * c1] = w1
                    self.conv2.weight[net * c2 : (net + 1) * c2] = w2
                    self.weight[net] = wl
                    self.bias[net] = bl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, n_nets, 8, 8), one image per network -> logits (B, n_nets, 10)."""
        s = len(self.seeds)
        h = self.conv1(x)
        h = torch.cat([nm(part) for nm, part in zip(self.norm1, h.split(s * self.c1, 1), strict=True)], 1)
        h = self.conv2(h.relu())
        h = torch.cat([nm(part) for nm, part in zip(self.norm2, h.split(s * self.c2, 1), strict=True)], 1)
        h = h.relu().reshape(h.shape[0], self.n_nets, -1)
        return _per_net_linear(h, self.weight) + self.bias


class PackedMLP(nn.Module):
    """``len(norms) * seeds`` independent MLPs ``64 -> width -> norm -> ReLU -> width -> norm -> ReLU -> 10``.

    Computed as one network with batched matrix products, like :class:`PackedCNN`. In an MLP
    each feature is one value per sample, so batch norm's statistics come from the batch alone
    (m = batch size); layer norm uses the ``width`` features of a sample, group norm groups of
    ``width / groups`` features. Instance norm has nothing to normalize over and is refused.
    """

    def __init__(self, norms: Sequence[str], seeds: Sequence[int], width: int = 64, groups: int = 4):
        super().__init__()
        if "InstanceNorm" in norms:
            raise ValueError("an MLP has one value per feature: instance norm is not defined for it")
        self.norms, self.seeds, self.width = tuple(norms), tuple(seeds), width
        k, s = len(self.norms), len(self.seeds)
        g = self.n_nets = k * s
        sizes = [(64, width), (width, width), (width, 10)]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(g, a, b)) for a, b in sizes)
        self.bias = nn.Parameter(torch.empty(g, 10))
        self.norm1 = nn.ModuleList(_norm(kind, s, width, groups, one_d=True) for kind in self.norms)
        self.norm2 = nn.ModuleList(_norm(kind, s, width, groups, one_d=True) for kind in self.norms)
        with torch.no_grad():
            for j, seed in enumerate(self.seeds):
                gen = torch.Generator().manual_seed(int(seed))
                ws = [_kaiming(gen, (a, b), a) for a, b in sizes]
                bl = _kaiming(gen, (10,), width)
                for kk in range(k):
                    for w, param in zip(ws, self.weights, strict=True):
                        param[kk * s + j] = w
                    self.bias[kk * s + j] = bl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, n_nets, 8, 8), one image per network -> logits (B, n_nets, 10)."""
        b, s = x.shape[0], len(self.seeds)
        h = x.reshape(b, self.n_nets, 64)
        for w, norms in zip(self.weights[:2], (self.norm1, self.norm2), strict=True):
            h = _per_net_linear(h, w).reshape(b, -1)  # (B, n_nets * width)
            h = torch.cat([nm(part) for nm, part in zip(norms, h.split(s * self.width, 1), strict=True)], 1)
            h = h.relu().reshape(b, self.n_nets, self.width)
        return _per_net_linear(h, self.weights[2]) + self.bias


def unpack_cnn(net: PackedCNN, index: int) -> nn.Sequential:
    """Network ``index`` of a :class:`PackedCNN` as a stand-alone ``nn.Sequential`` (a copy), for checking."""
    kind = net.norms[index // len(net.seeds)]
    c1, c2 = net.c1, net.c2
    layers = {
        "BatchNorm": lambda c: nn.BatchNorm2d(c),
        "LayerNorm": lambda c: nn.GroupNorm(1, c),
        "GroupNorm": lambda c: nn.GroupNorm(4, c),
        "InstanceNorm": lambda c: nn.GroupNorm(c, c),
    }[kind]
    conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
    conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
    lin = nn.Linear(c2 * 16, 10)
    with torch.no_grad():
        conv1.weight.copy_(net.conv1.weight[index * c1 : (index + 1) * c1])
        conv2.weight.copy_(net.conv2.weight[index * c2 : (index + 1) * c2])
        lin.weight.copy_(net.weight[index].T)
        lin.bias.copy_(net.bias[index])
    return nn.Sequential(conv1, layers(c1), nn.ReLU(), conv2, layers(c2), nn.ReLU(), nn.Flatten(), lin)


def _per_net_linear(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(B, G, F) times one (F, K) matrix per network, (G, F, K) -> (B, G, K)."""
    return torch.bmm(h.transpose(0, 1), w).transpose(0, 1)


def _kaiming(gen: torch.Generator, shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
    """torch's default init for Linear and Conv2d: uniform on +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(fan_in)
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def _epoch_indices(n: int, total: int, gen: torch.Generator) -> torch.Tensor:
    """``total`` indices from consecutive random permutations of ``range(n)``."""
    reps = -(-total // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:total]


def norm_grid_accuracy(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    samples: int,
    lr_per_32: float,
    norms: Sequence[str] = NORMS,
    arch: str = "cnn",
) -> np.ndarray:
    """Test accuracy of every (batch size, normalization, seed), shape (len(batch_sizes), len(norms), seeds).

    Every run sees the same number of training images, ``samples`` (so smaller batches take more
    steps), with the learning rate scaled linearly with the batch size, ``lr_per_32 * B / 32``, as
    in Wu and He (2018). Plain SGD. The images of a seed come in the same order for every
    normalization. Batch norm is evaluated in eval mode, with its running statistics.
    """
    device = x_train.device
    n = x_train.shape[0]
    x_train = x_train.reshape(n, 8, 8)
    x_test = x_test.reshape(-1, 1, 8, 8)
    out = np.zeros((len(batch_sizes), len(norms), len(seeds)))
    for b, bs in enumerate(batch_sizes):
        torch.manual_seed(0)
        net = (PackedCNN if arch == "cnn" else PackedMLP)(norms, seeds).to(device)
        params = list(net.parameters())
        steps = samples // bs
        order = torch.stack(
            [_epoch_indices(n, steps * bs, torch.Generator().manual_seed(1000 + int(s))) for s in seeds], 1
        ).to(device)  # (steps * bs, seeds)
        lr = lr_per_32 * bs / 32
        k = len(norms)
        net.train()
        for step in range(steps):
            idx = order[step * bs : (step + 1) * bs]  # (bs, seeds)
            xb = x_train[idx].repeat(1, k, 1, 1)  # network k * seeds + s sees seed s's images
            yb = y_train[idx].repeat(1, k)
            loss = F.cross_entropy(net(xb).reshape(-1, 10), yb.reshape(-1), reduction="sum") / bs
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.sub_(p.grad, alpha=lr)
        net.eval()
        with torch.no_grad():
            logits = net(x_test.expand(-1, net.n_nets, -1, -1))
            correct = (logits.argmax(-1) == y_test[:, None]).double().mean(0)
        out[b] = correct.reshape(k, len(seeds)).cpu().numpy()
    return out


def plot_norm_grid(ax, batch_sizes: Sequence[int], acc: np.ndarray, norms: Sequence[str] = NORMS) -> None:
    """Test error (%) against batch size per normalization: mean over seeds with a min-max band."""
    x = np.asarray(batch_sizes)
    for k, name in enumerate(norms):
        err = 100 * (1 - acc[:, k, :])  # (batch sizes, seeds)
        ax.plot(x, err.mean(1), marker=NORM_MARKERS[name], color=NORM_COLORS[name], label=name)
        ax.fill_between(x, err.min(1), err.max(1), color=NORM_COLORS[name], alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=9)


# --- MLP experiments -------------------------------------------------------------------------
def train_mlp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: torch.Tensor,
    lr: float,
) -> nn.Module:
    """Plain SGD on cross-entropy over the given batches of indices, shape (steps, batch size)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for idx in batches:
        loss = F.cross_entropy(model(x[idx]), y[idx])
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.sub_(p.grad, alpha=lr)
    return model


def shuffled_batches(n: int, steps: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """``steps`` batches of indices from consecutive random permutations, shape (steps, batch_size)."""
    return _epoch_indices(n, steps * batch_size, gen).reshape(steps, batch_size)


def sorted_batches(y: torch.Tensor, steps: int, batch_size: int, gen: torch.Generator) -> torch.Tensor:
    """``steps`` batches that each hold images of one class, the classes of the batches in random order.

    Within a class the images are drawn at random without replacement (refilled when used up),
    so the only difference from shuffled batches is what a batch holds together.
    """
    y_cpu = y.cpu()
    classes = torch.unique(y_cpu)
    pools = {int(c): torch.nonzero(y_cpu == c).flatten() for c in classes}
    cursor = {c: torch.empty(0, dtype=torch.long) for c in pools}
    out = []
    labels = classes[torch.randint(0, len(classes), (steps,), generator=gen)]
    for c in labels.tolist():
        if len(cursor[c]) < batch_size:
            pool = pools[c]
            cursor[c] = torch.cat([cursor[c], pool[torch.randperm(len(pool), generator=gen)]])
        out.append(cursor[c][:batch_size])
        cursor[c] = cursor[c][batch_size:]
    return torch.stack(out).to(y.device)


def _batch_stat_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int
) -> float:
    """Accuracy with batch statistics at test time: a copy in train mode, on shuffled test batches."""
    net = copy.deepcopy(model).train()  # a copy: train-mode calls change running statistics
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(x.device)
    correct = 0
    with torch.no_grad():
        for start in range(0, len(y) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            correct += (net(x[idx]).argmax(1) == y[idx]).sum().item()
    return correct / ((len(y) // batch_size) * batch_size)


def shift_accuracies(
    model: nn.Module,
    x_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    shift: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Test accuracy of a trained batch-norm model on clean and shifted test inputs, four ways.

    ``clean``: running statistics, unshifted test set (the control). ``running``: running
    statistics, shifted test set. ``recalibrated``: running statistics recomputed
    (:func:`bnbook.nn.recalibrate_bn`) on the *shifted training inputs*, no labels used.
    ``batch stats``: batch statistics of shuffled test batches of ``batch_size``.
    """
    shifted = shift(x_test)
    fixed = recalibrate_bn(copy.deepcopy(model), shift(x_train), batch_size=batch_size)
    return {
        "clean": accuracy(model, x_test, y_test),
        "running": accuracy(model, shifted, y_test),
        "recalibrated": accuracy(fixed, shifted, y_test),
        "batch stats": _batch_stat_accuracy(model, shifted, y_test, batch_size, seed),
    }


def make_mlp(kind: str, seed: int, sizes: Sequence[int] = (64, 64, 64, 10)) -> nn.Module:
    """The chapter's MLP: ReLU, with torch's ``BatchNorm1d``, ``LayerNorm`` or no normalization."""
    torch.manual_seed(seed)
    if kind == "BatchNorm":
        return mlp(list(sizes), activation="relu", batch_norm=True, norm_layer=nn.BatchNorm1d)
    if kind == "LayerNorm":
        return mlp(list(sizes), activation="relu", batch_norm=True, norm_layer=nn.LayerNorm)
    if kind == "none":
        return mlp(list(sizes), activation="relu", batch_norm=False)
    raise ValueError(f"kind must be 'BatchNorm', 'LayerNorm' or 'none', got {kind!r}")


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
def make_batch_size_draw(
    batch_sizes: Sequence[int],
    acc_cnn: np.ndarray,
    acc_mlp: np.ndarray,
    sigma: float,
    seed: int,
    n_batches: int = 2000,
) -> Callable[..., None]:
    """``draw(fig, batch_size)``: batch variances of normal data, and the precomputed test errors.

    ``acc_cnn`` is the (batch sizes, 4 normalizations, seeds) table of :func:`norm_grid_accuracy`
    for the CNN (batch norm and group norm are drawn), ``acc_mlp`` the (batch sizes, 2, seeds)
    table for the MLP with batch norm and without (batch norm is drawn).
    """
    rng = np.random.default_rng(seed)
    draws = {m: rng.normal(0.0, sigma, size=(n_batches, m)) for m in batch_sizes}
    x = np.asarray(batch_sizes)
    bins = np.linspace(0, 4 * sigma**2, 41)
    series = [
        ("CNN, BatchNorm", 100 * (1 - acc_cnn[:, 0]), NORM_COLORS["BatchNorm"], "o", "-"),
        ("CNN, GroupNorm", 100 * (1 - acc_cnn[:, 2]), NORM_COLORS["GroupNorm"], "^", "-"),
        ("MLP, BatchNorm", 100 * (1 - acc_mlp[:, 0]), NORM_COLORS["BatchNorm"], "s", "--"),
    ]
    top = 1.1 * max(e.max() for _, e, *_ in series)
    dens_top = 1.1 * max(
        np.histogram(np.clip(d.var(axis=1, ddof=1), 0, bins[-1]), bins=bins, density=True)[0].max()
        for d in draws.values()
    )

    def draw(fig: Figure, batch_size: int) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        var = draws[batch_size].var(axis=1, ddof=1)
        ax1.hist(np.clip(var, 0, bins[-1]), bins=bins, color=COLORS["batch"], density=True)
        ax1.axvline(sigma**2, color=COLORS["truth"], ls="--", lw=1.5, label="population variance")
        inside = np.mean(np.abs(var - sigma**2) < 0.5 * sigma**2)
        ax1.set_title(
            f"m = {batch_size}: {inside:.0%} of batch variances within 50% of the truth", fontsize=10
        )
        ax1.set_xlabel(f"unbiased batch variance (clipped at {bins[-1]:g})")
        ax1.set_ylabel("density")
        ax1.set_ylim(0, dens_top)
        ax1.legend(fontsize=9, loc="upper right")
        i = list(batch_sizes).index(batch_size)
        for label, e, color, marker, ls in series:
            ax2.plot(x, e.mean(1), marker=marker, ls=ls, color=color, label=label)
            ax2.fill_between(x, e.min(1), e.max(1), color=color, alpha=0.12, linewidth=0)
        ax2.axvline(batch_size, color=COLORS["batch"], lw=6, alpha=0.35)
        ax2.set_xscale("log", base=2)
        ax2.set_xticks(x, [str(v) for v in x])
        ax2.set_ylim(0, top)
        ax2.set_xlabel("batch size")
        ax2.set_ylabel("test error (%)")
        cnn_bn, cnn_gn, mlp_bn = (e[i].mean() for _, e, *_ in series)
        errs = f"error at {batch_size}: CNN BN {cnn_bn:.1f}%, GN {cnn_gn:.1f}%; MLP BN {mlp_bn:.1f}%"
        ax2.set_title(errs, fontsize=9)
        ax2.legend(fontsize=9, loc="upper right")

    return draw
