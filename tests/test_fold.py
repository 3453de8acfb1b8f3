"""Folding batch norm into the layer before it: exact in float64, for single layers and whole models."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bnbook import nn as bnn

CASES = [
    (lambda bias: nn.Linear(5, 4, bias=bias), nn.BatchNorm1d, (7, 5)),
    (lambda bias: nn.Conv1d(3, 4, 3, bias=bias), nn.BatchNorm1d, (2, 3, 9)),
    (lambda bias: nn.Conv2d(3, 4, 3, padding=1, stride=2, bias=bias), bnn.BatchNorm2d, (2, 3, 7, 7)),
    (lambda bias: nn.Conv2d(4, 4, 3, groups=2, bias=bias), nn.BatchNorm2d, (2, 4, 6, 6)),
    (lambda bias: nn.Conv3d(2, 4, 2, bias=bias), bnn.BatchNorm3d, (2, 2, 3, 3, 3)),
]
IDS = ["linear", "conv1d", "conv2d-strided", "conv2d-groups", "conv3d"]


def _trained_bn(bn_cls, affine: bool) -> nn.Module:
    """A batch norm with non-trivial running statistics and affine parameters, in eval mode."""
    gen = torch.Generator().manual_seed(3)
    bn = bn_cls(4, affine=affine, dtype=torch.float64)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(4, generator=gen, dtype=torch.float64) + 0.2)
        if affine:
            bn.weight.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
            bn.bias.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
    return bn.eval()


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain-bn"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize(("make", "bn_cls", "shape"), CASES, ids=IDS)
def test_fold_is_exact(make, bn_cls, shape, bias: bool, affine: bool) -> None:
    torch.manual_seed(0)
    layer = make(bias).double().eval()
    bn = _trained_bn(bn_cls, affine)
    before = copy.deepcopy((layer.state_dict(), bn.state_dict()))
    folded = bnn.fold_batch_norm(layer, bn)
    assert type(folded) is type(layer) and folded.bias is not None
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(folded(x), bn(layer(x)), rtol=1e-9, atol=1e-9)
    for old, new in zip(before, (layer.state_dict(), bn.state_dict()), strict=True):  # inputs untouched
        for key in old:
            assert torch.equal(old[key], new[key])


def test_fold_errors() -> None:
    bn = _trained_bn(nn.BatchNorm2d, True)
    with pytest.raises(ValueError, match="ConvTranspose2d"):
        bnn.fold_batch_norm(nn.ConvTranspose2d(3, 4, 3).double(), bn)
    with pytest.raises(ValueError, match="5 output channels"):
        bnn.fold_batch_norm(nn.Conv2d(3, 5, 3).double(), bn)
    with pytest.raises(ValueError, match="running statistics"):
        bnn.fold_batch_norm(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="batch-norm layer"):
        bnn.fold_batch_norm(nn.Conv2d(3, 4, 3), nn.ReLU())


class _Net(nn.Module):
    """Not a Sequential: attribute order differs from execution order, and one BN follows an addition."""

    def __init__(self) -> None:
        super().__init__()
        self.bn2 = bnn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.bn_after_add = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10, bias=False)
        self.bn_head = bnn.BatchNorm1d(10)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.bn_after_add(h + self.bn2(self.conv2(h)))
        return self.bn_head(self.head(h.mean(dim=(2, 3))))


def test_fold_whole_model() -> None:
    torch.manual_seed(0)
    model = _Net().double()
    model.train()
    for _ in range(5):
        model(torch.randn(16, 1, 8, 8, dtype=torch.float64))
    model.eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    folded = bnn.fold_batch_norms(model)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
    kinds = [type(m) for m in folded.modules()]
    assert sum(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds) == 1  # only the one after +
    assert len(list(folded.modules())) < len(list(model.modules()))
    n_params = sum(p.numel() for p in folded.parameters())
    assert n_params < sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="training mode"):
        bnn.fold_batch_norms(model.train())


def test_fold_sequential_mlp() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).double()
    model(torch.randn(32, 6, dtype=torch.float64))
    model.eval()
    x = torch.randn(9, 6, dtype=torch.float64)
    folded = bnn.fold_batch_norms(model)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
