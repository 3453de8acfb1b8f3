r"""Many small networks trained side by side as one grouped network (chapters 9 and 13).

A fair comparison of normalizations needs many runs: every method, several
seeds, several learning rates. Each run is a tiny network, and on a CPU a tiny
network spends its time in Python, not in arithmetic. This module therefore
packs ``len(norms) * len(seeds)`` independent networks into one:

* :class:`GroupedMLP` and :class:`GroupedCNN` hold the weights of every
  network in one tensor (batched matrix products, grouped convolutions), and
  one normalization module per method that sees the features of that
  method's networks side by side. Every normalization offered here works per
  feature, per channel or per group inside one network, so the networks never
  mix;
* network ``k * C + c`` (``C = len(seeds)``) uses normalization ``norms[k]``
  and starts from the initial weights of ``seeds[c]``, the same for every
  normalization; its batches come from column ``c`` of the index tensor;
* :func:`train_grouped` takes plain SGD steps with one learning rate per
  network. The loss is the sum over networks of the learning rate times each
  network's mean cross-entropy, and the step is ``p -= p.grad``, so every
  network takes exactly its own SGD step (``tests/test_grouped.py`` checks
  this against separate ``torch.nn`` networks and ``torch.optim.SGD``);
* :func:`shuffled_order` and :func:`class_sorted_order` build the batches,
  :func:`grouped_accuracy` evaluates, with running statistics or with the
  statistics of test batches, and :func:`paired_difference` compares two
  methods over the same seeds;
* :func:`lsuv_grouped` gives the networks without normalization a
  data-dependent (LSUV-style) start, the control that asks how much of batch
  norm's advantage a good initial scale alone explains.

Where the time goes. A step of many tiny networks costs a few hundred small
tensor operations, whatever the number of networks, so :func:`train_grouped`
keeps that number down: it gathers the batches of many steps at once, computes
the loss with the networks first (``(n_nets, B, classes)``, so that every
gradient arrives in the layout a batched matrix product reads fastest), and
updates all parameters with one ``torch._foreach_sub_``. The CNN's first layer,
which has one input channel per network, is a small matrix product per image
and network on the 3x3 patches of its input, cut once from every image, rather
than a grouped convolution. None of this changes what is computed, only the
order of some floating-point sums.

The normalizations, by name (:data:`NORMS`):

``"BatchNorm"``
    :class:`bnbook.nn.BatchNorm1d` / ``2d``: per feature (channel) over the batch (and positions).
``"FrozenBatchNorm"``
    The same layer, held in eval mode even while the network trains: running
    statistics in training and at test, :math:`\gamma` and :math:`\beta` still learn.
``"BatchRenorm"``
    :class:`bnbook.nn.BatchRenorm1d` / ``2d``; set its limits with
    :meth:`GroupedMLP.set_renorm_limits` or the ``limits`` argument of :func:`train_grouped`.
``"PositionBatchNorm"``
    (CNN only) batch norm with one statistic per (channel, position), so that
    each statistic sees one value per image: :math:`m` is the batch size.
``"GroupNorm"``, ``"LayerNorm"``, ``"InstanceNorm"``
    ``torch.nn.GroupNorm`` with ``groups``, 1 or one channel per group and
    network (instance norm is CNN only), as in Wu and He (2018).
``"none"``
    No normalization: a learned per-feature shift, initialized to 0, takes the
    place of the norm's :math:`\beta`.

Every hidden linear or convolutional layer has no bias of its own; the
initial weights and the output layer's bias are drawn as ``torch.nn.Linear``
and ``torch.nn.Conv2d`` draw them, uniform on :math:`\pm 1/\sqrt{\text{fan\_in}}`.
See ``chapters/09_limitations`` and ``chapters/13_small_batches``.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bnbook import nn as bnn
from bnbook.stats import Paired, paired

__all__ = [
    "NORMS",
    "GroupedCNN",
    "GroupedMLP",
    "Paired",
    "class_sorted_order",
    "grouped_accuracy",
    "lsuv_grouped",
    "paired_difference",
    "shuffled_order",
    "train_grouped",
]

#: Every normalization the grouped networks offer (``PositionBatchNorm`` and ``InstanceNorm``: CNN only).
NORMS = (
    "BatchNorm",
    "FrozenBatchNorm",
    "BatchRenorm",
    "PositionBatchNorm",
    "GroupNorm",
    "LayerNorm",
    "InstanceNorm",
    "none",
)


class _FrozenBatchNorm1d(bnn.BatchNorm1d):
    """``bnbook.nn.BatchNorm1d`` that stays in eval mode: ``train()`` cannot switch it to batch statistics."""

    def train(self, mode: bool = True) -> _FrozenBatchNorm1d:
        return super().train(False)


class _FrozenBatchNorm2d(bnn.BatchNorm2d):
    """``bnbook.nn.BatchNorm2d`` that stays in eval mode."""

    def train(self, mode: bool = True) -> _FrozenBatchNorm2d:
        return super().train(False)


class _Shift(nn.Module):
    """A learned per-feature (per-channel) shift, the bias of a network without normalization."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias.reshape(1, -1, *([1] * (x.dim() - 2)))


