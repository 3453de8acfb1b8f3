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


# --- what fold_batch_norms must not fold, or must fold differently -----------------


def _trained_eval(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """A few training steps' worth of running statistics, then eval mode."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
    return model.eval()


class _ConvUsedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv(x)


class _LayerReusedWithOwnNorms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.bn1, self.bn2 = bnn.BatchNorm2d(3), bnn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn2(self.conv(self.bn1(self.conv(x))))


class _WeightReadDirectly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        return self.bn(self.conv(x)) + self.conv.weight.sum()


class _KeywordCall(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = bnn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(input=self.conv(x))


@pytest.mark.parametrize("cls", [_ConvUsedTwice, _LayerReusedWithOwnNorms, _WeightReadDirectly, _KeywordCall])
def test_fold_is_exact_for_reused_layers_and_keyword_calls(cls) -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    model = _trained_eval(cls().double(), x)
    folded = bnn.fold_batch_norms(model)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)


def test_keyword_call_is_still_folded() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 3, 6, 6, dtype=torch.float64)
    folded = bnn.fold_batch_norms(_trained_eval(_KeywordCall().double(), x))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())


@pytest.mark.parametrize("length", [5, 6], ids=["L-differs-from-out", "L-equals-out"])
@pytest.mark.parametrize("with_example", [False, True], ids=["no-example", "example"])
def test_linear_on_sequences_with_batchnorm1d_over_length(length, with_example) -> None:
    """(N, L, F) -> Linear -> BatchNorm1d(L): the norm is over L, which no Linear can absorb."""
    torch.manual_seed(0)
    x = torch.randn(8, length, 4, dtype=torch.float64)
    model = _trained_eval(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(length)).double(), x)
    model[1].weight.data.uniform_(0.5, 2.0)
    examples = (x,) if with_example else ()
    folded = bnn.fold_batch_norms(model, *examples)
    if length == 6 and not with_example:
        # Sizes match, and without shapes the pair is folded for (N, C) input only: 3-D input is refused.
        with pytest.raises(ValueError, match="example input"):
            folded(x)
        x2 = torch.randn(8, 4, dtype=torch.float64)
        model2 = _trained_eval(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)).double(), x2)
        torch.testing.assert_close(bnn.fold_batch_norms(model2)(x2), model2(x2), rtol=1e-9, atol=1e-9)
    else:
        torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)


def test_linear_with_example_input_of_shape_n_c_is_folded_to_a_plain_linear() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 4, dtype=torch.float64)
    model = _trained_eval(nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)).double(), x)
    folded = bnn.fold_batch_norms(model, x)
    assert [type(m) for m in folded.children()] == [nn.Linear]
    torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)


def test_models_with_batch_renorm_and_ghost_batch_norm_fold() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3, 5, 5, dtype=torch.float64)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        bnn.BatchRenorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1, bias=False),
        bnn.GhostBatchNorm(bnn.BatchNorm2d(4), ghost_size=4),
    ).double()
    model = _trained_eval(model, x)
    folded = bnn.fold_batch_norms(model)
    torch.testing.assert_close(folded(x), model(x), rtol=1e-9, atol=1e-9)
    assert not any(isinstance(m, bnn.BatchRenorm2d) for m in folded.modules())
    with pytest.raises(ValueError, match="training mode"):
        bnn.fold_batch_norms(model.train())
