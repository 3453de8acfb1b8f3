"""Experiments and figures of ``chapters/15_at_inference`` (batch norm at inference: folding)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnbook.plots import MARKERS, PALETTE

__all__ = ["TwoBranch", "interleaved_times", "median_range", "module_summary", "plot_times"]


class TwoBranch(nn.Module):
    """``relu(bn(a(x) + b(x)))``: a batch norm whose input is a sum of two linear maps, not one of them."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.a = nn.Linear(n_in, n_out, bias=False)
        self.b = nn.Linear(n_in, n_out, bias=False)
        self.bn = nn.BatchNorm1d(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.a(x) + self.b(x)))


def module_summary(model: nn.Module) -> dict[str, int]:
    """Counts for a before/after table: leaf modules, batch-norm layers, parameters and buffer entries."""
    leaves = [m for m in model.modules() if not list(m.children())]
    return {
        "layers": len(leaves),
        "batch-norm layers": sum(isinstance(m, _BatchNorm) for m in leaves),
        "parameters": sum(p.numel() for p in model.parameters()),
        "buffer entries": sum(b.numel() for b in model.buffers()),
    }


def interleaved_times(
    fns: Mapping[str, Callable[[], object]],
    repeats: int,
    inner: int,
    warmup: int = 2,
    reduce: str = "mean",
) -> dict[str, np.ndarray]:
    """Seconds per call of each function, measured round-robin: ``{name: array of repeats}``.

    Each round runs every function ``inner`` times in turn, so that a busy machine
    slows them alike; every other round runs them in reverse order, so that no
    function always comes first or last. Ratios are best taken round by round.
    ``reduce`` says what a round records for each function: the mean time of its
    ``inner`` calls (``"mean"``), or the fastest of them (``"min"``), which drops the
    calls during which the process was descheduled on a shared machine.
    """
    if repeats < 1 or inner < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1, inner >= 1, warmup >= 0, got {repeats}, {inner}, {warmup}")
    if reduce not in ("mean", "min"):
        raise ValueError(f"reduce must be 'mean' or 'min', got {reduce!r}")
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(warmup + repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = fns[name]
            if reduce == "mean":
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                t = (time.perf_counter() - t0) / inner
            else:
                t = math.inf
                for _ in range(inner):
                    t0 = time.perf_counter()
                    fn()
                    t = min(t, time.perf_counter() - t0)
            if r >= warmup:
                times[name].append(t)
    return {k: np.array(v) for k, v in times.items()}


def median_range(values: Sequence[float] | np.ndarray, k: int = 3) -> tuple[float, float, float]:
    """The median of ``values`` and a range that drops the ``k - 1`` most extreme values at each end.

    Returns ``(median, k-th lowest, k-th highest)``. Per-round timing ratios on a busy machine have
    a few wild rounds; the median and this trimmed range describe the rest. ``k`` must leave at
    least one value: ``len(values) >= 2 * k - 1``.
    """
    x = np.sort(np.asarray(values, dtype=float).ravel())
    if k < 1 or x.size < 2 * k - 1:
        raise ValueError(f"need k >= 1 and at least 2k - 1 = {2 * k - 1} values, got k={k}, {x.size} values")
    return float(np.median(x)), float(x[k - 1]), float(x[-k])


def plot_times(
    ax,
    times: Mapping[str, np.ndarray],
    order: Sequence[str],
    colors: Sequence[str] | None = None,
    k: int = 3,
):
    """One row per entry: the median time per call in microseconds (marker) and a range (line).

    The range is that of :func:`median_range`, from the ``k``-th lowest to the ``k``-th highest
    round, the same range the text reports.
    """
    colors = list(colors) if colors is not None else [PALETTE[i % len(PALETTE)] for i in range(len(order))]
    y = np.arange(len(order))[::-1]
    for i, (name, color) in enumerate(zip(order, colors, strict=True)):
        med, lo, hi = median_range(1e6 * np.asarray(times[name]), k)
        ax.plot([lo, hi], [y[i], y[i]], color=color, lw=2, alpha=0.5)
        ax.plot(med, y[i], marker=MARKERS[i % len(MARKERS)], ms=8, color=color, lw=0)
    ax.set_yticks(y, list(order))
    ax.set_ylim(y.min() - 0.6, y.max() + 0.6)
    nth = {1: "lowest", 2: "2nd-lowest", 3: "3rd-lowest"}.get(k, f"{k}th-lowest")
    ax.set_xlabel(
        f"time per call (µs): median (marker), {nth} to {nth.replace('lowest', 'highest')} round (line)"
    )
    ax.grid(axis="y", visible=False)
