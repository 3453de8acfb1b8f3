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
