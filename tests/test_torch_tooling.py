"""bnbook.nn under torch's own tooling: existing training code treats its layers as torch's.

Each test runs the same thing through ``torch.nn.BatchNorm*`` and through
``bnbook.nn.BatchNorm*`` and compares, so the reference never comes from the
code under test.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import fuse_modules
from torch.autograd import gradcheck, gradgradcheck
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.checkpoint import checkpoint

from bnbook import nn as bnn

# fuse_modules scripts a helper internally; torch itself warns that scripting is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

PAIRS = [
    (nn.BatchNorm1d, bnn.BatchNorm1d, (6, 3)),
    (nn.BatchNorm1d, bnn.BatchNorm1d, (5, 3, 4)),
    (nn.BatchNorm2d, bnn.BatchNorm2d, (4, 3, 2, 3)),
    (nn.BatchNorm3d, bnn.BatchNorm3d, (3, 3, 2, 2, 2)),
]
IDS = ["1d-2D", "1d-3D", "2d", "3d"]


def _pair(torch_cls, ours_cls, dtype=torch.float64, **kw):
    """Two layers with the same random affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(0)
    ref = torch_cls(3, dtype=dtype, **kw)
    ours = ours_cls(3, dtype=dtype, **kw)
    with torch.no_grad():
        if ref.affine:
            ref.weight.copy_(torch.rand(3, generator=gen, dtype=dtype) + 0.5)
            ref.bias.copy_(torch.randn(3, generator=gen, dtype=dtype))
        if ref.track_running_stats:
            ref.running_mean.copy_(torch.randn(3, generator=gen, dtype=dtype))
            ref.running_var.copy_(torch.rand(3, generator=gen, dtype=dtype) + 0.5)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _x(shape, dtype=torch.float64, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=dtype) * 2 + 1).requires_grad_()


# --- the class hierarchy: tools that look for batch-norm layers find ours -------------------
@pytest.mark.parametrize(("torch_cls", "ours_cls", "shape"), PAIRS, ids=IDS)
def test_layers_are_torch_batch_norm(torch_cls, ours_cls, shape) -> None:
    layer = ours_cls(3)
    assert isinstance(layer, _BatchNorm) and isinstance(layer, torch_cls)
    assert type(layer).forward is not torch_cls.forward


def test_convert_sync_batchnorm_converts_and_keeps_state() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False), bnn.BatchNorm2d(3), nn.ReLU())
    model.train()
    model(torch.randn(4, 2, 5, 5))
    before = copy.deepcopy(model[1].state_dict())
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], nn.SyncBatchNorm)
    for key, value in before.items():
        torch.testing.assert_close(converted[1].state_dict()[key], value, rtol=0, atol=0)


def test_weight_decay_filter_finds_our_layers() -> None:
    """The usual recipe: no weight decay on normalization parameters."""
    model = nn.Sequential(nn.Linear(4, 3, bias=False), bnn.BatchNorm1d(3), nn.Linear(3, 2))
    no_decay = {id(p) for m in model.modules() if isinstance(m, _BatchNorm) for p in m.parameters()}
    assert no_decay == {id(model[1].weight), id(model[1].bias)}


@pytest.mark.parametrize("with_relu", [False, True], ids=["conv-bn", "conv-bn-relu"])
def test_fuse_modules_fuses_our_layers(with_relu: bool) -> None:
    torch.manual_seed(0)
    layers = [nn.Conv2d(2, 3, 3, bias=False), bnn.BatchNorm2d(3)] + ([nn.ReLU()] if with_relu else [])
    model = nn.Sequential(*layers).double()
    model.train()
    for _ in range(3):
        model(torch.randn(8, 2, 6, 6, dtype=torch.float64))
    model.eval()
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    expected = model(x)
    names = ["0", "1", "2"] if with_relu else ["0", "1"]
    fused = fuse_modules(copy.deepcopy(model), [names])
    assert isinstance(fused[1], nn.Identity)
    torch.testing.assert_close(fused(x), expected, rtol=1e-12, atol=1e-12)


