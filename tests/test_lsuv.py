"""bnbook.models.lsuv_init: the data-dependent initialization that fixes the scale (chapters 1 and 8)."""

import pytest
import torch
from torch import nn

from bnbook.batched import BatchedMLP
from bnbook.models import lsuv_init, mlp


def _hidden_pre_activations(model: nn.Sequential, x: torch.Tensor) -> list[torch.Tensor]:
    outs, h = [], x
    layers = list(model)
    for i, layer in enumerate(layers):
        h = layer(h)
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and i < len(layers) - 1:
            outs.append(h)
    return outs


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
def test_every_hidden_unit_has_mean_0_std_1_on_its_batch(activation):
    torch.manual_seed(0)
    net = mlp([64, 100, 100, 100, 10], activation)
    x = torch.randn(256, 64) * 3 + 1
    before = _hidden_pre_activations(net, x)
    assert max(z.std(0, unbiased=False).sub(1).abs().max().item() for z in before) > 0.2  # not already true
    lsuv_init(net, x)
    for z in _hidden_pre_activations(net, x):
        assert z.mean(0).abs().max().item() < 1e-4
        assert z.std(0, unbiased=False).sub(1).abs().max().item() < 1e-4


def test_output_layer_untouched_and_target_std():
    torch.manual_seed(1)
    net = mlp([8, 16, 3], "tanh")
    last = net[-1].weight.clone()
    lsuv_init(net, torch.randn(64, 8), target_std=0.5)
    assert torch.equal(net[-1].weight, last)
    z = net[0](torch.randn(4096, 8))
    assert abs(z.std().item() - 0.5) < 0.05


def test_conv_channels_and_buffers_unchanged():
    from bnbook.models import small_cnn

    torch.manual_seed(2)
    net = small_cnn(batch_norm=False)
    x = torch.randn(32, 1, 8, 8)
    lsuv_init(net, x)
    z = net[0](x)
    assert z.mean((0, 2, 3)).abs().max().item() < 1e-4
    assert z.std((0, 2, 3), unbiased=False).sub(1).abs().max().item() < 1e-4
    bn_net = small_cnn(batch_norm=True, norm_layer=nn.BatchNorm2d).train()
    state = {k: v.clone() for k, v in bn_net.state_dict().items() if "running" in k or "tracked" in k}
    lsuv_init(bn_net, x)
    assert bn_net.training
    for k, v in state.items():
        assert torch.equal(bn_net.state_dict()[k], v)


def test_batched_members_match_the_sequential_version():
    seeds = [3, 4, 5]
    model = BatchedMLP([16, 20, 20, 4], seeds=seeds, activation="sigmoid", init="xavier")
    x = torch.randn(3, 50, 16)
    members = [model.member(k) for k in range(3)]
    lsuv_init(model, x)
    for k, net in enumerate(members):
        lsuv_init(net, x[k])
        torch.testing.assert_close(model(x)[k], net(x[k]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"target_std": 0.0}, "target_std"), ({"eps": -1.0}, "eps")],
)
def test_bad_arguments_raise_and_leave_weights(kwargs, match):
    net = mlp([4, 5, 2])
    w = net[0].weight.clone()
    with pytest.raises(ValueError, match=match):
        lsuv_init(net, torch.randn(10, 4), **kwargs)
    assert torch.equal(net[0].weight, w)


def test_needs_a_batch_and_a_hidden_layer():
    with pytest.raises(ValueError, match="at least 2 samples"):
        lsuv_init(mlp([4, 5, 2]), torch.randn(1, 4))
    with pytest.raises(ValueError, match="hidden"):
        lsuv_init(nn.Sequential(nn.Linear(4, 2)), torch.randn(8, 4))


def test_include_output_standardizes_the_logits_and_removes_the_weight_scale() -> None:
    torch.manual_seed(3)
    x = torch.randn(200, 8)
    base = mlp([8, 16, 16, 4], "sigmoid")
    nets = []
    for s in (0.1, 10.0):
        net = mlp([8, 16, 16, 4], "sigmoid")
        net.load_state_dict(base.state_dict())
        with torch.no_grad():
            for m in net:
                if isinstance(m, nn.Linear):
                    m.weight.mul_(s)
        nets.append(lsuv_init(net, x, include_output=True))
    logits = nets[0](x)
    assert logits.mean(0).abs().max().item() < 1e-4
    assert logits.std(0, unbiased=False).sub(1).abs().max().item() < 1e-4
    torch.testing.assert_close(nets[1](x), logits, rtol=1e-4, atol=1e-4)


def test_include_output_batched_matches_sequential() -> None:
    model = BatchedMLP([16, 20, 4], seeds=[3, 4], activation="tanh", init="xavier")
    x = torch.randn(2, 50, 16)
    members = [model.member(k) for k in range(2)]
    lsuv_init(model, x, include_output=True)
    for k, net in enumerate(members):
        lsuv_init(net, x[k], include_output=True)
        torch.testing.assert_close(model(x)[k], net(x[k]), rtol=1e-5, atol=1e-5)
