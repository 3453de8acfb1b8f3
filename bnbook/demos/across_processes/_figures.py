"""Figures of ``chapters/14_across_processes``.

The book's style module (and with it matplotlib) is imported inside the
functions, so that the worker processes, which import this package for its
tasks, never load matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["plot_allreduce", "plot_noise"]


def plot_noise(ax, m: int, world_sizes: Sequence[int], sd_local, sd_global, theory, label: str) -> None:
    """Measured spread of a statistic against the number of processes, per-process and synchronized.

    ``sd_local[i]`` and ``sd_global[i]`` are the spreads measured with ``world_sizes[i]``
    processes of ``m`` rows each; ``theory(n)`` gives the predicted spread for n values.
    Per-process batch norm is drawn as the book's ghost-batch series (its statistics
    come from one shard, a ghost batch of ``m``), SyncBatchNorm as plain BN.
    """
    from bnbook.plots import series

    local = series("ghost", label=f"per-process BN ({m} rows)")
    synced = series("bn", label=f"SyncBatchNorm (P·{m} rows)")
    ws = np.asarray(world_sizes)
    grid = np.geomspace(ws.min(), ws.max(), 50)
    ax.plot(grid, np.full(len(grid), theory(m)), color=local["color"], lw=1, ls=":")
    ax.plot(grid, theory(m * grid), color=synced["color"], lw=1, ls=":", label="theory, m or P·m rows")
    ax.plot(ws, sd_local, lw=0, ms=8, **{k: v for k, v in local.items() if k != "linestyle"})
    ax.plot(ws, sd_global, lw=0, ms=7, **{k: v for k, v in synced.items() if k != "linestyle"})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ws, [str(p) for p in ws])
    ax.set_xlabel("processes P")
    ax.set_ylabel(label)
    ax.set_ylim(0, None)
    ax.legend(fontsize=9, loc="lower left")


def plot_allreduce(ax, sizes: Sequence[int], seconds: Mapping[int, np.ndarray]) -> None:
    """Median time per all-reduce against the number of float64 values, one line per world size.

    ``seconds[P]`` has shape (repeats, len(sizes)); the band spans the 10th to 90th percentiles.
    """
    from bnbook.plots import MARKERS, PALETTE

    k = np.asarray(sizes)
    for i, (p, s) in enumerate(sorted(seconds.items())):
        us = 1e6 * np.asarray(s)
        ax.plot(
            k, np.median(us, 0), marker=MARKERS[i], color=PALETTE[i], label=f"{p} process{'es' * (p > 1)}"
        )
        ax.fill_between(k, *np.percentile(us, [10, 90], axis=0), color=PALETTE[i], alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("numbers all-reduced (float64)")
    ax.set_ylabel("time per all-reduce (µs); band: 10th-90th pct")
    ax.set_ylim(top=ax.get_ylim()[1] * 10)
    ax.legend(fontsize=9, loc="upper left", ncol=3)
