"""Worker functions for the chapter on batch norm across processes (``chapters/14_across_processes``).

Each function here runs inside the processes that :func:`bnbook.distributed.launch`
starts, as ``fn(rank, world_size, *args)``: they live in the package, not in the
notebook, because the workers are fresh Python processes that import them by name.
Starting a group costs seconds (every process imports torch), so
:func:`run_tasks` runs several measurements in one launch::

    from bnbook.distributed import launch
    from bnbook.workers import run_tasks

    results = launch(run_tasks, 2, [("times", "allreduce_times", {"sizes": [1, 1024]})])
    results[0]["times"]  # rank 0's timings

Every task returns plain NumPy arrays, floats and dicts, so results pickle
cheaply and do not depend on torch in the parent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from bnbook import nn as bnn
from bnbook.data import Split

__all__ = ["TASKS", "allreduce_times", "ddp_train", "run_tasks", "stat_noise", "sync_forward_check"]


def _check_rank(rank: int, world_size: int) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "these workers run inside a process group: start them with bnbook.distributed.launch"
        )
    if dist.get_rank() != rank or dist.get_world_size() != world_size:
        raise ValueError(
            f"rank {rank} of {world_size} does not match the process group "
            f"(rank {dist.get_rank()} of {dist.get_world_size()})"
        )


def sync_forward_check(
    rank: int, world_size: int, sizes: Sequence[int], channels: int = 3, seed: int = 0
) -> dict[str, np.ndarray]:
    """One forward and backward pass of :class:`bnbook.nn.SyncBatchNorm` on this rank's shard, in float64.

    Every rank draws the same global batch ``x`` of shape (sum(sizes), channels, 2, 2),
    the same upstream gradient and the same scale and shift, and keeps rows
    ``sizes[:rank].sum()`` to ``sizes[:rank+1].sum()``: shards may differ in size.
    Concatenating the ranks' ``out`` and ``dx`` should give batch norm of the whole
    batch; the ranks' ``dweight`` and ``dbias`` should sum to its parameter gradients.

    Returns
    -------
    dict
        ``out``, ``dx`` (this rank's rows), ``dweight``, ``dbias``, ``running_mean``,
        ``running_var``, as float64 arrays.
    """
    _check_rank(rank, world_size)
    if len(sizes) != world_size or any(int(s) < 0 for s in sizes):
        raise ValueError(f"sizes must hold one non-negative shard size per rank, got {sizes}")
    gen = torch.Generator().manual_seed(seed)
    n = int(sum(sizes))
    x = torch.randn(n, channels, 2, 2, generator=gen, dtype=torch.float64) * 3.0 + 2.0
    dy = torch.randn(n, channels, 2, 2, generator=gen, dtype=torch.float64)
    weight = torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5
    bias = torch.randn(channels, generator=gen, dtype=torch.float64)
    start = int(sum(sizes[:rank]))
    rows = slice(start, start + int(sizes[rank]))
    layer = bnn.SyncBatchNorm(channels, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    xs = x[rows].clone().requires_grad_(True)
    out = layer(xs)
    out.backward(dy[rows])
    return {
        "out": out.detach().numpy(),
        "dx": xs.grad.numpy(),
        "dweight": layer.weight.grad.numpy(),
        "dbias": layer.bias.grad.numpy(),
        "running_mean": layer.running_mean.numpy(),
        "running_var": layer.running_var.numpy(),
    }


def stat_noise(
    rank: int,
    world_size: int,
    local_batch: int,
    n_batches: int,
    channels: int = 256,
    mean: float = 3.0,
    sigma: float = 2.0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The mean and biased variance that per-process and synchronized batch norm normalize with.

    Each rank draws ``n_batches`` batches of ``local_batch`` rows of ``channels``
    independent normal features (mean ``mean``, standard deviation ``sigma``; every
    rank its own data) and passes each through a :class:`bnbook.nn.BatchNorm1d` (this
    process's rows only) and a :class:`bnbook.nn.SyncBatchNorm` (the rows of every
    process). Both use ``momentum=1``, so after each batch their running statistics
    hold the statistics of that batch; the running variance is unbiased and is
    converted back to the biased one used for normalizing.

    Returns
    -------
    dict
        ``local_mean``, ``local_var`` (this rank's statistics) and ``global_mean``,
        ``global_var`` (the synchronized ones, equal on every rank), each of shape
        (n_batches, channels), float64.
    """
    _check_rank(rank, world_size)
    if local_batch < 2 or n_batches < 1 or channels < 1:
        raise ValueError(
            f"need local_batch >= 2, n_batches >= 1, channels >= 1, got {local_batch}, "
            f"{n_batches}, {channels}"
        )
    gen = torch.Generator().manual_seed(seed + 7919 * rank)
    local = bnn.BatchNorm1d(channels, momentum=1.0, affine=False, dtype=torch.float64)
    synced = bnn.SyncBatchNorm(channels, momentum=1.0, affine=False, dtype=torch.float64)
    m, n = local_batch, local_batch * world_size
    stats = {
        k: np.empty((n_batches, channels)) for k in ("local_mean", "local_var", "global_mean", "global_var")
    }
    with torch.no_grad():
        for b in range(n_batches):
            x = torch.randn(m, channels, generator=gen, dtype=torch.float64) * sigma + mean
            local(x)
            synced(x)
            stats["local_mean"][b] = local.running_mean.numpy()
            stats["local_var"][b] = local.running_var.numpy() * (m - 1) / m
            stats["global_mean"][b] = synced.running_mean.numpy()
            stats["global_var"][b] = synced.running_var.numpy() * (n - 1) / n
    return stats


def allreduce_times(
    rank: int,
    world_size: int,
    sizes: Sequence[int],
    repeats: int = 20,
    inner: int = 10,
    dtype: torch.dtype = torch.float64,
) -> dict[str, np.ndarray]:
    """Seconds per ``all_reduce`` of k numbers, for each k in ``sizes``, seen from this rank.

    The sizes are timed in turn, round after round (``repeats`` rounds of ``inner``
    calls each, after one warm-up round), with a barrier before each, so that a
    busy machine slows them alike. float64 by default, the type
    :class:`bnbook.nn.SyncBatchNorm` exchanges.

    Returns
    -------
    dict
        ``sizes`` (k) and ``seconds``, shape (repeats, len(sizes)).
    """
    _check_rank(rank, world_size)
    if repeats < 1 or inner < 1 or any(int(k) < 1 for k in sizes):
        raise ValueError(f"need repeats >= 1, inner >= 1 and sizes >= 1, got {repeats}, {inner}, {sizes}")
    buffers = [torch.zeros(int(k), dtype=dtype) for k in sizes]
    seconds = np.empty((repeats, len(sizes)))
    for r in range(repeats + 1):
        for j, buf in enumerate(buffers):
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(inner):
                dist.all_reduce(buf)
            if r > 0:
                seconds[r - 1, j] = (time.perf_counter() - t0) / inner
    return {"sizes": np.asarray(sizes), "seconds": seconds}


def ddp_train(
    rank: int,
    world_size: int,
    sync: bool,
    seeds: Sequence[int],
    steps: int = 600,
    local_batch: int = 2,
    lr: float = 0.05,
    hidden: int = 64,
    eval_every: int = 50,
    data: Split | None = None,
) -> dict[str, np.ndarray]:
    """Data-parallel training of a batch-norm MLP on the digits, with or without synchronized statistics.

    The MLP ``64 -> hidden -> hidden -> 10`` (ReLU, batch norm before each
    activation, :func:`bnbook.models.mlp`) is wrapped in ``DistributedDataParallel``;
    with ``sync`` its batch-norm layers become :class:`bnbook.nn.SyncBatchNorm`. At
    every step all ranks draw the same global batch of ``world_size * local_batch``
    training images (with the run's seed) and each keeps its own ``local_batch`` of
    them, so the global batch is the one a single process would draw. Plain SGD at
    learning rate ``lr`` on the averaged gradients. Test accuracy is measured in eval
    mode, with this rank's running statistics, every ``eval_every`` steps.
    ``data`` is a :class:`bnbook.data.Split` (by default ``load_digits()``); passing
    it from the parent spares every worker the import of scikit-learn.

    Returns
    -------
    dict
        ``steps`` (the evaluated steps, starting at 0), ``test_acc`` of shape
        (len(seeds), len(steps)), and ``loss``, this rank's training loss at every
        step, shape (len(seeds), steps).
    """
    from torch.nn.parallel import DistributedDataParallel

    from bnbook.models import accuracy, mlp

    _check_rank(rank, world_size)
    if steps < 1 or local_batch < 1 or lr <= 0 or eval_every < 1:
        raise ValueError(
            f"need steps, local_batch, eval_every >= 1 and lr > 0, got {steps}, {local_batch}, "
            f"{eval_every}, {lr}"
        )
    if data is None:
        from bnbook.data import load_digits

        data = load_digits()
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    evaluated = np.arange(0, steps + 1, eval_every)
    test_acc = np.empty((len(seeds), len(evaluated)))
    losses = np.empty((len(seeds), steps))
    loss_fn = nn.CrossEntropyLoss()
    rows = slice(rank * local_batch, (rank + 1) * local_batch)
    for i, seed in enumerate(seeds):
        torch.manual_seed(seed)  # the same initial weights on every rank
        model = mlp([64, hidden, hidden, 10], activation="relu", batch_norm=True)
        if sync:
            model = bnn.SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = DistributedDataParallel(model)
        gen = torch.Generator().manual_seed(seed)
        params = [p for p in ddp.parameters() if p.requires_grad]
        k = 0
        for step in range(steps + 1):
            if step % eval_every == 0:
                test_acc[i, k] = accuracy(model, x_test, y_test)
                k += 1
            if step == steps:
                break
            idx = torch.randint(0, len(y_train), (world_size * local_batch,), generator=gen)[rows]
            ddp.train()
            loss = loss_fn(ddp(x_train[idx]), y_train[idx])
            for p in params:
                p.grad = None
            loss.backward()  # DistributedDataParallel averages the gradients over the ranks here
            with torch.no_grad():
                for p in params:
                    p.sub_(p.grad, alpha=lr)
            losses[i, step] = loss.item()
    return {"steps": evaluated, "test_acc": test_acc, "loss": losses}


#: The tasks :func:`run_tasks` knows, by name.
TASKS = {
    "sync_forward_check": sync_forward_check,
    "stat_noise": stat_noise,
    "allreduce_times": allreduce_times,
    "ddp_train": ddp_train,
}


def run_tasks(rank: int, world_size: int, tasks: Sequence[tuple[str, str, dict[str, Any]]]) -> dict[str, Any]:
    """Run several tasks one after the other in one process group: ``{label: result}``.

    Parameters
    ----------
    tasks : sequence of (label, task name, keyword arguments)
        The task name is a key of :data:`TASKS`; the label names the result (so the
        same task can run twice with different arguments).
    """
    results: dict[str, Any] = {}
    for label, name, kwargs in tasks:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
        if label in results:
            raise ValueError(f"two tasks share the label {label!r}")
        results[label] = TASKS[name](rank, world_size, **kwargs)
    return results
