"""Worker tasks of ``chapters/14_across_processes``: they run inside the processes of a process group.

Every task is a function ``task(rank, world_size, ..., group=None)`` that a
:class:`bnbook.distributed.Pool` (or :func:`bnbook.distributed.launch`) runs in
fresh Python processes, which import it by name: that is why the tasks live in
a module, not in the notebook. ``rank`` and ``world_size`` are those of the
process within ``group`` (the whole world when None). :func:`run_tasks` runs a
list of tasks in a sub-group of the first ``group_size`` ranks, so that one pool
of four processes serves experiments with 1, 2 and 4 processes::

    from bnbook.distributed import Pool
    from bnbook.demos.across_processes import run_tasks

    with Pool(2) as pool:
        results = pool.run(run_tasks, [("times", "allreduce_times", {"sizes": [1, 1024]})])
    results[0]["times"]  # rank 0's timings

Tasks return plain NumPy arrays, numbers, strings and dicts, so results pickle
cheaply. This module imports torch but not matplotlib, so workers start fast.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bnbook import nn as bnn
from bnbook.data import Split

__all__ = [
    "PRELOAD",
    "TASKS",
    "SeedStackMLP",
    "allreduce_times",
    "count_collectives",
    "ddp_train",
    "recipe",
    "run_plan",
    "run_tasks",
    "stat_noise",
    "sync_forward_check",
]

#: Modules a :class:`bnbook.distributed.Pool` for this chapter preloads in its fork server, so that
#: its workers start without importing them: torch, what ``DistributedDataParallel`` imports when it
#: is first built (torch's compiler stack, a few seconds), and this package.
PRELOAD = (
    "torch",
    "torch.distributed",
    "torch._dynamo",
    "torch.distributed.tensor",
    "torch.distributed.fsdp",
    "torch.nn.parallel",
    "bnbook.models",
    "bnbook.demos.across_processes",
)

#: The collective operations of ``torch.distributed`` that :func:`count_collectives` counts.
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter", "barrier")


def _check_rank(rank: int, world_size: int, group: Any = None) -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("these tasks run inside a process group: start them with bnbook.distributed.Pool")
    if dist.get_rank(group) != rank or dist.get_world_size(group) != world_size:
        raise ValueError(
            f"rank {rank} of {world_size} does not match the process group "
            f"(rank {dist.get_rank(group)} of {dist.get_world_size(group)})"
        )


def sync_forward_check(
    rank: int, world_size: int, sizes: Sequence[int], channels: int = 3, seed: int = 0, group: Any = None
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
    _check_rank(rank, world_size, group)
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
    layer = bnn.SyncBatchNorm(channels, process_group=group, dtype=torch.float64)
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
    group: Any = None,
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
    _check_rank(rank, world_size, group)
    if local_batch < 2 or n_batches < 1 or channels < 1:
        raise ValueError(
            f"need local_batch >= 2, n_batches >= 1, channels >= 1, got {local_batch}, "
            f"{n_batches}, {channels}"
        )
    gen = torch.Generator().manual_seed(seed + 7919 * rank)
    local = bnn.BatchNorm1d(channels, momentum=1.0, affine=False, dtype=torch.float64)
    synced = bnn.SyncBatchNorm(channels, momentum=1.0, affine=False, process_group=group, dtype=torch.float64)
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
    group: Any = None,
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
    _check_rank(rank, world_size, group)
    if repeats < 1 or inner < 1 or any(int(k) < 1 for k in sizes):
        raise ValueError(f"need repeats >= 1, inner >= 1 and sizes >= 1, got {repeats}, {inner}, {sizes}")
    buffers = [torch.zeros(int(k), dtype=dtype) for k in sizes]
    seconds = np.empty((repeats, len(sizes)))
    for r in range(repeats + 1):
        for j, buf in enumerate(buffers):
            dist.barrier(group=group)
            t0 = time.perf_counter()
            for _ in range(inner):
                dist.all_reduce(buf, group=group)
            if r > 0:
                seconds[r - 1, j] = (time.perf_counter() - t0) / inner
    return {"sizes": np.asarray(sizes), "seconds": seconds}


@contextlib.contextmanager
def _counting() -> Iterator[list[tuple[str, int]]]:
    """Record every collective call of ``torch.distributed`` as (name, numbers sent by this process)."""
    calls: list[tuple[str, int]] = []
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def wrap(name: str, fn: Any) -> Any:
        def counted(*args: Any, **kwargs: Any) -> Any:
            tensor = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if name == "all_gather" and len(args) > 1:
                tensor = args[1]  # all_gather(output_list, input)
            calls.append((name, 0 if tensor is None else tensor.numel()))
            return fn(*args, **kwargs)

        return counted

    try:
        for name, fn in originals.items():
            setattr(dist, name, wrap(name, fn))
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def count_collectives(
    rank: int, world_size: int, channels: Sequence[int], local_batch: int = 2, group: Any = None
) -> dict[str, list[tuple[str, int]]]:
    """The collective calls of one training step of :class:`bnbook.nn.SyncBatchNorm` layers, counted.

    One layer per entry of ``channels`` (for example ResNet-50's 53 batch-norm
    layers), each fed its own input of shape (local_batch, C, 2, 2). Every call
    to a collective of ``torch.distributed`` during the forward pass and during the
    backward pass is recorded with the number of values this process sends.

    Returns
    -------
    dict
        ``forward`` and ``backward``: lists of (collective name, numbers sent).
    """
    _check_rank(rank, world_size, group)
    gen = torch.Generator().manual_seed(rank)
    layers = [bnn.SyncBatchNorm(int(c), process_group=group) for c in channels]
    xs = [torch.randn(local_batch, int(c), 2, 2, generator=gen, requires_grad=True) for c in channels]
    with _counting() as forward:
        outs = [layer(x) for layer, x in zip(layers, xs, strict=True)]
    loss = sum((o * torch.randn(o.shape, generator=gen)).sum() for o in outs)
    with _counting() as backward:
        loss.backward()
    return {"forward": forward, "backward": backward}


class SeedStackMLP(nn.Module):
    """Copies of the MLP ``bnbook.models.mlp(sizes, "relu", batch_norm=True)`` side by side, one per seed.

    Copy ``s`` starts with the weights that ``torch.manual_seed(seeds[s]); mlp(...)``
    draws. Inputs have shape (N, S, D), one slice per copy; each hidden layer is a
    batched matrix product followed by one :class:`bnbook.nn.BatchNorm1d` over
    ``S * width`` channels, which normalizes every copy's features on their own
    (batch norm is per channel). Because the norms are ordinary batch-norm layers,
    ``SyncBatchNorm.convert_sync_batchnorm`` and ``DistributedDataParallel`` treat the
    stack as any other model, and one step trains every seed at the cost of about one.
    The copies share no parameter: the sum of their losses gives each its own gradient.
    """

    def __init__(self, sizes: Sequence[int], seeds: Sequence[int]) -> None:
        super().__init__()
        from bnbook.models import mlp

        nets = []
        for seed in seeds:
            torch.manual_seed(int(seed))
            nets.append(mlp(list(sizes), activation="relu", batch_norm=True))
        linears = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([lin[i].weight.detach().T for lin in linears]))
            for i in range(len(sizes) - 1)
        )
        self.bias = nn.Parameter(torch.stack([lin[-1].bias.detach() for lin in linears]))
        self.norms = nn.ModuleList(bnn.BatchNorm1d(len(seeds) * int(w)) for w in sizes[1:-1])

    def subset(self, copies: Sequence[int]) -> SeedStackMLP:
        """A stack of the given copies only, with their current parameters and running statistics.

        Nothing is shared with this stack. The norm layers keep their type, so a stack
        converted to :class:`bnbook.nn.SyncBatchNorm` stays converted.
        """
        idx = torch.as_tensor([int(c) for c in copies], dtype=torch.long)
        s = self.weights[0].shape[0]
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= s:
            raise ValueError(f"copies must be indices in [0, {s}), at least one, got {list(copies)}")
        groups = [getattr(norm, "process_group", None) for norm in self.norms]
        out = copy.deepcopy(self, memo={id(g): g for g in groups if g is not None})  # groups are shared
        with torch.no_grad():
            out.weights = nn.ParameterList(nn.Parameter(w[idx].clone()) for w in self.weights)
            out.bias = nn.Parameter(self.bias[idx].clone())
            for norm in out.norms:
                width = norm.num_features // s

                def pick(t: torch.Tensor, width: int = width) -> torch.Tensor:
                    return t.view(s, width)[idx].reshape(-1).clone()

                norm.num_features = len(idx) * width
                norm.weight = nn.Parameter(pick(norm.weight))
                norm.bias = nn.Parameter(pick(norm.bias))
                norm.running_mean = pick(norm.running_mean)
                norm.running_var = pick(norm.running_var)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, S, classes) for inputs of shape (N, S, D)."""
        n, s = x.shape[:2]
        h = x.transpose(0, 1)  # (S, N, D)
        for w, norm in zip(self.weights[:-1], self.norms, strict=True):
            z = torch.bmm(h, w).transpose(0, 1).reshape(n, -1)  # (N, S * width)
            h = torch.relu(norm(z)).reshape(n, s, -1).transpose(0, 1)
        return torch.baddbmm(self.bias.unsqueeze(1), h, self.weights[-1]).transpose(0, 1)


