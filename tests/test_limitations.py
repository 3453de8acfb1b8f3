"""Chapter 9's experiments: accumulation, gradient bias, the grids, and the running-statistics checks."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bnbook.demos import limitations as lim
from bnbook.grouped import GroupedMLP
from bnbook.models import mlp


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


def test_mlp_control_and_single_class_check_shapes() -> None:
    x, y, xt, yt = _data()
    res = lim.mlp_control((x, y, xt, yt, xt, yt), [(4, 3), (8, 2)], [0, 1], [0.1, 0.4], init_batch=32)
    assert res.val.shape == res.test.shape == (2, 2, 2, 2) and res.methods == ("BatchNorm", "none")
    sc = lim.single_class_check((x, y, xt, yt), [0, 1, 2], steps=3, batch_size=8, lr=0.2)
    assert sc.acc.shape == sc.blind.shape == sc.top_share.shape == (3,)
    assert np.all(sc.blind <= sc.top_share + 1e-12) and np.all((sc.top_share > 0) & (sc.top_share <= 1))


def test_mean_of_batch_gradients_equals_one_gradient_per_batch() -> None:
    """All batches at once, each with its own statistics, give the mean of the gradients of one batch each."""
    x, y, _, _ = _data(64)
    full, means = lim._mean_gradients(True, x, y, batch_size=8, seed=3, partitions=2)
    torch.manual_seed(3)
    net = mlp([64, 32, 10], activation="relu", batch_norm=True).double().train()

    def grad(xb, yb):
        net.zero_grad()
        F.cross_entropy(net(xb), yb).backward()
        return torch.cat([p.grad.reshape(-1) for p in net.parameters()])

    for p in range(2):
        perm = torch.randperm(64, generator=torch.Generator().manual_seed(3 + 1000 * p))
        xs, ys = x.double()[perm], y[perm]
        if p == 0:
            torch.testing.assert_close(full, grad(xs, ys), rtol=1e-10, atol=1e-12)
        ref = torch.stack([grad(xb, yb) for xb, yb in zip(xs.split(8), ys.split(8), strict=True)]).mean(0)
        torch.testing.assert_close(means[p], ref, rtol=1e-10, atol=1e-12)


def test_mlp_control_shares_the_networks_of_one_batch_size() -> None:
    """The shorter budget of a batch size is read off the longer run: it equals a run of its own."""
    x, y, xt, yt = _data()
    data = (x, y, xt, yt, xt, yt)
    together = lim.mlp_control(data, [(8, 2), (8, 5)], [0, 1], [0.1, 0.4], init_batch=32)
    alone = lim.mlp_control(data, [(8, 2)], [0, 1], [0.1, 0.4], init_batch=32)
    np.testing.assert_array_equal(together.test[0], alone.test[0])
    np.testing.assert_array_equal(together.val[0], alone.val[0])
    assert together.steps == (2, 5) and together.settings == ((8, 2), (8, 5))


def test_composition_grid_trains_every_composition_as_its_own_networks() -> None:
    """Packed into one grouped network, each composition gives what it gives trained alone."""
    data = _data()
    both = lim.composition_grid(data, [None, 1], [0, 1], steps=4, batch_size=8, lr=0.2)
    for i, k in enumerate([None, 1]):
        alone = lim.composition_grid(data, [k], [0, 1], steps=4, batch_size=8, lr=0.2)
        np.testing.assert_allclose(both[i], alone[0], atol=1e-12)


def test_batch_size_frames_describe_what_they_draw() -> None:
    from matplotlib.figure import Figure

    rng = np.random.default_rng(0)
    acc_cnn = rng.uniform(0.9, 1.0, (3, len(lim.NORMS), 4))
    acc_mlp = rng.uniform(0.6, 1.0, (3, 2, 4))
    frames = lim.BatchSizeFrames([2, 8, 32], acc_cnn, acc_mlp, sigma=2.0, seed=1, n_batches=500)
    text = frames.describe(8)
    cnn_bn = 100 * (1 - acc_cnn[1, lim.NORMS.index("BatchNorm")].mean())
    mlp_bn = 100 * (1 - acc_mlp[1, 0].mean())
    assert text.startswith("At a batch of 8,") and f"{cnn_bn:.1f}%" in text and f"{mlp_bn:.1f}%" in text
    assert f"{frames.inside(8):.0%}" in text and frames.inside(2) < frames.inside(32)
    fig = Figure()
    frames.draw(fig, 8)
    assert fig.axes[0].get_title().startswith(f"m = 8: {frames.inside(8):.0%}")
