"""Chapter 13, small batches: Batch Renorm, ghost batch norm, and the remedies compared.

The layers themselves live in the library (:class:`bnbook.nn.BatchRenorm1d`,
:class:`bnbook.nn.GhostBatchNorm`, :func:`bnbook.nn.renorm_limits`); this module only
drives the chapter's experiments and draws its figures:

* :func:`scaled_schedule` shrinks the paper's warm-up schedule of ``r_max`` and
  ``d_max`` to a run of a given length, and :func:`plot_schedule` draws it;
* :func:`ghost_noise` measures how far one sample's normalized value moves when
  its ghost-batch mates change, for several ghost sizes;
* :class:`PackedMLP` trains many small MLPs (every normalization, several seeds)
  side by side as one network, and :func:`compare_small_batches` runs the
  chapter's comparison at several batch sizes, including fine-tuning a
  pretrained batch-norm network with its statistics frozen or in training mode;
* :func:`plot_comparison` draws test error against batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnbook import nn as bnn
from bnbook.plots import COLORS, MARKERS, PALETTE

__all__ = [
    "FINETUNE",
    "METHODS",
    "METHOD_COLORS",
    "METHOD_MARKERS",
    "Comparison",
    "PackedMLP",
    "compare_small_batches",
    "ghost_noise",
    "plot_comparison",
    "plot_ghost_noise",
    "plot_schedule",
    "scaled_schedule",
    "unpack_mlp",
]

#: The normalizations trained from scratch, in display order.
METHODS = ("BatchNorm", "BatchRenorm", "GroupNorm", "LayerNorm")
#: The two ways of fine-tuning a batch-norm network pretrained at a large batch.
FINETUNE = ("frozen BN", "BN in train mode")
METHOD_COLORS = {
    "BatchNorm": COLORS["bn"],
    "BatchRenorm": PALETTE[4],
    "GroupNorm": PALETTE[1],
    "LayerNorm": PALETTE[2],
    "frozen BN": PALETTE[3],
    "BN in train mode": PALETTE[5],
}
METHOD_MARKERS = {name: MARKERS[i] for i, name in enumerate((*METHODS, *FINETUNE))}


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
    ax.plot(g, noise, marker="o", color=COLORS["bn"], label="measured (ghost batch norm)")
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


# --- many MLPs side by side ----------------------------------------------------------------------
def _norm(kind: str, copies: int, width: int, groups: int, momentum: float) -> nn.Module:
    """One normalization for ``copies`` networks whose features sit side by side."""
    total = copies * width
    if kind == "BatchNorm":
        return nn.BatchNorm1d(total, momentum=momentum)  # per feature: the copies never mix
    if kind == "BatchRenorm":
        return bnn.BatchRenorm1d(total, momentum=momentum)
    if kind == "GroupNorm":
        return nn.GroupNorm(copies * groups, total)
    if kind == "LayerNorm":
        return nn.GroupNorm(copies, total)  # one group per network: all of its features
    raise ValueError(f"unknown normalization {kind!r}; expected one of {METHODS}")


def _uniform(gen: torch.Generator, shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
    """torch's default init for Linear: uniform on +-1/sqrt(fan_in)."""
    bound = 1.0 / np.sqrt(fan_in)
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


