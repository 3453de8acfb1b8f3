"""Tests of bnbook.demos.inference (chapter 15)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnbook.demos import inference as inf
from bnbook.nn import fold_batch_norms


def test_module_summary_counts():
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    s = inf.module_summary(model)
    assert s == {"layers": 4, "batch-norm layers": 1, "parameters": 12 + 8 + 10, "buffer entries": 4 + 4 + 1}


def test_two_branch_keeps_its_batch_norm_and_its_output():
    torch.manual_seed(0)
    net = inf.TwoBranch(5, 3)
    with torch.no_grad():
        net(torch.randn(8, 5))  # fill the running statistics
    net.eval()
    x = torch.randn(6, 5)
    expected = torch.relu(net.bn(x @ net.a.weight.T + x @ net.b.weight.T))
    torch.testing.assert_close(net(x), expected)
    folded = fold_batch_norms(net)
    assert any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    torch.testing.assert_close(folded(x), expected)


def test_interleaved_times():
    calls = []
    times = inf.interleaved_times(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 3, 2, warmup=1
    )
    assert set(times) == {"a", "b"} and all(t.shape == (3,) and np.all(t >= 0) for t in times.values())
    assert calls[:8] == ["a", "a", "b", "b", "b", "b", "a", "a"] and len(calls) == 16  # order alternates
    with pytest.raises(ValueError):
        inf.interleaved_times({"a": lambda: None}, 0, 1)
    with pytest.raises(ValueError, match="reduce"):
        inf.interleaved_times({"a": lambda: None}, 1, 1, reduce="median")


def test_interleaved_times_min_keeps_the_fastest_call():
    """With reduce="min" a round records its fastest call: one slow call in a round does not count."""
    import time

    state = {"n": 0}

    def sometimes_slow():
        state["n"] += 1
        if state["n"] % 3 == 1:  # the first of every three calls sleeps
            time.sleep(0.02)

    t_min = inf.interleaved_times({"f": sometimes_slow}, 2, 3, warmup=0, reduce="min")["f"]
    assert np.all(t_min < 0.01)
    state["n"] = 0
    t_mean = inf.interleaved_times({"f": sometimes_slow}, 2, 3, warmup=0)["f"]
    assert np.all(t_mean > 0.02 / 3 * 0.9)


def test_median_range_trims_the_extremes():
    med, lo, hi = inf.median_range([5.0, 1.0, 100.0, 2.0, 3.0, 4.0, 0.01], k=2)
    assert (med, lo, hi) == (3.0, 1.0, 5.0)  # sorted: 0.01, 1, 2, 3, 4, 5, 100
    assert inf.median_range([2.0], k=1) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        inf.median_range([1.0, 2.0], k=2)


def test_plot_times_draws_the_trimmed_range():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]) * 1e-6  # seconds; one wild round
    fig, ax = plt.subplots()
    inf.plot_times(ax, {"a": values}, ["a"], k=2)
    line = ax.lines[0]
    np.testing.assert_allclose(line.get_xdata(), [2.0, 6.0])  # 2nd-lowest to 2nd-highest, in µs
    np.testing.assert_allclose(ax.lines[1].get_xdata(), [4.0])  # the median
    assert "2nd-lowest to 2nd-highest" in ax.get_xlabel()
    plt.close(fig)
