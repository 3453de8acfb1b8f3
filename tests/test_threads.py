"""Training results that do not depend on the number of intra-op threads.

Chapters 6, 8, 12 and 13 run on the machine's threads, so their stored
outputs must come out the same on a laptop with 2 cores and a workstation
with 8. These tests train the batched engines at the chapters' shapes with 1
and 4 threads (on any machine: the work is split four ways even on fewer
cores) and require bit-identical parameters.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from bnbook.batched import BatchedMLP, train_batched
from bnbook.demos import small_batches as sb
from bnbook.grouped import GroupedMLP, shuffled_order, train_grouped


@contextlib.contextmanager
def _threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _digits(n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 64, generator=gen), torch.randint(0, 10, (n,), generator=gen)


@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "plain"])
def test_batched_mlp_training_is_the_same_on_1_and_4_threads(batch_norm) -> None:
    """Chapter 8's sweeps: 90 members of 3 hidden layers of 32, batches of 32."""
    x, y = _digits()
    params = []
    for n in (1, 4):
        with _threads(n):
            model = BatchedMLP([64, 32, 32, 32, 10], seeds=list(range(90)), batch_norm=batch_norm)
            train_batched(model, x, y, [1.0] * 90, 30, 32)
        params.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*params, strict=True))


def test_grouped_mlp_training_is_the_same_on_1_and_4_threads() -> None:
    """Chapter 13's sweeps: every normalization, 40 copies each, batches of 4."""
    x, y = _digits()
    order = shuffled_order(len(x), 20, 4, list(range(40)))
    params = []
    for n in (1, 4):
        with _threads(n):
            torch.manual_seed(0)
            net = GroupedMLP(sb.METHODS, list(range(40)))
            train_grouped(net, x, y, order, 0.2)
        params.append([p.detach().clone() for p in net.parameters()] + [b.clone() for b in net.buffers()])
    assert all(torch.equal(a, b) for a, b in zip(*params, strict=True))
