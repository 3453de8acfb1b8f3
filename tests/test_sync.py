"""SyncBatchNorm on a real process group (gloo on 127.0.0.1), against batch norm on the global batch.

The workers are spawned by ``bnbook.distributed.launch``; each normalizes its
shard, and the parent compares what they return with ``torch.nn.BatchNorm*``
run on the concatenated batch. A worker that fails must not leave the others
hanging.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from bnbook import nn as bnn
from bnbook.distributed import launch

C = 3


def _global_batch(total: int, tail: tuple[int, ...]):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((total, C, *tail), generator=gen, dtype=torch.float64) * 2 + 5
    dy = torch.randn((total, C, *tail), generator=gen, dtype=torch.float64)
    weight = torch.rand(C, generator=gen, dtype=torch.float64) + 0.5
    bias = torch.randn(C, generator=gen, dtype=torch.float64)
    return x, dy, weight, bias


def _steps(layer: nn.Module, x: torch.Tensor, dy: torch.Tensor, steps: int = 2):
    """``steps`` training steps on the same batch; returns the last output and gradients."""
    for _ in range(steps):
        layer.zero_grad()
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(dy)
    return y.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()


CASES = {2: [([4, 4], (), 0.1)], 3: [([5, 2, 1], (2, 3), None), ([6, 0, 3], (4,), 0.3)]}


def sync_worker(rank: int, world: int):
    """Every case for this world size, one after another: what this rank computed in each."""
    out = []
    for sizes, tail, momentum in CASES[world]:
        x, dy, weight, bias = _global_batch(sum(sizes), tail)
        start = sum(sizes[:rank])
        layer = bnn.SyncBatchNorm(C, momentum=momentum, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        shard = slice(start, start + sizes[rank])
        out.append((*_steps(layer, x[shard], dy[shard]), layer.state_dict()))
    return out


@pytest.mark.parametrize("world", sorted(CASES), ids=lambda w: f"{w}-processes")
def test_sync_equals_batch_norm_on_the_global_batch(world: int) -> None:
    """Even shards (2 processes); uneven shards and an empty shard (3 processes); momentum None too."""
    per_rank = launch(sync_worker, world, timeout=180)
    for case, (sizes, tail, momentum) in enumerate(CASES[world]):
        out = [r[case] for r in per_rank]
        x, dy, weight, bias = _global_batch(sum(sizes), tail)
        ref = {1: nn.BatchNorm1d, 2: nn.BatchNorm1d, 3: nn.BatchNorm2d}[len(tail) + 1](
            C, momentum=momentum, dtype=torch.float64
        )
        with torch.no_grad():
            ref.weight.copy_(weight)
            ref.bias.copy_(bias)
        y, dx, dw, db = _steps(ref, x, dy)
        tol = {"rtol": 1e-9, "atol": 1e-9}
        torch.testing.assert_close(torch.cat([o[0] for o in out]), y, **tol)
        torch.testing.assert_close(torch.cat([o[1] for o in out]), dx, **tol)
        # each process holds its share of the parameter gradients; together they are the global one
        torch.testing.assert_close(sum(o[2] for o in out), dw, **tol)
        torch.testing.assert_close(sum(o[3] for o in out), db, **tol)
        for o in out:
            for key, value in ref.state_dict().items():
                torch.testing.assert_close(o[4][key], value, **tol)


def failing_worker(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("rank 1 gives up on purpose")
    dist.all_reduce(torch.ones(1))  # waits for a partner that never comes


def dying_worker(rank: int, world: int) -> None:
    if rank == 1:
        os._exit(3)
    dist.all_reduce(torch.ones(1))


@pytest.mark.parametrize(("fn", "match"), [(failing_worker, "gives up on purpose"), (dying_worker, "died")])
def test_a_failing_worker_leaves_nobody_hanging(fn, match) -> None:
    with pytest.raises(RuntimeError, match="rank 1") as err:
        launch(fn, 2, timeout=120)
    assert match in str(err.value)
    # noticed from the failure itself, not from the group timing out (whose message names no rank)
    assert "made no progress" not in str(err.value)


def test_launch_bad_arguments() -> None:
    with pytest.raises(ValueError, match="world_size"):
        launch(sync_worker, 0)
    with pytest.raises(ValueError, match="module level"):
        launch(lambda rank, world: None, 2)


def test_without_a_process_group_it_is_batch_norm() -> None:
    assert not dist.is_initialized()
    x, dy, weight, bias = _global_batch(6, (2,))
    results = []
    for cls in (nn.BatchNorm1d, bnn.SyncBatchNorm):
        layer = cls(C, dtype=torch.float64)
        with torch.no_grad():
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
        results.append((*_steps(layer, x, dy), layer.state_dict()))
    for ref, ours in zip(*results[:4], strict=True):
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_convert_sync_batchnorm_keeps_state() -> None:
    model = nn.Sequential(
        nn.Conv2d(2, C, 3, bias=False),
        nn.BatchNorm2d(C),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(C, C, 1, bias=False), bnn.BatchNorm2d(C, bias=False), nn.Flatten()),
    ).double()
    model(torch.randn(4, 2, 5, 5, dtype=torch.float64))
    model[1].weight.requires_grad_(False)
    model[3][1].eval()
    before = copy.deepcopy(model)
    converted = bnn.SyncBatchNorm.convert_sync_batchnorm(model)
    for old, new in ((before[1], converted[1]), (before[3][1], converted[3][1])):
        assert type(new) is bnn.SyncBatchNorm
        assert new.training == old.training and new.weight.requires_grad == old.weight.requires_grad
        assert (new.bias is None) == (old.bias is None)
        assert new.running_mean.dtype == torch.float64
        for key, value in old.state_dict().items():
            assert torch.equal(new.state_dict()[key], value), key
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    # Same state; the layers differ only in summation order (torch's kernel against bnbook's).
    torch.testing.assert_close(converted.eval()(x), before.eval()(x), rtol=1e-13, atol=1e-15)
    single = bnn.SyncBatchNorm.convert_sync_batchnorm(nn.BatchNorm1d(4))
    assert isinstance(single, bnn.SyncBatchNorm)
