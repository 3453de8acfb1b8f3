"""Tools on the batch-norm layers of any model: batch_norm_layers and recalibrate_bn."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnbook import nn as bnn


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 6, bias=False),
        bnn.BatchNorm1d(6, momentum=0.01),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(6, 5, bias=False),
        nn.BatchNorm1d(5, momentum=0.3),
        nn.Linear(5, 3, bias=False),
        nn.BatchNorm1d(3, track_running_stats=False),
    ).double()


def test_batch_norm_layers_finds_every_kind() -> None:
    model = _model()
    model.append(bnn.SyncBatchNorm(3, dtype=torch.float64))
    found = bnn.batch_norm_layers(model)
    assert found == [model[1], model[5], model[8]]  # not the one without running statistics
    assert bnn.batch_norm_layers(nn.Linear(2, 2)) == []


def test_recalibrate_gives_the_average_of_the_batch_statistics() -> None:
    model = _model()
    x = torch.randn(256, 4, dtype=torch.float64) * 3 + 1
    model.train()
    model(x[:32])  # some history in the running statistics and counters
    modes = {m: m.training for m in model.modules()}
    out = bnn.recalibrate_bn(model, x, batch_size=64)
    assert out is model
    # the reference: the same batches through the layers by hand, with dropout off
    h = [x[i : i + 64] for i in range(0, 256, 64)]
    first = [model[0](b) for b in h]
    mean1 = torch.stack([f.mean(0) for f in first]).mean(0)
    var1 = torch.stack([f.var(0, unbiased=True) for f in first]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[1].running_var, var1, rtol=1e-12, atol=1e-12)
    assert int(model[1].num_batches_tracked) == 4
    assert [model[1].momentum, model[5].momentum] == [0.01, 0.3]
    assert {m: m.training for m in model.modules()} == modes


class _Explodes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("the third batch breaks")
        return x


def test_recalibrate_restores_everything_when_a_batch_fails() -> None:
    model = _model()
    model.append(_Explodes())
    model.train()
    model(torch.randn(32, 4, dtype=torch.float64))
    model[-1].calls = 0
    model[3].eval()
    before = copy.deepcopy(model.state_dict())
    modes = {name: m.training for name, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="third batch"):
        bnn.recalibrate_bn(model, torch.randn(256, 4, dtype=torch.float64), batch_size=64)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert [model[1].momentum, model[5].momentum] == [0.01, 0.3]


def test_recalibrate_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no batch-norm layer"):
        bnn.recalibrate_bn(nn.Linear(4, 2), torch.randn(8, 4))
    for bad in (1, 300, 2.5):
        with pytest.raises(ValueError, match="batch_size"):
            bnn.recalibrate_bn(_model(), torch.randn(256, 4, dtype=torch.float64), batch_size=bad)
