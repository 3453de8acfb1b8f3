"""Library tools under a user's own code: edge cases that once gave wrong results or raised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from bnbook import nn as bnn
from bnbook.batched import BatchedMLP, evaluate_batched, train_batched


def test_recalibrate_bn_covers_batch_renorm_like_batch_norm() -> None:
    """A renorm model and the same model with batch norm get the same population statistics."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 4)
    models = []
    for norm in (bnn.BatchRenorm1d(4), bnn.BatchNorm1d(4)):
        model = nn.Sequential(nn.Linear(5, 4), norm, nn.ReLU(), nn.Linear(4, 2))
        model[0].load_state_dict(lin.state_dict())
        with torch.no_grad():
            norm.running_mean.fill_(7.0)  # stale statistics, to be replaced
        models.append(model.eval())
    x = torch.randn(256, 5) * 2 + 1
    settings = (models[0][1].r_max, models[0][1].d_max, models[0][1].momentum)
    for model in models:
        bnn.recalibrate_bn(model, x, batch_size=32)
    renorm, bn = models[0][1], models[1][1]
    torch.testing.assert_close(renorm.running_mean, bn.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(renorm.running_var, bn.running_var, rtol=1e-5, atol=1e-6)
    assert int(renorm.num_batches_tracked) == 8
    assert (renorm.r_max, renorm.d_max, renorm.momentum) == settings
    assert not renorm.training


def test_recalibrate_bn_restores_renorm_settings_when_the_pass_fails() -> None:
    layer = bnn.BatchRenorm1d(4)
    layer.r_max, layer.d_max = 2.5, 1.5
    model = nn.Sequential(layer, nn.Linear(3, 2))  # the Linear refuses 4 features
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    with pytest.raises(RuntimeError):
        bnn.recalibrate_bn(model, torch.randn(64, 4), batch_size=16)
    assert (layer.r_max, layer.d_max, layer.momentum) == (2.5, 1.5, 0.01)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_evaluate_batched_restores_the_mode_when_the_forward_raises() -> None:
    model = BatchedMLP([4, 5, 2], seeds=[0, 1], batch_norm=True).train()
    with pytest.raises(ValueError):
        evaluate_batched(model, torch.randn(6, 3), torch.zeros(6, dtype=torch.long))
    assert model.training


def test_train_batched_with_zero_steps() -> None:
    model = BatchedMLP([4, 5, 2], seeds=[0, 1])
    x, y = torch.randn(10, 4), torch.randint(0, 2, (10,))
    before = [p.detach().clone() for p in model.parameters()]
    hist = train_batched(model, x, y, 0.1, 0, x_eval=x, y_eval=y)
    assert hist.loss.shape == (2, 0) and hist.eval_acc.shape == (2, 1)
    assert not hist.diverged.any()
    np.testing.assert_array_equal(hist.eval_steps, [0])
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    assert train_batched(model, x, y, 0.1, 0).loss.shape == (2, 0)