def ddp_train(
    rank: int,
    world_size: int,
    sync: bool,
    seeds: Sequence[int],
    steps: int = 600,
    local_batch: int = 2,
    lr: float | Sequence[float] = 0.05,
    hidden: int = 64,
    eval_every: int = 50,
    data: Split | None = None,
    group: Any = None,
    pair_eval: bool = False,
    eval_copies: Sequence[int] | None = None,
    extend_to: int = 0,
    extend_copies: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Data-parallel training of a batch-norm MLP on the digits, with or without synchronized statistics.

    The MLP ``64 -> hidden -> hidden -> 10`` (ReLU, batch norm before each
    activation, :func:`bnbook.models.mlp`), one copy per seed side by side
    (:class:`SeedStackMLP`), is wrapped in ``DistributedDataParallel``; with
    ``sync`` its batch-norm layers first become :class:`bnbook.nn.SyncBatchNorm`.
    At every step all ranks draw, for each seed, the same global batch of
    ``world_size * local_batch`` training images (with that seed's generator) and
    each keeps its own ``local_batch`` of them, so the global batch is the one a
    single process would draw. Plain SGD at learning rate ``lr`` on the averaged
    gradients; ``lr`` may also give one learning rate per copy (a seed may then
    appear several times, one copy per learning rate: same start, same batches).
    Test accuracy is measured in eval mode, with this rank's running
    statistics, every ``eval_every`` steps. ``data`` is a :class:`bnbook.data.Split`
    (by default ``load_digits()``); passing it from the parent spares every
    worker the import of scikit-learn. With ``pair_eval`` (per-process only), the
    trained copies are also evaluated in training mode on random pairs of test
    images, each pair normalized with its own statistics, as in training with
    ``local_batch=2``.

    Evaluating costs more than a training step of these tiny batches, so
    ``eval_copies`` may name the copies that a figure follows: the others are
    evaluated at the first and the last step only (NaN in between). With
    ``extend_to``, the copies ``extend_copies`` are then trained again from the
    start, alone, for ``extend_to`` steps on the batches their seeds draw, and
    evaluated at the end: the longer run of those copies. (Carrying the trained
    copies on instead does not reproduce a run from the start across several
    processes, so it is not done.)

    Returns
    -------
    dict
        ``steps`` (the evaluated steps, starting at 0), ``test_acc`` of shape
        (len(seeds), len(steps)), and ``loss``, this rank's training loss at every
        step, shape (len(seeds), steps); with ``pair_eval``, ``pair_acc`` of shape
        (len(seeds),); with ``extend_to``, ``extended_test_acc`` of shape
        (len(extend_copies),), the test accuracy of those copies after ``extend_to`` steps.
    """
    lrs = torch.as_tensor([lr] * len(seeds) if np.ndim(lr) == 0 else list(lr), dtype=torch.float32)
    if lrs.shape != (len(seeds),) or (lrs <= 0).any():
        raise ValueError(f"lr must be positive: one number, or one per seed ({len(seeds)}), got {lr}")
    if pair_eval and sync:
        raise ValueError("pair_eval evaluates per-process batch norm: it needs sync=False")
    if extend_to and (extend_to <= steps or not extend_copies):
        raise ValueError(f"extend_to must exceed steps ({steps}) and name extend_copies, got {extend_to}")
    _check_rank(rank, world_size, group)
    if steps < 1 or local_batch < 1 or eval_every < 1:
        raise ValueError(
            f"need steps, local_batch, eval_every >= 1, got {steps}, {local_batch}, {eval_every}"
        )
    if data is None:
        from bnbook.data import load_digits

        data = load_digits()
    x_train, y_train = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test)
    s = len(seeds)
    x_eval = x_test.unsqueeze(1).expand(-1, s, -1)
    model = SeedStackMLP([x_train.shape[1], hidden, hidden, 10], seeds)
    if sync:
        model = bnn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    gens = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    rows = slice(rank * local_batch, (rank + 1) * local_batch)
    evaluated = np.arange(0, steps + 1, eval_every)
    test_acc = np.full((s, len(evaluated)), np.nan)
    followed = list(range(s)) if eval_copies is None else sorted({int(c) for c in eval_copies})
    losses = _train_steps(
        model,
        group,
        sync,
        gens,
        range(s),
        lrs,
        steps,
        x_train,
        y_train,
        rows,
        world_size * local_batch,
        on_step=lambda step, m: _evaluate(m, x_test, y_test, step, eval_every, steps, followed, test_acc),
    )
    out = {"steps": evaluated, "test_acc": test_acc, "loss": losses}
    if pair_eval:
        # training mode on test pairs: the statistics the layers saw in training, not the running ones
        probe = copy.deepcopy(model)  # training mode changes the running statistics: work on a copy
        order = torch.randperm(len(y_test), generator=torch.Generator().manual_seed(rank))
        pairs = order[: len(order) // 2 * 2].view(-1, 2)
        right = torch.zeros(s)
        with torch.no_grad():
            probe.train()
            for pair in pairs:
                right += (probe(x_eval[pair]).argmax(-1) == y_test[pair].unsqueeze(1)).sum(0)
        out["pair_acc"] = (right / pairs.numel()).double().numpy()
    if extend_to:
        copies = [int(c) for c in extend_copies]
        part = SeedStackMLP([x_train.shape[1], hidden, hidden, 10], [seeds[c] for c in copies])
        if sync:
            part = bnn.SyncBatchNorm.convert_sync_batchnorm(part, process_group=group)
        part_gens = [torch.Generator().manual_seed(int(seeds[c])) for c in copies]
        _train_steps(
            part,
            group,
            sync,
            part_gens,
            copies,
            lrs,
            extend_to,
            x_train,
            y_train,
            rows,
            world_size * local_batch,
        )
        last = np.empty((len(copies), 1))
        _evaluate(part, x_test, y_test, 0, 1, 0, list(range(len(copies))), last)
        out["extended_test_acc"] = last[:, 0]
    return out


def _evaluate(
    model: SeedStackMLP,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    step: int,
    every: int,
    last: int,
    followed: Sequence[int],
    into: np.ndarray,
) -> None:
    """Eval-mode test accuracy of the stack's copies into ``into[:, step // every]``.

    Every copy at the first and the last step, only ``followed`` in between; nothing
    at steps that are not a multiple of ``every``. The stack is left in training mode.
    """
    if step % every:
        return
    copies = list(range(into.shape[0])) if step in (0, last) else list(followed)
    if len(copies) == into.shape[0]:
        net = model
    else:
        net = model.subset(copies)
    net.eval()
    with torch.no_grad():
        x = x_test.unsqueeze(1).expand(-1, len(copies), -1)
        right = net(x).argmax(-1) == y_test.unsqueeze(1)
    into[copies, step // every] = right.double().mean(0).numpy()
    model.train()


def _train_steps(
    model: SeedStackMLP,
    group: Any,
    sync: bool,
    gens: Sequence[torch.Generator],
    copies: Sequence[int],
    lrs: torch.Tensor,
    steps: int,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    rows: slice,
    global_batch: int,
    on_step: Any = None,
) -> np.ndarray:
    """``steps`` data-parallel SGD steps of a stack; each copy's losses on this rank, shape (S, steps).

    ``copies`` index ``lrs`` (one learning rate per copy of the full stack) for the copies in
    ``model``, in order; ``gens`` draw their batches. ``on_step(step, model)`` runs before each
    step and after the last one.
    """
    from torch.nn.parallel import DistributedDataParallel

    s = len(gens)
    rates = lrs[torch.as_tensor(list(copies), dtype=torch.long)]
    # each parameter's learning rate, copy by copy: stacked weights (S, ...) and norms over S * width
    step_sizes = {id(w): rates.view(-1, *[1] * (w.dim() - 1)) for w in [*model.weights, model.bias]}
    for norm in model.norms:
        width = norm.weight.numel() // s
        for w in (norm.weight, norm.bias):
            step_sizes[id(w)] = rates.repeat_interleave(width)
    ddp = DistributedDataParallel(model, process_group=group)
    params = [p for p in ddp.parameters() if p.requires_grad]
    if set(step_sizes) != {id(p) for p in params}:
        raise RuntimeError("a parameter of the stack has no learning rate")
    losses = []
    local_batch = rows.stop - rows.start
    for step in range(steps + 1):
        if on_step is not None:
            on_step(step, model)
        if step == steps:
            break
        draws = [torch.randint(0, len(y_train), (global_batch,), generator=g) for g in gens]
        idx = torch.stack(draws, 1)
        idx = idx[rows]  # (local_batch, S): this rank's rows of every seed's global batch
        logits = ddp(x_train[idx])
        per_seed = F.cross_entropy(logits.reshape(-1, 10), y_train[idx].reshape(-1), reduction="none")
        per_seed = per_seed.view(local_batch, s).mean(0)
        for p in params:
            p.grad = None
        per_seed.sum().backward()  # DistributedDataParallel averages the gradients over the ranks here
        with torch.no_grad():
            for p in params:
                p.sub_(p.grad * step_sizes[id(p)])
        losses.append(per_seed.detach())
    return torch.stack(losses, 1).numpy() if losses else np.zeros((s, 0))


def recipe(
    rank: int, world_size: int, pair_size: int = 2, steps: int = 3, group: Any = None
) -> dict[str, Any]:
    """The practitioner's recipe, run on CPU workers: sub-groups, convert, then wrap in DDP.

    Ranks are split into groups of ``pair_size`` neighbours that share batch-norm
    statistics; gradients are still averaged over the whole world. Returns this
    rank's batch-norm running mean and flat parameters after ``steps`` steps; the
    parameters after one step of a model converted *after* wrapping, and of one whose
    first batch-norm layer was swapped by hand after wrapping (with the error its
    second step raises, empty if none); and the errors that ``torch.nn.SyncBatchNorm``
    raises on CPU tensors when DDP is built and at a training step.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    from bnbook.models import small_cnn

    _check_rank(rank, world_size, group)
    # 1. Every rank creates every sub-group, in the same order: new_group is itself collective.
    starts = range(0, world_size, pair_size)
    subgroups = [dist.new_group(list(range(s, min(s + pair_size, world_size)))) for s in starts]
    mine = subgroups[rank // pair_size]

    def model() -> nn.Module:
        torch.manual_seed(0)  # the same initial weights on every rank
        return small_cnn()  # torch.nn.BatchNorm2d layers, as in any model zoo

    def step(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    gen = torch.Generator().manual_seed(rank)  # every rank its own data
    x, y = torch.randn(4, 1, 8, 8, generator=gen), torch.randint(0, 10, (4,), generator=gen)

    # 2. Convert first, then wrap: DDP registers the parameters it will average when it is built.
    net = DDP(bnn.SyncBatchNorm.convert_sync_batchnorm(model(), process_group=mine))
    for _ in range(steps):
        step(net, x, y)

    # Converting after wrapping: convert_sync_batchnorm hands each new layer the old one's parameter
    # tensors (as torch's does), so the parameters DDP recorded are still the ones in use.
    late = DDP(model())
    bnn.SyncBatchNorm.convert_sync_batchnorm(late.module, process_group=mine)
    step(late, x, y)

    # A hand-made swap after wrapping: a new layer with new parameters, which DDP never saw.
    swapped = DDP(model())
    fresh = bnn.SyncBatchNorm(swapped.module[1].num_features, process_group=mine)
    fresh.load_state_dict(swapped.module[1].state_dict())
    swapped.module[1] = fresh
    step(swapped, x, y)
    swapped_params = nn.utils.parameters_to_vector(swapped.parameters()).detach().numpy()
    try:  # the second step finds the first one's gradient averaging unfinished
        step(swapped, x, y)
        swapped_error = ""
    except RuntimeError as err:
        swapped_error = f"RuntimeError: {str(err).split('. ')[0]}."

    # torch's own layer on CPU tensors: refused when DDP is built, and at a training step without DDP.
    refusals = []
    for attempt in (lambda m: DDP(m), lambda m: m(x)):
        try:
            attempt(torch.nn.SyncBatchNorm.convert_sync_batchnorm(model()))
            refusals.append("")
        except ValueError as err:
            refusals.append(f"ValueError: {err}")
    return {
        "layer": type(net.module[1]).__name__,
        "running_mean": net.module[1].running_mean.numpy().copy(),
        "params": nn.utils.parameters_to_vector(net.parameters()).detach().numpy(),
        "late_params": nn.utils.parameters_to_vector(late.parameters()).detach().numpy(),
        "swapped_params": swapped_params,
        "swapped_error": swapped_error,
        "torch_refusal_ddp": refusals[0],
        "torch_refusal_step": refusals[1],
    }


#: The tasks :func:`run_tasks` knows, by name.
TASKS = {
    "sync_forward_check": sync_forward_check,
    "stat_noise": stat_noise,
    "allreduce_times": allreduce_times,
    "count_collectives": count_collectives,
    "ddp_train": ddp_train,
    "recipe": recipe,
}

_SUBGROUPS: dict[tuple[int, ...], Any] = {}


def _check_tasks(tasks: Sequence[tuple[str, str, dict[str, Any]]]) -> None:
    for _, name, _ in tasks:
        if name not in TASKS:
            raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")


def run_plan(
    rank: int,
    world_size: int,
    plan: Sequence[tuple[Sequence[int], Sequence[tuple[str, str, dict[str, Any]]]]],
) -> dict[str, Any]:
    """Run tasks in several sub-groups of the world at once: ``{label: result}`` for this rank.

    Parameters
    ----------
    plan : sequence of (ranks, tasks)
        ``ranks`` lists the processes of a sub-group; ``tasks`` is a sequence of
        (label, task name, keyword arguments), as for :func:`run_tasks`. Each rank
        runs, in order, the tasks of every entry it belongs to, with its rank and
        size within that sub-group; entries with disjoint ranks run at the same
        time. Labels must differ across the whole plan. Every rank makes every
        sub-group (making one is itself collective), so all ranks get the same plan.
    """
    labels = [label for _, tasks in plan for label, _, _ in tasks]
    if len(set(labels)) != len(labels):
        raise ValueError("two tasks share a label")
    groups = []
    for ranks, tasks in plan:
        _check_tasks(tasks)
        members = tuple(sorted(int(r) for r in ranks))
        in_world = bool(members) and 0 <= members[0] and members[-1] < world_size
        if not in_world or len(set(members)) != len(members):
            raise ValueError(f"ranks must be distinct and between 0 and {world_size - 1}, got {list(ranks)}")
        if members == tuple(range(world_size)):
            groups.append((members, None))
            continue
        if members not in _SUBGROUPS:
            _SUBGROUPS[members] = dist.new_group(list(members))
        groups.append((members, _SUBGROUPS[members]))
    results: dict[str, Any] = {}
    for (members, group), (_, tasks) in zip(groups, plan, strict=True):
        if rank in members:
            sub_rank, size = members.index(rank), len(members)
            for label, name, kwargs in tasks:
                results[label] = TASKS[name](sub_rank, size, group=group, **kwargs)
    return results


def run_tasks(
    rank: int,
    world_size: int,
    tasks: Sequence[tuple[str, str, dict[str, Any]]],
    group_size: int | None = None,
) -> dict[str, Any] | None:
    """Run several tasks one after the other in the ranks ``0 .. group_size - 1``: ``{label: result}``.

    Parameters
    ----------
    tasks : sequence of (label, task name, keyword arguments)
        The task name is a key of :data:`TASKS`; the label names the result (so the
        same task can run twice with different arguments).
    group_size : int, optional
        How many of the world's processes take part (the whole world when None).
        Every rank must call with the same value, since making a sub-group is itself
        collective; ranks outside it return None at once.
    """
    size = world_size if group_size is None else int(group_size)
    if not 1 <= size <= world_size:
        raise ValueError(f"group_size must be between 1 and {world_size}, got {group_size}")
    _check_tasks(tasks)
    results = run_plan(rank, world_size, [(range(size), tasks)])
    return results if rank < size else None
