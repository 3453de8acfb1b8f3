"""Chapter 13's experiments: the scaled schedule, the ghost-noise measurement, the sweep and fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bnbook.demos import small_batches as sb
from bnbook.grouped import GroupedMLP, grouped_accuracy


def _data(n: int = 64) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(n, 64, generator=gen), torch.arange(n) % 10
    return x, y, x[:20], y[:20], x[20:40], y[20:40]


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


def test_sweep_shapes_and_best_learning_rate() -> None:
    data = _data()
    res, kept = sb.sweep(data, [2, 8], [16, 16], [0, 1, 2], [0.1, 0.4], keep=(2,))
    assert res.val.shape == res.test.shape == (2, len(sb.METHODS), 2, 3)
    assert set(kept) == {2} and isinstance(kept[2], GroupedMLP)
    best = res.best_lr()
    assert best.shape == (2, len(sb.METHODS))
    picked = res.best_test()
    for b in range(2):
        for m in range(len(sb.METHODS)):
            assert res.val[b, m, best[b, m]].mean() == res.val[b, m].mean(1).max()
            np.testing.assert_array_equal(picked[b, m], res.test[b, m, best[b, m]])
    # the kept network is the one that produced the test accuracies
    acc = grouped_accuracy(kept[2], data[4], data[5]).reshape(len(sb.METHODS), 2, 3)
    np.testing.assert_array_equal(acc, res.test[0])


def test_sorted_orders_feed_the_sweep() -> None:
    data = _data()
    res, _ = sb.sweep(
        data,
        ["shuffled", "one class"],
        [4, 4],
        [0, 1],
        [0.2],
        methods=("BatchNorm", "none"),
        orders=sb.sorted_orders(data[1], 4, [None, 1]),
    )
    assert res.test.shape == (2, 2, 1, 2)


def test_statistics_check_runs_every_evaluation() -> None:
    data = _data()
    res, kept = sb.sweep(data, [2], [16], [0, 1], [0.1, 0.4], methods=("BatchNorm", "none"), keep=(2,))
    out = sb.statistics_check(kept[2], "BatchNorm", 1, 2, data[0], data[4], data[5])
    assert set(out) == {"running", "training set", "test batches of 32", "test batches of 2"}
    np.testing.assert_array_equal(out["running"], res.test[0, 0, 1])
    assert all(v.shape == (2,) for v in out.values())


def test_finetune_starts_from_the_pretrained_networks() -> None:
    pre = GroupedMLP(["BatchNorm"], [0, 1])
    with torch.no_grad():
        pre.norm_layers[0][0].running_mean.normal_()
    net = GroupedMLP(sb.FINETUNE, [0, 1] * 2)
    sb._load(net, [pre, pre, pre])
    x = torch.rand(5, 64)
    pre.eval()
    net.eval()
    with torch.no_grad():
        ref, out = pre(x), net(x)
    for i in range(net.n_nets):
        torch.testing.assert_close(out[:, i], ref[:, i % 2])


def test_finetune_on_shift_shapes() -> None:
    res = sb.finetune_on_shift(_data(), lambda v: 0.5 * v, [2, 4], [0, 1], [0.05, 0.1], 32, 64, 0.2)
    assert res.sweep.test.shape == (2, len(sb.FINETUNE), 2, 2)
    assert set(res.pretrained) == {"clean", "shifted, running statistics", "shifted, recalibrated"}
    assert res.sweep.steps == (16, 8)


def test_sweep_together_trains_each_setting_as_it_would_alone() -> None:
    """Settings of one batch size and budget packed into one grouped network give their own results."""
    data = _data()
    kw = dict(methods=("BatchNorm", "BatchRenorm", "none"), orders=sb.sorted_orders(data[1], 4, [None, 1]))
    apart, _ = sb.sweep(data, ["shuffled", "one class"], [16, 16], [0, 1], [0.1, 0.4], **kw)
    together, kept = sb.sweep(
        data, ["shuffled", "one class"], [16, 16], [0, 1], [0.1, 0.4], together=True, **kw
    )
    np.testing.assert_allclose(together.test, apart.test, atol=1e-12)
    np.testing.assert_allclose(together.val, apart.val, atol=1e-12)
    assert kept == {}
    with pytest.raises(ValueError, match="same steps"):
        sb.sweep(data, ["shuffled", "one class"], [16, 20], [0], [0.1], together=True, **kw)


@pytest.mark.parametrize("batch", [3, 4])
def test_a_lone_batch_size_gives_what_it_gives_beside_another(batch, monkeypatch) -> None:
    # a lone even batch size trains in two halves of its seeds, side by side; an odd one is not split
    from bnbook.data import load_digits

    monkeypatch.setenv("BNBOOK_WORKERS", "2")
    d = load_digits(seed=0)
    xa, ya = torch.tensor(d.x_train), torch.tensor(d.y_train)
    data = (xa[270:], ya[270:], xa[:270], ya[:270], torch.tensor(d.x_test), torch.tensor(d.y_test))
    lone, _ = sb.sweep(data, [batch], [40], [0, 1, 2, 3, 4], [0.4], methods=("BatchNorm",))
    pair, _ = sb.sweep(data, [batch, 8], [40, 40], [0, 1, 2, 3, 4], [0.4], methods=("BatchNorm",))
    assert np.array_equal(lone.val[0], pair.val[0]) and np.array_equal(lone.test[0], pair.test[0])
