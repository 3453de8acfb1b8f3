"""Chapter 16 (making batch norm fast): tables, the configuration grid and the figures.

The timing itself lives in :mod:`bnbook.bench`; this module formats its rows,
runs the grid of layouts, dtypes and modes, and draws the three figures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import matplotlib.pyplot as plt
import torch

from bnbook import bench
from bnbook.plots import MARKERS, PALETTE

__all__ = [
    "Config",
    "config_grid",
    "pass_counts",
    "plot_alloc",
    "plot_ladder",
    "plot_sweep",
    "print_alloc",
    "print_configs",
    "print_rows",
]

SHORT = {
    bench.PRIMITIVES: "autograd through primitives",
    "bnbook.scratch.BatchNorm": "bnbook.scratch (NumPy)",
    "bnbook.nn.BatchNorm2d": "bnbook.nn (analytic Function)",
    bench.COMPILED: "torch.compile(bnbook.nn)",
    "bnbook.fast.BatchNorm2d": "bnbook.fast (fused C++)",
    bench.NATIVE: "torch native",
    bench.FLOOR: "floor (6 reads, 2 writes)",
}
STYLE = {  # colour, marker, line style per entry
    "bnbook.nn.BatchNorm2d": (PALETTE[1], MARKERS[1], "-"),
    "bnbook.fast.BatchNorm2d": (PALETTE[2], MARKERS[2], "-"),
    bench.NATIVE: (PALETTE[0], MARKERS[0], "-"),
    bench.FLOOR: ("#222222", None, "--"),
}


def _fmt(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.2f} [{r[1]:.2f}-{r[2]:.2f}]"


def print_rows(rows: Sequence[bench.Row]) -> None:
    """The ladder as a text table: ms per call, ratio to native and to the floor (median [min-max])."""
    print(f"{'entry':<29}{'ms':>8}{'x native':>20}{'x floor':>20}")
    for row in rows:
        name = SHORT.get(row.name, row.name)
        print(f"{name:<29}{row.median_s * 1e3:>8.1f}{_fmt(row.x_native):>20}{_fmt(row.x_floor):>20}")


def _mib_ticks(ax: plt.Axes, mib: Sequence[float]) -> None:
    """Log-2 x axis labelled with the sizes themselves."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(mib), [f"{m:g}" for m in mib])
    ax.minorticks_off()


def plot_ladder(rows: Sequence[bench.Row]) -> plt.Figure:
    """Horizontal bars: each rung's time over the floor, median with its min-max range over rounds."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    names = [SHORT.get(r.name, r.name) for r in rows][::-1]
    med = [r.x_floor[0] for r in rows][::-1]
    lo = [r.x_floor[0] - r.x_floor[1] for r in rows][::-1]
    hi = [r.x_floor[2] - r.x_floor[0] for r in rows][::-1]
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(rows))][::-1]
    ax.barh(names, med, xerr=[lo, hi], color=colors, alpha=0.85, capsize=3)
    ax.set_xscale("log")
    ax.axvline(1.0, color="#222222", ls="--", lw=1)
    ax.set_xlabel("time / memory-traffic floor (log scale; bar: median, whisker: min-max)")
    ax.set_title("Fewer passes over memory, less time: the rungs fall toward the floor")
    return fig


def plot_sweep(points: Sequence[bench.SweepPoint]) -> plt.Figure:
    """Time per forward+backward against tensor size, log-log, with the floor measured alongside."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    mib = [p.mib for p in points]
    for name, (color, marker, ls) in STYLE.items():
        rows = [next((r for r in p.rows if r.name == name), None) for p in points]
        if any(r is None for r in rows):
            continue
        med = [r.median_s * 1e3 for r in rows]
        ax.plot(mib, med, color=color, marker=marker, ls=ls, label=SHORT[name])
        ax.fill_between(
            mib, [r.min_s * 1e3 for r in rows], [r.max_s * 1e3 for r in rows], color=color, alpha=0.15
        )
    ref = [points[0].rows[-1].median_s * 1e3 * m / mib[0] for m in mib]
    ax.plot(mib, ref, color="#8c8c8c", ls=":", label="slope 1 (time proportional to size)")
    _mib_ticks(ax, mib)
    ax.set_yscale("log")
    ax.set_xlabel("size of one tensor (MiB, float32)")
    ax.set_ylabel("ms per forward+backward")
    ax.set_title("Cost grows in proportion to the bytes moved")
    ax.legend(fontsize=9)
    return fig


def print_alloc(label: str, rows: Sequence[bench.AllocRow] | None) -> None:
    """One line per size: the fresh / reused ratio, median [min-max]."""
    if rows is None:
        print(f"{label}: not measured here (needs Linux with glibc)")
        return
    print(label)
    for r in rows:
        print(f"  {r.mib:>5.0f} MiB   fresh / reused {_fmt(r.ratio)}")