class _PerPosition(nn.Module):
    """Batch norm with one statistic per (channel, position): a ``BatchNorm1d`` over the flattened map."""

    def __init__(self, channels: int, positions: int, momentum: float) -> None:
        super().__init__()
        self.channels, self.positions = channels, positions
        self.bn = bnn.BatchNorm1d(channels * positions, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.reshape(x.shape[0], -1)).reshape(x.shape)


def _norm(kind: str, copies: int, width: int, groups: int, momentum: float, positions: int) -> nn.Module:
    """One normalization for ``copies`` networks whose ``width`` features (channels) sit side by side.

    ``positions`` is 0 for an MLP, else the number of spatial positions of the feature map.
    """
    total = copies * width
    conv = positions > 0
    if kind == "BatchNorm":
        return (bnn.BatchNorm2d if conv else bnn.BatchNorm1d)(total, momentum=momentum)
    if kind == "FrozenBatchNorm":
        return (_FrozenBatchNorm2d if conv else _FrozenBatchNorm1d)(total, momentum=momentum)
    if kind == "BatchRenorm":
        return (bnn.BatchRenorm2d if conv else bnn.BatchRenorm1d)(total, momentum=momentum)
    if kind == "PositionBatchNorm":
        if not conv:
            raise ValueError("PositionBatchNorm needs positions: it is for the CNN only")
        return _PerPosition(total, positions, momentum)
    if kind == "GroupNorm":
        if width % groups:
            raise ValueError(f"groups ({groups}) must divide the width ({width})")
        return nn.GroupNorm(copies * groups, total)
    if kind == "LayerNorm":
        return nn.GroupNorm(copies, total)  # one group per network: all of its features (and positions)
    if kind == "InstanceNorm":
        if not conv:
            raise ValueError("an MLP has one value per feature: instance norm is not defined for it")
        return nn.GroupNorm(total, total)
    if kind == "none":
        return _Shift(total)
    raise ValueError(f"unknown normalization {kind!r}; expected one of {NORMS}")