def test_fuse_conv_bn_eval_is_exact() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3).double().eval()
    ref, ours = _pair(nn.BatchNorm2d, bnn.BatchNorm2d)
    ref.eval()
    ours.eval()
    x = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    fused = fuse_conv_bn_eval(conv, ours)
    torch.testing.assert_close(fused(x), ours(conv(x)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused(x), ref(conv(x)), rtol=1e-12, atol=1e-12)


# --- double backward -----------------------------------------------------------------------
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("torch_cls", "ours_cls", "shape"), PAIRS, ids=IDS)
def test_gradient_penalty_matches_torch(torch_cls, ours_cls, shape, train: bool) -> None:
    results = []
    for layer in _pair(torch_cls, ours_cls):
        layer.train(train)
        x = _x(shape)
        y = layer(x)
        (gx,) = torch.autograd.grad((y.sin() * y).sum(), x, create_graph=True)
        penalty = gx.square().sum()
        penalty.backward()
        results.append((penalty.detach(), x.grad, layer.weight.grad, layer.bias.grad))
    for ref, ours in zip(*results, strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_gradgradcheck(train: bool, affine: bool) -> None:
    _, layer = _pair(nn.BatchNorm2d, bnn.BatchNorm2d, affine=affine)
    layer.train(train)
    # The running statistics change on every training call; gradgradcheck calls many times.
    layer.momentum = 0.0
    x = _x((3, 3, 2, 2))
    inputs = (x, layer.weight, layer.bias) if affine else (x,)

    def fn(xx, *params):
        if affine:
            return bnn.batch_norm(xx, layer.running_mean, layer.running_var, *params, train, 0.0, 1e-3)
        return bnn.batch_norm(xx, layer.running_mean, layer.running_var, None, None, train, 0.0, 1e-3)

    assert gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert gradgradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


# --- torch.func --------------------------------------------------------------------------------
@pytest.mark.parametrize(("torch_cls", "ours_cls", "shape"), PAIRS, ids=IDS)
def test_vmap_in_eval_mode(torch_cls, ours_cls, shape) -> None:
    ref, ours = _pair(torch_cls, ours_cls)
    ref.eval()
    ours.eval()
    xs = torch.randn((4, *shape), dtype=torch.float64)  # four independent batches
    expected = torch.func.vmap(ref)(xs)
    torch.testing.assert_close(torch.func.vmap(ours)(xs), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("torch_cls", "ours_cls", "shape"), PAIRS, ids=IDS)
def test_vmap_of_an_untracked_layer_in_training(torch_cls, ours_cls, shape) -> None:
    """Without running buffers, vmap gives every batch its own statistics (as torch's layer does)."""
    ref, ours = _pair(torch_cls, ours_cls, track_running_stats=False)
    xs = torch.randn((4, *shape), dtype=torch.float64)
    expected = torch.func.vmap(ref)(xs)
    torch.testing.assert_close(torch.func.vmap(ours)(xs), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("train", [True, False], ids=["batch-stats", "running-stats"])
@pytest.mark.parametrize(("torch_cls", "ours_cls", "shape"), PAIRS, ids=IDS)
def test_jvp_matches_torch(torch_cls, ours_cls, shape, train: bool) -> None:
    ref, ours = _pair(torch_cls, ours_cls)
    x = _x(shape).detach()
    tangents = tuple(torch.randn_like(t) for t in (x, ref.weight, ref.bias))

    def run(fn):
        def f(xx, w, b):
            if train:  # batch statistics, no running buffers to mutate inside the transform
                return fn(xx, None, None, w, b, True, 0.1, 1e-5)
            return fn(xx, ref.running_mean, ref.running_var, w, b, False, 0.1, 1e-5)

        return torch.func.jvp(f, (x, ref.weight.detach(), ref.bias.detach()), tangents)

    (y_ref, t_ref), (y_ours, t_ours) = run(F.batch_norm), run(bnn.batch_norm)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t_ours, t_ref, rtol=1e-10, atol=1e-10)


# --- activation checkpointing ----------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum-0.1", "cumulative"])
@pytest.mark.parametrize("follow", [False, True], ids=["bn-alone", "bn-then-ops"])
def test_non_reentrant_checkpoint_matches_torch(momentum, follow: bool) -> None:
    states = []
    for cls in (nn.BatchNorm1d, bnn.BatchNorm1d):
        layer = cls(2, momentum=momentum, dtype=torch.float64)
        lin = nn.Linear(2, 2, dtype=torch.float64)
        torch.manual_seed(0)
        nn.init.normal_(lin.weight)

        def segment(t, layer=layer, lin=lin):
            y = layer(t)
            return lin(torch.tanh(y)) if follow else y

        for step in range(4):
            x = (torch.arange(8.0, dtype=torch.float64).reshape(4, 2) * (step + 1)).requires_grad_()
            checkpoint(segment, x, use_reentrant=False).square().sum().backward()
        states.append(layer.state_dict())
    for key in states[0]:
        torch.testing.assert_close(states[1][key], states[0][key], rtol=1e-12, atol=1e-12)


# --- refused input -----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_non_floating_input_is_refused_and_changes_nothing(dtype, train: bool) -> None:
    layer = bnn.BatchNorm1d(3)
    layer.train()
    layer(torch.randn(8, 3))
    layer.train(train)
    before = copy.deepcopy(layer.state_dict())
    x = torch.ones(8, 3, dtype=dtype)
    with pytest.raises(ValueError, match=str(dtype)):
        layer(x)
    with pytest.raises(ValueError, match=str(dtype)):
        bnn.batch_norm(x, layer.running_mean, layer.running_var, training=train)
    for key, value in before.items():
        assert torch.equal(layer.state_dict()[key], value), key


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan"), float("inf")])
def test_functional_validates_eps(eps) -> None:
    mean, var = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="eps"):
        bnn.batch_norm(torch.randn(4, 3), mean, var, training=True, eps=eps)
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(var, torch.ones(3))


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_functional_zero_channels_like_torch(train: bool) -> None:
    x = torch.randn(4, 0, 3, requires_grad=True)
    expected = F.batch_norm(x, torch.zeros(0), torch.ones(0), training=train)
    y = bnn.batch_norm(x, torch.zeros(0), torch.ones(0), training=train)
    assert y.shape == expected.shape == (4, 0, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape


# --- memory saved for backward -------------------------------------------------------------------
def _saved_bytes(layer: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct storages that autograd keeps for the backward pass of ``layer(x)``."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return sum(seen.values())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_saved_memory_no_more_than_torch(dtype, train: bool) -> None:
    x = torch.randn(16, 8, 16, 16).to(dtype).requires_grad_()
    sizes = []
    for cls in (nn.BatchNorm2d, bnn.BatchNorm2d):
        layer = cls(8)
        layer.train(train)
        sizes.append(_saved_bytes(layer, x))
    ref, ours = sizes
    assert ours <= ref, f"bnbook saves {ours} bytes for backward, torch {ref}"
    assert ours < 2 * x.numel() * x.element_size()  # the input once, never a float32 copy of it
