"""Chapter 9's experiments: accumulation, gradient bias, the grids, and the running-statistics checks."""

from __future__ import annotations

import numpy as np
import torch

from bnbook.demos import limitations as lim
from bnbook.grouped import GroupedMLP


def _data(n: int = 96) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(4)
    x, y = torch.rand(n, 64, generator=gen), torch.arange(n) % 10
    return x, y, x[:30], y[:30]


def test_accumulation_equals_a_large_batch_only_without_batch_statistics() -> None:
    res = lim.accumulation_check(_data(), [0, 1], micro=2, accumulate=4, samples=64, lr_per_32=0.4)
    gap = dict(zip(res.norms, res.gap, strict=True))
    assert gap["none"] < 1e-10 and gap["GroupNorm"] < 1e-10  # the same computation, up to rounding
    assert gap["BatchNorm"] > 1e-3  # normalizing over 2 is not normalizing over 8
    assert set(res.acc) == {"large batch", "accumulated", "small batch"}
    assert res.acc["accumulated"].shape == (3, 2)


def test_gradient_bias_is_zero_only_without_batch_norm() -> None:
    x, y, _, _ = _data(64)
    assert lim.gradient_bias(False, x, y, batch_size=8) < 1e-12
    assert lim.gradient_bias(True, x, y, batch_size=8) > 1e-3


def test_norm_grid_and_composition_shapes() -> None:
    data = _data()
    acc = lim.norm_grid(data, [4, 8], [0, 1], samples=32, lr_per_32=0.4)
    assert acc.shape == (2, len(lim.NORMS), 2) and np.all((acc >= 0) & (acc <= 1))
    comp = lim.composition_grid(data, [None, 1, 2], [0, 1], steps=3, batch_size=8, lr=0.2)
    assert comp.shape == (3, 3, 2)


def test_settling_and_shift_leave_the_network_alone() -> None:
    x, y, xt, yt = _data()
    net = GroupedMLP(["BatchNorm"], [0, 1])
    before = [b.clone() for b in net.buffers()]
    acc = lim.settling(net, x, xt, yt, [1, 2], batch_size=16)
    assert acc.shape == (2, 2)
    out = lim.shift_accuracies(net, x, xt, yt, lambda v: 0.5 * v + 0.1, batch_size=8)
    assert all(v.shape == (2,) for v in out.values())
    for a, b in zip(before, net.buffers(), strict=True):
        torch.testing.assert_close(a, b)


def test_gradient_gap_is_zero_without_batch_norm_and_splits_bias_from_noise() -> None:
    x, y, _, _ = _data(64)
    plain = lim.gradient_gap(x, y, batch_size=8, partitions=3, batch_norm=False)
    assert max(plain) < 1e-12
    gap = lim.gradient_gap(x, y, batch_size=8, partitions=4)
    assert gap.bias <= gap.average + 1e-12 and gap.single > 1e-3 and gap.spread > 0
    # one partition of gradient_gap is gradient_bias's partition
    assert lim.gradient_bias(True, x, y, batch_size=8) > 1e-3


def test_lsuv_grouped_standardizes_only_the_plain_blocks() -> None:
    x, _, _, _ = _data(128)
    net = GroupedMLP(["BatchNorm", "none"], [0, 1])
    before = [w.detach().clone() for w in net.weights]
    lim.lsuv_grouped(net, x)
    c, width = net.copies, net.width
    torch.testing.assert_close(net.weights[0][:c], before[0][:c])  # batch-norm block untouched
    torch.testing.assert_close(net.weights[-1], before[-1])  # output layer untouched
    with torch.no_grad():
        for i in range(c, 2 * c):  # every plain member: hidden pre-activations have mean 0, std 1 on x
            member = net.member(i)
            h = x
            for layer in list(member)[:-1]:
                h = layer(h)
                if isinstance(layer, torch.nn.ReLU):
                    continue
                if not isinstance(layer, torch.nn.Linear):  # the learned shift: pre-activation complete
                    torch.testing.assert_close(h.mean(0), torch.zeros(width), atol=1e-4, rtol=0)
                    torch.testing.assert_close(h.std(0, unbiased=False), torch.ones(width), atol=1e-4, rtol=0)


def test_mlp_control_and_single_class_check_shapes() -> None:
    x, y, xt, yt = _data()
    res = lim.mlp_control((x, y, xt, yt, xt, yt), [(4, 3), (8, 2)], [0, 1], [0.1, 0.4], init_batch=32)
    assert res.val.shape == res.test.shape == (2, 2, 2, 2) and res.methods == ("BatchNorm", "none")
    sc = lim.single_class_check((x, y, xt, yt), [0, 1, 2], steps=3, batch_size=8, lr=0.2)
    assert sc.acc.shape == sc.blind.shape == sc.top_share.shape == (3,)
    assert np.all(sc.blind <= sc.top_share + 1e-12) and np.all((sc.top_share > 0) & (sc.top_share <= 1))