def plot_alloc(series: dict[str, Sequence[bench.AllocRow] | None]) -> plt.Figure:
    """Fresh-over-reused ratio against size, one line per experiment, with the 32 MiB mark."""
    fig, ax = plt.subplots(figsize=(7.5, 5.0))
    for i, (label, rows) in enumerate(series.items()):
        if not rows:
            continue
        x = [r.mib for r in rows]
        ls = "--" if "control" in label else "-"
        color = PALETTE[i % len(PALETTE)]
        ax.plot(x, [r.ratio[0] for r in rows], color=color, marker=MARKERS[i], ls=ls, label=label)
        if "control" not in label:  # ranges of the measurements only, so the figure stays readable
            ax.fill_between(
                x, [r.ratio[1] for r in rows], [r.ratio[2] for r in rows], color=color, alpha=0.12
            )
    ax.axhline(1.0, color="#222222", lw=1)
    ax.axvline(32, color="#8c8c8c", ls=":", lw=1.5, label="32 MiB: glibc's largest adaptive mmap threshold")
    _mib_ticks(ax, sorted({r.mib for rows in series.values() for r in rows or []}))
    ax.set_yscale("log")
    ax.set_xlabel("size of the output (MiB); bands: min-max over rounds of the measurements")
    ax.set_ylabel("time, fresh output / reused output")
    ax.set_title("Above 32 MiB, fresh memory means new pages and page faults")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return fig


class Config(NamedTuple):
    """One cell of the grid: layout, dtype, mode, and the fused entry's row."""

    layout: str
    dtype: str
    mode: str
    fused: bench.Row
    floor: bench.Row


def config_grid(mib: float = 16, rounds: int = 5) -> list[Config]:
    """``bnbook.fast`` against native in NCHW and channels-last, float32 and float64, train and eval."""
    out = []
    for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
        for dtype in (torch.float32, torch.float64):
            for train in (True, False):
                shape = bench.shape_for_mib(mib, dtype)
                rows = bench.ladder(
                    shape, rounds, ["bnbook.fast.BatchNorm2d"], dtype=dtype, memory_format=fmt, train=train
                )
                by = {r.name: r for r in rows}
                fused = by.get("bnbook.fast.BatchNorm2d")
                if fused is None:  # kernels not built here: the eager fallback is what runs
                    continue
                out.append(
                    Config(
                        layout,
                        str(dtype).removeprefix("torch."),
                        "train" if train else "eval",
                        fused,
                        by[bench.FLOOR],
                    )
                )
    return out


def print_configs(grid: Sequence[Config]) -> None:
    """The grid as a table: fused / native and native / floor, median [min-max]."""
    print(f"{'layout':<15}{'dtype':<9}{'mode':<7}{'fused / native':>21}{'native / floor':>21}")
    for g in grid:
        native_floor = tuple(1.0 / v for v in (g.floor.x_native[0], g.floor.x_native[2], g.floor.x_native[1]))
        print(f"{g.layout:<15}{g.dtype:<9}{g.mode:<7}{_fmt(g.fused.x_native):>21}{_fmt(native_floor):>21}")


# Counted by reading bnbook/scratch/_batchnorm.py for a float32 input (float64 arrays count twice).
# Forward: isfinite check (1 read, 1/4 written) and np.all (1/4), mean (1), astype float64 (1 read,
# 2 written), centre (2, 2), square (2, 2), its mean (2), scale in place (2, 2), back to float32 (2, 1),
# times gamma (1, 1), plus beta in place (1, 1). Backward: sum dy (1), dy * x_hat (2, 1) and its sum (1),
# dy - mean (1, 1), x_hat * c (1, 1), subtract in place (2, 1), scale in place (1, 1).
# Fresh full-size arrays: 5 forward, 3 backward (the isfinite mask is a quarter of the size).
SCRATCH_COUNT = bench.PassCount(reads=24.25, writes=16.25, allocations=8, ops=18)


def pass_counts(shape: tuple[int, ...] = (8, 16, 8, 8)) -> dict[str, bench.PassCount]:
    """Full-size traffic of one training forward+backward per rung: counted by the dispatcher, or by hand."""
    gen = torch.Generator().manual_seed(0)
    x, dy = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    out = {}
    for name in (bench.PRIMITIVES, "bnbook.nn.BatchNorm2d", "bnbook.fast.BatchNorm2d", bench.NATIVE):
        out[name] = bench.count_passes(bench.ENTRIES[name](x, dy, True), x)
    out["bnbook.scratch.BatchNorm"] = SCRATCH_COUNT
    return out
