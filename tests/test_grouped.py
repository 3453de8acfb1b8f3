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


def test_on_step_sees_every_shorter_budget_of_one_run() -> None:
    """A run of 3 steps is the first 3 steps of a run of 5 on the same batches: on_step evaluates it there."""
    x, y = _data(40)
    order = G.shuffled_order(len(x), 5, 4, [5, 6, 7])
    seen, snapshot = [], {}

    def on_step(done: int) -> None:
        seen.append(done)
        if done == 3:
            snapshot["acc"] = G.grouped_accuracy(long, x, y)
            snapshot["state"] = {k: v.clone() for k, v in long.state_dict().items()}

    long = _mlp()
    G.train_grouped(long, x, y, order, 0.1, on_step=on_step)
    assert seen == [1, 2, 3, 4, 5]
    short = G.train_grouped(_mlp(), x, y, order[:3], 0.1)
    np.testing.assert_array_equal(snapshot["acc"], G.grouped_accuracy(short, x, y))
    for key, value in short.state_dict().items():
        torch.testing.assert_close(snapshot["state"][key], value, rtol=0, atol=0)
    steps = []  # with accumulation, once per SGD step
    G.train_grouped(
        _mlp(), x, y, G.shuffled_order(len(x), 4, 4, [5, 6, 7]), 0.1, accumulate=2, on_step=steps.append
    )
    assert steps == [1, 2]


def test_network_major_logits_equal_the_forward_pass() -> None:
    """The layout the training loss uses, (n_nets, B, classes), holds the forward pass's logits."""
    x, _ = _data(6)
    for net in (_mlp(), _cnn()):
        net.train()
        per_net = torch.rand(6, net.n_nets, *net.in_shape)
        with torch.no_grad():
            ref = net(per_net)  # (B, n_nets, classes)
            if isinstance(net, G.GroupedMLP):
                got = net._logits(per_net.transpose(0, 1).contiguous(), net_major=True)
            else:
                patches = G._patches(per_net.reshape(6, net.n_nets, -1), net.side)
                got = net._logits(patches, net_major=True)
        torch.testing.assert_close(got.transpose(0, 1), ref, rtol=1e-5, atol=1e-6)


def test_patches_are_unfold() -> None:
    """The CNN's first layer reads the 3x3 patches (padding 1) that ``F.unfold`` cuts."""
    images = torch.rand(5, 3, 64)
    patches = G._patches(images, 8)
    assert patches.shape == (5, 3, 9 * 64)
    ref = F.unfold(images.reshape(15, 1, 8, 8), 3, padding=1).reshape(5, 3, -1)
    torch.testing.assert_close(patches, ref, rtol=0, atol=0)


def test_cnn_members_equal_separate_networks_on_their_own_images() -> None:
    """Each network of the CNN fed its own images (not one shared batch) is the network built alone."""
    net = _cnn().train()
    images = torch.rand(6, net.n_nets, 8, 8)
    alone = [net.member(i) for i in range(net.n_nets)]
    with torch.no_grad():
        packed = net(images)
        for i, member in enumerate(alone):
            torch.testing.assert_close(member(images[:, i, None]), packed[:, i], rtol=1e-5, atol=1e-5)


def test_lsuv_grouped_standardizes_only_the_plain_blocks() -> None:
    x, _ = _data(128)
    net = G.GroupedMLP(["BatchNorm", "none"], [0, 1]).train()
    before = [w.detach().clone() for w in net.weights]
    assert G.lsuv_grouped(net, x) is net and net.training
    c, width = net.copies, net.width
    torch.testing.assert_close(net.weights[0][:c], before[0][:c])  # batch-norm block untouched
    torch.testing.assert_close(net.weights[-1], before[-1])  # output layer untouched
    with torch.no_grad():
        for i in range(c, 2 * c):  # every plain member: hidden pre-activations have mean 0, std 1 on x
            h = x
            for layer in list(net.member(i))[:-1]:
                h = layer(h)
                if not isinstance(layer, (torch.nn.Linear, torch.nn.ReLU)):  # after the learned shift
                    torch.testing.assert_close(h.mean(0), torch.zeros(width), atol=1e-4, rtol=0)
                    torch.testing.assert_close(h.std(0, unbiased=False), torch.ones(width), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="no 'none' block"):
        G.lsuv_grouped(G.GroupedMLP(["BatchNorm"], [0]), x)
    with pytest.raises(ValueError, match="shape"):
        G.lsuv_grouped(net, x[:, :10])