def _uniform(gen: torch.Generator, shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
    """torch's default initialization of Linear and Conv2d weights and biases: uniform on +-1/sqrt(fan_in)."""
    bound = 1.0 / math.sqrt(fan_in)
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


def _copy_bn(src: nn.Module, dst: nn.Module, part: slice) -> None:
    """Copy a slice of a batch-norm layer's parameters and running statistics into ``dst``."""
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(dst, name).copy_(getattr(src, name)[part])
        dst.num_batches_tracked.copy_(src.num_batches_tracked)


def _member_norm(module: nn.Module, kind: str, j: int, width: int, groups: int) -> nn.Module:
    """Copy ``j``'s slice of a grouped norm module into a stand-alone module of ``width`` features."""
    part = slice(j * width, (j + 1) * width)
    alone: nn.Module
    if kind == "PositionBatchNorm":
        p = module.positions
        alone = _PerPosition(width, p, module.bn.momentum)
        _copy_bn(module.bn, alone.bn, slice(j * width * p, (j + 1) * width * p))
    elif kind in ("GroupNorm", "LayerNorm", "InstanceNorm"):
        alone = nn.GroupNorm({"GroupNorm": groups, "LayerNorm": 1, "InstanceNorm": width}[kind], width)
        with torch.no_grad():
            alone.weight.copy_(module.weight[part])
            alone.bias.copy_(module.bias[part])
    elif kind == "none":
        alone = _Shift(width)
        with torch.no_grad():
            alone.bias.copy_(module.bias[part])
    else:  # batch norm, frozen batch norm, batch renorm: the same class, momentum, eps and limits
        alone = type(module)(width, eps=module.eps, momentum=module.momentum)
        if kind == "BatchRenorm":
            alone.r_max, alone.d_max = module.r_max, module.d_max
        _copy_bn(module, alone, part)
    alone.train(module.training)
    return alone


@functools.cache
def _patch_index(side: int) -> torch.Tensor:
    """Where each of the 9 values of every 3x3 patch sits in a ``side + 2`` square zero-padded image."""
    pos = torch.arange(side)
    rows = (pos[:, None] + torch.arange(3)[None, :]).T  # (3 offsets, side)
    index = rows[:, None, :, None] * (side + 2) + rows[None, :, None, :]  # (3, 3, side, side)
    return index.reshape(-1)


def _patches(x: torch.Tensor, side: int) -> torch.Tensor:
    """The 3x3 patches (padding 1) of flat square images ``x`` (..., side * side): (..., 9 * side * side)."""
    padded = F.pad(x.reshape(-1, side, side), (1, 1, 1, 1)).reshape(*x.shape[:-1], -1)
    return padded.index_select(-1, _patch_index(side).to(x.device))


class _Grouped(nn.Module):
    """What the grouped MLP and CNN share: the norm blocks, their order, renorm limits."""

    in_shape: tuple[int, ...] = ()

    def _setup(self, norms: Sequence[str], seeds: Sequence[int]) -> None:
        self.norms = tuple(norms)
        self.seeds = tuple(int(s) for s in seeds)
        if not self.norms or not self.seeds:
            raise ValueError("need at least one normalization and one seed")
        bad = [k for k in self.norms if k not in NORMS]
        if bad:
            raise ValueError(f"unknown normalization(s) {bad}; expected names from {NORMS}")
        self.copies = len(self.seeds)
        self.n_nets = len(self.norms) * self.copies

    def _normalize(self, h: torch.Tensor, norms: nn.ModuleList) -> torch.Tensor:
        """Apply each method's norm module to its block of ``copies * width`` features (dim 1)."""
        parts = h.split(h.shape[1] // len(self.norms), 1)
        return torch.cat([nm(part) for nm, part in zip(norms, parts, strict=True)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_nets, classes) of ``x`` (B, n_nets, *in_shape), or of a shared (B, *in_shape)."""
        return self._logits(x).transpose(0, 1)

    def _logits(self, x: torch.Tensor, net_major: bool = False) -> torch.Tensor:  # pragma: no cover
        """Logits in the network-major layout (n_nets, B, classes), the one the loss is computed in."""
        raise NotImplementedError

    def _shared_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, *in_shape) -> (B, n_nets, *in_shape); (B, n_nets, *in_shape) passes."""
        if x.shape[1:] == self.in_shape:
            return x.unsqueeze(1).expand(-1, self.n_nets, *self.in_shape)
        if x.shape[1:] != (self.n_nets, *self.in_shape):
            raise ValueError(
                f"expected input (B, {self.n_nets}, {self.in_shape}) or (B, {self.in_shape}), "
                f"got {tuple(x.shape)}"
            )
        return x

    def set_renorm_limits(self, r_max: float, d_max: float) -> None:
        """Set ``r_max`` and ``d_max`` of every batch-renorm layer."""
        for m in self.modules():
            if isinstance(m, (bnn.BatchRenorm1d, bnn.BatchRenorm2d)):
                m.r_max, m.d_max = r_max, d_max

    def index(self, norm: str, copy_index: int) -> int:
        """The network index of copy ``copy_index`` of normalization ``norm`` (first block that has it)."""
        return self.norms.index(norm) * self.copies + copy_index


class GroupedMLP(_Grouped):
    """``len(norms) * len(seeds)`` independent MLPs ``D -> width -> norm -> ReLU -> ... -> classes``.

    Chapters 9 and 13: in a fully connected layer each feature has one value per
    sample, so batch norm's statistics come from the batch alone (m = batch size).

    Parameters
    ----------
    norms : sequence of str
        One normalization per block of networks, names from :data:`NORMS`
        (not ``"PositionBatchNorm"`` or ``"InstanceNorm"``); a name may repeat.
    seeds : sequence of int
        Initial-weight seed of each copy; ``C = len(seeds)`` copies per normalization.
        A seed may repeat (for example the same start at several learning rates).
    sizes : sequence of int
        ``[D, hidden..., classes]``; every hidden layer has the same width.
    groups : int
        Groups of ``"GroupNorm"``, dividing the hidden width.
    momentum : float
        Running-statistics momentum of the batch-norm and renorm layers (PyTorch's convention).

    Examples
    --------
    >>> net = GroupedMLP(["BatchNorm", "none"], seeds=[0, 1], sizes=(64, 16, 16, 10), groups=4)
    >>> net(torch.zeros(5, 64)).shape
    torch.Size([5, 4, 10])
    """

    def __init__(
        self,
        norms: Sequence[str],
        seeds: Sequence[int],
        sizes: Sequence[int] = (64, 64, 64, 10),
        groups: int = 8,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self._setup(norms, seeds)
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 3 or len(set(sizes[1:-1])) != 1:
            raise ValueError(f"sizes must be [D, hidden..., classes] with equal hidden widths, got {sizes}")
        self.sizes, self.width, self.groups, self.in_shape = sizes, sizes[1], groups, (sizes[0],)
        pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
        g, c = self.n_nets, self.copies
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(g, a, b)) for a, b in pairs)
        self.bias = nn.Parameter(torch.empty(g, sizes[-1]))
        self.norm_layers = nn.ModuleList(
            nn.ModuleList(_norm(kind, c, self.width, groups, momentum, 0) for kind in self.norms)
            for _ in pairs[:-1]
        )
        with torch.no_grad():
            for j, seed in enumerate(self.seeds):  # the same initial weights for every normalization
                gen = torch.Generator().manual_seed(seed)
                ws = [_uniform(gen, (a, b), a) for a, b in pairs]
                bias = _uniform(gen, (sizes[-1],), sizes[-2])
                for k in range(len(self.norms)):
                    for w, param in zip(ws, self.weights, strict=True):
                        param[k * c + j] = w
                    self.bias[k * c + j] = bias

    def _logits(self, x: torch.Tensor, net_major: bool = False) -> torch.Tensor:
        """Logits (n_nets, B, classes) of ``x``: (B, D) shared, (B, n_nets, D), or net-major (n_nets, B, D).

        Between the layers the features sit as (B, n_nets * width), the layout the norm modules
        need; each linear layer is one batched product over the networks (``torch.bmm``). A shared
        input meets the first layer as one matrix product with every network's weights side by side.
        """
        g, width = self.n_nets, self.width
        first = self.weights[0]
        if not net_major and x.shape[1:] == self.in_shape:  # shared: (B, D) @ (D, n_nets * width)
            z = torch.mm(x, first.permute(1, 0, 2).reshape(self.sizes[0], -1))
        else:
            h = x if net_major else self._shared_input(x).transpose(0, 1)
            if h.shape[0] != g or h.shape[2:] != self.in_shape:
                raise ValueError(f"expected net-major input ({g}, B, {self.in_shape}), got {tuple(h.shape)}")
            z = torch.bmm(h, first).transpose(0, 1).reshape(h.shape[1], -1)
        b = z.shape[0]
        for i, norms in enumerate(self.norm_layers):
            if i:
                z = torch.bmm(h.view(b, g, width).transpose(0, 1), self.weights[i])
                z = z.transpose(0, 1).reshape(b, -1)
            h = self._normalize(z, norms).relu()  # (B, n_nets * width)
        return torch.bmm(h.view(b, g, width).transpose(0, 1), self.weights[-1]) + self.bias.unsqueeze(1)

    def member(self, index: int) -> nn.Sequential:
        """Network ``index`` as a stand-alone ``nn.Sequential`` (a copy, with its state and mode)."""
        if not 0 <= index < self.n_nets:
            raise ValueError(f"index must be in [0, {self.n_nets}), got {index}")
        k, j = divmod(index, self.copies)
        layers: list[nn.Module] = []
        for i, w in enumerate(self.weights):
            last = i == len(self.weights) - 1
            lin = nn.Linear(w.shape[1], w.shape[2], bias=last)
            with torch.no_grad():
                lin.weight.copy_(w[index].T)
                if last:
                    lin.bias.copy_(self.bias[index])
            layers.append(lin)
            if not last:
                norm = self.norm_layers[i][k]
                layers += [_member_norm(norm, self.norms[k], j, self.width, self.groups), nn.ReLU()]
        return nn.Sequential(*layers)


class GroupedCNN(_Grouped):
    """``len(norms) * len(seeds)`` independent small CNNs for one-channel square images.

    Each network is ``conv 3x3 (1 -> c1) -> norm -> ReLU -> conv 3x3 stride 2 (c1 -> c2) -> norm
    -> ReLU -> linear (c2 * (side/2)^2 -> classes)``. Grouped convolutions keep the networks
    apart. Chapter 9: batch norm pools each channel over the batch *and* the positions;
    ``"PositionBatchNorm"`` removes the positions from its statistics.

    Parameters
    ----------
    norms, seeds
        As for :class:`GroupedMLP`; every name of :data:`NORMS` is allowed.
    channels : (int, int)
        ``c1`` and ``c2``.
    side : int
        Height and width of the input images (even).
    classes : int
    groups : int
        Groups of ``"GroupNorm"``, dividing both channel counts.
    momentum : float

    Examples
    --------
    >>> net = GroupedCNN(["BatchNorm", "GroupNorm"], seeds=[0], channels=(4, 8), groups=2)
    >>> net(torch.zeros(3, 8, 8)).shape
    torch.Size([3, 2, 10])
    """

    def __init__(
        self,
        norms: Sequence[str],
        seeds: Sequence[int],
        channels: tuple[int, int] = (8, 16),
        side: int = 8,
        classes: int = 10,
        groups: int = 4,
        momentum: float = 0.1,
    ) -> None:
        super().__init__()
        self._setup(norms, seeds)
        if side % 2:
            raise ValueError(f"side must be even, got {side}")
        c1, c2 = self.channels = tuple(int(v) for v in channels)
        self.side, self.groups, self.in_shape = side, groups, (side, side)
        g, c = self.n_nets, self.copies
        half = side // 2
        self.conv1 = nn.Conv2d(g, g * c1, 3, padding=1, groups=g, bias=False)
        self.conv2 = nn.Conv2d(g * c1, g * c2, 3, stride=2, padding=1, groups=g, bias=False)
        self.norm1 = nn.ModuleList(_norm(kind, c, c1, groups, momentum, side * side) for kind in self.norms)
        self.norm2 = nn.ModuleList(_norm(kind, c, c2, groups, momentum, half * half) for kind in self.norms)
        self.weight = nn.Parameter(torch.empty(g, c2 * half * half, classes))
        self.bias = nn.Parameter(torch.empty(g, classes))
        with torch.no_grad():
            for j, seed in enumerate(self.seeds):
                gen = torch.Generator().manual_seed(seed)
                w1 = _uniform(gen, (c1, 1, 3, 3), 9)
                w2 = _uniform(gen, (c2, c1, 3, 3), 9 * c1)
                wl = _uniform(gen, (c2 * half * half, classes), c2 * half * half)
                bl = _uniform(gen, (classes,), c2 * half * half)
                for k in range(len(self.norms)):
                    net = k * c + j
                    self.conv1.weight[net * c1 : (net + 1) * c1] = w1
                    self.conv2.weight[net * c2 : (net + 1) * c2] = w2
                    self.weight[net] = wl
                    self.bias[net] = bl

    def _logits(self, x: torch.Tensor, net_major: bool = False) -> torch.Tensor:
        """Logits (n_nets, B, classes) of ``x`` (B, n_nets, side, side) or shared (B, side, side).

        With ``net_major``, ``x`` holds the 3x3 patches of each network's image instead,
        (B, n_nets, 9 * side * side), as :func:`train_grouped` gathers them. A shared image meets
        the first layer as one ungrouped convolution with every network's filters.
        """
        g, c1 = self.n_nets, self.channels[0]
        if net_major:  # (B, n_nets, 9 * side * side): the 3x3 patches of each network's image
            patches = x
        elif x.shape[1:] == self.in_shape:
            patches = None
            z = F.conv2d(x.unsqueeze(1), self.conv1.weight, padding=1)
        else:
            x = self._shared_input(x)
            patches = _patches(x.reshape(*x.shape[:2], -1), self.side)
        if patches is not None:
            # One input channel per network: one small matrix product per (image, network) on the
            # 3x3 patches, which on a CPU is much faster than a grouped convolution.
            b = patches.shape[0]
            w1 = self.conv1.weight.view(g, c1, 9)
            z = torch.matmul(w1, patches.view(b, g, 9, -1)).view(b, g * c1, *self.in_shape)
        h = self._normalize(z, self.norm1).relu()
        h = self._normalize(self.conv2(h), self.norm2).relu()
        h = h.reshape(h.shape[0], self.n_nets, -1).transpose(0, 1)
        return torch.bmm(h, self.weight) + self.bias.unsqueeze(1)

    def member(self, index: int) -> nn.Sequential:
        """Network ``index`` as a stand-alone ``nn.Sequential`` taking (B, 1, side, side), for checking."""
        if not 0 <= index < self.n_nets:
            raise ValueError(f"index must be in [0, {self.n_nets}), got {index}")
        k, j = divmod(index, self.copies)
        (c1, c2), kind = self.channels, self.norms[k]
        conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        conv2 = nn.Conv2d(c1, c2, 3, stride=2, padding=1, bias=False)
        lin = nn.Linear(self.weight.shape[1], self.weight.shape[2])
        with torch.no_grad():
            conv1.weight.copy_(self.conv1.weight[index * c1 : (index + 1) * c1])
            conv2.weight.copy_(self.conv2.weight[index * c2 : (index + 1) * c2])
            lin.weight.copy_(self.weight[index].T)
            lin.bias.copy_(self.bias[index])
        n1 = _member_norm(self.norm1[k], kind, j, c1, self.groups)
        n2 = _member_norm(self.norm2[k], kind, j, c2, self.groups)
        return nn.Sequential(conv1, n1, nn.ReLU(), conv2, n2, nn.ReLU(), nn.Flatten(), lin)


# --- batches --------------------------------------------------------------------------------------
def shuffled_order(n: int, steps: int, batch_size: int, seeds: Sequence[int]) -> torch.Tensor:
    """Batches from consecutive random permutations of ``range(n)``, one data order per seed.

    Returns
    -------
    Tensor of int64, shape (steps, batch_size, len(seeds))
        Column ``c`` holds the batches of copy ``c``, drawn from ``torch.Generator().manual_seed(seeds[c])``.
    """
    if n < 1 or steps < 0 or batch_size < 1:
        raise ValueError(f"need n >= 1, steps >= 0, batch_size >= 1; got {n}, {steps}, {batch_size}")
    total = steps * batch_size
    cols = []
    for s in seeds:
        gen = torch.Generator().manual_seed(int(s))
        perms = [torch.randperm(n, generator=gen) for _ in range(-(-total // n))]
        cols.append(torch.cat(perms)[:total] if perms else torch.empty(0, dtype=torch.long))
    return torch.stack(cols, 1).reshape(steps, batch_size, len(seeds))


def class_sorted_order(
    y: torch.Tensor, steps: int, batch_size: int, seeds: Sequence[int], classes_per_batch: int = 1
) -> torch.Tensor:
    """Batches that each hold ``classes_per_batch`` classes, equally many images of each (non-i.i.d. batches).

    The classes of a batch are drawn at random (without repetition within the batch); within a
    class the images come in random order without replacement, refilled when used up. So the only
    difference from :func:`shuffled_order` is what a batch holds together. ``classes_per_batch``
    must divide ``batch_size``. Shape (steps, batch_size, len(seeds)), as :func:`shuffled_order`.
    """
    if batch_size % classes_per_batch:
        raise ValueError(f"classes_per_batch ({classes_per_batch}) must divide batch_size ({batch_size})")
    y_cpu = y.cpu()
    classes = torch.unique(y_cpu)
    if classes_per_batch > len(classes):
        raise ValueError(f"only {len(classes)} classes, asked for {classes_per_batch} per batch")
    per_class = batch_size // classes_per_batch
    pools = {int(c): torch.nonzero(y_cpu == c).flatten() for c in classes}
    cols = []
    for s in seeds:
        gen = torch.Generator().manual_seed(int(s))
        left = {c: torch.empty(0, dtype=torch.long) for c in pools}
        batches = []
        for _ in range(steps):
            chosen = classes[torch.randperm(len(classes), generator=gen)[:classes_per_batch]]
            parts = []
            for c in chosen.tolist():
                if len(left[c]) < per_class:
                    pool = pools[c]
                    left[c] = torch.cat([left[c], pool[torch.randperm(len(pool), generator=gen)]])
                parts.append(left[c][:per_class])
                left[c] = left[c][per_class:]
            batches.append(torch.cat(parts))
        cols.append(torch.stack(batches) if batches else torch.empty(0, batch_size, dtype=torch.long))
    return torch.stack(cols, 2)


# --- training and evaluation ----------------------------------------------------------------------
def train_grouped(
    net: GroupedMLP | GroupedCNN,
    x: torch.Tensor,
    y: torch.Tensor,
    order: torch.Tensor,
    lr: float | Sequence[float] | torch.Tensor,
    limits: Callable[[int], tuple[float, float]] | None = None,
    accumulate: int = 1,
    on_step: Callable[[int], None] | None = None,
) -> GroupedMLP | GroupedCNN:
    """Plain SGD on cross-entropy for every network of ``net`` at once (chapters 9 and 13).

    Parameters
    ----------
    net : GroupedMLP or GroupedCNN
        Trained in place, in training mode (``"FrozenBatchNorm"`` layers stay in eval mode).
    x : Tensor, shape (N, D)
        Flat inputs (images are reshaped to the network's ``in_shape``).
    y : Tensor of int64, shape (N,)
    order : Tensor of int64, shape (micro_steps, batch, C)
        Indices into ``x``; at micro-step ``t`` every normalization's copy ``c`` sees
        ``x[order[t, :, c]]`` (from :func:`shuffled_order` or :func:`class_sorted_order`).
    lr : float or sequence of n_nets floats
        Learning rate of every network, or one per network.
    limits : callable, optional
        ``limits(step) -> (r_max, d_max)`` for the batch-renorm layers, called before each step.
    accumulate : int
        Micro-batches whose mean gradient makes one SGD step (gradient accumulation);
        ``micro_steps`` must be a multiple of it. Every forward pass still normalizes over its own
        micro-batch: accumulation enlarges the batch of the gradient, not that of the statistics.
    on_step : callable, optional
        ``on_step(steps_done)``, called after every SGD step with the number of steps taken so far
        (1, 2, ...), with ``net`` in training mode. It may evaluate the networks (for example with
        :func:`grouped_accuracy`, which leaves them as they were), so that one long run also gives
        the results of every shorter budget on the same batches: a run of ``T`` steps is the first
        ``T`` steps of a longer one whose ``order`` begins with the same batches.

    Returns
    -------
    the trained ``net``
    """
    if order.dim() != 3 or order.shape[2] != net.copies:
        raise ValueError(f"order must have shape (steps, batch, {net.copies}), got {tuple(order.shape)}")
    if accumulate < 1 or order.shape[0] % accumulate:
        raise ValueError(
            f"accumulate ({accumulate}) must be >= 1 and divide the {order.shape[0]} micro-steps"
        )
    device = net.bias.device
    lr_t = torch.as_tensor(lr, dtype=net.bias.dtype, device=device).flatten()
    if lr_t.numel() == 1:
        lr_t = lr_t.expand(net.n_nets)
    if lr_t.numel() != net.n_nets:
        raise ValueError(f"lr must be a number or have {net.n_nets} entries, got {lr_t.numel()}")
    k, g = len(net.norms), net.n_nets
    mlp = isinstance(net, GroupedMLP)
    order = order.to(device)
    steps, batch = order.shape[:2]
    # Each network's share of the loss carries its learning rate (and 1 / accumulate), so the step
    # p -= p.grad is every network's own SGD step.
    weights = lr_t / accumulate
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    renorms = [m for m in net.modules() if isinstance(m, (bnn.BatchRenorm1d, bnn.BatchRenorm2d))]
    net.train()
    # The batches of ``chunk`` micro-steps are gathered at once (about 16 MB of inputs): every
    # network's input in the layout the first layer reads, network k * C + c seeing copy c's batch.
    if not mlp:  # the CNN's first layer reads 3x3 patches: cut them once from every image
        x = _patches(x.reshape(len(x), -1), net.side)
    per_step = g * batch * x.shape[1]
    chunk = max(1, min(steps, (4 << 20) // max(per_step, 1)))
    for start in range(0, steps, chunk):
        idx = order[start : start + chunk]  # (t, B, C)
        if mlp:  # net-major (t, n_nets, B, D)
            xs = x[idx.transpose(1, 2)].repeat(1, k, 1, 1)
        else:  # batch-major patches (t, B, n_nets, 9 * side * side): the networks are the channels
            xs = x[idx].repeat(1, 1, k, 1)
        ys = y[idx.transpose(1, 2)].repeat(1, k, 1).reshape(len(idx), -1)  # (t, n_nets * B)
        for j in range(len(idx)):
            step, micro = divmod(start + j, accumulate)
            if renorms and limits is not None and micro == 0:
                r_max, d_max = limits(step)
                for m in renorms:
                    m.r_max, m.d_max = r_max, d_max
            logits = net._logits(xs[j], net_major=True)  # (n_nets, B, classes)
            losses = F.cross_entropy(logits.reshape(g * batch, -1), ys[j], reduction="none")
            torch.dot(losses.view(g, batch).mean(1), weights).backward()
            if micro == accumulate - 1:
                with torch.no_grad():
                    torch._foreach_sub_(params, [p.grad for p in params])
                for p in params:
                    p.grad = None
                if on_step is not None:
                    on_step(step + 1)
    return net


@torch.no_grad()
def grouped_accuracy(
    net: GroupedMLP | GroupedCNN,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Accuracy of every network on ``(x, y)``, shape (len(norms), C).

    With ``batch_size=None``, in eval mode: batch norm uses its running statistics. With a
    ``batch_size``, a copy of the network in training mode sees shuffled batches of that size
    (seeded by ``seed``), so batch norm uses the statistics of each test batch; only full batches
    count. The network's own modes and statistics are left as they were.
    """
    if batch_size is None:
        modes = [m.training for m in net.modules()]
        net.eval()
        logits = net(x.reshape(-1, *net.in_shape))
        for m, mode in zip(net.modules(), modes, strict=True):
            m.training = mode
        correct = (logits.argmax(-1) == y[:, None]).double().mean(0)
    else:
        other = copy.deepcopy(net).train()
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).to(x.device)
        full = (len(y) // batch_size) * batch_size
        hits = torch.zeros(net.n_nets, dtype=torch.float64, device=x.device)
        for start in range(0, full, batch_size):
            idx = perm[start : start + batch_size]
            hits += (other(x[idx].reshape(-1, *net.in_shape)).argmax(-1) == y[idx, None]).double().sum(0)
        correct = hits / full
    return correct.reshape(len(net.norms), net.copies).cpu().numpy()


# --- a data-dependent start for the networks without normalization --------------------------------
@torch.no_grad()
def lsuv_grouped(net: GroupedMLP, x: torch.Tensor, eps: float = 1e-8) -> GroupedMLP:
    r"""LSUV-style initialization of every ``"none"`` block of a :class:`GroupedMLP` (chapter 9).

    What :func:`bnbook.models.lsuv_init` does for an ``nn.Sequential``, network by network: layer
    by layer from the input, each hidden unit's weights are divided by the standard deviation of
    its pre-activation on the batch ``x``, and the learned shift that stands in for the norm's
    :math:`\beta` is set to minus the (rescaled) mean, so that every hidden pre-activation has

    .. math::

        \operatorname{mean}_x z_j = 0, \qquad \operatorname{std}_x z_j = 1

    on ``x`` (biased standard deviation; a unit whose spread is below ``eps`` keeps its scale).
    The output layer is left as it is, and so are the blocks with another normalization.

    Parameters
    ----------
    net : GroupedMLP
        Changed in place; its training or eval mode is kept.
    x : Tensor, shape (N, D)
        The images every network is initialized on (the same for all).
    eps : float

    Returns
    -------
    ``net``

    Examples
    --------
    >>> net = lsuv_grouped(GroupedMLP(["BatchNorm", "none"], seeds=[0]), torch.rand(256, 64))
    """
    if "none" not in net.norms:
        raise ValueError("the network has no 'none' block to initialize")
    if x.dim() != 2 or x.shape[1] != net.sizes[0]:
        raise ValueError(f"x must have shape (N, {net.sizes[0]}), got {tuple(x.shape)}")
    was = net.training
    net.eval()
    c, width, g = net.copies, net.width, net.n_nets
    h = x.unsqueeze(0).expand(g, -1, -1)  # (n_nets, N, D): every network sees all of x
    b = x.shape[0]
    for w, norms in zip(net.weights[:-1], net.norm_layers, strict=True):
        z = torch.bmm(h, w)  # (n_nets, N, width)
        for k, kind in enumerate(net.norms):
            if kind != "none":
                continue
            part = slice(k * c, (k + 1) * c)
            zk = z[part].double()
            mean, std = zk.mean(1), zk.std(1, unbiased=False)  # (C, width)
            scale = torch.where(std > eps, 1.0 / std, torch.ones_like(std))
            w[part] *= scale.unsqueeze(1).to(w.dtype)
            norms[k].bias.copy_((-mean * scale).reshape(-1).to(w.dtype))
        z = torch.bmm(h, w).transpose(0, 1).reshape(b, -1)
        h = net._normalize(z, norms).relu().reshape(b, g, width).transpose(0, 1)
    net.train(was)
    return net


# --- paired comparisons over seeds ----------------------------------------------------------------
def paired_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> Paired:
    """Mean and standard error of ``a - b`` over paired seeds, with its 95% interval and verdict.

    :func:`bnbook.stats.paired`, under the name chapters 9 and 13 use. The
    ``verdict`` is ``"higher"`` or ``"lower"`` when the interval excludes 0,
    else ``"about the same"`` (these chapters compare errors, so there
    ``"lower"`` means that ``a`` is better).

    Examples
    --------
    >>> paired_difference([3.0, 4.0, 5.0], [1.0, 2.5, 2.5]).verdict
    'higher'
    """
    return paired(a, b)
