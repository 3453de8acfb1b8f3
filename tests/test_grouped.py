"""bnbook.grouped: every packed network behaves as the same network built alone from torch.nn layers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnbook import grouped as G
from bnbook import nn as bnn

MLP_NORMS = ("BatchNorm", "FrozenBatchNorm", "BatchRenorm", "GroupNorm", "LayerNorm", "none")
CNN_NORMS = (*MLP_NORMS, "PositionBatchNorm", "InstanceNorm")
SEEDS = (0, 1, 0)  # a repeated seed: the same start twice (for example at two learning rates)


def _mlp() -> G.GroupedMLP:
    return G.GroupedMLP(MLP_NORMS, SEEDS, sizes=(64, 16, 16, 10), groups=4, momentum=0.3)


def _cnn() -> G.GroupedCNN:
    return G.GroupedCNN(CNN_NORMS, SEEDS, channels=(4, 8), groups=2, momentum=0.3)


NETS = {"mlp": _mlp, "cnn": _cnn}


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(n, 64, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def _alone_input(net, x: torch.Tensor) -> torch.Tensor:
    return x if isinstance(net, G.GroupedMLP) else x.reshape(-1, 1, 8, 8)


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("arch", sorted(NETS))
def test_members_equal_separate_networks(arch: str, mode: str) -> None:
    net = NETS[arch]()
    net.set_renorm_limits(2.0, 1.0)
    x, _ = _data(8)
    net.train()
    with torch.no_grad():  # a few batches, so that running statistics differ from their start
        for _ in range(3):
            net(torch.randn(8, *net.in_shape))
    net.train(mode == "train")
    alone = [net.member(i) for i in range(net.n_nets)]  # copied before the forward pass updates them
    with torch.no_grad():
        packed = net(x.reshape(-1, *net.in_shape))
    for i, member in enumerate(alone):
        with torch.no_grad():
            torch.testing.assert_close(member(_alone_input(net, x)), packed[:, i], rtol=1e-5, atol=1e-5)


def test_same_seed_same_start_for_every_norm() -> None:
    net = _mlp()
    for w in net.weights:
        for k in range(len(net.norms)):
            torch.testing.assert_close(w[k * 3], w[0])  # copy 0 of every normalization
            torch.testing.assert_close(w[k * 3 + 2], w[0])  # seed 0 again in copy 2
        assert not torch.equal(w[1], w[0])


def test_frozen_batch_norm_stays_in_eval_mode() -> None:
    net = _mlp().train()
    frozen = [m for m in net.modules() if type(m).__name__ == "_FrozenBatchNorm1d"]
    assert frozen and all(not m.training for m in frozen)
    before = frozen[0].running_mean.clone()
    net(torch.randn(6, 64))
    torch.testing.assert_close(frozen[0].running_mean, before)


@pytest.mark.parametrize("accumulate", [1, 3])
@pytest.mark.parametrize("arch", sorted(NETS))
def test_train_grouped_equals_separate_sgd(arch: str, accumulate: int) -> None:
    """Each network takes exactly its own SGD step, with its own rate, on its own copy's batches."""
    net = NETS[arch]()
    x, y = _data(30)
    alone = [net.member(i).train() for i in range(net.n_nets)]
    lr = torch.linspace(0.05, 0.2, net.n_nets)
    order = G.shuffled_order(len(x), 2 * accumulate, 4, [5, 6, 7])
    limits = [(1.5, 0.5), (2.0, 1.0)]
    G.train_grouped(net, x, y, order, lr, limits=lambda step: limits[step], accumulate=accumulate)
    for i, member in enumerate(alone):
        c = i % net.copies
        opt = torch.optim.SGD(member.parameters(), lr=float(lr[i]))
        for step in range(2):
            for m in member.modules():
                if isinstance(m, (bnn.BatchRenorm1d, bnn.BatchRenorm2d)):
                    m.r_max, m.d_max = limits[step]
            for micro in range(accumulate):
                idx = order[step * accumulate + micro, :, c]
                (F.cross_entropy(member(_alone_input(net, x[idx])), y[idx]) / accumulate).backward()
            opt.step()
            opt.zero_grad()
        ref = net.member(i)
        for a, b in zip(member.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(member.buffers(), ref.buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_grouped_accuracy_modes() -> None:
    net = _mlp()
    x, y = _data(40)
    acc = G.grouped_accuracy(net, x, y)
    assert acc.shape == (len(MLP_NORMS), 3)
    ref = [(net.member(i).eval()(x).argmax(1) == y).double().mean().item() for i in range(net.n_nets)]
    np.testing.assert_allclose(acc.reshape(-1), ref)
    before = [b.clone() for b in net.buffers()]
    batch = G.grouped_accuracy(net, x, y, batch_size=16, seed=1)  # 2 full batches of 16; 8 left out
    assert batch.shape == acc.shape and np.all((batch >= 0) & (batch <= 1))
    for a, b in zip(before, net.buffers(), strict=True):
        torch.testing.assert_close(a, b)  # evaluation with batch statistics leaves the model alone


def test_orders() -> None:
    order = G.shuffled_order(10, 7, 3, [0, 1])
    assert order.shape == (7, 3, 2)
    first = order[:, :, 0].reshape(-1)
    assert sorted(first[:10].tolist()) == list(range(10))  # consecutive permutations
    y = torch.arange(40) % 4
    one = G.class_sorted_order(y, 20, 6, [0, 1], classes_per_batch=1)
    assert one.shape == (20, 6, 2)
    assert all(len(torch.unique(y[one[t, :, c]])) == 1 for t in range(20) for c in range(2))
    two = G.class_sorted_order(y, 20, 6, [0], classes_per_batch=2)
    assert all(len(torch.unique(y[two[t, :, 0]])) == 2 for t in range(20))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: G.GroupedMLP(["BatchNorm", "Magic"], [0]), "unknown normalization"),
        (lambda: G.GroupedMLP(["InstanceNorm"], [0]), "instance norm"),
        (lambda: G.GroupedMLP(["PositionBatchNorm"], [0]), "CNN only"),
        (lambda: G.GroupedMLP(["GroupNorm"], [0], sizes=(64, 10, 10, 10), groups=4), "divide"),
        (lambda: G.GroupedMLP(["none"], []), "at least one"),
        (lambda: G.class_sorted_order(torch.arange(10) % 2, 3, 5, [0], 2), "divide"),
        (lambda: G.GroupedMLP(["none"], [0])(torch.zeros(3, 5)), "expected input"),
    ],
    ids=["unknown", "instance-mlp", "position-mlp", "groups", "no-seeds", "classes", "shape"],
)
def test_bad_input_is_refused(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_train_grouped_checks_its_arguments() -> None:
    net = G.GroupedMLP(["none"], [0, 1], sizes=(64, 8, 8, 10), groups=2)
    x, y = _data(20)
    with pytest.raises(ValueError, match="order"):
        G.train_grouped(net, x, y, G.shuffled_order(20, 2, 4, [0]), 0.1)
    with pytest.raises(ValueError, match="accumulate"):
        G.train_grouped(net, x, y, G.shuffled_order(20, 3, 4, [0, 1]), 0.1, accumulate=2)
    with pytest.raises(ValueError, match="lr"):
        G.train_grouped(net, x, y, G.shuffled_order(20, 2, 4, [0, 1]), [0.1, 0.2, 0.3])
