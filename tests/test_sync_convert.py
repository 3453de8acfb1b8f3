"""SyncBatchNorm.convert_sync_batchnorm on a real model: it keeps the same objects, as torch's does."""

from __future__ import annotations

import torch
from torch import nn

from bnbook import nn as bnn


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4, bias=False), bnn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))


def test_an_optimizer_built_before_conversion_still_updates_the_norm() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    converted = bnn.SyncBatchNorm.convert_sync_batchnorm(model)
    before = converted[1].weight.detach().clone()
    converted(torch.randn(8, 3)).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(converted[1].weight, before)


def test_parameters_and_buffers_are_taken_over_not_copied_like_torch() -> None:
    for convert in (bnn.SyncBatchNorm.convert_sync_batchnorm, nn.SyncBatchNorm.convert_sync_batchnorm):
        model = _model()
        old = model[1]
        new = convert(model)[1]
        assert new.weight is old.weight and new.bias is old.bias
        assert new.running_mean is old.running_mean and new.running_var is old.running_var
        assert new.num_batches_tracked is old.num_batches_tracked


class _SharedNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = bnn.BatchNorm1d(4)
        self.a = nn.Sequential(nn.Linear(4, 4), self.bn)
        self.b = nn.Sequential(nn.Linear(4, 4), self.bn)

    def forward(self, x):
        return self.b(self.a(x))


def test_a_norm_used_in_two_places_stays_one_layer() -> None:
    model = bnn.SyncBatchNorm.convert_sync_batchnorm(_SharedNorm())
    assert type(model.bn) is bnn.SyncBatchNorm
    assert model.a[1] is model.bn and model.b[1] is model.bn
    model(torch.randn(8, 4))
    assert int(model.bn.num_batches_tracked) == 2


def test_qconfig_carries_over_like_torch() -> None:
    model = _model()
    model[1].qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    assert bnn.SyncBatchNorm.convert_sync_batchnorm(model)[1].qconfig is model[1].qconfig


def test_ghost_batch_norm_stays_local() -> None:
    """Ghost batches are per-process sub-batches: their norm is not synchronized."""
    ghost = bnn.GhostBatchNorm(bnn.BatchNorm1d(4), ghost_size=4)
    model = bnn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Linear(3, 4), ghost, bnn.BatchNorm1d(4))
    )
    assert type(model[1].norm) is bnn.BatchNorm1d
    assert type(model[2]) is bnn.SyncBatchNorm