class PackedMLP(nn.Module):
    """``len(norms) * len(seeds)`` independent MLPs ``64 -> 64 -> norm -> ReLU -> 64 -> norm -> ReLU -> 10``.

    Network ``k * len(seeds) + s`` uses normalization ``norms[k]`` and the initial weights of
    seed ``s`` (the same for every normalization). The hidden layers of all networks are one
    batched matrix product, and each norm module holds the features of ``len(seeds)``
    networks side by side; batch norm and batch renorm work per feature and group norm per
    group, so the networks never mix. Layer norm is ``GroupNorm(1, width)`` per network.
    """

    def __init__(
        self,
        norms: Sequence[str],
        seeds: Sequence[int],
        width: int = 64,
        groups: int = 8,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self.norms, self.seeds, self.width, self.groups = tuple(norms), tuple(seeds), width, groups
        k, s = len(self.norms), len(self.seeds)
        g = self.n_nets = k * s
        sizes = [(64, width), (width, width), (width, 10)]
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(g, a, b)) for a, b in sizes)
        self.bias = nn.Parameter(torch.empty(g, 10))
        self.norm1 = nn.ModuleList(_norm(kind, s, width, groups, momentum) for kind in self.norms)
        self.norm2 = nn.ModuleList(_norm(kind, s, width, groups, momentum) for kind in self.norms)
        with torch.no_grad():
            for j, seed in enumerate(self.seeds):
                gen = torch.Generator().manual_seed(int(seed))
                ws = [_uniform(gen, (a, b), a) for a, b in sizes]
                bl = _uniform(gen, (10,), width)
                for kk in range(k):
                    for w, param in zip(ws, self.weights, strict=True):
                        param[kk * s + j] = w
                    self.bias[kk * s + j] = bl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, n_nets, 64), one input per network -> logits (B, n_nets, 10)."""
        b, s = x.shape[0], len(self.seeds)
        h = x
        for w, norms in zip(self.weights[:2], (self.norm1, self.norm2), strict=True):
            h = torch.bmm(h.transpose(0, 1), w).transpose(0, 1).reshape(b, -1)  # (B, n_nets * width)
            h = torch.cat([nm(part) for nm, part in zip(norms, h.split(s * self.width, 1), strict=True)], 1)
            h = h.relu().reshape(b, self.n_nets, self.width)
        return torch.bmm(h.transpose(0, 1), self.weights[2]).transpose(0, 1) + self.bias

    def set_renorm_limits(self, r_max: float, d_max: float) -> None:
        """Set ``r_max`` and ``d_max`` of every batch-renorm layer."""
        for m in self.modules():
            if isinstance(m, bnn.BatchRenorm1d):
                m.r_max, m.d_max = r_max, d_max


def unpack_mlp(net: PackedMLP, index: int) -> nn.Sequential:
    """Network ``index`` of a :class:`PackedMLP` as a stand-alone ``nn.Sequential`` (a copy), for checking."""
    s, w = len(net.seeds), net.width
    k, j = divmod(index, s)
    kind = net.norms[k]
    lins = [nn.Linear(a.shape[1], a.shape[2], bias=False) for a in net.weights]
    lins[-1] = nn.Linear(w, 10)
    layers: list[nn.Module] = []
    for i, (lin, packed_norm) in enumerate(zip(lins, (net.norm1[k], net.norm2[k], None), strict=True)):
        with torch.no_grad():
            lin.weight.copy_(net.weights[i][index].T)
        layers.append(lin)
        if packed_norm is None:
            break
        if kind == "BatchNorm":
            norm = nn.BatchNorm1d(w, momentum=packed_norm.momentum)
        elif kind == "BatchRenorm":
            norm = bnn.BatchRenorm1d(
                w, momentum=packed_norm.momentum, r_max=packed_norm.r_max, d_max=packed_norm.d_max
            )
        else:
            norm = nn.GroupNorm(net.groups if kind == "GroupNorm" else 1, w)
        part = slice(j * w, (j + 1) * w)
        with torch.no_grad():
            norm.weight.copy_(packed_norm.weight[part])
            norm.bias.copy_(packed_norm.bias[part])
            if kind in ("BatchNorm", "BatchRenorm"):
                norm.running_mean.copy_(packed_norm.running_mean[part])
                norm.running_var.copy_(packed_norm.running_var[part])
        norm.train(packed_norm.training)
        layers += [norm, nn.ReLU()]
    with torch.no_grad():
        lins[-1].bias.copy_(net.bias[index])
    return nn.Sequential(*layers)


def _epoch_indices(n: int, total: int, gen: torch.Generator) -> torch.Tensor:
    """``total`` indices from consecutive random permutations of ``range(n)``."""
    reps = -(-total // n)
    return torch.cat([torch.randperm(n, generator=gen) for _ in range(reps)])[:total]


def _train(
    net: PackedMLP,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    samples: int,
    lr: torch.Tensor,
    seed_offset: int,
    renorm: bool,
) -> None:
    """Plain SGD; network k*S+s sees seed s's batches and has learning rate ``lr[k*S+s]``.

    The loss is the sum over networks of ``lr`` times each network's mean cross-entropy, and
    the step is ``p -= p.grad``: every network gets exactly its own SGD step.
    """
    n = x.shape[0]
    steps = samples // batch_size
    s = len(net.seeds)
    k = net.n_nets // s
    order = torch.stack(
        [
            _epoch_indices(n, steps * batch_size, torch.Generator().manual_seed(seed_offset + int(sd)))
            for sd in net.seeds
        ],
        1,
    ).to(x.device)  # (steps * batch, seeds)
    limits = scaled_schedule(steps) if renorm else None
    params = [p for p in net.parameters() if p.requires_grad]
    for step in range(steps):
        if limits is not None:
            net.set_renorm_limits(*limits(step))
        idx = order[step * batch_size : (step + 1) * batch_size]
        xb = x[idx].repeat(1, k, 1)  # (B, n_nets, 64)
        yb = y[idx].repeat(1, k)
        losses = F.cross_entropy(net(xb).permute(0, 2, 1), yb, reduction="none").mean(0)  # (n_nets,)
        loss = (losses * lr).sum()
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.sub_(p.grad)


@torch.no_grad()
def _test_accuracy(net: PackedMLP, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    was = [m.training for m in net.modules()]
    net.eval()
    logits = net(x[:, None, :].expand(-1, net.n_nets, -1))
    for m, t in zip(net.modules(), was, strict=True):
        m.training = t
    return (logits.argmax(-1) == y[:, None]).double().mean(0).cpu().numpy()


class Comparison(NamedTuple):
    """Test accuracies of :func:`compare_small_batches`.

    Attributes
    ----------
    scratch : ndarray, shape (batch sizes, len(METHODS), seeds)
        Networks trained from scratch at each batch size.
    finetune : ndarray, shape (batch sizes, len(FINETUNE), seeds)
        The pretrained batch-norm network fine-tuned at each batch size.
    pretrained : ndarray, shape (seeds,)
        The pretrained networks before fine-tuning.
    """

    scratch: np.ndarray
    finetune: np.ndarray
    pretrained: np.ndarray


def compare_small_batches(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    samples: int,
    lr_per_32: float,
    pretrain_samples: int,
    finetune_lr_per_32: float,
    momentum_per_32: float = 0.1,
) -> Comparison:
    """Train every method at every batch size with the same number of training samples.

    The learning rate is ``lr_per_32 * B / 32`` (linear scaling, as in Wu and He 2018) and the
    running-statistics momentum ``momentum_per_32 * B / 32``, so that the running averages span
    about the same number of samples at every batch size. Batch renorm follows
    :func:`scaled_schedule` over its run. For fine-tuning, one batch-norm network per seed is
    first trained at a batch of 32 for ``pretrain_samples`` samples (on other batches than the
    fine-tuning ones); it is then fine-tuned twice at batch size B, once with its batch-norm
    layers in eval mode (running statistics frozen, gamma and beta still learned) and once in
    training mode, both with the learning rate ``finetune_lr_per_32 * B / 32``.
    """
    dev = x_train.device
    # pretraining: one batch-norm network per seed, at a batch of 32
    torch.manual_seed(0)
    pre = PackedMLP(["BatchNorm"], seeds, momentum=momentum_per_32).to(dev).train()
    lr_pre = torch.full((pre.n_nets,), lr_per_32, device=dev)
    _train(pre, x_train, y_train, 32, pretrain_samples, lr_pre, 5000, renorm=False)
    pretrained = _test_accuracy(pre, x_test, y_test)

    scratch = np.zeros((len(batch_sizes), len(METHODS), len(seeds)))
    finetune = np.zeros((len(batch_sizes), len(FINETUNE), len(seeds)))
    norms = (*METHODS, "BatchNorm", "BatchNorm")
    s = len(seeds)
    for b, bs in enumerate(batch_sizes):
        net = PackedMLP(norms, seeds, momentum=momentum_per_32 * bs / 32).to(dev).train()
        with torch.no_grad():  # the last two blocks of networks start from the pretrained ones
            for kk in (len(METHODS), len(METHODS) + 1):
                nets = slice(kk * s, (kk + 1) * s)
                for w, w0 in zip(net.weights, pre.weights, strict=True):
                    w[nets] = w0
                net.bias[nets] = pre.bias
                for mine, theirs in ((net.norm1[kk], pre.norm1[0]), (net.norm2[kk], pre.norm2[0])):
                    for name in ("weight", "bias", "running_mean", "running_var"):
                        getattr(mine, name).copy_(getattr(theirs, name))
        net.norm1[len(METHODS)].eval()  # frozen BN: running statistics in training and at test
        net.norm2[len(METHODS)].eval()
        lr = torch.full((net.n_nets,), lr_per_32 * bs / 32, device=dev)
        lr[len(METHODS) * s :] = finetune_lr_per_32 * bs / 32
        _train(net, x_train, y_train, bs, samples, lr, 1000, renorm=True)
        acc = _test_accuracy(net, x_test, y_test).reshape(len(norms), s)
        scratch[b], finetune[b] = acc[: len(METHODS)], acc[len(METHODS) :]
    return Comparison(scratch, finetune, pretrained)


def plot_comparison(ax, batch_sizes: Sequence[int], acc: np.ndarray, names: Sequence[str]) -> None:
    """Test error (%) against batch size, one line per method: mean over seeds with a min-max band."""
    x = np.asarray(batch_sizes)
    for k, name in enumerate(names):
        err = 100 * (1 - acc[:, k, :])
        ax.plot(x, err.mean(1), marker=METHOD_MARKERS[name], color=METHOD_COLORS[name], label=name)
        ax.fill_between(x, err.min(1), err.max(1), color=METHOD_COLORS[name], alpha=0.15, linewidth=0)
    ax.set_xscale("log", base=2)
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("batch size (images per step)")
    ax.set_ylabel("test error (%)")
    ax.legend(fontsize=9)
