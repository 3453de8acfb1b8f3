"""Chapter 13's experiments: the packed MLPs, the scaled schedule and the ghost-noise measurement."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnbook.demos import small_batches as sb

SEEDS = (0, 1)


def _packed(momentum: float = 0.3) -> sb.PackedMLP:
    torch.manual_seed(0)
    return sb.PackedMLP((*sb.METHODS, "BatchNorm"), SEEDS, width=16, groups=4, momentum=momentum)


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.rand(n, 64, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_packed_members_equal_separate_networks(mode: str) -> None:
    net = _packed()
    net.set_renorm_limits(2.0, 1.0)
    x, _ = _data(8)
    net.train()
    with torch.no_grad():  # a few batches, so that running statistics differ from their start
        for _ in range(3):
            net(torch.randn(8, net.n_nets, 64))
    net.train(mode == "train")
    nets = [sb.unpack_mlp(net, i) for i in range(net.n_nets)]  # before the forward pass updates them
    with torch.no_grad():
        packed = net(x[:, None, :].expand(-1, net.n_nets, -1))
    for i, alone in enumerate(nets):
        with torch.no_grad():
            torch.testing.assert_close(alone(x), packed[:, i], rtol=1e-5, atol=1e-5)


def test_packed_sgd_steps_equal_separate_sgd() -> None:
    """One training step of the packed networks is each network's own SGD step with its own rate."""
    net = _packed()
    net.set_renorm_limits(2.0, 1.0)
    nets = [sb.unpack_mlp(net, i) for i in range(net.n_nets)]
    lr = torch.linspace(0.05, 0.2, net.n_nets)
    x, y = _data(6)
    losses = F.cross_entropy(
        net(x[:, None, :].expand(-1, net.n_nets, -1)).permute(0, 2, 1),
        y[:, None].expand(-1, net.n_nets),
        reduction="none",
    ).mean(0)
    (losses * lr).sum().backward()
    with torch.no_grad():
        for p in net.parameters():
            p.sub_(p.grad)
    for i, alone in enumerate(nets):
        opt = torch.optim.SGD(alone.parameters(), lr=float(lr[i]))
        F.cross_entropy(alone(x), y).backward()
        opt.step()
        ref = sb.unpack_mlp(net, i)
        for a, b in zip(alone.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for name in ("running_mean", "running_var"):
            if hasattr(alone[1], name):
                torch.testing.assert_close(getattr(alone[1], name), getattr(ref[1], name))


def test_scaled_schedule_matches_the_paper_shape() -> None:
    limits = sb.scaled_schedule(1600)
    assert limits(0) == (1.0, 0.0)
    assert limits(100) == (1.0, 0.0)  # warm-up: 1/16 of the run, plain batch norm
    assert limits(500) == pytest.approx((1.0 + 2.0 * 400 / 700, 5.0))  # d_max full at 5/16
    assert limits(800) == (3.0, 5.0) and limits(1600) == (3.0, 5.0)  # r_max full at 1/2
    with pytest.raises(ValueError, match="total_steps"):
        sb.scaled_schedule(8)


def test_ghost_noise_matches_direct_standardization() -> None:
    """Ghost size = batch: the measurement is plain standardization with the batch's own statistics."""
    sizes, batch, n = [4, 16], 16, 200
    noise = sb.ghost_noise(sizes, batch, n, np.random.default_rng(7))
    x = np.random.default_rng(7).standard_normal((n, batch))
    y = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    assert noise[1] == pytest.approx(np.sqrt(((y - x) ** 2).mean()), rel=1e-8)
    pieces = x.reshape(n, 4, 4)
    y4 = (pieces - pieces.mean(2, keepdims=True)) / pieces.std(2, keepdims=True)
    assert noise[0] == pytest.approx(np.sqrt(((y4 - pieces) ** 2).mean()), rel=1e-8)
    assert noise[0] > noise[1]


def test_compare_small_batches_shapes_and_ranges() -> None:
    x, y = _data(64)
    res = sb.compare_small_batches(
        x,
        y,
        x[:20],
        y[:20],
        [2, 8],
        [0, 1, 2],
        samples=128,
        lr_per_32=0.2,
        pretrain_samples=64,
        finetune_lr_per_32=0.05,
    )
    assert res.scratch.shape == (2, len(sb.METHODS), 3)
    assert res.finetune.shape == (2, len(sb.FINETUNE), 3)
    assert res.pretrained.shape == (3,)
    for a in (res.scratch, res.finetune, res.pretrained):
        assert np.all((a >= 0) & (a <= 1))
