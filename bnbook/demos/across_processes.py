"""Experiments and figures of ``chapters/14_across_processes`` (batch norm across processes).

The worker functions that run inside the processes live in :mod:`bnbook.workers`;
this module holds the arithmetic and the figures the notebook draws from their results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from bnbook.plots import COLORS, MARKERS, PALETTE

__all__ = [
    "combine_shards",
    "plot_allreduce",
    "plot_noise",
    "resnet50_bn_channels",
    "resnet50_parameter_count",
    "ring_allreduce_seconds",
]


def combine_shards(shards: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and biased variance of the concatenated shards, from per-shard sums only.

    Two rounds, as :class:`bnbook.nn.SyncBatchNorm` does: the sums and counts give the
    global mean; then each shard's sum of squared deviations from that mean gives
    the global variance. ``shards`` are arrays of shape (n_k, features); n_k may differ.
    """
    counts = [len(s) for s in shards]
    n = sum(counts)
    mean = sum(s.sum(axis=0) for s in shards) / n
    var = sum(((s - mean) ** 2).sum(axis=0) for s in shards) / n
    return mean, var


def resnet50_bn_channels() -> list[int]:
    """Channels of the 53 batch-norm layers of ResNet-50 (He et al., 2016), in order.

    The stem has one (64); each bottleneck block of width w has three (w, w, 4w), and
    the first block of each of the four stages one more on its projection shortcut (4w).
    """
    channels = [64]
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            channels += [width, width, 4 * width]
            if b == 0:
                channels.append(4 * width)
    return channels


def ring_allreduce_seconds(
    numbers: float, world_size: int, latency_s: float, bandwidth_bytes_s: float, bytes_per_number: int = 4
) -> float:
    r"""Time of one all-reduce in the latency-bandwidth model.

    .. math::

        t = \ell + 2\,\frac{P-1}{P}\,\frac{k\,b}{B}

    with P processes, a fixed cost :math:`\ell` per all-reduce (latency), k numbers
    of b bytes and link bandwidth B (bytes per second); a ring all-reduce sends
    each byte :math:`2(P-1)/P` times.
    """
    if world_size < 1 or latency_s < 0 or bandwidth_bytes_s <= 0:
        raise ValueError("need world_size >= 1, latency_s >= 0 and bandwidth_bytes_s > 0")
    p = world_size
    return latency_s + 2 * (p - 1) / p * numbers * bytes_per_number / bandwidth_bytes_s


def resnet50_parameter_count() -> int:
    """Learnable parameters of ResNet-50 for 1000 classes, counted layer by layer (25,557,032)."""
    total = 7 * 7 * 3 * 64  # stem convolution
    c_in = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True):
        for b in range(blocks):
            total += c_in * width + 9 * width * width + width * 4 * width
            if b == 0:
                total += c_in * 4 * width  # projection shortcut
            c_in = 4 * width
    total += 2 * sum(resnet50_bn_channels())  # gamma and beta
    return total + 2048 * 1000 + 1000  # classifier


def plot_noise(ax, m: int, world_sizes: Sequence[int], sd_local, sd_global, theory, label: str) -> None:
    """Measured spread of a statistic against the number of processes, per-process and synchronized.

    ``sd_local[i]`` and ``sd_global[i]`` are the spreads measured with ``world_sizes[i]``
    processes of ``m`` rows each; ``theory(n)`` gives the predicted spread for n values.
    """
    ws = np.asarray(world_sizes)
    grid = np.geomspace(ws.min(), ws.max(), 50)
    ax.plot(grid, np.full(len(grid), theory(m)), color=COLORS["no_bn"], lw=1, ls="--")
    ax.plot(grid, theory(m * grid), color=COLORS["bn"], lw=1, ls="--", label="theory, sd at m or P·m rows")
    ax.plot(
        ws, sd_local, lw=0, marker=MARKERS[1], ms=8, color=COLORS["no_bn"], label=f"per-process BN ({m} rows)"
    )
    ax.plot(
        ws, sd_global, lw=0, marker=MARKERS[0], ms=7, color=COLORS["bn"], label=f"SyncBatchNorm (P·{m} rows)"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ws, [str(p) for p in ws])
    ax.set_xlabel("processes P")
    ax.set_ylabel(label)
    ax.set_ylim(0, None)
    ax.legend(fontsize=9, loc="lower left")


def plot_allreduce(ax, sizes: Sequence[int], seconds: Mapping[int, np.ndarray]) -> None:
    """Median time per all-reduce against the number of float64 values, one line per world size.

    ``seconds[P]`` has shape (repeats, len(sizes)); the band spans the quartiles.
    """
    k = np.asarray(sizes)
    for i, (p, s) in enumerate(sorted(seconds.items())):
        us = 1e6 * np.asarray(s)
        ax.plot(
            k, np.median(us, 0), marker=MARKERS[i], color=PALETTE[i], label=f"{p} process{'es' * (p > 1)}"
        )
        ax.fill_between(k, *np.percentile(us, [25, 75], axis=0), color=PALETTE[i], alpha=0.2, lw=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("numbers all-reduced (float64)")
    ax.set_ylabel("time per all-reduce (µs)")
    ax.set_ylim(top=ax.get_ylim()[1] * 10)
    ax.legend(fontsize=9, loc="upper left", ncol=3)
