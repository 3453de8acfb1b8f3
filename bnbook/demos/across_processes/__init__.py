"""Experiments and figures of ``chapters/14_across_processes`` (batch norm across processes).

* :mod:`._workers`: the tasks that run inside the worker processes (they import
  them by name, so they live here and not in the notebook);
* :mod:`._counts`: the arithmetic (combining shards, ResNet-50's layers, the
  latency-bandwidth model, collectives read from torch's source);
* :mod:`._figures`: the chapter's figures.
"""

from __future__ import annotations

from bnbook.demos.across_processes._counts import (
    collectives_per_pass,
    combine_shards,
    resnet50_bn_channels,
    resnet50_parameter_count,
    ring_allgather_seconds,
    ring_allreduce_seconds,
)
from bnbook.demos.across_processes._figures import plot_allreduce, plot_noise
from bnbook.demos.across_processes._workers import (
    PRELOAD,
    TASKS,
    SeedStackMLP,
    allreduce_times,
    count_collectives,
    ddp_train,
    recipe,
    run_plan,
    run_tasks,
    stat_noise,
    sync_forward_check,
)

__all__ = [
    "PRELOAD",
    "TASKS",
    "SeedStackMLP",
    "allreduce_times",
    "collectives_per_pass",
    "combine_shards",
    "count_collectives",
    "ddp_train",
    "plot_allreduce",
    "plot_noise",
    "recipe",
    "resnet50_bn_channels",
    "resnet50_parameter_count",
    "ring_allgather_seconds",
    "ring_allreduce_seconds",
    "run_plan",
    "run_tasks",
    "stat_noise",
    "sync_forward_check",
]
