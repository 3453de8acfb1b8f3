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
